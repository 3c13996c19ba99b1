package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
)

// History is what the system announced during a schedule, read back from the
// ANIVAULT_EVENTS stream after the drain (so that nothing published while
// this runner's connection was away during a NATS restart is missed).
type History struct {
	Modes     []events.ModeChanged // one per epoch, in epoch order
	Unhealthy []events.DBUnhealthy
	Recovered []events.DBRecovered
	Replays   []events.ReplayCompleted
}

// ReadHistory reads every mode, db.unhealthy, db.recovered and replay.completed event.
func ReadHistory(ctx context.Context, js jetstream.JetStream, subj events.Subjects) (History, error) {
	var h History
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, subj.Name(events.StreamEvents), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subj.Of(events.SubjectsMode), subj.Of(events.SubjectDBUnhealthy), subj.Of(events.SubjectDBRecovered), subj.Of(events.SubjectReplayCompleted)},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return h, fmt.Errorf("read events: %w", err)
	}
	byEpoch := map[int64]events.ModeChanged{}
	for done := false; !done; {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return h, fmt.Errorf("read events: %w", err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err == nil && md.NumPending == 0 {
				done = true
			}
			switch base := subj.Base(m.Subject()); base {
			case events.SubjectDBUnhealthy:
				var e events.DBUnhealthy
				if json.Unmarshal(m.Data(), &e) == nil {
					h.Unhealthy = append(h.Unhealthy, e)
				}
			case events.SubjectDBRecovered:
				var e events.DBRecovered
				if json.Unmarshal(m.Data(), &e) == nil {
					h.Recovered = append(h.Recovered, e)
				}
			case events.SubjectReplayCompleted:
				var e events.ReplayCompleted
				if json.Unmarshal(m.Data(), &e) == nil {
					h.Replays = append(h.Replays, e)
				}
			default:
				if e, err := events.DecodeMode(m.Data()); err == nil {
					byEpoch[e.Epoch] = e // a retried publish may store an epoch twice
				}
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) && n == 0 {
			return h, fmt.Errorf("read events: %w", err)
		}
		if n == 0 {
			done = true
		}
	}
	for _, e := range byEpoch {
		h.Modes = append(h.Modes, e)
	}
	sort.Slice(h.Modes, func(i, j int) bool { return h.Modes[i].Epoch < h.Modes[j].Epoch })
	sort.Slice(h.Unhealthy, func(i, j int) bool { return h.Unhealthy[i].OccurredAt.Before(h.Unhealthy[j].OccurredAt) })
	return h, nil
}

// MissingEpochs lists the epochs 1..last that no mode event announced.
func (h History) MissingEpochs(last int64) []int64 {
	seen := map[int64]bool{}
	for _, m := range h.Modes {
		seen[m.Epoch] = true
	}
	var out []int64
	for e := int64(1); e <= last; e++ {
		if !seen[e] {
			out = append(out, e)
		}
	}
	return out
}

// ModeAt returns the mode in force at t according to the announced modes.
func (h History) ModeAt(t time.Time) events.Mode {
	mode := events.ModeNormal
	for _, m := range h.Modes {
		if m.Since.After(t) {
			break
		}
		mode = m.Mode
	}
	return mode
}

// Outage is one failure as the recovery-manager counts it: from the
// transition normal -> cache_only to the next normal.
type Outage struct {
	Start      time.Time // since of the cache_only mode
	End        time.Time // since of the next normal mode (zero: never)
	StartEpoch int64
	Reason     string
	// Trigger is the db.unhealthy that caused it (its occurred_at), zero when unknown.
	Trigger time.Time
	// Fault is the index of the database fault it is attributed to (-1: none).
	Fault int
}

// Outages derives the outages from the mode events.
func (h History) Outages() []Outage {
	var out []Outage
	prev := events.ModeNormal
	for _, m := range h.Modes {
		switch {
		case m.Mode == events.ModeCacheOnly && prev == events.ModeNormal && !m.Manual:
			o := Outage{Start: m.Since, StartEpoch: m.Epoch, Reason: m.Reason, Fault: -1}
			for _, u := range h.Unhealthy {
				if !u.OccurredAt.After(m.Since) {
					o.Trigger = u.OccurredAt
				}
			}
			out = append(out, o)
		case m.Mode == events.ModeNormal && len(out) > 0 && out[len(out)-1].End.IsZero():
			out[len(out)-1].End = m.Since
		}
		prev = m.Mode
	}
	return out
}
