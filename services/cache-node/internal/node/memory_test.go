package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/cache"
	"github.com/anivault/anivault/pkg/procs"
)

// TestEntrySizeCoversHeap fills the node's cache with records encoded as the
// node encodes them and checks that the bytes the cache counts cover the heap
// the entries really take, without counting much more. Not parallel: it reads
// the process's heap.
func TestEntrySizeCoversHeap(t *testing.T) {
	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	// Sizes of the map's load from high to low: the overhead per entry varies with it.
	for _, n := range []int{6_000, 14_000, 30_000} {
		c, err := cache.New[int64, entry](cache.Config{MaxEntries: n, MaxBytes: 1 << 40})
		if err != nil {
			t.Fatal(err)
		}
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for i := range n {
			rec := events.Record{TMDBID: int64(i + 1), Title: "Attack on Titan", Version: int64(i + 1), UpdatedAt: &at,
				RawData: json.RawMessage(`{"padding":"` + strings.Repeat("x", 100+i%2500) + `"}`)}
			body, err := events.Marshal(&rec)
			if err != nil {
				t.Fatal(err)
			}
			e := entry{version: rec.Version, body: body}
			c.Set(rec.TMDBID, e, e.size())
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		heap := int64(after.HeapAlloc) - int64(before.HeapAlloc)
		counted := c.Bytes()
		t.Logf("%d entries: heap %d bytes, counted %d bytes (%.1f%%); overhead beyond the bodies' allocations %.1f bytes per entry",
			n, heap, counted, 100*float64(counted)/float64(heap), float64(heap-(counted-int64(n)*entryOverhead))/float64(n))
		if counted < heap {
			t.Errorf("%d entries take %d bytes of heap, the cache counts only %d", n, heap, counted)
		}
		if counted > heap+heap/20 {
			t.Errorf("%d entries take %d bytes of heap, the cache counts %d: over 5%% more", n, heap, counted)
		}
		runtime.KeepAlive(c)
	}
}

func TestMemoryBudget(t *testing.T) {
	for _, tc := range []struct {
		budgetMB         int
		cacheMiB, limMiB float64
	}{
		{100, 75, 100}, // the default: a quarter for the rest of the process
		{1000, 750, 1000},
		{16, 12, 36}, // too small for the idle process: the limit leaves 24 MiB beyond the cache
		{1, 0.75, 24.75},
	} {
		if got := float64(cacheBytes(tc.budgetMB)) / (1 << 20); got != tc.cacheMiB {
			t.Errorf("CACHE_MAX_MEMORY_MB=%d: cache bound %v MiB, want %v", tc.budgetMB, got, tc.cacheMiB)
		}
		if got := float64(memoryLimit(tc.budgetMB)) / (1 << 20); got != tc.limMiB {
			t.Errorf("CACHE_MAX_MEMORY_MB=%d: memory limit %v MiB, want %v", tc.budgetMB, got, tc.limMiB)
		}
	}
}

// TestIndexEntrySizeCoversHeap fills a change log index as large as the
// catalogues the budget is for and checks that indexEntryBytes covers what
// each record costs the heap, at every load the map passes through, without
// counting much more than the worst of them. Not parallel: it reads the
// process's heap.
func TestIndexEntrySizeCoversHeap(t *testing.T) {
	worst := 0.0
	// Counts just under and just over the map's doublings, and between.
	for _, n := range []int{7_000, 15_300, 29_000, 57_000, 100_000, 340_000} {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		l := newChangeLog(events.NewSubjects(""), "test", time.Second, nil)
		for i := range n {
			l.observe(int64(i+1), int64(i+1), i%10 == 0, uint64(i+1))
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		per := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(n)
		worst = max(worst, per)
		t.Logf("%d records: %.1f bytes of heap each (counted %d)", n, per, indexEntryBytes)
		if per > indexEntryBytes {
			t.Errorf("%d records of the index take %.1f bytes of heap each, indexEntryBytes counts %d", n, per, indexEntryBytes)
		}
		runtime.KeepAlive(l)
	}
	if indexEntryBytes > worst*1.25 {
		t.Errorf("indexEntryBytes %d is over 25%% more than the worst measured, %.1f", indexEntryBytes, worst)
	}
}

func TestCacheBound(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		budgetMB, indexed int
		bound             int64
		starved           bool
	}{
		{100, 0, 75 * mib, false},
		{100, 100_000, 75*mib - 100_000*indexEntryBytes, false},
		{100, 340_000, 75*mib - 340_000*indexEntryBytes, false},
		// The index would leave the cache under a quarter of its share.
		{100, 1_100_000, 75 * mib / 4, true},
		{4, 70_000, 3 * mib / 4, true},
	} {
		bound, starved := cacheBound(tc.budgetMB, tc.indexed)
		if bound != tc.bound || starved != tc.starved {
			t.Errorf("cacheBound(%d MiB, %d records) = %d, %v; want %d, %v", tc.budgetMB, tc.indexed, bound, starved, tc.bound, tc.starved)
		}
	}
}

// The node shares its memory budget between the cache and the change log's
// index: as the index grows the cache's bound shrinks and the cache evicts
// down to it, and an index too large for the budget leaves the cache a
// quarter of its share and is reported.
func TestCacheShareShrinksAsTheIndexGrows(t *testing.T) {
	c := startCompNode(t, map[string]string{"CACHE_MAX_MEMORY_MB": "4", "CACHE_MAX_SIZE": "100000"})
	share := cacheBytes(4)
	body := []byte(`{"tmdb_id":1,"title":"` + strings.Repeat("x", 2000) + `"}`)
	for id := range int64(1200) {
		c.cacheSet(id+1, entry{version: 1, body: body})
	}
	if got := c.cache.Bytes(); got < share*3/4 {
		t.Fatalf("the cache holds %d bytes, want it near its share %d", got, share)
	}
	waitBound := func(want int64) {
		t.Helper()
		if err := procs.Eventually(10*time.Second, 10*time.Millisecond, func() error {
			if st := c.cache.Stats(); st.MaxBytes != want || st.MemoryUsageBytes > want {
				return fmt.Errorf("cache bound %d holding %d bytes, want the bound %d", st.MaxBytes, st.MemoryUsageBytes, want)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	index := func(from, to int64) {
		for id := from; id < to; id++ {
			c.changes.observe(id, 1, false, 0)
		}
	}

	index(1_000_000, 1_030_000)
	indexed := int64(c.changes.keys())
	waitBound(share - indexed*indexEntryBytes)
	if ev := c.cache.Stats().Evictions; ev == 0 {
		t.Error("the cache evicted nothing to fit its smaller bound")
	}
	if lines := c.logs.with("too small for the change log's index"); len(lines) != 0 {
		t.Errorf("reported starved with %d records indexed: %v", indexed, lines)
	}

	index(1_030_000, 1_070_000)
	waitBound(share / 4)
	if err := procs.Eventually(5*time.Second, 10*time.Millisecond, func() error {
		if len(c.logs.with("too small for the change log's index", "suggested_mb")) != 1 {
			return errors.New("no warning that the budget is too small for the index")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// startTestNode runs a node in this process against a throw-away NATS
// server and database until the test ends, and waits until it serves in
// normal mode.
func startTestNode(t testing.TB, env map[string]string) (n *Node, natsURL string) {
	t.Helper()
	c := startCompNode(t, env)
	return c.Node, c.natsURL
}

// maxSizeBufferMessage is a buffer message as large as group commit makes
// them: 256 writes of about 4 KiB, just under maxBatchBytes.
func maxSizeBufferMessage(t *testing.T, firstID, version int64) []byte {
	t.Helper()
	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	pad := 3900
	for range 10 {
		encs := make([][]byte, 0, 256)
		for i := range 256 {
			id := firstID + int64(i)
			ov := strings.Repeat("Humanity \"fights\" titans.\n\t", pad/2/30)
			rec := events.Record{TMDBID: id, Title: "Attack on Titan", Overview: &ov, Genres: []string{"Animation", "Action"},
				RawData: fmt.Appendf(nil, `{"id":%d,"pad":"%s"}`, id, strings.Repeat(`a\"b\\`, pad/2/6)), Version: version, UpdatedAt: &at}
			body, err := events.Marshal(&rec)
			if err != nil {
				t.Fatal(err)
			}
			enc, err := encodeBufferedWrite(events.BufferedWrite{TMDBID: id, Version: version, AcceptedAt: at, Node: "memory-test"}, body)
			if err != nil {
				t.Fatal(err)
			}
			encs = append(encs, enc)
		}
		msg := encodeBatch(encs)
		if len(msg) <= maxBatchBytes && len(msg) > maxBatchBytes-32<<10 {
			return msg
		}
		pad = pad * (maxBatchBytes - 16<<10) / len(msg)
	}
	t.Fatal("no maximum-size buffer message")
	return nil
}

// TestReplayHeapStaysSmall replays maximum-size buffer messages (1 MiB) with
// the node's own replay against real NATS and PostgreSQL, the collector
// kept close to the live heap, and samples the heap: it may grow by a few
// times the fetch, not more. A replay fetch used to allocate 32 MB whatever
// it held (FetchBytes asks for up to a million messages, and the client
// sizes two channels by that count), and bun's statement for a 1 MiB message
// about 8 MiB more: the node's heap grew to its memory limit during a replay.
// Not parallel: it reads the process's heap, the NATS server included.
func TestReplayHeapStaysSmall(t *testing.T) {
	n, natsURL := startTestNode(t, map[string]string{"REPLAY_BATCH_INTERVAL": "0"})
	// Hold the drain lock: the node's own background drain stays out.
	n.replayer.drainMu.Lock()
	defer n.replayer.drainMu.Unlock()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const msgs, per = 8, 256
	size := 0
	for i := range msgs {
		data := maxSizeBufferMessage(t, int64(1+i*per), 1<<40)
		m := &nats.Msg{Subject: n.subj.Of(events.SubjectBufferWrites), Data: data, Header: nats.Header{}}
		m.Header.Set(events.HeaderWrites, strconv.Itoa(per))
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
		size = max(size, len(data))
	}

	defer debug.SetGCPercent(debug.SetGCPercent(10))
	runtime.GC()
	// The live heap (what the last collection marked) is judged; the heap's
	// objects, garbage not yet collected included, are only reported: how
	// much garbage piles up before a collection ends depends on how busy the
	// machine is (a CI run read 31.4 MiB of objects where an idle one reads
	// 26 to 28).
	sample := []rtmetrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}}
	heap := func() (live, objects uint64) {
		rtmetrics.Read(sample)
		return sample[0].Value.Uint64(), sample[1].Value.Uint64()
	}
	base, baseObjects := heap()
	var peak, peakObjects atomic.Uint64
	stop, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			live, objects := heap()
			if live > peak.Load() {
				peak.Store(live)
			}
			if objects > peakObjects.Load() {
				peakObjects.Store(objects)
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	var total replayCounts
	drained, err := n.replayer.drain(ctx, &total)
	close(stop)
	<-sampled
	if err != nil || !drained {
		t.Fatalf("replay: drained %v, %v", drained, err)
	}
	if total.replayed != msgs*per || total.failed != 0 {
		t.Fatalf("replayed %d, failed %d; want %d", total.replayed, total.failed, msgs*per)
	}
	growth := float64(peak.Load()) - float64(base)
	t.Logf("%d messages of %.0f KiB (%d writes each) replayed; live heap %.1f MiB before, peak %.1f MiB above it (%.1f× a message); heap objects peak %.1f MiB above %.1f MiB",
		msgs, float64(size)/1024, per, float64(base)/(1<<20), growth/(1<<20), growth/float64(size),
		(float64(peakObjects.Load())-float64(baseObjects))/(1<<20), float64(baseObjects)/(1<<20))
	// Measured on 2 cores: 24 to 27.5 MiB of live heap, idle or with three
	// busy loops beside it. About 17 MiB of it is the NATS server in this
	// process: the block buffers of the streams the replay reads and writes
	// (it puts in the change log the writes the log lacks, here all of
	// them), about a message's size for each message replayed. The rest is
	// the fetched, decoded and copied batches of the fetcher and the two
	// appliers. With FetchBytes instead of Fetch
	// (32 MB of channels a fetch) the live heap grew by 67 to 80 MiB.
	if growth > 48*float64(size) {
		t.Errorf("replaying %.0f KiB messages grew the heap by %.1f MiB", float64(size)/1024, growth/(1<<20))
	}
}
