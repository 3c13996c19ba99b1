package node

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/topology"
)

// ErrBufferFull is returned when the buffer stream refuses a write because a
// limit was reached (BUFFER_MAX_MSGS, BUFFER_MAX_BYTES, or the server's
// JetStream storage); the write is answered 503, never 202.
var ErrBufferFull = errors.New("write buffer full")

// The JetStream error codes (nats-server's errors.json) of a publish that
// found no room.
const (
	// jsErrStreamStoreFailed is JSStreamStoreFailedF: the store refused
	// the message. A DiscardNew stream at a limit answers so ("maximum
	// messages exceeded", "maximum bytes exceeded"), but so does any other
	// store failure: only those limits count as full.
	jsErrStreamStoreFailed jetstream.ErrorCode = 10077
	// jsErrStorageResourcesExceeded is JSStorageResourcesExceededErr: the
	// server's JetStream storage is used up.
	jsErrStorageResourcesExceeded jetstream.ErrorCode = 10047
	// jsErrInsufficientResources is JSInsufficientResourcesErr.
	jsErrInsufficientResources jetstream.ErrorCode = 10028
)

// isBufferFull tells whether a publish to the buffer was refused for want of room.
func isBufferFull(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	switch apiErr.ErrorCode {
	case jsErrStorageResourcesExceeded, jsErrInsufficientResources:
		return true
	case jsErrStreamStoreFailed:
		return strings.Contains(apiErr.Description, "maximum messages") || strings.Contains(apiErr.Description, "maximum bytes")
	}
	return false
}

// buffer appends writes to the durable JetStream buffer with group commit:
// writes arriving together are gathered for up to window (or max writes) into
// one message, and every waiting writer is answered only after JetStream
// acknowledged that message. The stream fsyncs before acknowledging when the
// server runs with sync_interval: always, so an acknowledged write survives a
// NATS restart or power loss.
type buffer struct {
	js      jetstream.JetStream
	subject string
	window  time.Duration
	max     int
	timeout time.Duration
	reqs    chan bufReq
	done    chan struct{}
}

type bufReq struct {
	enc []byte // the encoded events.BufferedWrite
	res chan error
}

// flushers is the number of batches that may be in flight at once.
const flushers = 4

func newBuffer(js jetstream.JetStream, subject string, window time.Duration, max int, timeout time.Duration) (*buffer, error) {
	if js == nil || subject == "" || max < 1 || timeout <= 0 {
		return nil, errors.New("buffer: invalid arguments")
	}
	return &buffer{js: js, subject: subject, window: window, max: max, timeout: timeout,
		reqs: make(chan bufReq), done: make(chan struct{})}, nil
}

// append blocks until w, with body as its record's encoding (nil for a
// delete), is durably buffered or it failed.
func (b *buffer) append(ctx context.Context, w events.BufferedWrite, body []byte) error {
	enc, err := encodeBufferedWrite(w, body)
	if err != nil {
		return err
	}
	req := bufReq{enc: enc, res: make(chan error, 1)}
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	select {
	case b.reqs <- req:
	case <-b.done:
		return errors.New("buffer closed")
	case <-ctx.Done():
		return fmt.Errorf("buffer append: %w", ctx.Err())
	}
	// Once handed over, wait for the verdict even past ctx: the write may be
	// durable, and the caller must not answer 503 for a write that was kept.
	return <-req.res
}

func (b *buffer) run(ctx context.Context) {
	sem := make(chan struct{}, flushers)
	var carry *bufReq
	for {
		var first bufReq
		if carry != nil {
			first, carry = *carry, nil
		} else {
			select {
			case <-ctx.Done():
				b.drainRefuse()
				// Wait for the batches in flight: their writers get their
				// verdict before the connection goes.
				for range flushers {
					sem <- struct{}{}
				}
				return
			case first = <-b.reqs:
			}
		}
		batch := []bufReq{first}
		bytes := len(first.enc)
		// take adds r to the batch; a write that would push the message past
		// the size limit is carried over to open the next batch instead.
		take := func(r bufReq) {
			if bytes+len(r.enc)+64 > maxBatchBytes {
				carry = &r
				return
			}
			batch = append(batch, r)
			bytes += len(r.enc)
		}
		timer := time.NewTimer(b.window)
	gather:
		for carry == nil && len(batch) < b.max {
			select {
			case r := <-b.reqs:
				take(r)
			case <-timer.C:
				break gather
			}
		}
		timer.Stop()
		// While every flusher is busy, the batch keeps taking writes (up to
		// its limits) instead of making them wait for the next one: under
		// load the messages grow, and JetStream stores fewer of them.
		acquired := false
	wait:
		for carry == nil && len(batch) < b.max {
			select {
			case sem <- struct{}{}:
				acquired = true
				break wait
			case r := <-b.reqs:
				take(r)
			}
		}
		if !acquired {
			sem <- struct{}{}
		}
		go func(batch []bufReq) {
			defer func() { <-sem }()
			err := b.publish(batch)
			for _, r := range batch {
				r.res <- err
			}
		}(batch)
	}
}

// maxBatchBytes keeps a group-committed message under the stream's message
// size limit with room for the JSON envelope. One record re-encodes to at most
// twice MaxRecordBytes (U+2028 escapes), so a single write always fits.
const maxBatchBytes = topology.MaxBufferMsgBytes - 16<<10

func (b *buffer) drainRefuse() {
	close(b.done)
	for {
		select {
		case r := <-b.reqs:
			r.res <- errors.New("buffer closed")
		default:
			return
		}
	}
}

func (b *buffer) publish(batch []bufReq) error {
	writes := make([][]byte, len(batch))
	for i, r := range batch {
		writes[i] = r.enc
	}
	msg := &nats.Msg{Subject: b.subject, Data: encodeBatch(writes), Header: nats.Header{}}
	msg.Header.Set(events.HeaderWrites, strconv.Itoa(len(batch)))
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	defer cancel()
	// The message id lets JetStream drop a duplicate if the client retries the publish.
	_, err := b.js.PublishMsg(ctx, msg, jetstream.WithMsgID(watermill.NewUUID()), jetstream.WithRetryAttempts(3), jetstream.WithRetryWait(100*time.Millisecond))
	if err != nil {
		if isBufferFull(err) {
			return fmt.Errorf("%w: %w", ErrBufferFull, err)
		}
		return fmt.Errorf("buffer publish: %w", err)
	}
	return nil
}
