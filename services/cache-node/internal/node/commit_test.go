package node

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
)

// A group of committed writes goes into the change log as one atomic batch,
// all or nothing: each entry expects the sequence the node's index holds for
// its record, so a record logged meanwhile by another writer refuses the
// whole batch (and nothing of it is stored); an index that already knows an
// equal or newer version refuses it before anything is sent.
func TestChangeLogAtomicBatch(t *testing.T) {
	t.Parallel()
	a, js := testChangeLog(t, "a")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := js.Stream(ctx, events.StreamChanges)
	if err != nil {
		t.Fatal(err)
	}
	msgs := func() uint64 {
		t.Helper()
		info, err := stream.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Msgs
	}
	entries := func(version int64, ids ...int64) []logEntry {
		out := make([]logEntry, len(ids))
		for i, id := range ids {
			out[i] = logEntry{id: id, version: version, at: time.Now(), body: body(id, version)}
		}
		return out
	}

	// New records: expected sequence 0, the batch is stored, and the index
	// learns each entry's sequence.
	if err := a.publishBatch(ctx, entries(10, 1, 2, 3)); err != nil {
		t.Fatal(err)
	}
	for _, id := range []int64{1, 2, 3} {
		e, found, err := a.get(ctx, id)
		if err != nil || !found || e.version != 10 {
			t.Fatalf("tmdb:%d: %+v %v %v", id, e, found, err)
		}
		if v, seq, known := a.lastEntry(id); v != 10 || !known || seq != uint64(id) {
			t.Fatalf("index of tmdb:%d: v%d seq %d known %v, want v10 at sequence %d", id, v, seq, known, id)
		}
	}
	// Updates of the same records expect those sequences: stored.
	if err := a.publishBatch(ctx, entries(20, 1, 2, 3)); err != nil {
		t.Fatal(err)
	}

	// Another writer logs record 2 (its own index, its own publish): a's
	// index is behind, so a's next batch over 1, 2, 3 is refused as a whole.
	b, _ := testChangeLogOn(t, js, "b")
	if _, err := b.publish(ctx, logEntry{id: 2, version: 30, at: time.Now(), body: body(2, 30)}); err != nil {
		t.Fatal(err)
	}
	before := msgs()
	if err := a.publishBatch(ctx, entries(25, 1, 2, 3)); err == nil {
		t.Fatal("a batch over a record logged meanwhile by another writer was accepted")
	}
	if got := msgs(); got != before {
		t.Fatalf("a refused batch changed the log: %d messages, was %d", got, before)
	}
	for id, want := range map[int64]int64{1: 20, 2: 30, 3: 20} {
		if e, _, err := a.get(ctx, id); err != nil || e.version != want {
			t.Fatalf("tmdb:%d holds v%d (%v), want v%d", id, e.version, err, want)
		}
	}
	// The reads above taught a's index the sequences: the batch goes now,
	// without the entry the log holds newer.
	if err := a.publishBatch(ctx, entries(25, 1, 3)); err != nil {
		t.Fatal(err)
	}
	// An entry the index knows at an equal or newer version is refused before sending.
	if err := a.publishBatch(ctx, entries(25, 4, 2)); err == nil {
		t.Fatal("a batch with an entry older than the index's version was accepted")
	}
	if _, found, _ := a.get(ctx, 4); found {
		t.Fatal("a refused batch stored tmdb:4")
	}
}

// testChangeLogOn returns another writer's change log on the same streams.
func testChangeLogOn(t *testing.T, js jetstream.JetStream, source string) (*changeLog, jetstream.JetStream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := newChangeLog(events.NewSubjects(""), source, time.Second, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := l.attach(ctx, js); err != nil {
		t.Fatal(err)
	}
	return l, js
}
