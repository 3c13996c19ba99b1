package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/deployments/local/load"
)

// timeline prints events with their times and a live status line.
type timeline struct {
	begin time.Time
	out   io.Writer
	tty   bool
	mu    sync.Mutex
}

func (t *timeline) print(s string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tty {
		fmt.Fprint(t.out, "\r\033[K") // clear the live line first
	}
	fmt.Fprintf(t.out, "%7.1fs  %s\n", time.Since(t.begin).Seconds(), s)
}

func (t *timeline) mark(s string) { t.print("**** " + s) }

// follow prints db.unhealthy, db.recovered, mode.* and replay.completed as they happen.
func (t *timeline) follow(nc *nats.Conn) error {
	for _, subj := range []string{"db.unhealthy", "db.recovered", "mode.>", "replay.completed"} {
		_, err := nc.Subscribe(subj, func(m *nats.Msg) {
			var v map[string]any
			_ = json.Unmarshal(m.Data, &v)
			detail := ""
			switch {
			case strings.HasPrefix(m.Subject, "mode."):
				detail = fmt.Sprintf("epoch %v %v", v["epoch"], v["reason"])
			case m.Subject == "db.unhealthy":
				detail = fmt.Sprintf("%v (%v)", v["reason"], v["last_error"])
			case m.Subject == "db.recovered":
				detail = fmt.Sprintf("after %.1fs down", v["downtime_seconds"])
			case m.Subject == "replay.completed":
				detail = fmt.Sprintf("%v: replayed %v, skipped stale %v, failed %v in %vms", v["source"], v["replayed"], v["skipped_stale"], v["failed"], v["duration_ms"])
			}
			t.print(fmt.Sprintf("event %-17s %s", m.Subject, detail))
		})
		if err != nil {
			return err
		}
	}
	return nc.Flush()
}

// live prints the mode, requests per second, errors and buffered writes every second.
func (t *timeline) live(ctx context.Context, g *load.Generator, js jetstream.JetStream) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	prev := g.Counters()
	tty := t.tty
	for {
		select {
		case <-ctx.Done():
			if tty {
				fmt.Fprintln(t.out)
			}
			return
		case <-tick.C:
		}
		c := g.Counters()
		rps := (c.Reads + c.ReadUnavailable + c.Committed + c.Buffered) - (prev.Reads + prev.ReadUnavailable + prev.Committed + prev.Buffered)
		mode, pending, _ := modeAndPending(ctx, js)
		if ctx.Err() != nil {
			continue
		}
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
