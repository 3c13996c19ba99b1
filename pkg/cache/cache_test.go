package cache_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/anivault/anivault/pkg/cache"
)

func newCache[K comparable, V any](t testing.TB, cfg cache.Config) *cache.Cache[K, V] {
	t.Helper()
	c, err := cache.New[K, V](cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func TestNewValidation(t *testing.T) {
	tests := []struct {
		name    string
		cfg     cache.Config
		wantErr bool
	}{
		{name: "valid", cfg: cache.Config{MaxEntries: 1, MaxBytes: 1}},
		{name: "zero entries", cfg: cache.Config{MaxEntries: 0, MaxBytes: 10}, wantErr: true},
		{name: "negative entries", cfg: cache.Config{MaxEntries: -1, MaxBytes: 10}, wantErr: true},
		{name: "zero bytes", cfg: cache.Config{MaxEntries: 10, MaxBytes: 0}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := cache.New[string, int](tt.cfg)
			if tt.wantErr {
				if !errors.Is(err, cache.ErrInvalidConfig) || c != nil {
					t.Fatalf("New = %v, %v; want nil, ErrInvalidConfig", c, err)
				}
				return
			}
			if err != nil || c == nil {
				t.Fatalf("New = %v, %v", c, err)
			}
		})
	}
}

func TestBoundByEntries(t *testing.T) {
	c := newCache[int, string](t, cache.Config{MaxEntries: 1000, MaxBytes: 1 << 30})
	for i := range 1500 {
		if !c.Set(i, fmt.Sprint(i), 10) {
			t.Fatalf("Set(%d) = false", i)
		}
	}
	if got := c.Len(); got != 1000 {
		t.Fatalf("Len = %d, want 1000", got)
	}
	if got := c.Bytes(); got != 10_000 {
		t.Fatalf("Bytes = %d, want 10000", got)
	}
	st := c.Stats()
	if st.Evictions != 500 {
		t.Fatalf("Evictions = %d, want 500", st.Evictions)
	}
	for _, k := range []int{0, 1, 250, 499} {
		if _, ok := c.Peek(k); ok {
			t.Fatalf("old key %d still present", k)
		}
	}
	for _, k := range []int{500, 1000, 1499} {
		if v, ok := c.Peek(k); !ok || v != fmt.Sprint(k) {
			t.Fatalf("Peek(%d) = %q, %v; want present", k, v, ok)
		}
	}
}

func TestBoundByBytes(t *testing.T) {
	const valueSize = 100 << 10
	c := newCache[int, []byte](t, cache.Config{MaxEntries: 1000, MaxBytes: 1 << 20})
	for i := range 50 {
		v := make([]byte, valueSize)
		if !c.Set(i, v, int64(len(v))) {
			t.Fatalf("Set(%d) = false", i)
		}
		if c.Bytes() > 1<<20 {
			t.Fatalf("after Set(%d) Bytes = %d > MaxBytes", i, c.Bytes())
		}
	}
	if got := c.Len(); got != 10 {
		t.Fatalf("Len = %d, want 10 (1 MiB / 100 KiB)", got)
	}
	if got := c.Bytes(); got != 10*valueSize {
		t.Fatalf("Bytes = %d, want %d", got, 10*valueSize)
	}
	if got := c.Stats().Evictions; got != 40 {
		t.Fatalf("Evictions = %d, want 40", got)
	}
	if got, want := c.Keys(), []int{40, 41, 42, 43, 44, 45, 46, 47, 48, 49}; !slices.Equal(got, want) {
		t.Fatalf("Keys = %v, want %v", got, want)
	}
}

// SetMaxBytes shrinks the bound at once (least recently used first, counted
// as evictions) and later Sets respect it; growing it again evicts nothing.
func TestSetMaxBytes(t *testing.T) {
	c := newCache[int, string](t, cache.Config{MaxEntries: 100, MaxBytes: 1000})
	for i := range 10 {
		c.Set(i, "v", 100)
	}
	c.Get(0) // the most recently used now
	if err := c.SetMaxBytes(450); err != nil {
		t.Fatal(err)
	}
	if got, want := c.Keys(), []int{7, 8, 9, 0}; !slices.Equal(got, want) {
		t.Fatalf("Keys = %v, want %v", got, want)
	}
	if st := c.Stats(); st.MemoryUsageBytes != 400 || st.Evictions != 6 || st.MaxBytes != 450 {
		t.Fatalf("Stats = %+v, want 400 bytes, 6 evictions, max 450", st)
	}
	c.Set(10, "v", 100)
	if got := c.Bytes(); got != 400 {
		t.Fatalf("Bytes = %d after a Set under the new bound, want 400", got)
	}
	if c.Set(11, "v", 451) {
		t.Fatal("an entry over the new bound was stored")
	}
	if err := c.SetMaxBytes(2000); err != nil {
		t.Fatal(err)
	}
	if st := c.Stats(); st.CacheSize != 4 || st.Evictions != 7 {
		t.Fatalf("Stats = %+v after growing the bound, want 4 entries and no more evictions", st)
	}
	if err := c.SetMaxBytes(0); !errors.Is(err, cache.ErrInvalidConfig) {
		t.Fatalf("SetMaxBytes(0) = %v, want ErrInvalidConfig", err)
	}
}

func TestGetUpdatesRecencyPeekDoesNot(t *testing.T) {
	c := newCache[string, int](t, cache.Config{MaxEntries: 3, MaxBytes: 100})
	c.Set("a", 1, 1)
	c.Set("b", 2, 1)
	c.Set("c", 3, 1)
	if _, ok := c.Get("a"); !ok { // a becomes most recent; b is now oldest
		t.Fatal("Get(a) missed")
	}
	if _, ok := c.Peek("b"); !ok { // must not rescue b
		t.Fatal("Peek(b) missed")
	}
	c.Set("d", 4, 1)
	if _, ok := c.Peek("b"); ok {
		t.Fatal("b survived although it was least recently used")
	}
	if got, want := c.Keys(), []string{"c", "a", "d"}; !slices.Equal(got, want) {
		t.Fatalf("Keys = %v, want %v", got, want)
	}
	st := c.Stats()
	if st.Hits != 1 || st.Misses != 0 || st.TotalRequests != 1 {
		t.Fatalf("Peek must not count: %+v", st)
	}
}

func TestSetIf(t *testing.T) {
	type rec struct {
		Version int64
		Body    string
	}
	newer := func(v int64) func(old rec) bool {
		return func(old rec) bool { return v > old.Version }
	}
	tests := []struct {
		name      string
		initial   *rec
		set       rec
		wantSet   bool
		wantValue rec
	}{
		{name: "absent key stored", initial: nil, set: rec{5, "x"}, wantSet: true, wantValue: rec{5, "x"}},
		{name: "newer replaces", initial: &rec{5, "old"}, set: rec{6, "new"}, wantSet: true, wantValue: rec{6, "new"}},
		{name: "older kept out", initial: &rec{5, "old"}, set: rec{4, "stale"}, wantSet: false, wantValue: rec{5, "old"}},
		{name: "equal kept out", initial: &rec{5, "old"}, set: rec{5, "dup"}, wantSet: false, wantValue: rec{5, "old"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCache[string, rec](t, cache.Config{MaxEntries: 10, MaxBytes: 1000})
			if tt.initial != nil {
				c.Set("k", *tt.initial, 10)
			}
			called := false
			got := c.SetIf("k", tt.set, 20, func(old rec) bool {
				called = true
				return newer(tt.set.Version)(old)
			})
			if got != tt.wantSet {
				t.Fatalf("SetIf = %v, want %v", got, tt.wantSet)
			}
			if called != (tt.initial != nil) {
				t.Fatalf("replace called = %v, want %v", called, tt.initial != nil)
			}
			v, ok := c.Peek("k")
			if !ok || v != tt.wantValue {
				t.Fatalf("Peek = %+v, %v; want %+v", v, ok, tt.wantValue)
			}
			wantBytes := int64(10)
			if tt.wantSet {
				wantBytes = 20
			}
			if b := c.Bytes(); b != wantBytes {
				t.Fatalf("Bytes = %d, want %d", b, wantBytes)
			}
		})
	}
}

func TestSetIfRejectedKeepsRecency(t *testing.T) {
	c := newCache[string, int](t, cache.Config{MaxEntries: 2, MaxBytes: 100})
	c.Set("a", 1, 1)
	c.Set("b", 2, 1)
	if c.SetIf("a", 0, 1, func(int) bool { return false }) {
		t.Fatal("SetIf accepted a rejected value")
	}
	c.Set("c", 3, 1) // a is still the oldest and goes
	if _, ok := c.Peek("a"); ok {
		t.Fatal("rejected SetIf refreshed a's recency")
	}
}

func TestReplaceAdjustsBytes(t *testing.T) {
	tests := []struct {
		name      string
		sizes     []int64
		wantBytes int64
	}{
		{name: "grow", sizes: []int64{10, 30}, wantBytes: 30},
		{name: "shrink", sizes: []int64{30, 10}, wantBytes: 10},
		{name: "same", sizes: []int64{20, 20, 20}, wantBytes: 20},
		{name: "negative counts as zero", sizes: []int64{20, -5}, wantBytes: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCache[string, int](t, cache.Config{MaxEntries: 10, MaxBytes: 100})
			c.Set("other", 0, 7)
			for i, s := range tt.sizes {
				c.Set("k", i, s)
			}
			if got := c.Bytes(); got != tt.wantBytes+7 {
				t.Fatalf("Bytes = %d, want %d", got, tt.wantBytes+7)
			}
			if got := c.Len(); got != 2 {
				t.Fatalf("Len = %d, want 2", got)
			}
			if !c.Remove("k") || c.Remove("k") {
				t.Fatal("Remove should report presence once")
			}
			if got := c.Bytes(); got != 7 {
				t.Fatalf("Bytes after Remove = %d, want 7", got)
			}
		})
	}
}

func TestReplacementGrowthEvictsOthersNotItself(t *testing.T) {
	c := newCache[string, int](t, cache.Config{MaxEntries: 10, MaxBytes: 100})
	c.Set("a", 1, 40)
	c.Set("b", 2, 40)
	c.Set("a", 3, 90) // a grows; b must go, a must stay
	if v, ok := c.Peek("a"); !ok || v != 3 {
		t.Fatalf("Peek(a) = %d, %v", v, ok)
	}
	if _, ok := c.Peek("b"); ok {
		t.Fatal("b should have been evicted")
	}
	if got := c.Bytes(); got != 90 {
		t.Fatalf("Bytes = %d, want 90", got)
	}
}

func TestOversizeEntryRejected(t *testing.T) {
	c := newCache[string, string](t, cache.Config{MaxEntries: 10, MaxBytes: 100})
	c.Set("small", "s", 10)
	c.Set("big", "old", 50)
	if c.Set("big", "huge", 101) {
		t.Fatal("Set of an entry larger than MaxBytes returned true")
	}
	if _, ok := c.Peek("big"); ok {
		t.Fatal("stale value kept after rejected oversize replacement")
	}
	if c.SetIf("new", "huge", 1000, func(string) bool { return true }) {
		t.Fatal("SetIf of oversize entry returned true")
	}
	if _, ok := c.Peek("small"); !ok {
		t.Fatal("oversize Set evicted an unrelated entry")
	}
	if got := c.Bytes(); got != 10 {
		t.Fatalf("Bytes = %d, want 10", got)
	}
	if !c.Set("exact", "e", 90) {
		t.Fatal("entry that exactly fits was rejected")
	}
	if got := c.Bytes(); got != 100 {
		t.Fatalf("Bytes = %d, want 100", got)
	}
}

func TestStats(t *testing.T) {
	c := newCache[string, int](t, cache.Config{MaxEntries: 2, MaxBytes: 50})
	if got := c.Stats().HitRate; got != 0 {
		t.Fatalf("empty HitRate = %v, want 0", got)
	}
	c.Set("a", 1, 5)
	c.Get("a")
	c.Get("a")
	c.Get("a")
	c.Get("missing")
	c.Set("b", 2, 5)
	c.Set("c", 3, 5)
	want := cache.Stats{
		Hits: 3, Misses: 1, Evictions: 1, TotalRequests: 4, CacheSize: 2,
		MemoryUsageBytes: 10, HitRate: 0.75, MaxEntries: 2, MaxBytes: 50,
	}
	if got := c.Stats(); got != want {
		t.Fatalf("Stats = %+v, want %+v", got, want)
	}

	b, err := json.Marshal(want)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("unmarshal: %v", err)
	}
	for _, k := range []string{"hits", "misses", "evictions", "total_requests", "cache_size", "memory_usage_bytes", "hit_rate", "max_entries", "max_bytes"} {
		if _, ok := m[k]; !ok {
			t.Fatalf("JSON %s lacks key %q", b, k)
		}
	}
	if len(m) != 9 {
		t.Fatalf("JSON has %d keys, want 9: %s", len(m), b)
	}
}

func TestRangeSnapshot(t *testing.T) {
	c := newCache[int, int](t, cache.Config{MaxEntries: 10, MaxBytes: 100})
	for i := range 5 {
		c.Set(i, i*i, 1)
	}
	var keys []int
	c.Range(func(k, v int) bool {
		if v != k*k {
			t.Fatalf("Range(%d) value %d", k, v)
		}
		// Using the cache inside fn must not deadlock.
		c.Remove(k)
		keys = append(keys, k)
		return k < 3
	})
	if want := []int{0, 1, 2, 3}; !slices.Equal(keys, want) {
		t.Fatalf("Range visited %v, want %v", keys, want)
	}
	if got := c.Len(); got != 1 {
		t.Fatalf("Len = %d, want 1", got)
	}
	c.Purge()
	if c.Len() != 0 || c.Bytes() != 0 {
		t.Fatalf("after Purge Len=%d Bytes=%d", c.Len(), c.Bytes())
	}
}

func TestConcurrentUse(t *testing.T) {
	const (
		goroutines = 8
		ops        = 6_000
		maxEntries = 100
		maxBytes   = 1_000
	)
	// Each value records the size it was stored with, so the byte
	// accounting can be checked against the entries afterwards.
	type val struct{ seq, size int64 }
	c := newCache[int, val](t, cache.Config{MaxEntries: maxEntries, MaxBytes: maxBytes})
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ops {
				k := (g*31 + i) % 300
				switch i % 6 {
				case 0, 1:
					size := int64(i % 20)
					c.Set(k, val{int64(i), size}, size)
				case 2:
					c.SetIf(k, val{int64(i), 5}, 5, func(old val) bool { return int64(i) > old.seq })
				case 3:
					c.Get(k)
				case 4:
					c.Peek(k)
				case 5:
					if i%60 == 5 {
						c.Remove(k)
					} else {
						_ = c.Stats()
					}
				}
			}
		}()
	}
	wg.Wait()
	st := c.Stats()
	if st.CacheSize > maxEntries || st.MemoryUsageBytes > maxBytes || st.MemoryUsageBytes < 0 {
		t.Fatalf("bounds violated: %+v", st)
	}
	var sum int64
	n := 0
	c.Range(func(_ int, v val) bool {
		n++
		sum += v.size
		return true
	})
	if n != st.CacheSize {
		t.Fatalf("Range saw %d entries, Stats says %d", n, st.CacheSize)
	}
	if sum != st.MemoryUsageBytes {
		t.Fatalf("entries account for %d bytes, Stats says %d", sum, st.MemoryUsageBytes)
	}
	if want := uint64(goroutines * ops / 6); st.TotalRequests != want {
		t.Fatalf("TotalRequests = %d, want %d", st.TotalRequests, want)
	}
}

func BenchmarkGet(b *testing.B) {
	const keys = 10_000
	c := newCache[int, []byte](b, cache.Config{MaxEntries: keys, MaxBytes: 1 << 30})
	v := make([]byte, 64)
	for i := range keys {
		c.Set(i, v, int64(len(v)))
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, ok := c.Get(i % keys); !ok {
				b.Error("miss")
				return
			}
			i++
		}
	})
}

func BenchmarkSet(b *testing.B) {
	c := newCache[int, []byte](b, cache.Config{MaxEntries: 10_000, MaxBytes: 1 << 20})
	v := make([]byte, 256)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		c.Set(i, v, int64(len(v))) // evicts once full (by bytes after 4096 entries)
		i++
	}
}
