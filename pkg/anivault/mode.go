package anivault

import (
	"context"
	"errors"
	"fmt"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/modefollow"
)

// Mode returns the system's current mode, read from the KV bucket (key mode).
// Before the recovery-manager has ever recorded a mode the system is in normal
// mode at epoch 0, and Mode says so. Failing to reach the bucket matches
// ErrUnavailable.
func (c *Client) Mode(ctx context.Context) (events.ModeChanged, error) {
	if c.isClosed() {
		return events.ModeChanged{}, ErrClosed
	}
	m, _, err := c.readMode(ctx)
	return m, err
}

// readMode reads the mode key and returns the mode and its KV revision (0 when
// the key is absent).
func (c *Client) readMode(ctx context.Context) (events.ModeChanged, uint64, error) {
	rctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
	defer cancel()
	m, rev, err := c.modes.Read(rctx)
	switch {
	case errors.Is(err, events.ErrInvalid):
		return events.ModeChanged{}, rev, fmt.Errorf("anivault: read mode: %w", err)
	case err != nil:
		return events.ModeChanged{}, 0, c.modeErr(ctx, err)
	}
	return m, rev, nil
}

func (c *Client) modeErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("anivault: read mode: %w", ctx.Err())
	}
	return fmt.Errorf("anivault: read mode: %w: %w", ErrUnavailable, err)
}

// WatchMode delivers the current mode, then every change, on the returned
// channel, until ctx is done or the client is closed; then the channel closes.
// Modes arrive in epoch order: an epoch that is not newer than the last one
// delivered is never delivered, whatever order the KV bucket or a reconnect
// presents it in.
//
// It survives NATS disconnects and server restarts. A KV watcher does not
// recover by itself after a lost connection, so WatchMode re-creates its
// watcher and re-reads the key on every reconnect, and re-reads the key every
// WatchPollInterval as a safety net. Changes that happen while the client is
// disconnected are coalesced: the latest mode is delivered once it is back.
//
// WatchMode returns an error, and starts nothing, when it cannot read the
// current mode. The watch also ends if the NATS connection is closed for
// good. The channel has a buffer of one: a consumer that lags holds the
// watcher up, and nothing is dropped.
func (c *Client) WatchMode(ctx context.Context) (<-chan events.ModeChanged, error) {
	if c.isClosed() {
		return nil, ErrClosed
	}
	first, rev, err := c.readMode(ctx)
	if err != nil {
		return nil, fmt.Errorf("anivault: watch mode: %w", err)
	}
	out := make(chan events.ModeChanged, 1)
	out <- first
	f := modefollow.New(c.modes, modefollow.Options{
		PollInterval:   c.opts.WatchPollInterval,
		RequestTimeout: c.opts.RequestTimeout,
		Logger:         c.log.With("component", "anivault mode watch"),
	}).After(first, rev)

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	c.watchers.Add(1)
	go func() {
		defer c.watchers.Done()
		defer close(out)
		// Close ends the watch's requests too, not only its waits.
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			select {
			case <-c.done:
				cancel()
			case <-ctx.Done():
			}
		}()
		f.Run(ctx, func(ctx context.Context, m events.ModeChanged) bool {
			select {
			case out <- m:
				return true
			case <-ctx.Done():
				return false
			}
		})
	}()
	return out, nil
}
