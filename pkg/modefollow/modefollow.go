// Package modefollow reads and follows the system's mode: the JSON
// events.ModeChanged at key events.KeyMode of the KV bucket events.BucketName
// (SUBJECT_PREFIX applied). The cache-nodes, the Go client, the
// health-monitor and the tools read the mode through it, so that they agree
// on what an absent, deleted or invalid value means.
//
// Read reads the mode once. A Follower delivers the current mode and then
// every newer one; it survives lost connections and NATS server restarts,
// which a KV watcher alone does not.
package modefollow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
)

// Initial is the mode of a system whose recovery-manager has never written
// one: normal mode at epoch 0.
func Initial() events.ModeChanged {
	return events.ModeChanged{Mode: events.ModeNormal, Epoch: 0}
}

// Read reads the mode key of kv once and returns the mode and its KV
// revision. An absent or deleted key is Initial at revision 0. An invalid
// value returns its revision and an error that matches events.ErrInvalid.
func Read(ctx context.Context, kv jetstream.KeyValue) (events.ModeChanged, uint64, error) {
	e, err := kv.Get(ctx, events.KeyMode)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
		return Initial(), 0, nil
	case err != nil:
		return events.ModeChanged{}, 0, fmt.Errorf("get key %s: %w", events.KeyMode, err)
	}
	mc, err := events.DecodeMode(e.Value())
	if err != nil {
		return events.ModeChanged{}, e.Revision(), fmt.Errorf("decode mode at revision %d: %w", e.Revision(), err)
	}
	return mc, e.Revision(), nil
}

// Bucket is the mode bucket of one system, looked up on first use and then
// kept. It is safe for concurrent use.
type Bucket struct {
	js   jetstream.JetStream
	name string

	mu sync.Mutex
	kv jetstream.KeyValue
}

// NewBucket returns the mode bucket of the system whose subjects are subj.
func NewBucket(js jetstream.JetStream, subj events.Subjects) *Bucket {
	return &Bucket{js: js, name: subj.Name(events.BucketName)}
}

// KVBucket returns the mode bucket whose handle kv the caller already has
// (from provisioning, say); js is the JetStream context kv came from.
func KVBucket(js jetstream.JetStream, kv jetstream.KeyValue) *Bucket {
	return &Bucket{js: js, name: kv.Bucket(), kv: kv}
}

// Name returns the bucket's name, prefix applied.
func (b *Bucket) Name() string { return b.name }

// KV returns the bucket's handle, looking it up on first use.
func (b *Bucket) KV(ctx context.Context) (jetstream.KeyValue, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.kv != nil {
		return b.kv, nil
	}
	kv, err := b.js.KeyValue(ctx, b.name)
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", b.name, err)
	}
	b.kv = kv
	return kv, nil
}

// Read reads the mode once, as the package's Read does.
func (b *Bucket) Read(ctx context.Context) (events.ModeChanged, uint64, error) {
	kv, err := b.KV(ctx)
	if err != nil {
		return events.ModeChanged{}, 0, err
	}
	return Read(ctx, kv)
}

// Defaults of Options.
const (
	DefaultPollInterval   = time.Second
	DefaultRequestTimeout = 2 * time.Second
)

// Options tune a Follower. The zero value takes the defaults.
type Options struct {
	// PollInterval is how often the key is re-read beside the watcher: it
	// bounds how long an update the watcher missed goes unnoticed, and how
	// often a watcher that cannot be created is tried again.
	PollInterval time.Duration
	// RequestTimeout bounds each read and each watcher creation.
	RequestTimeout time.Duration
	// Logger receives the follower's logs; nil discards them.
	Logger *slog.Logger
}

// Follower follows the mode key of one bucket. A Follower serves one Run.
type Follower struct {
	b    *Bucket
	nc   *nats.Conn
	opts Options
	log  *slog.Logger

	// Owned by Run.
	delivered bool   // a mode was delivered (or given to After)
	epoch     int64  // the epoch of the last mode delivered
	rev       uint64 // the highest KV revision seen, from the watcher or a read
}

// New returns a Follower of b's mode key.
func New(b *Bucket, opts Options) *Follower {
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = DefaultRequestTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Follower{b: b, nc: b.js.Conn(), opts: opts, log: log}
}

// After tells f that its caller already has mode m, read at KV revision rev
// (as Bucket.Read returns them): Run then delivers only newer epochs. Call it
// before Run.
func (f *Follower) After(m events.ModeChanged, rev uint64) *Follower {
	f.delivered, f.epoch, f.rev = true, m.Epoch, rev
	return f
}

// Run calls deliver with the current mode (unless After gave it) and then
// with every mode whose epoch is newer than the last one delivered, until
// ctx is done, deliver returns false, or the NATS connection is closed for
// good. Modes arrive in epoch order: an epoch that is not newer than the
// last one delivered is never delivered, whatever order the bucket or a
// reconnect presents it in. A deleted key keeps the last mode; an absent key
// before any mode is Initial. Invalid values are logged and skipped.
//
// A KV watcher does not recover by itself after a lost connection, so Run
// re-creates its watcher on every reconnect and whenever it ends, re-reads
// the key then, and re-reads it every PollInterval as a safety net, starting
// a fresh watcher when that read finds a revision the watcher missed.
// Changes made while disconnected are coalesced: the latest is delivered
// once the connection is back.
//
// deliver runs on Run's goroutine and may block (it gets ctx to wait on).
func (f *Follower) Run(ctx context.Context, deliver func(context.Context, events.ModeChanged) bool) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	link := newLink(ctx, f.nc)
	defer link.close()
	tick := time.NewTicker(f.opts.PollInterval)
	defer tick.Stop()

	if !f.delivered && !f.reread(ctx, link.current(), deliver) {
		return
	}
	// wait pauses until the connection is back or the next tick, so that a
	// watcher that cannot be created, or dies at once, is not re-created in
	// a tight loop. It reports false when the follower must stop.
	wait := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-link.up:
		case <-tick.C:
		}
		return f.reread(ctx, link.current(), deliver)
	}
	for {
		linkCtx := link.current()
		kw, stop, err := f.startWatcher(linkCtx)
		if err != nil {
			if f.nc.IsClosed() {
				f.log.Warn("NATS connection closed, the mode follower stops")
				return
			}
			f.log.Debug("mode watcher not started, retrying", "error", err)
			if !wait() {
				return
			}
			continue
		}
		started := time.Now()
		again := f.follow(ctx, linkCtx, kw, tick.C, deliver)
		stop() // the library unsubscribes in its own goroutine: never blocks here
		if !again {
			return
		}
		if time.Since(started) < f.opts.PollInterval && !wait() {
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
func (f *Follower) startWatcher(linkCtx context.Context) (jetstream.KeyWatcher, context.CancelFunc, error) {
	rctx, rcancel := context.WithTimeout(linkCtx, f.opts.RequestTimeout)
	defer rcancel()
	kv, err := f.b.KV(rctx)
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
		return nil, nil, fmt.Errorf("watch key %s: %w", events.KeyMode, r.err)
	}
	return r.kw, stop, nil
}

// follow delivers the watcher's updates until the watcher must be re-created
// (it returns true) or the follower must stop (false).
func (f *Follower) follow(ctx, linkCtx context.Context, kw jetstream.KeyWatcher, tick <-chan time.Time, deliver func(context.Context, events.ModeChanged) bool) bool {
	for {
		select {
		case <-ctx.Done():
			return false
		case <-linkCtx.Done():
			f.log.Debug("NATS disconnected, the mode watcher will be re-created")
			return true
		case e, ok := <-kw.Updates():
			if !ok {
				f.log.Debug("mode watcher stopped, re-creating it")
				return f.reread(ctx, linkCtx, deliver)
			}
			if e == nil { // end of the initial values
				continue
			}
			if e.Revision() > f.rev {
				f.rev = e.Revision()
			}
			if e.Operation() != jetstream.KeyValuePut {
				continue // a deleted key keeps the last mode
			}
			m, err := events.DecodeMode(e.Value())
			if err != nil {
				f.log.Warn("ignoring invalid mode in KV", "revision", e.Revision(), "error", err)
				continue
			}
			if !f.deliver(ctx, m, deliver) {
				return false
			}
		case <-tick:
			before := f.rev
			if !f.reread(ctx, linkCtx, deliver) {
				return false
			}
			if f.rev > before {
				// The key moved on without the watcher telling: it may be
				// dead (a lost consumer), so start a fresh one.
				f.log.Debug("mode watcher missed a revision, re-creating it", "revision", f.rev)
				return true
			}
		}
	}
}

// reread reads the key and delivers it if it is newer. It reports false when
// the follower must stop; a failed read is left to the next tick.
func (f *Follower) reread(ctx, linkCtx context.Context, deliver func(context.Context, events.ModeChanged) bool) bool {
	rctx, cancel := context.WithTimeout(linkCtx, f.opts.RequestTimeout)
	defer cancel()
	m, rev, err := f.b.Read(rctx)
	if err != nil {
		if errors.Is(err, events.ErrInvalid) {
			if rev > f.rev {
				f.rev = rev
				f.log.Warn("ignoring invalid mode in KV", "revision", rev, "error", err)
			}
		} else {
			f.log.Debug("mode re-read failed", "error", err)
		}
		return ctx.Err() == nil
	}
	if rev > f.rev {
		f.rev = rev
	}
	return f.deliver(ctx, m, deliver)
}

// deliver hands m over unless its epoch is not newer than the last one
// delivered. It reports false when the follower must stop.
func (f *Follower) deliver(ctx context.Context, m events.ModeChanged, deliver func(context.Context, events.ModeChanged) bool) bool {
	if f.delivered && m.Epoch <= f.epoch {
		return true
	}
	if !deliver(ctx, m) {
		return false
	}
	f.delivered, f.epoch = true, m.Epoch
	return true
}

// link tracks the connection for a follower: its context ends when the
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
