package node

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/testutil/natstest"
	"github.com/anivault/anivault/pkg/topology"
)

// testChangeLog provisions the streams on a fresh in-process JetStream
// server and returns a change log attached to them, and the connection.
func testChangeLog(t *testing.T, source string) (*changeLog, jetstream.JetStream) {
	t.Helper()
	srv := natstest.Start(t)
	_, js := natstest.Connect(t, srv.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	top, err := topology.New(js, events.NewSubjects(""))
	if err != nil {
		t.Fatal(err)
	}
	if err := top.EnsureWrites(ctx, topology.BufferLimits{}); err != nil {
		t.Fatal(err)
	}
	l := newChangeLog(events.NewSubjects(""), source, time.Second, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := l.attach(ctx, js); err != nil {
		t.Fatal(err)
	}
	return l, js
}

func body(id, version int64) []byte {
	return fmt.Appendf(nil, `{"tmdb_id":%d,"title":"v%d","version":%d,"updated_at":"2026-11-30T00:00:00Z"}`, id, version, version)
}

// Concurrent writers publishing versions of one record in any order leave
// the log holding the highest; an older publish reports the newer version.
func TestChangeLogKeepsTheHighestVersion(t *testing.T) {
	t.Parallel()
	l, js := testChangeLog(t, "n1")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	versions := rand.Perm(60)
	var wg sync.WaitGroup
	errs := make(chan error, len(versions))
	for w := range 6 {
		wg.Go(func() {
			for i := w; i < len(versions); i += 6 {
				v := int64(versions[i] + 1)
				got, err := l.publish(ctx, logEntry{id: 42, version: v, at: time.Now(), body: body(42, v)})
				if err != nil {
					errs <- err
					return
				}
				if got < v {
					errs <- fmt.Errorf("publish v%d reported v%d", v, got)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	e, found, err := l.get(ctx, 42)
	if err != nil || !found || e.version != 60 || string(e.body) != string(body(42, 60)) {
		t.Fatalf("log holds %+v (found %v, %v), want v60", e, found, err)
	}
	if got, err := l.publish(ctx, logEntry{id: 42, version: 7, at: time.Now(), body: body(42, 7)}); err != nil || got != 60 {
		t.Fatalf("a stale publish reported v%d, %v; want v60", got, err)
	}
	// A tombstone above it wins; the compacted log keeps one message.
	if got, err := l.publish(ctx, logEntry{id: 42, version: 61, deleted: true, at: time.Now()}); err != nil || got != 61 {
		t.Fatalf("tombstone: v%d, %v", got, err)
	}
	e, found, err = l.get(ctx, 42)
	if err != nil || !found || !e.deleted || e.version != 61 || e.body != nil {
		t.Fatalf("log holds %+v (found %v, %v), want the tombstone v61", e, found, err)
	}
	s, err := js.Stream(ctx, events.StreamChanges)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := s.Info(ctx); err != nil || info.State.Msgs != 1 {
		t.Fatalf("stream holds %+v (%v), want 1 message", info.State, err)
	}
	if _, found, err := l.get(ctx, 43); err != nil || found {
		t.Fatalf("a record never written: found %v, %v", found, err)
	}
}

// The follower indexes every record's latest version, headers only, tells
// the node of each change, proves itself current, and resumes after a
// restart from where it stopped.
func TestChangeLogFollower(t *testing.T) {
	t.Parallel()
	writer, _ := testChangeLog(t, "writer")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for id := int64(1); id <= 100; id++ {
		if _, err := writer.publish(ctx, logEntry{id: id, version: 10, at: time.Now(), body: body(id, 10)}); err != nil {
			t.Fatal(err)
		}
	}
	// A reader that starts after those writes, on the same stream.
	reader := newChangeLog(events.NewSubjects(""), "reader", time.Second, writer.log)
	reader.js, reader.stream = writer.js, writer.stream
	var (
		mu      sync.Mutex
		changes = map[int64]int64{}
	)
	reader.onChange = func(id, v int64, _ bool) {
		mu.Lock()
		changes[id] = v
		mu.Unlock()
	}
	rctx, rcancel := context.WithCancel(ctx)
	go reader.run(rctx)
	waitFor(t, func() error {
		if !reader.current() || reader.keys() != 100 || reader.latest(100) != 10 {
			return fmt.Errorf("current %v, %d keys", reader.current(), reader.keys())
		}
		return nil
	})
	if _, err := writer.publish(ctx, logEntry{id: 5, version: 11, deleted: true, at: time.Now()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() error {
		mu.Lock()
		defer mu.Unlock()
		if changes[5] != 11 || reader.latest(5) != 11 {
			return fmt.Errorf("change of 5 not seen: %d", changes[5])
		}
		return nil
	})
	// Stopped, it misses writes; started again, it resumes from its position.
	rcancel()
	seq := reader.applied.Load()
	for id := int64(1); id <= 20; id++ {
		if _, err := writer.publish(ctx, logEntry{id: id, version: 20, at: time.Now(), body: body(id, 20)}); err != nil {
			t.Fatal(err)
		}
	}
	go reader.run(ctx)
	waitFor(t, func() error {
		for id := int64(1); id <= 20; id++ {
			if reader.latest(id) != 20 {
				return fmt.Errorf("tmdb:%d at v%d after the restart", id, reader.latest(id))
			}
		}
		return nil
	})
	if reader.applied.Load() <= seq {
		t.Fatalf("follower position %d, was %d", reader.applied.Load(), seq)
	}
}

func waitFor(t *testing.T, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
