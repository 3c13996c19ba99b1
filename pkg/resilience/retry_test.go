package resilience_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/anivault/anivault/pkg/resilience"
)

func newRetrier(t *testing.T, cfg resilience.RetryConfig) *resilience.Retrier {
	t.Helper()
	r, err := resilience.NewRetrier(cfg)
	if err != nil {
		t.Fatalf("NewRetrier: %v", err)
	}
	return r
}

// fastRetry keeps real sleeps in the microsecond range.
var fastRetry = resilience.RetryConfig{MaxAttempts: 3, BaseDelay: 50 * time.Microsecond, MaxDelay: 200 * time.Microsecond}

func TestNewRetrierValidation(t *testing.T) {
	tests := []struct {
		name    string
		cfg     resilience.RetryConfig
		want    resilience.RetryConfig
		wantErr bool
	}{
		{name: "defaults", cfg: resilience.RetryConfig{}, want: resilience.RetryConfig{MaxAttempts: 3, BaseDelay: 50 * time.Millisecond, MaxDelay: time.Second}},
		{name: "explicit", cfg: resilience.RetryConfig{MaxAttempts: 1, BaseDelay: time.Millisecond, MaxDelay: time.Millisecond}, want: resilience.RetryConfig{MaxAttempts: 1, BaseDelay: time.Millisecond, MaxDelay: time.Millisecond}},
		{name: "negative attempts", cfg: resilience.RetryConfig{MaxAttempts: -1}, wantErr: true},
		{name: "negative base", cfg: resilience.RetryConfig{BaseDelay: -1}, wantErr: true},
		{name: "base above max", cfg: resilience.RetryConfig{BaseDelay: 2 * time.Second, MaxDelay: time.Second}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := resilience.NewRetrier(tt.cfg)
			if tt.wantErr {
				if !errors.Is(err, resilience.ErrInvalidConfig) {
					t.Fatalf("NewRetrier error = %v, want ErrInvalidConfig", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewRetrier: %v", err)
			}
			if got := r.Config(); got != tt.want {
				t.Fatalf("Config() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestRetrierSucceedsOnThirdAttempt(t *testing.T) {
	r := newRetrier(t, fastRetry)
	if got := r.Stats().SuccessRate; got != 1 {
		t.Fatalf("initial success rate %v, want 1", got)
	}
	calls := 0
	err := r.Do(t.Context(), func(context.Context) error {
		calls++
		if calls < 3 {
			return fmt.Errorf("query: %w", io.ErrUnexpectedEOF)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	if calls != 3 {
		t.Fatalf("fn called %d times, want 3", calls)
	}
	want := resilience.RetryStats{Operations: 1, Successes: 1, TotalAttempts: 3, SuccessfulRetries: 1, SuccessRate: 1}
	if got := r.Stats(); got != want {
		t.Fatalf("Stats() = %+v, want %+v", got, want)
	}
}

func TestRetrierOutcomes(t *testing.T) {
	breakerOpen := fmt.Errorf("%w: breaker %q", resilience.ErrUnavailable, "db")
	tests := []struct {
		name      string
		errs      []error // returned by successive calls; last repeats
		wantCalls int
		wantIs    []error
		wantStats resilience.RetryStats
	}{
		{
			name: "first try success", errs: []error{nil}, wantCalls: 1,
			wantStats: resilience.RetryStats{Operations: 1, Successes: 1, TotalAttempts: 1, SuccessRate: 1},
		},
		{
			name: "non-transient not retried", errs: []error{fakePGError{"23505"}}, wantCalls: 1,
			wantIs:    []error{fakePGError{"23505"}},
			wantStats: resilience.RetryStats{Operations: 1, TotalAttempts: 1, NonRetriableFailures: 1},
		},
		{
			name: "breaker open not retried", errs: []error{breakerOpen}, wantCalls: 1,
			wantIs:    []error{resilience.ErrUnavailable},
			wantStats: resilience.RetryStats{Operations: 1, TotalAttempts: 1, NonRetriableFailures: 1},
		},
		{
			name: "transient joined with ErrUnavailable not retried", errs: []error{errors.Join(io.EOF, resilience.ErrUnavailable)}, wantCalls: 1,
			wantIs:    []error{resilience.ErrUnavailable, io.EOF},
			wantStats: resilience.RetryStats{Operations: 1, TotalAttempts: 1, NonRetriableFailures: 1},
		},
		{
			name: "canceled not retried", errs: []error{context.Canceled}, wantCalls: 1,
			wantIs:    []error{context.Canceled},
			wantStats: resilience.RetryStats{Operations: 1, TotalAttempts: 1, NonRetriableFailures: 1},
		},
		{
			name: "transient exhausts attempts", errs: []error{io.EOF}, wantCalls: 3,
			wantIs:    []error{io.EOF},
			wantStats: resilience.RetryStats{Operations: 1, TotalAttempts: 3, FailedAfterRetries: 1},
		},
		{
			name: "transient then permanent", errs: []error{io.EOF, fakePGError{"42P01"}}, wantCalls: 2,
			wantIs:    []error{fakePGError{"42P01"}},
			wantStats: resilience.RetryStats{Operations: 1, TotalAttempts: 2, NonRetriableFailures: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRetrier(t, fastRetry)
			calls := 0
			err := r.Do(t.Context(), func(context.Context) error {
				e := tt.errs[min(calls, len(tt.errs)-1)]
				calls++
				return e
			})
			if calls != tt.wantCalls {
				t.Fatalf("fn called %d times, want %d", calls, tt.wantCalls)
			}
			if len(tt.wantIs) == 0 && err != nil {
				t.Fatalf("Do = %v, want nil", err)
			}
			for _, target := range tt.wantIs {
				if !errors.Is(err, target) {
					t.Fatalf("Do = %v, want it to wrap %v", err, target)
				}
			}
			if got := r.Stats(); got != tt.wantStats {
				t.Fatalf("Stats() = %+v, want %+v", got, tt.wantStats)
			}
		})
	}
}

func TestRetrierSuccessRate(t *testing.T) {
	r := newRetrier(t, fastRetry)
	for _, e := range []error{nil, nil, nil, errors.New("bad request")} {
		_ = r.Do(t.Context(), func(context.Context) error { return e })
	}
	if got := r.Stats().SuccessRate; got != 0.75 {
		t.Fatalf("success rate %v, want 0.75", got)
	}
}

func TestRetrierCancelStopsWaitPromptly(t *testing.T) {
	// Backoffs of up to an hour: only cancellation can end Do quickly.
	r := newRetrier(t, resilience.RetryConfig{MaxAttempts: 100, BaseDelay: time.Hour, MaxDelay: time.Hour})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	firstCall := make(chan struct{})
	result := make(chan error, 1)
	calls := 0
	go func() {
		result <- r.Do(ctx, func(context.Context) error {
			if calls == 0 {
				close(firstCall)
			}
			calls++
			return io.EOF
		})
	}()
	<-firstCall
	start := time.Now()
	cancel()
	var err error
	select {
	case err = <-result:
	case <-time.After(10 * time.Second):
		t.Fatal("Do did not return within 10s of cancel")
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Fatalf("Do took %v after cancel", elapsed)
	}
	if !errors.Is(err, context.Canceled) || !errors.Is(err, io.EOF) {
		t.Fatalf("Do = %v, want it to wrap context.Canceled and io.EOF", err)
	}
	if got := r.Stats(); got.FailedAfterRetries != 1 || got.Operations != 1 || got.Successes != 0 {
		t.Fatalf("Stats() = %+v, want one failed-after-retries operation", got)
	}
}

func TestRetrierDeadlineEndsRetries(t *testing.T) {
	r := newRetrier(t, resilience.RetryConfig{MaxAttempts: 1_000_000, BaseDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Millisecond)
	defer cancel()
	err := r.Do(ctx, func(ctx context.Context) error {
		return fmt.Errorf("dial: %w", io.EOF)
	})
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, io.EOF) {
		t.Fatalf("Do = %v, want it to wrap DeadlineExceeded and io.EOF", err)
	}
	if got := r.Stats(); got.FailedAfterRetries != 1 || got.TotalAttempts < 1 || got.Operations != 1 {
		t.Fatalf("Stats() = %+v, want one failed-after-retries operation", got)
	}
}

func TestRetryStatsJSON(t *testing.T) {
	b, err := json.Marshal(resilience.RetryStats{})
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("unmarshal: %v", err)
	}
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	want := []string{"failed_after_retries", "non_retriable_failures", "operations", "success_rate", "successes", "successful_retries", "total_attempts"}
	if !slices.Equal(keys, want) {
		t.Fatalf("JSON keys %v, want %v", keys, want)
	}
}

func TestBackoffBounds(t *testing.T) {
	const (
		base    = 10 * time.Millisecond
		maxWait = time.Second
		samples = 5_000
	)
	rng := rand.New(rand.NewPCG(1, 2))
	tests := []struct {
		name    string
		attempt int
		cap     time.Duration
	}{
		{name: "attempt 0", attempt: 0, cap: 10 * time.Millisecond},
		{name: "attempt 1", attempt: 1, cap: 20 * time.Millisecond},
		{name: "attempt 2", attempt: 2, cap: 40 * time.Millisecond},
		{name: "attempt 3", attempt: 3, cap: 80 * time.Millisecond},
		{name: "attempt 6", attempt: 6, cap: 640 * time.Millisecond},
		{name: "attempt 7 capped", attempt: 7, cap: time.Second},
		{name: "attempt 62 capped", attempt: 62, cap: time.Second},
		{name: "attempt 1000 capped", attempt: 1000, cap: time.Second},
		{name: "negative attempt", attempt: -3, cap: 10 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var maxSeen, sum time.Duration
			for range samples {
				d := resilience.Backoff(tt.attempt, base, maxWait, rng)
				if d < 0 || d >= tt.cap {
					t.Fatalf("Backoff = %v, want in [0, %v)", d, tt.cap)
				}
				maxSeen = max(maxSeen, d)
				sum += d
			}
			// Full jitter: the samples should use the whole range.
			if maxSeen < tt.cap*9/10 {
				t.Fatalf("largest of %d samples %v, want close to cap %v", samples, maxSeen, tt.cap)
			}
			mean := sum / samples
			if mean < tt.cap*4/10 || mean > tt.cap*6/10 {
				t.Fatalf("mean %v, want about half of cap %v", mean, tt.cap)
			}
		})
	}
}

func TestBackoffEdgeCases(t *testing.T) {
	tests := []struct {
		name          string
		attempt       int
		base, maxWait time.Duration
		wantBelow     time.Duration // exclusive upper bound; 0 means exactly 0
	}{
		{name: "zero base", attempt: 3, base: 0, maxWait: time.Second},
		{name: "zero max", attempt: 3, base: time.Millisecond, maxWait: 0},
		{name: "base above max uses max", attempt: 0, base: time.Hour, maxWait: time.Millisecond, wantBelow: time.Millisecond},
		{name: "global rand", attempt: 2, base: time.Millisecond, maxWait: time.Second, wantBelow: 4 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for range 1000 {
				d := resilience.Backoff(tt.attempt, tt.base, tt.maxWait, nil)
				if tt.wantBelow == 0 && d != 0 {
					t.Fatalf("Backoff = %v, want 0", d)
				}
				if d < 0 || (tt.wantBelow > 0 && d >= tt.wantBelow) {
					t.Fatalf("Backoff = %v, want in [0, %v)", d, tt.wantBelow)
				}
			}
		})
	}
}

func BenchmarkRetrierDoSuccess(b *testing.B) {
	r, err := resilience.NewRetrier(resilience.RetryConfig{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	fn := func(context.Context) error { return nil }
	b.ReportAllocs()
	for b.Loop() {
		if err := r.Do(ctx, fn); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkIsTransient(b *testing.B) {
	errs := []error{nil, io.EOF, fmt.Errorf("wrap: %w", fakePGError{"23505"}), errors.New("other"), context.Canceled}
	b.ReportAllocs()
	for b.Loop() {
		for _, e := range errs {
			resilience.IsTransient(e)
		}
	}
}
