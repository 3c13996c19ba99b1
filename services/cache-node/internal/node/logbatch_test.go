package node

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// Concurrent writes' log entries are stored in atomic batches, each caller
// answered with the version the log holds for its record, as a publish of
// its own would: its own, or a newer one the log already had. What a batch
// cannot take goes back to its caller, which logs it alone.
func TestLogBatcher(t *testing.T) {
	t.Parallel()
	a, js := testChangeLog(t, "a")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	b := newLogBatcher(a)
	ran := make(chan struct{})
	go func() { b.run(runCtx); close(ran) }()
	entry := testEntry
	publishAll := func(es []logEntry) []int64 { t.Helper(); return publishAll(t, ctx, b, es) }
	holds := func(id, want int64) { t.Helper(); logHolds(t, ctx, a, id, want) }

	// 300 new records at once: every caller gets its own version, the log
	// holds every one, and they went in batches.
	var es []logEntry
	for id := int64(1); id <= 300; id++ {
		es = append(es, entry(id, 10))
	}
	for i, v := range publishAll(es) {
		if v != 10 {
			t.Fatalf("tmdb:%d answered v%d, want v10", i+1, v)
		}
	}
	for id := int64(1); id <= 300; id++ {
		holds(id, 10)
	}
	if n, m := b.batches.Load(), b.batched.Load(); m != 300 || n >= 300 {
		t.Fatalf("%d entries in %d batches, want all 300 in fewer batches than entries", m, n)
	}

	// Two versions of one record at once, and an older one than the log
	// holds: the log ends at the highest, the older caller learns of it.
	got := publishAll([]logEntry{entry(7, 20), entry(7, 21), entry(8, 5)})
	holds(7, 21)
	holds(8, 10)
	if got[1] != 21 || got[2] != 10 {
		t.Fatalf("answers %v, want v21 for the newer write of tmdb:7 and v10 (the log's) for the old write of tmdb:8", got)
	}

	// Another writer logs tmdb:2 behind a's back: a's batch over 2 and 3 is
	// refused, and each caller logs alone.
	other, _ := testChangeLogOn(t, js, "b")
	if _, err := other.publish(ctx, entry(2, 30)); err != nil {
		t.Fatal(err)
	}
	got = publishAll([]logEntry{entry(2, 25), entry(3, 25)})
	holds(2, 30)
	holds(3, 25)
	if got[0] != 30 || got[1] != 25 {
		t.Fatalf("answers %v after a refused batch, want v30 (the other writer's) and v25", got)
	}

	// Once the batcher stopped, entries go straight to the log.
	stop()
	<-ran
	if v, err := b.publish(ctx, entry(400, 1)); err != nil || v != 1 {
		t.Fatalf("publish after stop: v%d %v", v, err)
	}
	holds(400, 1)
}

func testEntry(id, v int64) logEntry {
	return logEntry{id: id, version: v, at: time.Now(), body: body(id, v)}
}

// publishAll publishes es through b at once and returns the versions each
// caller was answered with.
func publishAll(t *testing.T, ctx context.Context, b *logBatcher, es []logEntry) []int64 {
	t.Helper()
	got := make([]int64, len(es))
	var wg sync.WaitGroup
	for i, e := range es {
		wg.Go(func() {
			v, err := b.publish(ctx, e)
			if err != nil {
				t.Errorf("publish tmdb:%d v%d: %v", e.id, e.version, err)
			}
			got[i] = v
		})
	}
	wg.Wait()
	return got
}

// logHolds fails unless the log holds record id at version want.
func logHolds(t *testing.T, ctx context.Context, l *changeLog, id, want int64) {
	t.Helper()
	e, found, err := l.get(ctx, id)
	if err != nil || !found || e.version != want {
		t.Fatalf("the log holds tmdb:%d at v%d (found %v, %v), want v%d", id, e.version, found, err, want)
	}
}

// Entries logged together (a replay of writes the log lacks, a backfill)
// go in atomic batches of up to maxLogBatch; what a batch cannot take (a
// record's second entry, a record the log holds at a newer version) is
// logged alone, and every entry ends up in the log or overtaken.
func TestLogEntriesInBatches(t *testing.T) {
	t.Parallel()
	a, _ := testChangeLog(t, "a")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n := &Node{changes: a, logBatch: newLogBatcher(a), log: slog.New(slog.DiscardHandler)}
	entry := testEntry
	if _, err := a.publish(ctx, entry(5, 50)); err != nil {
		t.Fatal(err)
	}
	var es []logEntry
	for id := int64(1); id <= 1200; id++ {
		es = append(es, entry(id, 10))
	}
	es = append(es, entry(7, 11)) // a second entry of tmdb:7, newer
	done, added := n.logEntries(ctx, es)
	if len(done) != len(es) {
		t.Fatalf("%d of %d entries done", len(done), len(es))
	}
	if added != 1200 {
		t.Fatalf("%d entries added, want 1,200 (tmdb:5 is overtaken by v50)", added)
	}
	for id, want := range map[int64]int64{1: 10, 5: 50, 7: 11, 600: 10, 1200: 10} {
		logHolds(t, ctx, a, id, want)
	}
	// tmdb:7's second entry waits for a later batch than its first.
	if b, m := n.logBatch.batches.Load(), n.logBatch.batched.Load(); b != 3 || m != 1200 {
		t.Fatalf("%d entries in %d batches, want 1,200 in 3 (up to %d an atomic batch; tmdb:5 alone)", m, b, maxLogBatch)
	}
}
