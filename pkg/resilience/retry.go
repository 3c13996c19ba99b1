package resilience

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"
)

// Retry defaults, applied to zero RetryConfig fields.
const (
	DefaultMaxAttempts = 3
	DefaultBaseDelay   = 50 * time.Millisecond
	DefaultMaxDelay    = time.Second
)

// RetryConfig configures a Retrier. Zero fields take the defaults.
type RetryConfig struct {
	// MaxAttempts is the total number of attempts including the first;
	// 1 disables retries. Default 3.
	MaxAttempts int
	// BaseDelay caps the first backoff; the cap doubles per retry.
	// Default 50ms.
	BaseDelay time.Duration
	// MaxDelay is the largest cap any backoff can have. Default 1s.
	MaxDelay time.Duration
}

// RetryStats is a snapshot of a Retrier's counters, shaped for a JSON stats
// endpoint. Operations are counted when Do returns.
type RetryStats struct {
	// Operations is the number of completed Do calls.
	Operations uint64 `json:"operations"`
	// Successes is the number of Do calls that returned nil.
	Successes uint64 `json:"successes"`
	// TotalAttempts is the number of times fn was called.
	TotalAttempts uint64 `json:"total_attempts"`
	// SuccessfulRetries counts operations that succeeded after at least one
	// retry.
	SuccessfulRetries uint64 `json:"successful_retries"`
	// FailedAfterRetries counts operations that ran out of attempts on
	// transient errors or whose context ended while waiting to retry.
	FailedAfterRetries uint64 `json:"failed_after_retries"`
	// NonRetriableFailures counts operations that failed with an error that
	// is not retried (not transient, breaker open, context canceled).
	NonRetriableFailures uint64 `json:"non_retriable_failures"`
	// SuccessRate is Successes / Operations, 1.0 before any operation.
	SuccessRate float64 `json:"success_rate"`
}

// Retrier retries operations that fail with transient errors, sleeping a
// full-jitter exponential backoff between attempts. It is safe for
// concurrent use; its only state is statistics.
type Retrier struct {
	cfg RetryConfig

	operations           atomic.Uint64
	successes            atomic.Uint64
	totalAttempts        atomic.Uint64
	successfulRetries    atomic.Uint64
	failedAfterRetries   atomic.Uint64
	nonRetriableFailures atomic.Uint64
}

// NewRetrier validates cfg, applies defaults and returns a Retrier.
func NewRetrier(cfg RetryConfig) (*Retrier, error) {
	if cfg.MaxAttempts < 0 || cfg.BaseDelay < 0 || cfg.MaxDelay < 0 {
		return nil, fmt.Errorf("%w: retry: negative value in %+v", ErrInvalidConfig, cfg)
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.BaseDelay == 0 {
		cfg.BaseDelay = DefaultBaseDelay
	}
	if cfg.MaxDelay == 0 {
		cfg.MaxDelay = DefaultMaxDelay
	}
	if cfg.BaseDelay > cfg.MaxDelay {
		return nil, fmt.Errorf("%w: retry: BaseDelay %v exceeds MaxDelay %v", ErrInvalidConfig, cfg.BaseDelay, cfg.MaxDelay)
	}
	return &Retrier{cfg: cfg}, nil
}

// Config returns the effective configuration (defaults applied).
func (r *Retrier) Config() RetryConfig { return r.cfg }

// retriable reports whether Do should try err again: transient errors only,
// never a breaker rejection (retrying would defeat the breaker) and never a
// cancellation.
func retriable(err error) bool {
	return IsTransient(err) &&
		!errors.Is(err, ErrUnavailable) &&
		!errors.Is(err, context.Canceled)
}

// Do calls fn until it succeeds, fails with an error that is not retriable,
// or MaxAttempts calls have been made, waiting Backoff(n, ...) before retry
// n+1. It passes ctx through to fn.
//
// A non-retriable error is returned unchanged. When attempts run out, the
// returned error wraps the last error. When ctx ends while waiting, Do
// returns at once with an error wrapping both the last error and ctx.Err().
// Do does not check ctx before the first attempt; fn is expected to.
func (r *Retrier) Do(ctx context.Context, fn func(ctx context.Context) error) error {
	var last error
	for attempt := range r.cfg.MaxAttempts {
		if attempt > 0 {
			if err := sleep(ctx, Backoff(attempt-1, r.cfg.BaseDelay, r.cfg.MaxDelay, nil)); err != nil {
				r.finish(&r.failedAfterRetries)
				return fmt.Errorf("resilience: retry stopped after %d attempts: %w", attempt, errors.Join(last, err))
			}
		}
		r.totalAttempts.Add(1)
		err := fn(ctx)
		if err == nil {
			if attempt > 0 {
				r.successfulRetries.Add(1)
			}
			r.finish(&r.successes)
			return nil
		}
		if !retriable(err) {
			r.finish(&r.nonRetriableFailures)
			return err
		}
		last = err
	}
	r.finish(&r.failedAfterRetries)
	return fmt.Errorf("resilience: giving up after %d attempts: %w", r.cfg.MaxAttempts, last)
}

func (r *Retrier) finish(outcome *atomic.Uint64) {
	outcome.Add(1)
	r.operations.Add(1)
}

// sleep waits for d or until ctx is done, whichever comes first, and
// returns ctx.Err() in the latter case.
func sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Stats returns a snapshot of the counters. Counters are read one by one,
// so under concurrent use the snapshot may be very slightly inconsistent.
func (r *Retrier) Stats() RetryStats {
	s := RetryStats{
		Operations:           r.operations.Load(),
		Successes:            r.successes.Load(),
		TotalAttempts:        r.totalAttempts.Load(),
		SuccessfulRetries:    r.successfulRetries.Load(),
		FailedAfterRetries:   r.failedAfterRetries.Load(),
		NonRetriableFailures: r.nonRetriableFailures.Load(),
		SuccessRate:          1,
	}
	if s.Operations > 0 {
		s.SuccessRate = float64(s.Successes) / float64(s.Operations)
	}
	return s
}

// Backoff returns the full-jitter delay before retry number attempt+1: a
// uniformly random duration in [0, min(maxDelay, base*2^attempt)). Full
// jitter spreads retries of many clients that failed together. attempt < 0
// is treated as 0; a non-positive cap yields 0. r supplies randomness for
// deterministic tests; nil uses math/rand/v2's global generator.
func Backoff(attempt int, base, maxDelay time.Duration, r *rand.Rand) time.Duration {
	ceiling := backoffCap(attempt, base, maxDelay)
	if ceiling <= 0 {
		return 0
	}
	if r == nil {
		return time.Duration(rand.Int64N(int64(ceiling)))
	}
	return time.Duration(r.Int64N(int64(ceiling)))
}

// backoffCap is min(maxDelay, base*2^attempt) without overflow.
func backoffCap(attempt int, base, maxDelay time.Duration) time.Duration {
	if base <= 0 || maxDelay <= 0 {
		return 0
	}
	if attempt < 0 {
		attempt = 0
	}
	if attempt < 62 && base <= maxDelay>>uint(attempt) {
		return base << uint(attempt)
	}
	return maxDelay
}
