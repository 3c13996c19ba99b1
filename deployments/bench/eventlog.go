package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/anivault/anivault/events"
)

// event is one NATS event as received by the benchmark.
type event struct {
	At      time.Time
	Subject string
	Body    map[string]any
}

func (e event) num(key string) float64 {
	f, _ := e.Body[key].(float64)
	return f
}

// eventLog records db.*, mode.* and replay.completed with their arrival times.
type eventLog struct {
	mu   sync.Mutex
	evs  []event
	wake chan struct{}
}

func followEvents(nc *nats.Conn) (*eventLog, error) {
	l := &eventLog{wake: make(chan struct{})}
	for _, subj := range []string{events.SubjectDBUnhealthy, events.SubjectDBRecovered, events.SubjectsMode, events.SubjectReplayCompleted} {
		if _, err := nc.Subscribe(subj, func(m *nats.Msg) {
			e := event{At: time.Now(), Subject: m.Subject}
			_ = json.Unmarshal(m.Data, &e.Body)
			l.mu.Lock()
			l.evs = append(l.evs, e)
			close(l.wake)
			l.wake = make(chan struct{})
			l.mu.Unlock()
		}); err != nil {
			return nil, err
		}
	}
	return l, nc.Flush()
}

// mark returns a position: waits look at events from there on.
func (l *eventLog) mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.evs)
}

// since returns the events from position from.
func (l *eventLog) since(from int) []event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]event(nil), l.evs[from:]...)
}

// wait returns the first event from position from that matches.
func (l *eventLog) wait(ctx context.Context, from int, timeout time.Duration, match func(event) bool) (event, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		l.mu.Lock()
		for _, e := range l.evs[from:] {
			if match(e) {
				l.mu.Unlock()
				return e, nil
			}
		}
		wake := l.wake
		l.mu.Unlock()
		select {
		case <-ctx.Done():
			return event{}, fmt.Errorf("event not seen within %v", timeout)
		case <-wake:
		}
	}
}

func isSubject(s string) func(event) bool { return func(e event) bool { return e.Subject == s } }
