// Package wmnats wires watermill to NATS the way AniVault needs it: publishers
// for core and JetStream subjects that leave payloads as plain JSON, a
// subscriber bound to an explicitly created durable consumer (never an
// implicit or ephemeral one), message metadata carrying the stream sequence
// and timestamp, and a router with the standard middleware.
//
// Durable consumers are read by this package's own pull loop (Durable), not
// by watermill-nats' JetStream subscriber: that one pulled 500 messages ahead
// of a one-at-a-time handler (so under a backlog JetStream delivered most of
// them again) and could send on its closed output channel when stopped.
//
// Subscribers drain their connection on Close, so every subscriber is given
// a connection of its own.
package wmnats

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmn "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Metadata keys set on messages received through a durable consumer.
const (
	MetaSubject     = "nats_subject"
	MetaStreamSeq   = "nats_stream_seq"
	MetaTimestamp   = "nats_timestamp_ns"
	MetaDeliveries  = "nats_num_delivered"
	MetaPoisonError = "poison_reason"
)

// Logger adapts slog for watermill, demoting watermill's per-message Info
// logs to Debug so that a busy router does not flood the log.
func Logger(log *slog.Logger) watermill.LoggerAdapter {
	return watermill.NewSlogLoggerWithLevelMapping(log, map[slog.Level]slog.Level{
		slog.LevelInfo: slog.LevelDebug,
	})
}

// NewJetStreamPublisher publishes to subjects captured by a stream and waits for
// the stream's acknowledgement. Topics are full subjects. It never creates streams.
func NewJetStreamPublisher(nc *nats.Conn, log watermill.LoggerAdapter) (message.Publisher, error) {
	p, err := wmn.NewPublisherWithNatsConn(nc, wmn.PublisherPublishConfig{
		Marshaler:         &wmn.NATSMarshaler{},
		SubjectCalculator: wmn.DefaultSubjectCalculator,
		JetStream:         wmn.JetStreamConfig{AutoProvision: false, TrackMsgId: true},
	}, log)
	if err != nil {
		return nil, fmt.Errorf("jetstream publisher: %w", err)
	}
	return p, nil
}

// PublishJetStream publishes msg as NewJetStreamPublisher would (the same
// encoding, its UUID as the message id for the stream's dedupe) but within
// ctx: watermill's Publish takes no context, so a caller with a deadline
// uses this.
func PublishJetStream(ctx context.Context, js jetstream.JetStream, subject string, msg *message.Message) error {
	nm, err := (&wmn.NATSMarshaler{}).Marshal(subject, msg)
	if err != nil {
		return fmt.Errorf("encode %s: %w", subject, err)
	}
	if _, err := js.PublishMsg(ctx, nm, jetstream.WithMsgID(msg.UUID)); err != nil {
		return fmt.Errorf("publish %s: %w", subject, err)
	}
	return nil
}

// NewCorePublisher publishes on core NATS (fire and forget).
func NewCorePublisher(nc *nats.Conn, log watermill.LoggerAdapter) (message.Publisher, error) {
	p, err := wmn.NewPublisherWithNatsConn(nc, wmn.PublisherPublishConfig{
		Marshaler:         &wmn.NATSMarshaler{},
		SubjectCalculator: wmn.DefaultSubjectCalculator,
		JetStream:         wmn.JetStreamConfig{Disabled: true},
	}, log)
	if err != nil {
		return nil, fmt.Errorf("core publisher: %w", err)
	}
	return p, nil
}

// NewCoreSubscriber subscribes on core NATS; every subscriber gets every message.
// It takes ownership of nc and drains it on Close.
func NewCoreSubscriber(nc *nats.Conn, log watermill.LoggerAdapter) (message.Subscriber, error) {
	s, err := wmn.NewSubscriberWithNatsConn(nc, wmn.SubscriberSubscriptionConfig{
		Unmarshaler:       coreUnmarshaler{},
		SubjectCalculator: wmn.DefaultSubjectCalculator,
		AckWaitTimeout:    30 * time.Second,
		SubscribersCount:  1,
		JetStream:         wmn.JetStreamConfig{Disabled: true},
	}, log)
	if err != nil {
		return nil, fmt.Errorf("core subscriber: %w", err)
	}
	return s, nil
}

// NewDurableSubscriber consumes from the existing durable pull consumer
// consumer on stream, whatever topic it is subscribed with, one message at a
// time in the consumer's order (see Durable). It takes ownership of nc and
// drains it on Close. Messages are acknowledged after the handler returns nil
// and negatively acknowledged (with nakDelay) on error.
func NewDurableSubscriber(nc *nats.Conn, stream, consumer string, nakDelay time.Duration, log watermill.LoggerAdapter) (message.Subscriber, error) {
	if log == nil {
		log = watermill.NopLogger{}
	}
	s, err := NewDurable(nc, DurableConfig{
		Stream: stream, Consumer: consumer, NakDelay: nakDelay,
		Logger: slog.New(wmSlog{log: log}),
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// jsUnmarshaler never fails: watermill-nats' jetstream subscriber dereferences
// a nil message on an unmarshal error, so bad payloads go to the handler, which
// validates them and sends them to the poison queue.
type jsUnmarshaler struct{}

func (jsUnmarshaler) Unmarshal(m jetstream.Msg) (*message.Message, error) {
	md := make(message.Metadata)
	for k, v := range m.Headers() {
		if len(v) > 0 && k != wmn.WatermillUUIDHdr {
			md.Set(k, v[0])
		}
	}
	md.Set(MetaSubject, m.Subject())
	id := m.Headers().Get(wmn.WatermillUUIDHdr)
	if meta, err := m.Metadata(); err == nil {
		md.Set(MetaStreamSeq, strconv.FormatUint(meta.Sequence.Stream, 10))
		md.Set(MetaTimestamp, strconv.FormatInt(meta.Timestamp.UnixNano(), 10))
		md.Set(MetaDeliveries, strconv.FormatUint(meta.NumDelivered, 10))
		if id == "" {
			id = fmt.Sprintf("%s-%d", meta.Stream, meta.Sequence.Stream)
		}
	}
	if id == "" {
		id = watermill.NewUUID()
	}
	wm := message.NewMessage(id, m.Data())
	wm.Metadata = md
	return wm, nil
}

// coreUnmarshaler converts a core NATS message. It also clears the message's
// reply subject, which makes watermill-nats' Ack a no-op: events such as
// db.health are published through JetStream, so their reply subject is the
// publisher's PubAck inbox. Acknowledging into it (watermill-nats sends
// AckSync and waits up to 5 s for an answer that never comes) stalls the
// subscription to one message per 5 s, and the publisher may read the "+ACK"
// as its PubAck and fail ("invalid jetstream publish response"). A core
// subscriber of events has nothing to acknowledge.
type coreUnmarshaler struct{}

func (coreUnmarshaler) Unmarshal(m *nats.Msg) (*message.Message, error) {
	m.Reply = ""
	md := make(message.Metadata)
	for k, v := range m.Header {
		if len(v) > 0 && k != wmn.WatermillUUIDHdr {
			md.Set(k, v[0])
		}
	}
	md.Set(MetaSubject, m.Subject)
	id := m.Header.Get(wmn.WatermillUUIDHdr)
	if id == "" {
		id = watermill.NewUUID()
	}
	wm := message.NewMessage(id, m.Data)
	wm.Metadata = md
	return wm, nil
}

// Permanent marks an error that no retry can fix (bad input): the router's
// poison-queue middleware moves such a message to the poison subject and
// acknowledges it, instead of redelivering it forever.
type Permanent struct{ Err error }

func (p *Permanent) Error() string { return "permanent: " + p.Err.Error() }
func (p *Permanent) Unwrap() error { return p.Err }

// IsPermanent reports whether err is marked Permanent.
func IsPermanent(err error) bool {
	var p *Permanent
	return errors.As(err, &p)
}

// RouterConfig configures NewRouter.
type RouterConfig struct {
	// PoisonPublisher and PoisonTopic receive messages failing with a Permanent error.
	PoisonPublisher message.Publisher
	PoisonTopic     string
	// Retry is how many times a handler is retried in process on a transient error before the message is nacked.
	Retry           int
	RetryInitial    time.Duration
	RetryMaxTimeout time.Duration
}

// NewRouter returns a router with the middleware every AniVault consumer uses:
// correlation ids, the poison queue for permanent errors, retry with backoff
// for the others, and panic recovery innermost (a panic becomes an error).
func NewRouter(cfg RouterConfig, log watermill.LoggerAdapter) (*message.Router, error) {
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, log)
	if err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	r.AddMiddleware(middleware.CorrelationID)
	if cfg.PoisonPublisher != nil && cfg.PoisonTopic != "" {
		pq, err := middleware.PoisonQueueWithFilter(cfg.PoisonPublisher, cfg.PoisonTopic, IsPermanent)
		if err != nil {
			return nil, fmt.Errorf("poison queue: %w", err)
		}
		r.AddMiddleware(pq)
	}
	if cfg.Retry > 0 {
		if cfg.RetryInitial <= 0 {
			cfg.RetryInitial = 100 * time.Millisecond
		}
		if cfg.RetryMaxTimeout <= 0 {
			cfg.RetryMaxTimeout = 5 * time.Second
		}
		retry := middleware.Retry{
			MaxRetries:          cfg.Retry,
			InitialInterval:     cfg.RetryInitial,
			MaxInterval:         time.Second,
			Multiplier:          2,
			MaxElapsedTime:      cfg.RetryMaxTimeout,
			RandomizationFactor: 0.5,
			ShouldRetry: func(p middleware.RetryParams) bool {
				return !IsPermanent(p.Err)
			},
			Logger: log,
		}
		r.AddMiddleware(retry.Middleware)
	}
	r.AddMiddleware(middleware.Recoverer)
	return r, nil
}
