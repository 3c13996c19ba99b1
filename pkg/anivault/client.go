package anivault

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/modefollow"
)

// Defaults applied to zero Options fields.
const (
	// DefaultPublishTimeout bounds one publish attempt, acknowledgement included.
	DefaultPublishTimeout = 5 * time.Second
	// DefaultMaxRetries is how often a failed publish is retried after the first attempt.
	DefaultMaxRetries = 10
	// DefaultRetryBackoff is the wait before the first retry; it doubles with
	// every further retry, up to MaxRetryBackoff.
	DefaultRetryBackoff = 100 * time.Millisecond
	// DefaultRequestTimeout bounds one request-reply call or KV read.
	DefaultRequestTimeout = 5 * time.Second
	// DefaultWatchPollInterval is how often WatchMode re-reads the mode key as
	// a safety net beside its KV watcher.
	DefaultWatchPollInterval = time.Second
	// MaxRetryBackoff caps the exponential backoff between publish attempts
	// (unless RetryBackoff itself is larger).
	MaxRetryBackoff = 5 * time.Second
)

// Options configures a Client. The zero value is usable: every zero field
// takes its default.
type Options struct {
	// Prefix is the system's SUBJECT_PREFIX ("" for none). It is applied to
	// every subject and to the KV bucket name, exactly as the services do.
	Prefix string
	// PublishTimeout bounds one publish attempt, from sending the message to
	// the stream's acknowledgement. Default DefaultPublishTimeout.
	PublishTimeout time.Duration
	// MaxRetries is how often Upsert and Delete retry a transient failure
	// after the first attempt. Zero means DefaultMaxRetries; a negative value
	// disables retries. Keep all attempts of one call (their timeouts and
	// backoff) within the metadata stream's duplicate window, 2 minutes:
	// only inside it does the message id stop a retry from being stored
	// twice. The defaults take at most about 80s.
	MaxRetries int
	// RetryBackoff is the wait before the first retry; it doubles with every
	// further retry up to MaxRetryBackoff, with jitter so that many producers
	// do not retry in lockstep after a server restart. Default DefaultRetryBackoff.
	RetryBackoff time.Duration
	// RequestTimeout bounds one request-reply call (Get, Status and the
	// operator calls) and one KV read. Default DefaultRequestTimeout.
	RequestTimeout time.Duration
	// WatchPollInterval is how often WatchMode re-reads the mode key beside
	// its KV watcher, which bounds how long a change the watcher missed goes
	// unnoticed. Default DefaultWatchPollInterval.
	WatchPollInterval time.Duration
	// Logger receives debug logs of retries and watcher restarts, and
	// warnings (an undecodable mode in the bucket). Nil discards them.
	Logger *slog.Logger
}

// withDefaults validates o and fills its zero fields.
func (o Options) withDefaults() (Options, error) {
	var errs []error
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"PublishTimeout", o.PublishTimeout}, {"RetryBackoff", o.RetryBackoff},
		{"RequestTimeout", o.RequestTimeout}, {"WatchPollInterval", o.WatchPollInterval},
	} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative, got %s", d.name, d.v))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return o, fmt.Errorf("anivault options: %w", err)
	}
	if o.PublishTimeout == 0 {
		o.PublishTimeout = DefaultPublishTimeout
	}
	switch {
	case o.MaxRetries == 0:
		o.MaxRetries = DefaultMaxRetries
	case o.MaxRetries < 0:
		o.MaxRetries = 0
	}
	if o.RetryBackoff == 0 {
		o.RetryBackoff = DefaultRetryBackoff
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.WatchPollInterval == 0 {
		o.WatchPollInterval = DefaultWatchPollInterval
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

// Client publishes writes, reads records and follows the system's mode over
// one NATS connection. It is safe for concurrent use.
type Client struct {
	nc    *nats.Conn
	js    jetstream.JetStream
	subj  events.Subjects
	opts  Options
	log   *slog.Logger
	owned bool

	modes *modefollow.Bucket // the mode bucket, looked up on first use

	mu       sync.Mutex
	closed   bool
	done     chan struct{} // closed by Close: stops the watchers
	watchers sync.WaitGroup
}

// New returns a Client over nc, which the caller owns and closes after Close.
// Create nc with nats.MaxReconnects(-1): with the library's default of 60
// attempts a long outage closes the connection for good, and no retry can
// help after that. A short nats.ReconnectWait (say 250ms) shortens the time a
// server restart costs.
func New(nc *nats.Conn, opts Options) (*Client, error) {
	if nc == nil {
		return nil, errors.New("anivault new: nil NATS connection")
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("anivault new: %w", err)
	}
	subj := events.NewSubjects(opts.Prefix)
	return &Client{
		nc:    nc,
		js:    js,
		subj:  subj,
		opts:  opts,
		log:   opts.Logger,
		modes: modefollow.NewBucket(js, subj),
		done:  make(chan struct{}),
	}, nil
}

// Connect dials url and returns a Client that owns the connection and closes
// it in Close. The connection reconnects forever (nats.MaxReconnects(-1)),
// every 250ms with jitter; it does not buffer publishes while disconnected (a
// publish fails fast and is retried instead); and it pings every 5s, so that
// a silently dead link is noticed in about 10s rather than minutes. natsOpts
// are applied after these defaults, so they may add to or override them
// (credentials, TLS, a name).
func Connect(url string, opts Options, natsOpts ...nats.Option) (*Client, error) {
	all := append([]nats.Option{
		nats.Name("anivault-client"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.ReconnectBufSize(-1),
		nats.Timeout(2 * time.Second),
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(2),
	}, natsOpts...)
	nc, err := nats.Connect(url, all...)
	if err != nil {
		return nil, fmt.Errorf("anivault connect: %w", err)
	}
	c, err := New(nc, opts)
	if err != nil {
		nc.Close()
		return nil, err
	}
	c.owned = true
	return c, nil
}

// Conn returns the client's NATS connection.
func (c *Client) Conn() *nats.Conn { return c.nc }

// Close stops every WatchMode (their channels close) and waits for them;
// calls made after Close fail with ErrClosed. It closes the connection only
// when Connect created it. Close is idempotent and always returns nil; it
// returns an error so that Client is an io.Closer.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.done)
	c.mu.Unlock()
	c.watchers.Wait()
	if c.owned {
		c.nc.Close()
	}
	return nil
}

func (c *Client) isClosed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}
