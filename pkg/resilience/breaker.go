package resilience

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
)

// Breaker state names, as returned by Breaker.State and used in logs,
// Transitions keys and OnStateChange. They use underscores so they can be
// used verbatim as metric label values.
const (
	StateClosed   = "closed"
	StateOpen     = "open"
	StateHalfOpen = "half_open"
)

// Breaker defaults, applied to zero BreakerConfig fields.
const (
	DefaultFailureThreshold    uint32 = 5
	DefaultOpenTimeout                = 5 * time.Second
	DefaultHalfOpenMaxRequests uint32 = 1
)

// ErrInvalidConfig is wrapped by constructor errors caused by a bad config,
// so wiring code can tell configuration mistakes from runtime failures.
var ErrInvalidConfig = errors.New("resilience: invalid config")

// BreakerConfig configures a Breaker. Zero numeric fields take the defaults.
type BreakerConfig struct {
	// Name identifies the protected dependency in logs and metrics
	// (e.g. "postgres"). Required.
	Name string
	// FailureThreshold is the number of consecutive transient failures that
	// opens the breaker. Default 5.
	FailureThreshold uint32
	// OpenTimeout is how long the breaker stays open before letting probe
	// requests through (half-open). Default 5s.
	OpenTimeout time.Duration
	// HalfOpenMaxRequests is the number of probe requests allowed while
	// half-open; that many consecutive successes close the breaker, any
	// transient failure re-opens it. Default 1.
	HalfOpenMaxRequests uint32
	// OnStateChange, if set, is called on every state change with the state
	// names above, e.g. to update a metric. It runs while gobreaker holds its
	// internal lock: it must be fast and must not call back into the Breaker.
	OnStateChange func(from, to string)
}

// transition indexes: gobreaker can only make these four moves.
var transitionKeys = [...]string{
	StateClosed + "->" + StateOpen,
	StateOpen + "->" + StateHalfOpen,
	StateHalfOpen + "->" + StateClosed,
	StateHalfOpen + "->" + StateOpen,
}

// Breaker is a circuit breaker that counts only transient failures (see
// IsTransient): bad input, constraint violations and context cancellations
// are the caller's problem, not the dependency's, and never trip it.
// Breaker is safe for concurrent use.
type Breaker struct {
	name        string
	cb          *gobreaker.CircuitBreaker[struct{}]
	log         *slog.Logger
	onChange    func(from, to string)
	transitions [len(transitionKeys)]atomic.Uint64
	other       atomic.Uint64 // transitions gobreaker is not expected to make
}

// NewBreaker validates cfg, applies defaults and returns a closed Breaker.
// log receives one line per state change; nil discards them.
func NewBreaker(cfg BreakerConfig, log *slog.Logger) (*Breaker, error) {
	if cfg.Name == "" {
		return nil, fmt.Errorf("%w: breaker name is required", ErrInvalidConfig)
	}
	if cfg.OpenTimeout < 0 {
		return nil, fmt.Errorf("%w: breaker %q: negative OpenTimeout %v", ErrInvalidConfig, cfg.Name, cfg.OpenTimeout)
	}
	if cfg.FailureThreshold == 0 {
		cfg.FailureThreshold = DefaultFailureThreshold
	}
	if cfg.OpenTimeout == 0 {
		cfg.OpenTimeout = DefaultOpenTimeout
	}
	if cfg.HalfOpenMaxRequests == 0 {
		cfg.HalfOpenMaxRequests = DefaultHalfOpenMaxRequests
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Breaker{name: cfg.Name, log: log, onChange: cfg.OnStateChange}
	threshold := cfg.FailureThreshold
	b.cb = gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        cfg.Name,
		MaxRequests: cfg.HalfOpenMaxRequests,
		Timeout:     cfg.OpenTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.ConsecutiveFailures >= threshold
		},
		IsSuccessful:  isSuccessful,
		OnStateChange: b.stateChanged,
	})
	return b, nil
}

// isSuccessful decides what counts against the dependency: only transient
// errors do; context.Canceled is not transient, so it counts as a success.
func isSuccessful(err error) bool {
	return err == nil || !IsTransient(err)
}

func stateName(s gobreaker.State) string {
	switch s {
	case gobreaker.StateClosed:
		return StateClosed
	case gobreaker.StateOpen:
		return StateOpen
	case gobreaker.StateHalfOpen:
		return StateHalfOpen
	default:
		return s.String()
	}
}

// stateChanged runs under gobreaker's lock.
func (b *Breaker) stateChanged(_ string, from, to gobreaker.State) {
	f, t := stateName(from), stateName(to)
	key := f + "->" + t
	counted := false
	for i, k := range transitionKeys {
		if k == key {
			b.transitions[i].Add(1)
			counted = true
			break
		}
	}
	if !counted {
		b.other.Add(1)
	}
	level := slog.LevelInfo
	if to == gobreaker.StateOpen {
		level = slog.LevelWarn
	}
	b.log.LogAttrs(context.Background(), level, "Circuit breaker state changed: "+f+" -> "+t,
		slog.String("breaker", b.name), slog.String("from", f), slog.String("to", t))
	if b.onChange != nil {
		b.onChange(f, t)
	}
}

// Name returns the configured name.
func (b *Breaker) Name() string { return b.name }

// Execute runs fn unless the breaker is open (or half-open with its probe
// budget in use), in which case it returns at once with an error wrapping
// ErrUnavailable (and gobreaker.ErrOpenState or ErrTooManyRequests).
// Otherwise it returns fn's error unchanged. A panic in fn is re-raised; it
// is a bug, not an outage, so it does not count towards opening the breaker.
func (b *Breaker) Execute(fn func() error) error {
	ran := false
	_, err := b.cb.Execute(func() (struct{}, error) {
		ran = true
		return struct{}{}, fn()
	})
	if err != nil && !ran {
		return fmt.Errorf("%w: breaker %q: %w", ErrUnavailable, b.name, err)
	}
	return err
}

// State returns "closed", "open" or "half_open". Reading the state also
// performs the open -> half_open move once OpenTimeout has elapsed.
func (b *Breaker) State() string {
	return stateName(b.cb.State())
}

// Transitions returns how many times each state change happened since the
// Breaker was created, keyed "closed->open", "open->half_open",
// "half_open->closed" and "half_open->open" (all four keys always present),
// for metrics and health endpoints.
func (b *Breaker) Transitions() map[string]uint64 {
	m := make(map[string]uint64, len(transitionKeys)+1)
	for i, k := range transitionKeys {
		m[k] = b.transitions[i].Load()
	}
	if n := b.other.Load(); n > 0 {
		m["other"] = n
	}
	return m
}
