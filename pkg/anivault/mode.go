package anivault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
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
	kv, err := c.bucket(rctx)
	if err != nil {
		return events.ModeChanged{}, 0, c.modeErr(ctx, err)
	}
	e, err := kv.Get(rctx, events.KeyMode)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
		return events.ModeChanged{Mode: events.ModeNormal, Epoch: 0}, 0, nil
	case err != nil:
		return events.ModeChanged{}, 0, c.modeErr(ctx, err)
	}
	m, err := decodeMode(e)
	if err != nil {
		return events.ModeChanged{}, e.Revision(), fmt.Errorf("anivault: read mode: %w", err)
	}
	return m, e.Revision(), nil
}

func (c *Client) modeErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("anivault: read mode: %w", ctx.Err())
	}
	return fmt.Errorf("anivault: read mode: %w: %w", ErrUnavailable, err)
}

// bucket returns the mode bucket's handle, looked up on first use.
func (c *Client) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	c.kvMu.Lock()
	defer c.kvMu.Unlock()
	if c.kv != nil {
		return c.kv, nil
	}
	kv, err := c.js.KeyValue(ctx, c.subj.Name(events.BucketName))
	if err != nil {
		return nil, err
	}
	c.kv = kv
	return kv, nil
}

func decodeMode(e jetstream.KeyValueEntry) (events.ModeChanged, error) {
	var m events.ModeChanged
	if err := json.Unmarshal(e.Value(), &m); err != nil {
		return m, fmt.Errorf("decode mode at revision %d: %w", e.Revision(), err)
	}
	if !m.Mode.Valid() {
		return m, fmt.Errorf("decode mode at revision %d: unknown mode %q", e.Revision(), m.Mode)
	}
	return m, nil
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
	w := &modeWatch{c: c, out: out, epoch: first.Epoch, rev: rev}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	c.watchers.Add(1)
	go func() {
		defer c.watchers.Done()
		defer close(out)
		w.run(ctx)
	}()
	return out, nil
}

// modeWatch is one WatchMode's state, owned by its goroutine.
type modeWatch struct {
	c     *Client
	out   chan<- events.ModeChanged
	epoch int64  // last epoch delivered
	rev   uint64 // highest KV revision seen, from the watcher or a re-read
}

// run follows the mode until ctx is done or the client closes.
func (w *modeWatch) run(ctx context.Context) {
	c := w.c
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
	link := newLink(ctx, c.nc)
	defer link.close()
	tick := time.NewTicker(c.opts.WatchPollInterval)
	defer tick.Stop()

	// wait pauses until the connection is back or the next tick, so that a
	// watcher that cannot be created, or dies at once, is not re-created in
	// a tight loop. It reports false when the watch ends.
	wait := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-link.up:
		case <-tick.C:
		}
		return w.reread(ctx, link.current())
	}
	for {
		linkCtx := link.current()
		kw, stop, err := w.startWatcher(linkCtx)
		if err != nil {
			if c.nc.IsClosed() {
				c.log.Warn("anivault NATS connection closed, mode watch ends")
				return
			}
			c.log.Debug("anivault mode watcher not started, retrying", "error", err)
			if !wait() {
				return
			}
			continue
		}
		started := time.Now()
		again := w.follow(ctx, linkCtx, kw, tick.C)
		stop() // the library unsubscribes in its own goroutine: never blocks here
		if !again {
			return
		}
		if time.Since(started) < c.opts.WatchPollInterval && !wait() {
			return
		}
	}
}

// startWatcher creates a KV watcher on the mode key that lives as long as
// linkCtx, i.e. until the connection drops. Its initial value is the key's
// latest revision, which covers any change made since the last read.
// Creation is bounded by RequestTimeout and by the link: a consumer-create
// request lost in a disconnect would otherwise wait for a reply that never
// comes.
func (w *modeWatch) startWatcher(linkCtx context.Context) (jetstream.KeyWatcher, context.CancelFunc, error) {
	c := w.c
	rctx, rcancel := context.WithTimeout(linkCtx, c.opts.RequestTimeout)
	defer rcancel()
	kv, err := c.bucket(rctx)
	if err != nil {
		return nil, nil, err
	}
	// The watcher's context is its lifetime (the library unsubscribes when
	// it ends), so it cannot carry the creation deadline: a timer does.
	wctx, stop := context.WithCancel(linkCtx)
	type result struct {
		kw  jetstream.KeyWatcher
		err error
	}
	res := make(chan result, 1)
	go func() {
		kw, err := kv.Watch(wctx, events.KeyMode)
		res <- result{kw, err}
	}()
	var r result
	select {
	case r = <-res:
	case <-rctx.Done():
		stop() // makes the pending creation return
		r = <-res
		if r.err == nil {
			r.err = fmt.Errorf("watcher creation: %w", rctx.Err())
		}
	}
	if r.err != nil {
		stop()
		return nil, nil, r.err
	}
	return r.kw, stop, nil
}

// follow delivers the watcher's updates until the watcher must be re-created
// (it returns true) or the watch ends (false).
func (w *modeWatch) follow(ctx, linkCtx context.Context, kw jetstream.KeyWatcher, tick <-chan time.Time) bool {
	c := w.c
	for {
		select {
		case <-ctx.Done():
			return false
		case <-c.done:
			return false
		case <-linkCtx.Done():
			c.log.Debug("anivault NATS disconnected, the mode watcher will be re-created")
			return true
		case e, ok := <-kw.Updates():
			if !ok {
				c.log.Debug("anivault mode watcher stopped, re-creating it")
				return w.reread(ctx, linkCtx)
			}
			if e == nil { // end of the initial values
				continue
			}
			if e.Revision() > w.rev {
				w.rev = e.Revision()
			}
			if e.Operation() != jetstream.KeyValuePut {
				continue
			}
			m, err := decodeMode(e)
			if err != nil {
				c.log.Warn("anivault ignoring invalid mode in KV", "error", err)
				continue
			}
			if !w.deliver(ctx, m) {
				return false
			}
		case <-tick:
			before := w.rev
			if !w.reread(ctx, linkCtx) {
				return false
			}
			if w.rev > before {
				// The key moved on without the watcher telling: it may be
				// dead (a lost consumer), so start a fresh one.
				c.log.Debug("anivault mode watcher missed a revision, re-creating it", "revision", w.rev)
				return true
			}
		}
	}
}

// reread reads the key and delivers it if it is newer. It reports false when
// the watch ended; a failed read is left to the next tick.
func (w *modeWatch) reread(ctx, linkCtx context.Context) bool {
	m, rev, err := w.c.readMode(linkCtx)
	if err != nil {
		w.c.log.Debug("anivault mode re-read failed", "error", err)
		return ctx.Err() == nil && !w.c.isClosed()
	}
	if rev > w.rev {
		w.rev = rev
	}
	return w.deliver(ctx, m)
}

// deliver sends m unless its epoch is not newer than the last one delivered.
// It reports false when the watch ended while waiting for the consumer.
func (w *modeWatch) deliver(ctx context.Context, m events.ModeChanged) bool {
	if m.Epoch <= w.epoch {
		return true
	}
	select {
	case w.out <- m:
		w.epoch = m.Epoch
		return true
	case <-ctx.Done():
		return false
	case <-w.c.done:
		return false
	}
}

// link tracks the connection for a watch: its context ends when the
// connection drops, so that every request made over that connection (which
// nats.go would otherwise leave waiting for a reply that never comes) and the
// KV watcher end at once; up is signalled when the connection is back.
type link struct {
	nc     *nats.Conn
	parent context.Context
	status chan nats.Status
	up     chan struct{}

	mu     sync.Mutex
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

func newLink(parent context.Context, nc *nats.Conn) *link {
	l := &link{
		nc:     nc,
		parent: parent,
		status: nc.StatusChanged(nats.CONNECTED, nats.RECONNECTING, nats.DISCONNECTED),
		up:     make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	l.ctx, l.cancel = context.WithCancel(parent)
	go func() {
		defer close(l.done)
		for s := range l.status {
			l.mu.Lock()
			if s == nats.CONNECTED {
				l.renewLocked()
				select {
				case l.up <- struct{}{}:
				default:
				}
			} else {
				l.cancel()
			}
			l.mu.Unlock()
		}
	}()
	return l
}

// current returns the context of the current connection. A dropped status
// event (nats.go drops them when a listener lags) cannot leave it ended for
// good: it is renewed whenever the connection is up.
func (l *link) current() context.Context {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ctx.Err() != nil && l.nc.IsConnected() {
		l.renewLocked()
	}
	return l.ctx
}

func (l *link) renewLocked() {
	if l.ctx.Err() == nil {
		return
	}
	l.cancel()
	l.ctx, l.cancel = context.WithCancel(l.parent)
}

func (l *link) close() {
	l.nc.RemoveStatusListener(l.status)
	<-l.done
	l.mu.Lock()
	l.cancel()
	l.mu.Unlock()
}
