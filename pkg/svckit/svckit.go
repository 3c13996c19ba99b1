// Package svckit holds the few things every AniVault process does the same
// way at start: building its slog logger from LOG_LEVEL and LOG_FORMAT,
// reading the settings every service shares (Shared, LoadShared), retrying
// a start-up step until it succeeds (RetryUntil), serving its admin
// endpoints (ServeAdmin), and running until SIGINT or SIGTERM.
package svckit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// NewLogger builds a logger writing to w. level is debug, info, warn or
// error; format is json or text.
func NewLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(strings.ToUpper(strings.TrimSpace(level)))); err != nil {
		return nil, fmt.Errorf("LOG_LEVEL: invalid level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch strings.ToLower(strings.TrimSpace(format)) {
	case "", "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("LOG_FORMAT: invalid format %q: use json or text", format)
	}
}

// Main is the body of every service's main: it builds the logger from the
// environment, runs run until SIGINT/SIGTERM cancels its context, and exits
// non-zero when run fails or the logging settings are bad.
func Main(service string, run func(ctx context.Context, log *slog.Logger) error) {
	log, err := NewLogger(os.Stderr, envOr("LOG_LEVEL", "info"), envOr("LOG_FORMAT", "json"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", service, err)
		os.Exit(2)
	}
	log = log.With("service", service)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, log); err != nil {
		log.Error("exiting", "error", err)
		stop()
		os.Exit(1)
	}
}

func envOr(k, def string) string {
	if v, ok := os.LookupEnv(k); ok && strings.TrimSpace(v) != "" {
		return v
	}
	return def
}

// DefaultNodeID is the host name plus the process id.
func DefaultNodeID() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "node"
	}
	return fmt.Sprintf("%s-%d", h, os.Getpid())
}

// RetryUntil calls fn (with a 5 s deadline per call) until it succeeds or ctx
// ends, logging each failure with what; for start-up steps such as
// provisioning JetStream while NATS is still coming up.
func RetryUntil(ctx context.Context, log *slog.Logger, what string, fn func(ctx context.Context) error) error {
	return Retry(ctx, log, what, 5*time.Second, fn)
}

// Retry is RetryUntil with each call's deadline set by perCall; 0 gives
// each call ctx itself, for steps whose every request carries its own
// deadline (topology's Ensure methods). It waits 500 ms between calls and
// logs each failure as "<what> failed, retrying". When ctx ends first it
// returns the last failure joined with ctx's error.
func Retry(ctx context.Context, log *slog.Logger, what string, perCall time.Duration, fn func(ctx context.Context) error) error {
	for {
		cctx, cancel := ctx, context.CancelFunc(func() {})
		if perCall > 0 {
			cctx, cancel = context.WithTimeout(ctx, perCall)
		}
		err := fn(cctx)
		cancel()
		if err == nil {
			return nil
		}
		log.Warn(what+" failed, retrying", "error", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, errors.Join(err, ctx.Err()))
		case <-time.After(500 * time.Millisecond):
		}
	}
}
