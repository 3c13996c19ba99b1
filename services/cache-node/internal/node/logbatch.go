package node

import (
	"context"
	"errors"
	"sync/atomic"
)

// Group commit of the change log. A durable write is put in the log before
// it is acknowledged, and each log message is stored with an fsync: one
// message per write held buffered writes to the rate at which JetStream
// stores messages one by one (a fifth of what the buffer takes), although
// the buffer itself gathers them. The batcher gathers the entries of
// concurrent writes into one atomic batch (publishBatch: all or nothing,
// each entry expecting the sequence the index holds for its record), one
// batch at a time, so the batch grows with the load. Whatever it cannot
// decide goes back to its caller, which publishes alone with its own read
// and compare-and-set (publish): an entry whose record the index knows at an
// equal or newer version or without a sequence, a refused batch (another
// node logged one of its records meanwhile), a stream without atomic
// batches.

// errNotBatched answers a request the batch did not log.
var errNotBatched = errors.New("not logged by a batch")

type logReq struct {
	e    logEntry
	done chan error // buffered: the batcher never blocks on a caller
}

type logBatcher struct {
	l   *changeLog
	in  chan *logReq
	off atomic.Bool // the stream refused atomic batches
	// stopped is closed when run returns: requests then go straight to the log.
	stopped chan struct{}
	// batches and batched count the batches stored and the entries they carried.
	batches, batched atomic.Int64
}

func newLogBatcher(l *changeLog) *logBatcher {
	return &logBatcher{l: l, in: make(chan *logReq, maxLogBatch), stopped: make(chan struct{})}
}

// publish puts e in the log, in a batch when it can: it returns the version
// the log holds for e's record, e's own or a newer one, as changeLog.publish does.
func (b *logBatcher) publish(ctx context.Context, e logEntry) (int64, error) {
	if !b.off.Load() {
		r := &logReq{e: e, done: make(chan error, 1)}
		select {
		case b.in <- r:
			select {
			case err := <-r.done:
				if err == nil {
					return e.version, nil
				}
			case <-b.stopped:
				// Not answered, or answered as run stopped: logging it
				// again is harmless (the log then holds its version).
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		case <-b.stopped:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return b.l.publish(ctx, e)
}

// run gathers and publishes batches until ctx is done; requests still
// waiting then go back to their callers.
func (b *logBatcher) run(ctx context.Context) {
	defer close(b.stopped)
	// What the batch would refuse goes back at once rather than sink it.
	admit := func(r *logReq) bool {
		if !b.l.batchable(r.e) {
			r.done <- errNotBatched
			return false
		}
		return true
	}
	var carry []*logReq
	for {
		batch, next, ok := gatherBatch(ctx, b.in, carry, maxLogBatch, func(r *logReq) int64 { return r.e.id }, admit)
		if !ok {
			b.drain()
			return
		}
		carry = next
		b.publishBatch(ctx, batch)
	}
}

func (b *logBatcher) publishBatch(ctx context.Context, batch []*logReq) {
	entries := make([]logEntry, len(batch))
	for i, r := range batch {
		entries[i] = r.e
	}
	err := b.store(ctx, entries)
	for _, r := range batch {
		if err != nil {
			r.done <- errNotBatched
			continue
		}
		r.done <- nil
	}
}

// store puts entries in the log as one atomic batch and counts it; a
// stream that takes no atomic batches turns batching off.
func (b *logBatcher) store(ctx context.Context, entries []logEntry) error {
	err := b.l.publishBatch(ctx, entries)
	if isAtomicUnsupported(err) {
		b.l.log.Warn("the change log takes no atomic batches: durable writes are logged one by one (provision the stream again with a NATS server of 2.12 or later)", "error", err)
		b.off.Store(true)
	}
	if err == nil {
		b.batches.Add(1)
		b.batched.Add(int64(len(entries)))
	}
	return err
}

func (b *logBatcher) drain() {
	for {
		select {
		case r := <-b.in:
			r.done <- errNotBatched
		default:
			return
		}
	}
}
