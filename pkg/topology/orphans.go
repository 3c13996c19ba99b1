package topology

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// ApplyFunc applies messages found in a stream. It returns nil only when
// every message may be removed from the stream.
type ApplyFunc func(ctx context.Context, msgs []*jetstream.RawStreamMsg) error

// SweepOrphans removes "orphans" from a work-queue stream: messages the
// stream still holds although its consumer has delivered them and seen them
// acknowledged (they are at or below the consumer's ack floor, and nothing is
// pending or in flight). NATS server restarts can leave such messages behind
// (nats-server issues 4736, 5214, 5542); the consumer never delivers them
// again, so without a sweep the stream never empties and anything waiting
// for an empty buffer waits for ever.
//
// An acknowledged message was normally applied already, but the sweep does
// not rely on it: apply receives every orphan (at most max per call) and
// only the messages it accepted are deleted. Applying twice must therefore be
// harmless, which versioned writes are. The sweep does nothing while the
// consumer has work pending, so it never races a normal delivery. It returns
// how many messages it removed.
func SweepOrphans(ctx context.Context, js jetstream.JetStream, stream, consumer string, max int, apply ApplyFunc) (int, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return 0, fmt.Errorf("orphan sweep: stream %s: %w", stream, err)
	}
	st := s.CachedInfo().State
	if st.Msgs == 0 {
		return 0, nil
	}
	c, err := s.Consumer(ctx, consumer)
	if err != nil {
		return 0, fmt.Errorf("orphan sweep: consumer %s: %w", consumer, err)
	}
	ci, err := c.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("orphan sweep: consumer %s: %w", consumer, err)
	}
	if ci.NumPending > 0 || ci.NumAckPending > 0 || ci.NumRedelivered > 0 {
		return 0, nil
	}
	floor := ci.AckFloor.Stream
	var msgs []*jetstream.RawStreamMsg
	for seq := st.FirstSeq; seq <= floor && len(msgs) < max; {
		// The next message at or after seq, skipping deleted sequences.
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(">"))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("orphan sweep: read %s at %d: %w", stream, seq, err)
		}
		if m.Sequence > floor {
			break
		}
		msgs = append(msgs, m)
		seq = m.Sequence + 1
	}
	if len(msgs) == 0 {
		return 0, nil
	}
	if err := apply(ctx, msgs); err != nil {
		return 0, fmt.Errorf("orphan sweep: apply %d messages of %s: %w", len(msgs), stream, err)
	}
	removed := 0
	for _, m := range msgs {
		err := s.DeleteMsg(ctx, m.Sequence)
		if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) && !isNoMessageFound(err) {
			return removed, fmt.Errorf("orphan sweep: delete %s seq %d: %w", stream, m.Sequence, err)
		}
		if err == nil {
			removed++
		}
	}
	return removed, nil
}

// isNoMessageFound matches the API error a delete of an already deleted
// message returns (another process swept it first).
func isNoMessageFound(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeMessageNotFound
}

// ErrWorkQueue is returned by TrimAcknowledged for a work-queue stream,
// whose acknowledged messages are deleted one by one as they are
// acknowledged (SweepOrphans removes those a NATS restart left behind).
var ErrWorkQueue = errors.New("the stream is a work queue")

// TrimAcknowledged removes from a limits-retention stream every message at or
// below consumer's ack floor: all of them were acknowledged, so applied (or
// terminated as poison). One purge removes them all, one write to the store
// where a work queue writes (and, syncing always, fsyncs) one deletion per
// acknowledgement. It returns how many messages it removed.
func TrimAcknowledged(ctx context.Context, js jetstream.JetStream, stream, consumer string) (uint64, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return 0, fmt.Errorf("trim: stream %s: %w", stream, err)
	}
	if s.CachedInfo().Config.Retention == jetstream.WorkQueuePolicy {
		return 0, fmt.Errorf("trim: stream %s: %w", stream, ErrWorkQueue)
	}
	st := s.CachedInfo().State
	if st.Msgs == 0 {
		return 0, nil
	}
	c, err := s.Consumer(ctx, consumer)
	if err != nil {
		return 0, fmt.Errorf("trim: consumer %s: %w", consumer, err)
	}
	floor := c.CachedInfo().AckFloor.Stream
	if floor < st.FirstSeq {
		return 0, nil
	}
	if err := s.Purge(ctx, jetstream.WithPurgeSequence(floor+1)); err != nil {
		return 0, fmt.Errorf("trim: purge %s below %d: %w", stream, floor+1, err)
	}
	return floor + 1 - st.FirstSeq, nil
}
