package anivault

import (
	"context"
	cryptorand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
)

// Ack is the stream's acknowledgement of a write.
type Ack struct {
	// Stream is the JetStream stream that stored the write.
	Stream string
	// Sequence is the write's sequence number in Stream.
	Sequence uint64
	// Duplicate is true when the stream had already stored this write (a
	// retry whose earlier attempt got through): it was not stored twice.
	Duplicate bool
	// MsgID is the JetStream message id every attempt of the call carried.
	MsgID string
	// Attempts is how many attempts the call took (1 without retries).
	Attempts int
}

// Upsert validates rec with the contract's rules and publishes it to
// metadata.upsert, returning once the stream has stored it. An invalid record
// returns its *events.ValidationError (naming the field; a record over
// events.MaxRecordBytes names its largest field and also matches
// events.ErrTooLarge) and nothing is sent. Version and UpdatedAt are assigned
// by the system and not sent; rec is not modified.
//
// A transient failure is retried with backoff (see Options); every attempt
// carries the same message id, so a write is stored once however often it was
// sent. If the retries run out the error matches ErrUnavailable; then, as
// when ctx ends or the client closes during the call, the write may or may
// not have been stored: calling Upsert again is safe, the last write of a key
// wins.
func (c *Client) Upsert(ctx context.Context, rec *events.Record) (Ack, error) {
	data, err := encodeRecord(rec)
	if err != nil {
		return Ack{}, err
	}
	return c.publish(ctx, events.SubjectMetadataUpsert, data)
}

// Delete publishes a delete of record id to metadata.delete, returning once
// the stream has stored it. Deletes are writes with a version of their own: a
// later upsert of id brings the record back, an older one never does. An id
// below 1 returns an *events.ValidationError naming tmdb_id and nothing is
// sent. Retries work as for Upsert.
func (c *Client) Delete(ctx context.Context, id int64) (Ack, error) {
	data, err := events.Marshal(events.DeleteRequest{TMDBID: id})
	if err != nil {
		return Ack{}, fmt.Errorf("anivault: encode delete: %w", err)
	}
	if _, err := events.DecodeDelete(data); err != nil {
		return Ack{}, err
	}
	return c.publish(ctx, events.SubjectMetadataDelete, data)
}

// encodeRecord validates rec and returns its JSON, checked with the very
// decoder the cache-nodes use, so that what passes here passes there.
func encodeRecord(rec *events.Record) ([]byte, error) {
	if rec == nil {
		return nil, &events.ValidationError{Message: "record is required"}
	}
	if err := rec.Validate(); err != nil {
		return nil, err
	}
	r := *rec
	r.Version, r.UpdatedAt = 0, nil
	data, err := events.Marshal(&r) // no HTML escaping: the size the server measures
	if err != nil {
		return nil, &events.ValidationError{Message: fmt.Sprintf("cannot encode record: %v", err)}
	}
	if _, err := events.DecodeRecord(data); err != nil {
		return nil, nameLargestField(err, data)
	}
	return data, nil
}

// nameLargestField gives an oversize record's validation error the name of
// its largest field, which is almost always the one to shorten. The error is
// copied from the events package's so that it keeps matching events.ErrTooLarge.
func nameLargestField(err error, data []byte) error {
	ve, ok := errors.AsType[*events.ValidationError](err)
	if !ok || ve.Field != "" || !errors.Is(err, events.ErrTooLarge) {
		return err
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal(data, &fields) != nil {
		return err
	}
	largest, size := "", 0
	for name, v := range fields {
		if len(v) > size {
			largest, size = name, len(v)
		}
	}
	named := *ve
	named.Field = largest
	named.Message = fmt.Sprintf("is %d bytes and makes the record %d bytes of JSON, the limit is %d",
		size, len(data), events.MaxRecordBytes)
	return &named
}

// publish sends data to the JetStream subject base, retrying transient
// failures with one message id for all attempts.
func (c *Client) publish(ctx context.Context, base string, data []byte) (Ack, error) {
	if c.isClosed() {
		return Ack{}, ErrClosed
	}
	subject := c.subj.Of(base)
	msgID := newMsgID()
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, c.opts.PublishTimeout)
		pa, err := c.js.Publish(actx, subject, data, jetstream.WithMsgID(msgID))
		cancel()
		if err == nil {
			return Ack{Stream: pa.Stream, Sequence: pa.Sequence, Duplicate: pa.Duplicate, MsgID: msgID, Attempts: attempt}, nil
		}
		if ctx.Err() != nil {
			return Ack{}, fmt.Errorf("anivault: publish %s (msg id %s, attempt %d): %w", base, msgID, attempt, ctx.Err())
		}
		if !c.transient(err) {
			return Ack{}, fmt.Errorf("anivault: publish %s (msg id %s): %w", base, msgID, err)
		}
		if attempt > c.opts.MaxRetries {
			return Ack{}, fmt.Errorf("anivault: publish %s (msg id %s) failed after %d attempts: %w: %w",
				base, msgID, attempt, ErrUnavailable, err)
		}
		wait := c.backoff(attempt)
		c.log.Debug("anivault publish failed, retrying", "subject", subject, "msg_id", msgID,
			"attempt", attempt, "wait", wait, "error", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return Ack{}, fmt.Errorf("anivault: publish %s (msg id %s, attempt %d): %w", base, msgID, attempt, ctx.Err())
		case <-c.done:
			t.Stop()
			return Ack{}, ErrClosed
		case <-t.C:
		}
	}
}

// backoff returns the wait after failed attempt n (1-based): RetryBackoff
// doubled n-1 times, capped, then jittered down by up to half so that many
// producers hit a restarted server at different times.
func (c *Client) backoff(n int) time.Duration {
	ceiling := max(MaxRetryBackoff, c.opts.RetryBackoff)
	d := c.opts.RetryBackoff
	for i := 1; i < n && d < ceiling; i++ {
		d *= 2
	}
	d = min(d, ceiling)
	return d/2 + rand.N(d/2+1)
}

// newMsgID returns a random id in UUID form (version 4), made once per call.
func newMsgID() string {
	var b [16]byte
	_, _ = cryptorand.Read(b[:]) // never fails: crypto/rand crashes the program instead
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}
