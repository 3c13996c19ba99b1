package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/deployments/internal/timelinesvg"
	"github.com/anivault/anivault/deployments/load"
	"github.com/anivault/anivault/events"
)

// timeline prints events with their times and a live status line, and
// records them with a time series sampled every second, for the SVG picture
// of the run (timeline.svg).
type timeline struct {
	begin time.Time
	out   io.Writer
	tty   bool
	mu    sync.Mutex

	// Recorded for the picture (under mu).
	loadStart    time.Time // zero until the load starts
	samples      []sample
	events       []recorded
	dbDown, dbUp time.Time
	outageLabel  string
}

// sample is the state at one tick: cumulative counters, the write buffer's
// pending messages (-1: unknown) and the mode in the KV.
type sample struct {
	At      time.Time
	C       load.Counters
	Pending int64
	Mode    events.Mode
}

// recorded is one event or mark: what was printed, at the time it was.
type recorded struct {
	At      time.Time
	Subject string // the NATS subject, or "" for the demo's own marks
	Label   string
}

func (t *timeline) print(s string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tty {
		fmt.Fprint(t.out, "\r\033[K") // clear the live line first
	}
	fmt.Fprintf(t.out, "%7.1fs  %s\n", time.Since(t.begin).Seconds(), s)
}

// mark prints a milestone of the demo; label is its name in the picture.
func (t *timeline) mark(s, label string) {
	t.record(recorded{At: time.Now(), Label: label})
	t.print("**** " + s)
}

func (t *timeline) record(r recorded) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.events = append(t.events, r)
}

// outage records when the database went away and came back (zero: not yet).
func (t *timeline) outage(down, up time.Time, label string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !down.IsZero() {
		t.dbDown, t.outageLabel = down, label
	}
	if !up.IsZero() {
		t.dbUp = up
	}
}

// follow prints db.unhealthy, db.recovered, mode.* and replay.completed as they happen.
func (t *timeline) follow(nc *nats.Conn) error {
	for _, subj := range []string{events.SubjectDBUnhealthy, events.SubjectDBRecovered, events.SubjectsMode, events.SubjectReplayCompleted} {
		_, err := nc.Subscribe(subj, func(m *nats.Msg) {
			at := time.Now()
			var v map[string]any
			_ = json.Unmarshal(m.Data, &v)
			detail, label := "", m.Subject
			switch {
			case strings.HasPrefix(m.Subject, "mode."):
				detail = fmt.Sprintf("epoch %v %v", v["epoch"], v["reason"])
				label = fmt.Sprintf("%s (epoch %v)", m.Subject, v["epoch"])
			case m.Subject == "db.unhealthy":
				detail = fmt.Sprintf("%v (%v)", v["reason"], v["last_error"])
			case m.Subject == "db.recovered":
				detail = fmt.Sprintf("after %.1fs down", v["downtime_seconds"])
			case m.Subject == "replay.completed":
				detail = fmt.Sprintf("%v: replayed %v, skipped stale %v, failed %v in %vms", v["source"], v["replayed"], v["skipped_stale"], v["failed"], v["duration_ms"])
				label = fmt.Sprintf("replay.completed %v: %v replayed", v["source"], v["replayed"])
			}
			t.record(recorded{At: at, Subject: m.Subject, Label: label})
			t.print(fmt.Sprintf("event %-17s %s", m.Subject, detail))
		})
		if err != nil {
			return err
		}
	}
	return nc.Flush()
}

// live samples the load's counters, the mode and the buffered writes every
// second until ctx is done, and prints them as a live line until loadDone
// is closed.
func (t *timeline) live(ctx context.Context, loadDone <-chan struct{}, g *load.Generator, js jetstream.JetStream) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	prev := g.Counters()
	tty, printing := t.tty, true
	t.mu.Lock()
	t.loadStart = time.Now()
	t.samples = append(t.samples, sample{At: t.loadStart, C: prev, Pending: -1})
	t.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			if tty && printing {
				fmt.Fprintln(t.out)
			}
			return
		case <-tick.C:
		}
		c := g.Counters()
		mode, pending, err := modeAndPending(ctx, js)
		if ctx.Err() != nil {
			continue
		}
		s := sample{At: time.Now(), C: c, Pending: int64(pending), Mode: mode.Mode}
		if err != nil {
			s.Pending, s.Mode = -1, ""
		}
		t.mu.Lock()
		t.samples = append(t.samples, s)
		t.mu.Unlock()
		if printing {
			select {
			case <-loadDone:
				printing = false
				if tty {
					fmt.Fprintln(t.out)
				}
			default:
			}
		}
		if !printing {
			prev = c
			continue
		}
		rps := (c.Reads + c.ReadUnavailable + c.Committed + c.Buffered) - (prev.Reads + prev.ReadUnavailable + prev.Committed + prev.Buffered)
		line := fmt.Sprintf("live  mode=%-10s rps=%-5d write_errors=%d committed=%d buffered=%d buffer_msgs=%d reads_503=%d",
			mode.Mode, rps, c.WriteErrors, c.Committed, c.Buffered, pending, c.ReadUnavailable)
		if tty {
			t.mu.Lock()
			fmt.Fprintf(t.out, "\r%7.1fs  %s   ", time.Since(t.begin).Seconds(), line)
			t.mu.Unlock()
		} else {
			t.print(line)
		}
		prev = c
	}
}

// picture describes the run for the chart's title lines.
type picture struct {
	Nodes, Writers, Readers int
	Tally                   *load.Tally // nil when the run did not get to the tally
	Counters                load.Counters
	Healed                  bool
}

// chart turns what was recorded into a chart: time from the start of the
// load, per-second rates from consecutive samples (plotted mid-interval).
func (t *timeline) chart(p picture) timelinesvg.Chart {
	t.mu.Lock()
	defer t.mu.Unlock()
	start := t.loadStart
	if start.IsZero() {
		start = t.begin
	}
	rel := func(at time.Time) time.Duration { return at.Sub(start) }
	var end time.Duration
	for _, s := range t.samples {
		end = max(end, rel(s.At))
	}
	for _, e := range t.events {
		end = max(end, rel(e.At))
	}

	// Series.
	var w200, w202, w503, wErr, rOK, rFail, pending []timelinesvg.Point
	for i := 1; i < len(t.samples); i++ {
		a, b := t.samples[i-1], t.samples[i]
		secs := b.At.Sub(a.At).Seconds()
		if secs <= 0 {
			continue
		}
		mid := rel(a.At) + b.At.Sub(a.At)/2
		rate := func(x, y int64) timelinesvg.Point { return timelinesvg.Point{T: mid, V: float64(y-x) / secs} }
		w200 = append(w200, rate(a.C.Committed, b.C.Committed))
		w202 = append(w202, rate(a.C.Buffered, b.C.Buffered))
		w503 = append(w503, rate(a.C.WriteUnavailable, b.C.WriteUnavailable))
		wErr = append(wErr, rate(a.C.WriteErrors-a.C.WriteUnavailable, b.C.WriteErrors-b.C.WriteUnavailable))
		rOK = append(rOK, rate(a.C.Reads, b.C.Reads))
		rFail = append(rFail, rate(a.C.ReadUnavailable+a.C.ReadErrors, b.C.ReadUnavailable+b.C.ReadErrors))
	}
	for _, s := range t.samples {
		if s.Pending >= 0 {
			pending = append(pending, timelinesvg.Point{T: rel(s.At), V: float64(s.Pending)})
		}
	}

	// Mode bands: the mode sampled at the load's start (normal when not
	// known yet), then every mode.* event as it arrived.
	cur := events.ModeNormal
	for _, s := range t.samples {
		if s.Mode != "" {
			cur = s.Mode
			break
		}
	}
	evs := append([]recorded(nil), t.events...)
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].At.Before(evs[j].At) })
	var modes []timelinesvg.ModeSpan
	from := time.Duration(0)
	for _, e := range evs {
		m, ok := strings.CutPrefix(e.Subject, "mode.")
		if !ok || rel(e.At) < 0 {
			continue
		}
		modes = append(modes, timelinesvg.ModeSpan{Mode: string(cur), From: from, To: rel(e.At)})
		cur, from = events.Mode(m), rel(e.At)
	}
	modes = append(modes, timelinesvg.ModeSpan{Mode: string(cur), From: from, To: end})

	var marks []timelinesvg.Event
	for _, e := range evs {
		if rel(e.At) >= 0 {
			marks = append(marks, timelinesvg.Event{At: rel(e.At), Label: e.Label, Dashed: e.Subject == ""})
		}
	}
	var shades []timelinesvg.Span
	if !t.dbDown.IsZero() {
		up := t.dbUp
		if up.IsZero() {
			up = start.Add(end)
		}
		shades = append(shades, timelinesvg.Span{Label: t.outageLabel, From: rel(t.dbDown), To: rel(up)})
	}

	sub := []string{fmt.Sprintf("%d writers + %d readers on %d cache-nodes", p.Writers, p.Readers, p.Nodes)}
	if !t.dbDown.IsZero() {
		sub[0] += fmt.Sprintf(" · %s at +%.1fs", t.outageLabel, rel(t.dbDown).Seconds())
		if !t.dbUp.IsZero() {
			sub[0] += fmt.Sprintf(" for %.1fs", t.dbUp.Sub(t.dbDown).Seconds())
		}
	}
	c := p.Counters
	if p.Tally != nil {
		sub = append(sub, fmt.Sprintf("writes acknowledged %d (200 committed %d, 202 buffered %d) · write errors %d (503: %d) · reads %d (503 %d, errors %d) · lost %d",
			p.Tally.Acknowledged, c.Committed, c.Buffered, c.WriteErrors, c.WriteUnavailable, c.Reads, c.ReadUnavailable, c.ReadErrors, p.Tally.Lost))
	} else {
		sub = append(sub, "the run ended before the tally: see the demo's output")
	}
	if !p.Healed {
		sub = append(sub, "the system had not healed (mode normal, buffer empty) when the picture was drawn")
	}
	return timelinesvg.Chart{
		Title:    "AniVault demo: load through a PostgreSQL outage",
		Subtitle: sub,
		Note:     fmt.Sprintf("Time from the start of the load (+%.1fs on the demo's clock). Rates per second between 1 s samples; buffer from the ANIVAULT_BUFFER stream.", start.Sub(t.begin).Seconds()),
		End:      end,
		Modes:    modes,
		Shades:   shades,
		Events:   marks,
		Panels: []timelinesvg.Panel{
			{Label: "requests per second", Series: []timelinesvg.Series{
				{Label: "reads ok (200, 404)", Color: "#1565c0", Points: rOK},
				{Label: "reads failed (503, errors)", Color: "#ef6c00", Points: rFail},
				{Label: "writes 200 committed", Color: "#2e7d32", Points: w200},
				{Label: "writes 202 buffered", Color: "#6a1b9a", Points: w202},
				{Label: "writes 503", Color: "#c62828", Points: w503},
				{Label: "writes failed otherwise", Color: "#000000", Points: wErr},
			}},
			{Label: "buffer pending", Weight: 0.5, Series: []timelinesvg.Series{
				{Label: "buffered writes pending", Color: "#8d6e63", Points: pending},
			}},
		},
	}
}

// writeSVG renders the recorded timeline into path.
func (t *timeline) writeSVG(path string, p picture) error {
	svg := timelinesvg.Render(t.chart(p))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("timeline: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(svg), 0o644); err != nil {
		return fmt.Errorf("timeline: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("timeline: %w", err)
	}
	return nil
}
