package wmnats

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DurableConfig configures NewDurable.
type DurableConfig struct {
	// Stream and Consumer name the existing durable pull consumer. Required.
	Stream, Consumer string
	// MaxInFlight is how many messages are handed out at once; the
	// subscriber never pulls more than it can hand out, so no message waits
	// in its memory. 1 (the default) hands them out one at a time, in the
	// consumer's order.
	MaxInFlight int
	// NakDelay is how long JetStream waits before it delivers a nacked message again.
	NakDelay time.Duration
	// HandleTimeout bounds the handling of one message: a message neither
	// acked nor nacked by then is nacked and its context cancelled (the
	// context carries no deadline, so calls that bound themselves when it
	// has none, as nats.go requests do, keep their bounds). Default 1 minute.
	HandleTimeout time.Duration
	// FetchWait is how long one pull request waits on the server for
	// messages before the subscriber pulls again. Default 5 s.
	FetchWait time.Duration
	// AckTimeout bounds one acknowledgement (the server confirms each);
	// an unconfirmed one is sent again, up to AckAttempts times. Defaults
	// 2 s and 5.
	AckTimeout  time.Duration
	AckAttempts int
	// CloseTimeout is how long Close waits for the messages in flight to be
	// acked or nacked by their handlers before it gives them back. Default 10 s.
	CloseTimeout time.Duration
	// Logger receives warnings (a pull or an ack failing, a handler
	// timing out) and debug lines; nil discards them.
	Logger *slog.Logger
}

func (c *DurableConfig) withDefaults() error {
	if c.Stream == "" || c.Consumer == "" {
		return errors.New("durable subscriber: stream and consumer are required")
	}
	if c.MaxInFlight < 0 || c.NakDelay < 0 || c.HandleTimeout < 0 || c.FetchWait < 0 || c.AckTimeout < 0 || c.AckAttempts < 0 || c.CloseTimeout < 0 {
		return errors.New("durable subscriber: negative setting")
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = 1
	}
	if c.HandleTimeout == 0 {
		c.HandleTimeout = time.Minute
	}
	if c.FetchWait == 0 {
		c.FetchWait = 5 * time.Second
	}
	if c.FetchWait < 500*time.Millisecond {
		return fmt.Errorf("durable subscriber: fetch wait %v is below 500ms", c.FetchWait)
	}
	if c.AckTimeout == 0 {
		c.AckTimeout = 2 * time.Second
	}
	if c.AckAttempts == 0 {
		c.AckAttempts = 5
	}
	if c.CloseTimeout == 0 {
		c.CloseTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// DurableStats counts what a Durable subscriber did.
type DurableStats struct {
	// Delivered messages were received from the consumer and handed out;
	// Redelivered of them carried a delivery count above 1.
	Delivered, Redelivered int64
	// Acked and Nacked messages were confirmed by the server / given back.
	Acked, Nacked int64
	// AckFailures are acknowledgements never confirmed after every attempt
	// (the message comes back after the consumer's ack wait).
	AckFailures int64
	// FetchErrors are pull requests that failed (no leader, no connection,
	// a missed heartbeat, ...); each is followed by a new one.
	FetchErrors int64
}

// Durable is a watermill subscriber of an existing durable pull consumer.
// It pulls with short, bounded pull requests, only as many messages as it
// can hand out at once, and reports progress to JetStream while a handler
// works, so a message never waits in the subscriber's memory beyond the
// consumer's ack wait (where JetStream would deliver it again elsewhere). A
// failed pull (a leader election, a lost connection, a consumer briefly
// missing, a missed heartbeat) is followed by another, so consumption never
// stops for good while the subscriber runs. Acknowledgements are confirmed
// by the server and sent again when unconfirmed. Close stops pulling, waits
// for the messages in flight and closes the output channels only after
// every sender has returned.
//
// It takes ownership of its connection and drains it on Close.
type Durable struct {
	nc  *nats.Conn
	js  jetstream.JetStream
	cfg DurableConfig
	log *slog.Logger

	mu      sync.Mutex
	closed  bool
	closing chan struct{}
	loops   sync.WaitGroup

	delivered, redelivered, acked, nacked, ackFailures, fetchErrors atomic.Int64
}

var _ message.Subscriber = (*Durable)(nil)

// ErrSubscriberClosed is returned by Subscribe after Close.
var ErrSubscriberClosed = errors.New("durable subscriber closed")

// NewDurable returns a subscriber of cfg's durable consumer on nc.
func NewDurable(nc *nats.Conn, cfg DurableConfig) (*Durable, error) {
	if nc == nil {
		return nil, errors.New("durable subscriber: nil connection")
	}
	if err := cfg.withDefaults(); err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("durable subscriber: %w", err)
	}
	return &Durable{
		nc: nc, js: js, cfg: cfg, closing: make(chan struct{}),
		log: cfg.Logger.With("stream", cfg.Stream, "consumer", cfg.Consumer),
	}, nil
}

// Stats returns the subscriber's counters.
func (s *Durable) Stats() DurableStats {
	return DurableStats{
		Delivered: s.delivered.Load(), Redelivered: s.redelivered.Load(),
		Acked: s.acked.Load(), Nacked: s.nacked.Load(),
		AckFailures: s.ackFailures.Load(), FetchErrors: s.fetchErrors.Load(),
	}
}

// Subscribe hands out the consumer's messages, whatever the topic, until ctx
// ends or the subscriber is closed; then the channel is closed. A message's
// context is derived from ctx and cancelled after HandleTimeout.
func (s *Durable) Subscribe(ctx context.Context, _ string) (<-chan *message.Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrSubscriberClosed
	}
	out := make(chan *message.Message)
	s.loops.Add(1)
	go s.run(ctx, out)
	return out, nil
}

// Close stops every subscription, waits up to CloseTimeout (plus the last
// acknowledgements) for the messages in flight, then drains the connection.
func (s *Durable) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.closing)
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.loops.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-time.After(s.cfg.CloseTimeout + time.Duration(s.cfg.AckAttempts)*s.cfg.AckTimeout + time.Second):
		err = fmt.Errorf("durable subscriber %s/%s: messages still in flight after %v", s.cfg.Stream, s.cfg.Consumer, s.cfg.CloseTimeout)
	}
	if derr := s.nc.Drain(); derr != nil && !errors.Is(derr, nats.ErrConnectionClosed) {
		err = errors.Join(err, fmt.Errorf("drain connection: %w", derr))
	}
	return err
}

// run pulls and hands out messages until ctx ends or the subscriber closes.
// out is closed last, once every goroutine that sends on it has returned.
func (s *Durable) run(ctx context.Context, out chan *message.Message) {
	defer s.loops.Done()
	stopCtx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		select {
		case <-s.closing:
			stop()
		case <-stopCtx.Done():
		}
	}()
	var handlers sync.WaitGroup
	defer func() {
		handlers.Wait()
		close(out)
	}()

	cons, ackWait := s.bind(stopCtx)
	if cons == nil {
		return
	}
	// Progress reports keep a message with the node handling it: well
	// within the ack wait, so one lost report does not matter.
	progress := max(ackWait/3, 500*time.Millisecond)

	slots := make(chan struct{}, s.cfg.MaxInFlight)
	var (
		failures int
		failedAt time.Time
	)
	for {
		// Pull only what can be handed out now: at least one free slot, and
		// every other one free at this moment.
		select {
		case slots <- struct{}{}:
		case <-stopCtx.Done():
			return
		}
		want := 1
	free:
		for want < s.cfg.MaxInFlight {
			select {
			case slots <- struct{}{}:
				want++
			default:
				break free
			}
		}
		began := time.Now()
		got, err := s.fetch(stopCtx, cons, want, func(msg jetstream.Msg) {
			handlers.Add(1)
			go func() {
				defer handlers.Done()
				defer func() { <-slots }()
				s.handle(ctx, stopCtx, msg, out, progress)
			}()
		})
		for range want - got {
			<-slots
		}
		if stopCtx.Err() != nil {
			return
		}
		if err != nil {
			s.fetchErrors.Add(1)
			failures++
			if failures == 1 {
				failedAt = time.Now()
				s.log.Warn("pulling from the durable consumer failed; pulling again", "error", err)
			} else {
				s.log.Debug("pulling from the durable consumer failed again", "error", err, "failures", failures)
			}
			if !sleep(stopCtx, backoff(failures)) {
				return
			}
			continue
		}
		if failures > 0 {
			s.log.Info("pulling from the durable consumer works again", "failures", failures, "after", time.Since(failedAt).Round(time.Millisecond).String())
			failures = 0
		}
		if got == 0 && time.Since(began) < 100*time.Millisecond {
			// An empty answer at once (a server shutting down): do not spin.
			if !sleep(stopCtx, 100*time.Millisecond) {
				return
			}
		}
	}
}

// bind looks the consumer up, retrying until it answers or stopCtx ends,
// and returns it with its ack wait.
func (s *Durable) bind(stopCtx context.Context) (jetstream.Consumer, time.Duration) {
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(stopCtx, 5*time.Second)
		c, err := s.js.Consumer(ctx, s.cfg.Stream, s.cfg.Consumer)
		cancel()
		if err == nil {
			ackWait := c.CachedInfo().Config.AckWait
			if ackWait <= 0 {
				ackWait = 30 * time.Second // the server's default
			}
			if attempt > 1 {
				s.log.Info("durable consumer found", "attempts", attempt)
			}
			return c, ackWait
		}
		if stopCtx.Err() != nil {
			return nil, 0
		}
		if attempt == 1 || attempt%30 == 0 {
			s.log.Warn("durable consumer not available yet; retrying", "error", err, "attempts", attempt)
		}
		if !sleep(stopCtx, backoff(attempt)) {
			return nil, 0
		}
	}
}

// fetch sends one pull request for up to want messages and passes each to
// deliver as it arrives. It returns how many came, and the error that ended
// the pull early (a pull that simply expired is no error).
func (s *Durable) fetch(stopCtx context.Context, cons jetstream.Consumer, want int, deliver func(jetstream.Msg)) (int, error) {
	// The request expires on the server a little before this context ends
	// (nats.go keeps a tenth of the time, at most 1 s, for the answer).
	fctx, cancel := context.WithTimeout(stopCtx, s.cfg.FetchWait+time.Second)
	defer cancel()
	batch, err := cons.Fetch(want, jetstream.FetchContext(fctx), jetstream.FetchHeartbeat(s.cfg.FetchWait/4))
	if err != nil {
		return 0, err
	}
	got := 0
	for msg := range batch.Messages() {
		got++
		deliver(msg)
	}
	err = batch.Error()
	switch {
	case err == nil, errors.Is(err, context.DeadlineExceeded) && stopCtx.Err() == nil:
		return got, nil
	case errors.Is(err, jetstream.ErrConsumerLeadershipChanged):
		// The request went to a leader that stepped down: pull again at once.
		s.log.Debug("consumer leadership changed; pulling again")
		return got, nil
	}
	return got, err
}

// handle hands msg out on out and settles it with the server once the
// handler acked or nacked it; meanwhile it reports progress so that the
// message stays with this subscriber.
func (s *Durable) handle(ctx, stopCtx context.Context, msg jetstream.Msg, out chan<- *message.Message, progress time.Duration) {
	wm := toMessage(msg)
	s.delivered.Add(1)
	if wm.Metadata.Get(MetaDeliveries) != "1" {
		s.redelivered.Add(1)
	}
	// The context is cancelled, not given a deadline: calls in the handler
	// that bound themselves only when their context has no deadline (nats.go
	// requests: 5 s) keep their own bounds.
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wm.SetContext(hctx)
	timeout := time.NewTimer(s.cfg.HandleTimeout)
	defer timeout.Stop()
	select {
	case out <- wm:
	case <-stopCtx.Done():
		s.nak(msg, 0) // not handed out: another subscriber takes it now
		return
	}
	tick := time.NewTicker(progress)
	defer tick.Stop()
	stopping := stopCtx.Done()
	var grace <-chan time.Time
	for {
		select {
		case <-wm.Acked():
			s.ack(msg, wm.UUID)
			return
		case <-wm.Nacked():
			s.nak(msg, s.cfg.NakDelay)
			return
		case <-tick.C:
			if err := msg.InProgress(); err != nil {
				s.log.Debug("progress report failed", "id", wm.UUID, "error", err)
			}
		case <-timeout.C:
			s.log.Warn("message neither acknowledged nor rejected in time: given back", "id", wm.UUID, "timeout", s.cfg.HandleTimeout.String())
			cancel()
			s.nak(msg, 0)
			return
		case <-hctx.Done(): // the subscription's context ended
			s.nak(msg, 0)
			return
		case <-stopping:
			// Closing: the handler may still finish; wait a while for it.
			stopping = nil
			grace = time.After(s.cfg.CloseTimeout)
		case <-grace:
			s.nak(msg, 0)
			return
		}
	}
}

// ack acknowledges msg and waits for the server's confirmation, sending it
// again when none comes (a reply lost in a leader election). A message whose
// acknowledgement is never confirmed comes back after the ack wait; handlers
// are idempotent.
func (s *Durable) ack(msg jetstream.Msg, id string) {
	var err error
	for attempt := 1; attempt <= s.cfg.AckAttempts; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.AckTimeout)
		err = msg.DoubleAck(ctx)
		cancel()
		if err == nil || errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
			s.acked.Add(1)
			return
		}
		if errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrConnectionDraining) {
			break
		}
		if attempt < s.cfg.AckAttempts {
			time.Sleep(backoff(attempt))
		}
	}
	s.ackFailures.Add(1)
	s.log.Warn("acknowledgement not confirmed: the message will be delivered again after the ack wait", "id", id, "attempts", s.cfg.AckAttempts, "error", err)
}

// nak gives msg back, to be delivered again after delay.
func (s *Durable) nak(msg jetstream.Msg, delay time.Duration) {
	var err error
	if delay > 0 {
		err = msg.NakWithDelay(delay)
	} else {
		err = msg.Nak()
	}
	s.nacked.Add(1)
	if err != nil {
		s.log.Debug("nak failed: the message comes back after the ack wait", "error", err)
	}
}

// toMessage converts a JetStream message (jsUnmarshaler never fails).
func toMessage(m jetstream.Msg) *message.Message {
	wm, _ := jsUnmarshaler{}.Unmarshal(m)
	return wm
}

// backoff is the wait after the n-th consecutive failure: 100 ms doubling to 2 s.
func backoff(n int) time.Duration {
	d := 100 * time.Millisecond
	for i := 1; i < n && d < 2*time.Second; i++ {
		d *= 2
	}
	return min(d, 2*time.Second)
}

// sleep waits d or until ctx ends; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// wmSlog forwards slog records to a watermill logger, for callers that hold
// one: warnings and errors as errors, info as info, the rest as debug.
type wmSlog struct {
	log   watermill.LoggerAdapter
	attrs []slog.Attr
}

func (h wmSlog) Enabled(context.Context, slog.Level) bool { return true }

func (h wmSlog) Handle(_ context.Context, r slog.Record) error {
	fields := make(watermill.LogFields, len(h.attrs)+r.NumAttrs())
	for _, a := range h.attrs {
		fields[a.Key] = a.Value.Any()
	}
	var errValue error
	r.Attrs(func(a slog.Attr) bool {
		if e, ok := a.Value.Any().(error); ok && a.Key == "error" {
			errValue = e
			return true
		}
		fields[a.Key] = a.Value.Any()
		return true
	})
	switch {
	case r.Level >= slog.LevelWarn:
		h.log.Error(r.Message, errValue, fields)
	case r.Level >= slog.LevelInfo:
		h.log.Info(r.Message, fields)
	default:
		h.log.Debug(r.Message, fields)
	}
	return nil
}

func (h wmSlog) WithAttrs(attrs []slog.Attr) slog.Handler {
	return wmSlog{log: h.log, attrs: append(append([]slog.Attr(nil), h.attrs...), attrs...)}
}

func (h wmSlog) WithGroup(string) slog.Handler { return h }
