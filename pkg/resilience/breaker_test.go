package resilience_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/anivault/anivault/pkg/resilience"
)

// syncBuffer is a bytes.Buffer safe for the concurrent writes a slog
// handler may make.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newBreaker(t testing.TB, cfg resilience.BreakerConfig) (*resilience.Breaker, *syncBuffer) {
	t.Helper()
	buf := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b, err := resilience.NewBreaker(cfg, log)
	if err != nil {
		t.Fatalf("NewBreaker: %v", err)
	}
	return b, buf
}

func waitForState(t *testing.T, b *resilience.Breaker, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := b.State()
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("breaker state %q, want %q within 5s", got, want)
		}
		time.Sleep(time.Millisecond) // polling interval, not synchronisation
	}
}

func TestNewBreakerValidation(t *testing.T) {
	tests := []struct {
		name    string
		cfg     resilience.BreakerConfig
		wantErr bool
	}{
		{name: "defaults", cfg: resilience.BreakerConfig{Name: "db"}},
		{name: "explicit", cfg: resilience.BreakerConfig{Name: "db", FailureThreshold: 2, OpenTimeout: time.Second, HalfOpenMaxRequests: 3}},
		{name: "missing name", cfg: resilience.BreakerConfig{}, wantErr: true},
		{name: "negative timeout", cfg: resilience.BreakerConfig{Name: "db", OpenTimeout: -time.Second}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := resilience.NewBreaker(tt.cfg, nil)
			if tt.wantErr {
				if !errors.Is(err, resilience.ErrInvalidConfig) {
					t.Fatalf("NewBreaker error = %v, want ErrInvalidConfig", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewBreaker: %v", err)
			}
			if got := b.State(); got != resilience.StateClosed {
				t.Fatalf("new breaker state %q, want closed", got)
			}
		})
	}
}

func TestBreakerDefaultThresholdIsFive(t *testing.T) {
	b, _ := newBreaker(t, resilience.BreakerConfig{Name: "db"})
	for i := range 4 {
		_ = b.Execute(func() error { return io.EOF })
		if got := b.State(); got != resilience.StateClosed {
			t.Fatalf("after %d failures state %q, want closed", i+1, got)
		}
	}
	_ = b.Execute(func() error { return io.EOF })
	if got := b.State(); got != resilience.StateOpen {
		t.Fatalf("after 5 failures state %q, want open", got)
	}
}

func TestBreakerOpensOnlyOnTransientFailures(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		calls    int
		wantOpen bool
	}{
		{name: "transient EOF", err: io.EOF, calls: 3, wantOpen: true},
		{name: "transient pg admin_shutdown", err: fakePGError{"57P01"}, calls: 3, wantOpen: true},
		{name: "constraint violations", err: fakePGError{"23505"}, calls: 100, wantOpen: false},
		{name: "bad input", err: errors.New("invalid anime id"), calls: 100, wantOpen: false},
		{name: "context canceled", err: context.Canceled, calls: 100, wantOpen: false},
		{name: "below threshold", err: io.EOF, calls: 2, wantOpen: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, _ := newBreaker(t, resilience.BreakerConfig{Name: "db", FailureThreshold: 3, OpenTimeout: time.Hour})
			for i := range tt.calls {
				if err := b.Execute(func() error { return tt.err }); !errors.Is(err, tt.err) {
					t.Fatalf("call %d: Execute = %v, want fn's error %v", i, err, tt.err)
				}
			}
			want := resilience.StateClosed
			if tt.wantOpen {
				want = resilience.StateOpen
			}
			if got := b.State(); got != want {
				t.Fatalf("state %q, want %q", got, want)
			}
			ran := false
			err := b.Execute(func() error { ran = true; return nil })
			if tt.wantOpen {
				if ran {
					t.Fatal("open breaker ran fn")
				}
				if !errors.Is(err, resilience.ErrUnavailable) || !errors.Is(err, gobreaker.ErrOpenState) {
					t.Fatalf("open breaker returned %v, want ErrUnavailable wrapping ErrOpenState", err)
				}
				if !resilience.IsUnavailable(err) {
					t.Fatal("IsUnavailable(open breaker error) = false")
				}
				if resilience.IsTransient(err) {
					t.Fatal("IsTransient(open breaker error) = true; retrying it would defeat the breaker")
				}
			} else if !ran || err != nil {
				t.Fatalf("closed breaker: ran=%v err=%v", ran, err)
			}
		})
	}
}

func TestBreakerSuccessResetsConsecutiveFailures(t *testing.T) {
	b, _ := newBreaker(t, resilience.BreakerConfig{Name: "db", FailureThreshold: 3, OpenTimeout: time.Hour})
	for range 10 {
		_ = b.Execute(func() error { return io.EOF })
		_ = b.Execute(func() error { return io.EOF })
		_ = b.Execute(func() error { return nil })
	}
	if got := b.State(); got != resilience.StateClosed {
		t.Fatalf("state %q, want closed", got)
	}
}

func TestBreakerLifecycleLogsAndCounts(t *testing.T) {
	var (
		mu      sync.Mutex
		changes []string
	)
	b, logs := newBreaker(t, resilience.BreakerConfig{
		Name:             "postgres",
		FailureThreshold: 2,
		OpenTimeout:      20 * time.Millisecond,
		OnStateChange: func(from, to string) {
			mu.Lock()
			defer mu.Unlock()
			changes = append(changes, from+"->"+to)
		},
	})

	// closed -> open
	// Intermediate "open" states are checked through the OnStateChange
	// sequence below: asserting State() == "open" right away could observe
	// half_open if the test is descheduled for longer than OpenTimeout.
	for range 2 {
		_ = b.Execute(func() error { return io.ErrUnexpectedEOF })
	}
	// open -> half_open after OpenTimeout
	waitForState(t, b, resilience.StateHalfOpen)
	// half_open -> open on a failed probe
	if err := b.Execute(func() error { return io.EOF }); !errors.Is(err, io.EOF) {
		t.Fatalf("probe returned %v, want io.EOF", err)
	}
	// open -> half_open -> closed on a successful probe
	waitForState(t, b, resilience.StateHalfOpen)
	if err := b.Execute(func() error { return nil }); err != nil {
		t.Fatalf("probe: %v", err)
	}
	if got := b.State(); got != resilience.StateClosed {
		t.Fatalf("after good probe state %q, want closed", got)
	}

	wantCounts := map[string]uint64{
		"closed->open":      1,
		"open->half_open":   2,
		"half_open->open":   1,
		"half_open->closed": 1,
	}
	gotCounts := b.Transitions()
	if len(gotCounts) != len(wantCounts) {
		t.Fatalf("Transitions() = %v, want %v", gotCounts, wantCounts)
	}
	for k, v := range wantCounts {
		if gotCounts[k] != v {
			t.Fatalf("Transitions()[%q] = %d, want %d (all: %v)", k, gotCounts[k], v, gotCounts)
		}
	}

	mu.Lock()
	gotChanges := strings.Join(changes, ",")
	mu.Unlock()
	if want := "closed->open,open->half_open,half_open->open,open->half_open,half_open->closed"; gotChanges != want {
		t.Fatalf("OnStateChange sequence %q, want %q", gotChanges, want)
	}

	out := logs.String()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	wantLines := []struct {
		level, msg string
	}{
		{"WARN", "Circuit breaker state changed: closed -> open"},
		{"INFO", "Circuit breaker state changed: open -> half_open"},
		{"WARN", "Circuit breaker state changed: half_open -> open"},
		{"INFO", "Circuit breaker state changed: open -> half_open"},
		{"INFO", "Circuit breaker state changed: half_open -> closed"},
	}
	if len(lines) != len(wantLines) {
		t.Fatalf("got %d log lines, want %d:\n%s", len(lines), len(wantLines), out)
	}
	for i, w := range wantLines {
		for _, part := range []string{"level=" + w.level, fmt.Sprintf("msg=%q", w.msg), "breaker=postgres"} {
			if !strings.Contains(lines[i], part) {
				t.Fatalf("log line %d %q lacks %q", i, lines[i], part)
			}
		}
	}
}

func TestBreakerHalfOpenLimitsProbes(t *testing.T) {
	b, _ := newBreaker(t, resilience.BreakerConfig{Name: "nats", FailureThreshold: 1, OpenTimeout: 10 * time.Millisecond})
	_ = b.Execute(func() error { return io.EOF })
	waitForState(t, b, resilience.StateHalfOpen)

	started := make(chan struct{})
	release := make(chan struct{})
	probeDone := make(chan error, 1)
	go func() {
		probeDone <- b.Execute(func() error {
			close(started)
			<-release
			return nil
		})
	}()
	<-started
	err := b.Execute(func() error { return nil })
	if !errors.Is(err, resilience.ErrUnavailable) || !errors.Is(err, gobreaker.ErrTooManyRequests) {
		t.Fatalf("second probe returned %v, want ErrUnavailable wrapping ErrTooManyRequests", err)
	}
	close(release)
	if err := <-probeDone; err != nil {
		t.Fatalf("probe: %v", err)
	}
	if got := b.State(); got != resilience.StateClosed {
		t.Fatalf("state %q, want closed", got)
	}
}

func TestBreakerRepanicsWithoutTripping(t *testing.T) {
	b, _ := newBreaker(t, resilience.BreakerConfig{Name: "db", FailureThreshold: 1, OpenTimeout: time.Hour})
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("panic was swallowed")
			}
		}()
		_ = b.Execute(func() error { panic("boom") })
	}()
	// gobreaker reports the panic as a plain error, which is not transient:
	// a panic is a bug in the caller, not an outage of the dependency.
	if got := b.State(); got != resilience.StateClosed {
		t.Fatalf("state %q, want closed", got)
	}
}

func BenchmarkBreakerExecute(b *testing.B) {
	br, _ := newBreaker(b, resilience.BreakerConfig{Name: "bench"})
	fn := func() error { return nil }
	b.ReportAllocs()
	for b.Loop() {
		if err := br.Execute(fn); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBreakerExecuteParallel(b *testing.B) {
	br, _ := newBreaker(b, resilience.BreakerConfig{Name: "bench"})
	fn := func() error { return nil }
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := br.Execute(fn); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
