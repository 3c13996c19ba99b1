package node

import (
	"encoding/json"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/cache"
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
