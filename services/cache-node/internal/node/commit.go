package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/anivault/anivault/pkg/metastore"
)

// Group commit of committed writes. Concurrent writes in normal mode share
// one statement in PostgreSQL and one atomic batch in the change log, so a
// node commits many writes in the time of one: a write waits for the batch
// in flight, then goes with everything that arrived meanwhile. Each request
// is still answered only after its own row committed and its entry is in the
// log, with its own outcome.
//
// The two stages run one batch each at a time and overlap: while the log
// takes batch k, PostgreSQL takes batch k+1. Whatever the group path cannot
// decide falls back to the single-write path: a failing statement (each
// write is then tried alone, and buffered if the database is unavailable,
// as before), a write that met a newer row, a log batch refused (a record
// written meanwhile by another node: each entry is then put in the log with
// its own compare-and-set).

// The headers of JetStream's atomic batch publish (ADR-50).
const (
	headerBatchID     = "Nats-Batch-Id"
	headerBatchSeq    = "Nats-Batch-Sequence"
	headerBatchCommit = "Nats-Batch-Commit"
)

// logBatchTimeout bounds the wait for a batch's acknowledgement (a lost
// reply must not hold the group commit: its writes are then logged one by one).
const logBatchTimeout = 5 * time.Second

// maxLogBatch is the most entries one atomic batch holds (the server's limit is 1,000).
const maxLogBatch = 500

// commitOutcome is what the group path did with one write.
type commitOutcome int

const (
	// notGrouped: nothing was decided; the caller writes alone.
	notGrouped commitOutcome = iota
	// committedOnly: the row is committed; the caller puts it in the log.
	committedOnly
	// committedLogged: the row is committed and in the log, cached and announced.
	committedLogged
)

type commitReq struct {
	w    metastore.Write
	le   logEntry
	done chan commitResult // buffered: the committer never blocks on a caller
}

type commitResult struct {
	outcome commitOutcome
	err     error // why the write was not grouped, for the log
}

// committer runs the two stages of the group commit.
type committer struct {
	commitDeps
	in    chan *commitReq
	toLog chan []*commitReq
	max   int
	// batches and grouped count statements and the writes they carried.
	batches, grouped atomic.Int64
	// atomicOff is set once the change log refused atomic batches (a
	// stream without AllowAtomicPublish, a server before 2.12).
	atomicOff atomic.Bool
	// stopped is closed when run returns: writes then go alone at once.
	stopped chan struct{}
}

var errCommitterStopped = errors.New("group commit stopped")

// commitDeps is what the group commit uses of the rest of the node.
type commitDeps struct {
	Log *slog.Logger
	// Apply runs one statement for the writes, within the database budget
	// and through the breaker.
	Apply func(ctx context.Context, writes []metastore.Write) (metastore.Result, error)
	// LogBatch puts entries in the change log as one atomic batch.
	LogBatch func(ctx context.Context, entries []logEntry) error
	// Logged is told of each write committed and logged by a batch (it
	// counts, caches and announces it) before its caller is answered.
	Logged func(le logEntry)
}

// newCommitter makes a group commit of at most max writes a statement
// (DB_GROUP_COMMIT_MAX).
func newCommitter(max int, deps commitDeps) (*committer, error) {
	if max < 2 || deps.Log == nil || deps.Apply == nil || deps.LogBatch == nil || deps.Logged == nil {
		return nil, fmt.Errorf("committer: group of %d or a missing dependency", max)
	}
	return &committer{commitDeps: deps, in: make(chan *commitReq, max), toLog: make(chan []*commitReq, 1), max: max,
		stopped: make(chan struct{})}, nil
}

// newCommitter makes the node's group commit, on its database (through the
// breaker and retries) and its change log.
func (n *Node) newCommitter() (*committer, error) {
	return newCommitter(n.cfg.DBGroupCommitMax, commitDeps{
		Log: n.log,
		Apply: func(ctx context.Context, writes []metastore.Write) (res metastore.Result, err error) {
			err = n.dbCall(ctx, opWrite, func(ctx context.Context) error {
				res, err = n.store.ApplyBatch(ctx, writes)
				return err
			})
			return res, err
		},
		LogBatch: n.changes.publishBatch,
		Logged: func(le logEntry) {
			n.metrics.writes.WithLabelValues(StatusCommitted).Inc()
			n.applyLocal(le.id, le.version, le.body)
			n.publishChanged(le.id, le.version, false, le.body)
		},
	})
}

// run runs both stages until ctx is done; requests still waiting are
// answered notGrouped, so their callers write alone.
func (c *committer) run(ctx context.Context) {
	defer close(c.stopped)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.logStage(ctx)
	}()
	c.dbStage(ctx)
	close(c.toLog)
	<-done
	for {
		select {
		case r := <-c.in:
			r.done <- commitResult{outcome: notGrouped, err: ctx.Err()}
		default:
			return
		}
	}
}

// submit hands w to the group commit and waits for its outcome. A request
// whose context ends first is answered by its context's error; its write
// may still be committed by the batch, as a single write could be.
func (c *committer) submit(ctx context.Context, w metastore.Write, le logEntry) (commitOutcome, error) {
	r := &commitReq{w: w, le: le, done: make(chan commitResult, 1)}
	select {
	case c.in <- r:
	case <-c.stopped:
		return notGrouped, errCommitterStopped
	case <-ctx.Done():
		return notGrouped, ctx.Err()
	}
	select {
	case res := <-r.done:
		return res.outcome, res.err
	case <-c.stopped:
		// Answered as run stopped, or not at all: either way not grouped.
		select {
		case res := <-r.done:
			return res.outcome, res.err
		default:
			return notGrouped, errCommitterStopped
		}
	case <-ctx.Done():
		return notGrouped, ctx.Err()
	}
}

// dbStage gathers what is waiting into one statement (gatherBatch) and
// commits it, until ctx is done.
func (c *committer) dbStage(ctx context.Context) {
	var carry []*commitReq
	for {
		batch, next, ok := gatherBatch(ctx, c.in, carry, c.max, func(r *commitReq) int64 { return r.w.TMDBID }, nil)
		if !ok {
			return
		}
		carry = next
		c.commit(ctx, batch)
	}
}

func (c *committer) abandon(rs []*commitReq, err error) {
	for _, r := range rs {
		r.done <- commitResult{outcome: notGrouped, err: err}
	}
}

// commit runs one statement for batch and passes the writes it applied to
// the log stage.
func (c *committer) commit(ctx context.Context, batch []*commitReq) {
	writes := make([]metastore.Write, len(batch))
	for i, r := range batch {
		writes[i] = r.w
	}
	start := time.Now()
	res, err := c.Apply(ctx, writes)
	c.batches.Add(1)
	c.grouped.Add(int64(len(batch)))
	c.Log.Debug("group commit statement", "writes", len(batch), "applied", res.Applied, "took", time.Since(start), "error", errString(err))
	if err != nil {
		// Each write is tried alone: one bad row must not fail the others,
		// and an unavailable database sends each to the buffer.
		c.abandon(batch, fmt.Errorf("group commit of %d writes: %w", len(batch), err))
		return
	}
	applied := batch[:0:0]
	for _, r := range batch {
		if v, ok := res.AppliedKeys[r.w.TMDBID]; ok && v == r.w.Version {
			applied = append(applied, r)
			continue
		}
		// The row holds a version at least as new: the single path finds
		// out which and answers as before.
		r.done <- commitResult{outcome: notGrouped, err: errors.New("the row holds a version at least as new")}
	}
	if len(applied) == 0 {
		return
	}
	select {
	case c.toLog <- applied:
	case <-ctx.Done():
		for _, r := range applied {
			r.done <- commitResult{outcome: committedOnly, err: ctx.Err()}
		}
	}
}

// logStage puts each committed batch in the change log as one atomic batch.
func (c *committer) logStage(ctx context.Context) {
	for batch := range c.toLog {
		for len(batch) > 0 {
			part := batch[:min(len(batch), maxLogBatch)]
			batch = batch[len(part):]
			entries := make([]logEntry, len(part))
			for i, r := range part {
				entries[i] = r.le
			}
			var err error
			if c.atomicOff.Load() {
				err = errAtomicOff
			} else {
				start := time.Now()
				err = c.LogBatch(ctx, entries)
				c.Log.Debug("group commit log batch", "entries", len(entries), "took", time.Since(start), "error", errString(err))
				if isAtomicUnsupported(err) {
					c.Log.Warn("the change log takes no atomic batches: committed writes are logged one by one (provision the stream again with a NATS server of 2.12 or later)", "error", err)
					c.atomicOff.Store(true)
				}
			}
			if err != nil {
				for _, r := range part {
					r.done <- commitResult{outcome: committedOnly, err: err}
				}
				continue
			}
			for _, r := range part {
				c.Logged(r.le)
				r.done <- commitResult{outcome: committedLogged}
			}
		}
	}
}

var errAtomicOff = errors.New("atomic batches are off")

// isAtomicUnsupported tells whether err says the stream does not take
// atomic batches at all (as opposed to refusing this one).
func isAtomicUnsupported(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jsErrCodeAtomicPublishDisabled
}

// jsErrCodeAtomicPublishDisabled is JSAtomicPublishDisabledErr ("atomic
// publish is disabled"); nats.go has no constant for it.
const jsErrCodeAtomicPublishDisabled jetstream.ErrorCode = 10174

// publishBatch puts entries (one per record) in the log as one atomic batch:
// all or none. Each entry carries the sequence the node's index holds for
// its record as the expected last sequence of its subject, so the batch is
// refused if any record was logged meanwhile by someone else (then each is
// published alone, with its own read and compare-and-set). An entry whose
// record the index knows at an equal or newer version, or without a known
// sequence, refuses the batch before it is sent.
func (l *changeLog) publishBatch(ctx context.Context, entries []logEntry) error {
	nc := l.js.Conn()
	msgs := make([]*nats.Msg, len(entries))
	for i, e := range entries {
		v, seq, known := l.lastEntry(e.id)
		if !known || v >= e.version {
			return fmt.Errorf("change log batch: tmdb:%d is at version %d (sequence known: %v) in the index", e.id, v, known)
		}
		msg, err := l.message(e)
		if err != nil {
			return err
		}
		msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(seq, 10))
		msgs[i] = msg
	}
	id := nuid.Next()
	for i, msg := range msgs {
		msg.Header.Set(headerBatchID, id)
		msg.Header.Set(headerBatchSeq, strconv.Itoa(i+1))
		if i < len(msgs)-1 {
			if err := nc.PublishMsg(msg); err != nil {
				return fmt.Errorf("change log batch: %w", err)
			}
		}
	}
	last := msgs[len(msgs)-1]
	last.Header.Set(headerBatchCommit, "1")
	rctx, cancel := context.WithTimeout(ctx, logBatchTimeout)
	defer cancel()
	resp, err := nc.RequestMsgWithContext(rctx, last)
	if err != nil {
		return fmt.Errorf("change log batch commit: %w", err)
	}
	var ack struct {
		Error     *jetstream.APIError `json:"error"`
		Sequence  uint64              `json:"seq"`
		BatchSize int                 `json:"count"`
	}
	if err := json.Unmarshal(resp.Data, &ack); err != nil {
		return fmt.Errorf("change log batch commit: bad reply: %w", err)
	}
	if ack.Error != nil {
		return fmt.Errorf("change log batch of %d: %w", len(msgs), ack.Error)
	}
	// An atomic batch is stored in one piece: entry i is at first+i.
	first := ack.Sequence + 1 - uint64(len(entries))
	for i, e := range entries {
		l.observe(e.id, e.version, e.deleted, first+uint64(i))
	}
	return nil
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
