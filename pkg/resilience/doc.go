// Package resilience decides which failures are worth retrying and protects
// dependencies (PostgreSQL, NATS, HTTP peers) from being hammered while they
// are down: IsTransient classifies errors, Breaker is a circuit breaker
// built on github.com/sony/gobreaker/v2 that only trips on transient
// failures, and Retrier retries transient failures with full-jitter
// exponential backoff.
//
// The intended composition is a Retrier around a Breaker:
//
//	err := retrier.Do(ctx, func(ctx context.Context) error {
//		return breaker.Execute(func() error { return store.Save(ctx, rec) })
//	})
//
// A rejected call (breaker open) wraps ErrUnavailable and is not retried, so
// callers fail fast and can map it to 503 / nak-with-delay.
package resilience
