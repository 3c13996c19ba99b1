package hlc_test

import (
	"sync"
	"testing"
	"time"

	"github.com/anivault/anivault/pkg/hlc"
)

// fakeNow is a manually driven wall clock for deterministic tests.
type fakeNow struct {
	mu sync.Mutex
	t  time.Time
}

func (f *fakeNow) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeNow) Set(t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t = t
}

func TestEpoch(t *testing.T) {
	want := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	if got := hlc.Epoch(); !got.Equal(want) {
		t.Fatalf("Epoch() = %v, want %v", got, want)
	}
	if got := hlc.Physical(0); !got.Equal(want) {
		t.Fatalf("Physical(0) = %v, want %v", got, want)
	}
	if hlc.MaxVersion != 1<<53-1 {
		t.Fatalf("MaxVersion = %d", hlc.MaxVersion)
	}
}

func TestNowConcurrentMonotonicUnique(t *testing.T) {
	const (
		goroutines = 8
		perG       = 10_000
	)
	c := hlc.New("node-a", nil)
	results := make([][]int64, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := make([]int64, perG)
			for i := range out {
				out[i] = c.Now()
			}
			results[g] = out
		}()
	}
	wg.Wait()

	seen := make(map[int64]struct{}, goroutines*perG)
	for g, out := range results {
		for i, v := range out {
			if v <= 0 || v > hlc.MaxVersion {
				t.Fatalf("goroutine %d call %d: version %d out of (0, 2^53)", g, i, v)
			}
			if i > 0 && v <= out[i-1] {
				t.Fatalf("goroutine %d call %d: %d not greater than previous %d", g, i, v, out[i-1])
			}
			if _, dup := seen[v]; dup {
				t.Fatalf("duplicate version %d", v)
			}
			seen[v] = struct{}{}
		}
	}
	if len(seen) != goroutines*perG {
		t.Fatalf("got %d unique versions, want %d", len(seen), goroutines*perG)
	}
	if node := hlc.NodeTag("node-a"); hlc.Node(c.Now()) != node {
		t.Fatalf("version does not carry node tag %d", node)
	}
}

func TestObserve(t *testing.T) {
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		observed func(local int64) int64
	}{
		{name: "future within drift", observed: func(int64) int64 { return hlc.FromStream(base.Add(59 * time.Minute)) }},
		{name: "same ms higher logical", observed: func(local int64) int64 { return local | 0xFFF }},
		{name: "same ms max counter other node", observed: func(local int64) int64 { return local&^0xFFF | 0xF00 }},
		{name: "past value is harmless", observed: func(local int64) int64 { return local - 1<<20 }},
		{name: "stream version same ms", observed: func(int64) int64 { return hlc.FromStream(base.Add(999_999 * time.Nanosecond)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := &fakeNow{t: base}
			c := hlc.New("node-a", fake.Now)
			local := c.Now()
			v := tt.observed(local)
			c.Observe(v)
			next := c.Now()
			if next <= v {
				t.Fatalf("Now() = %d after Observe(%d), want greater", next, v)
			}
			if next <= local {
				t.Fatalf("Now() = %d not greater than earlier %d", next, local)
			}
			if next > hlc.MaxVersion {
				t.Fatalf("Now() = %d exceeds MaxVersion", next)
			}
		})
	}
}

func TestObserveIgnoresInvalid(t *testing.T) {
	fake := &fakeNow{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	c := hlc.New("n", fake.Now)
	first := c.Now()
	for _, v := range []int64{-1, hlc.MaxVersion + 1, hlc.MaxVersion - 1, hlc.FromStream(fake.t.Add(2 * hlc.MaxDrift))} {
		if c.Observe(v) {
			t.Errorf("Observe(%d) accepted a version beyond the drift bound", v)
		}
	}
	if got := c.Last(); got != first {
		t.Fatalf("Last() = %d after invalid Observe, want %d", got, first)
	}
}

func TestDifferentNodesDiffer(t *testing.T) {
	// Pick two ids with different tags rather than assuming the hash.
	a, b := "node-a", "node-b"
	if hlc.NodeTag(a) == hlc.NodeTag(b) {
		t.Fatalf("test ids collide: %q and %q both tag %d", a, b, hlc.NodeTag(a))
	}
	fake := &fakeNow{t: time.Date(2026, 5, 5, 5, 5, 5, 0, time.UTC)}
	ca := hlc.New(a, fake.Now)
	cb := hlc.New(b, fake.Now)
	for i := range 100 {
		va, vb := ca.Now(), cb.Now()
		if va == vb {
			t.Fatalf("call %d: both clocks produced %d", i, va)
		}
		if hlc.Node(va) != hlc.NodeTag(a) || hlc.Node(vb) != hlc.NodeTag(b) {
			t.Fatalf("call %d: node tags %d/%d, want %d/%d", i, hlc.Node(va), hlc.Node(vb), hlc.NodeTag(a), hlc.NodeTag(b))
		}
	}
}

func TestNodeTag(t *testing.T) {
	tests := []struct {
		name string
		id   string
		want uint8
	}{
		// FNV-1a 32-bit offset basis 0x811c9dc5 -> low byte 0xc5.
		{name: "empty", id: "", want: 0xc5},
		// FNV-1a("a") = 0xe40c292c.
		{name: "a", id: "a", want: 0x2c},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := hlc.NodeTag(tt.id); got != tt.want {
				t.Fatalf("NodeTag(%q) = %#x, want %#x", tt.id, got, tt.want)
			}
		})
	}
}

func TestCounterOverflowBorrowsNextMillisecond(t *testing.T) {
	ts := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	fake := &fakeNow{t: ts}
	c := hlc.New("n", fake.Now)
	var prev int64
	for i := range 40 {
		v := c.Now()
		if v <= prev {
			t.Fatalf("call %d: %d not greater than %d", i, v, prev)
		}
		wantMs := ts.Add(time.Duration(i/16) * time.Millisecond)
		if got := hlc.Physical(v); !got.Equal(wantMs) {
			t.Fatalf("call %d: Physical = %v, want %v", i, got, wantMs)
		}
		if counter := (v >> hlc.NodeBits) & 0xF; counter != int64(i%16) {
			t.Fatalf("call %d: counter %d, want %d", i, counter, i%16)
		}
		prev = v
	}
}

func TestClockGoingBackwards(t *testing.T) {
	start := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	fake := &fakeNow{t: start}
	c := hlc.New("n", fake.Now)
	steps := []time.Duration{0, 5 * time.Millisecond, -time.Second, -time.Hour, 2 * time.Millisecond, -24 * 365 * time.Hour * 3}
	var prev int64
	for i, d := range steps {
		fake.Set(start.Add(d))
		for j := range 20 {
			v := c.Now()
			if v <= prev {
				t.Fatalf("step %d call %d: %d not greater than %d (wall %v)", i, j, v, prev, start.Add(d))
			}
			prev = v
		}
	}
}

func TestFromStream(t *testing.T) {
	tests := []struct {
		name string
		ts   time.Time
		want int64
	}{
		{name: "epoch", ts: hlc.Epoch(), want: 0},
		{name: "before epoch", ts: hlc.Epoch().Add(-time.Hour), want: 0},
		{name: "one ms", ts: hlc.Epoch().Add(time.Millisecond), want: 1 << 12},
		{name: "half ms", ts: hlc.Epoch().Add(500 * time.Microsecond), want: 2048},
		{name: "last ns of ms", ts: hlc.Epoch().Add(999_999 * time.Nanosecond), want: 4095},
		{name: "first fraction step", ts: hlc.Epoch().Add(245 * time.Nanosecond), want: 1},
		{name: "below first fraction step", ts: hlc.Epoch().Add(244 * time.Nanosecond), want: 0},
		{name: "beyond version space", ts: hlc.Epoch().Add(100 * 365 * 24 * time.Hour), want: hlc.MaxVersion},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := hlc.FromStream(tt.ts); got != tt.want {
				t.Fatalf("FromStream(%v) = %d, want %d", tt.ts, got, tt.want)
			}
		})
	}
}

func TestFromStreamMonotoneAndRoundTrip(t *testing.T) {
	ts := time.Date(2026, 2, 3, 4, 5, 6, 123_456_789, time.FixedZone("X", 3600))
	prev := hlc.FromStream(ts)
	for i := range 20_000 {
		ts = ts.Add(300 * time.Nanosecond)
		v := hlc.FromStream(ts)
		if v <= prev {
			t.Fatalf("step %d: FromStream(%v) = %d not greater than %d", i, ts, v, prev)
		}
		if v > hlc.MaxVersion {
			t.Fatalf("step %d: %d exceeds MaxVersion", i, v)
		}
		if got, want := hlc.Physical(v), ts.Truncate(time.Millisecond); !got.Equal(want) {
			t.Fatalf("step %d: Physical = %v, want %v", i, got, want)
		}
		if again := hlc.FromStream(ts); again != v {
			t.Fatalf("step %d: not deterministic: %d vs %d", i, again, v)
		}
		prev = v
	}
}

func TestObservedStreamVersionOrdersLocalWrites(t *testing.T) {
	// A node that applies a stream message and then writes locally must
	// produce a version newer than the message's, even with a lagging clock.
	msgTime := time.Date(2026, 7, 1, 0, 0, 1, 0, time.UTC)
	fake := &fakeNow{t: msgTime.Add(-2 * time.Second)}
	c := hlc.New("lagging", fake.Now)
	sv := hlc.FromStream(msgTime)
	c.Observe(sv)
	if v := c.Now(); v <= sv {
		t.Fatalf("Now() = %d, want > stream version %d", v, sv)
	}
}

func BenchmarkNow(b *testing.B) {
	c := hlc.New("bench", nil)
	b.ReportAllocs()
	for b.Loop() {
		c.Now()
	}
}

func BenchmarkNowParallel(b *testing.B) {
	c := hlc.New("bench", nil)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.Now()
		}
	})
}

func BenchmarkFromStream(b *testing.B) {
	ts := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		hlc.FromStream(ts)
	}
}
