package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/metastore"
	"github.com/anivault/anivault/pkg/resilience"
	"github.com/anivault/anivault/pkg/topology"
)

// replayChunkRows bounds the rows of one replay statement.
const replayChunkRows = 1000

// replayState tracks the replay running for one recovering epoch.
type replayState struct {
	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
	epoch  int64
	// completed is the newest epoch this node reported replay.completed for.
	completed int64
}

func (r *replayState) stop() {
	r.mu.Lock()
	cancel, done := r.cancel, r.done
	r.cancel, r.done = nil, nil
	r.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

func (r *replayState) completedEpoch() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.completed
}

// replayer drains the shared write buffer into PostgreSQL: the replay of a
// recovering epoch (start, stop), the drain of writes the fast path buffered
// in normal mode (drainInBackground), and the sweep of messages a NATS
// restart left behind. A buffer message is acknowledged only after its
// writes committed; one that can never be applied goes to the poison
// stream.
type replayer struct {
	replayDeps
	cfg replayConfig

	run replayState // the replay of the current recovering epoch
	// drainMu lets one drain of the buffer run at a time in this node.
	drainMu sync.Mutex
	// replayed and stale count the writes applied and skipped since start.
	replayed, stale atomic.Int64
}

// replayConfig is the replay's part of the node's configuration.
type replayConfig struct {
	NodeID        string
	BatchSize     int           // REPLAY_BATCH_SIZE: messages a fetch
	MaxBytes      int           // REPLAY_MAX_BYTES: bytes a fetch
	BatchInterval time.Duration // REPLAY_BATCH_INTERVAL: the pause after a batch
}

// replayDeps is what the replayer uses of the rest of the node.
type replayDeps struct {
	Log      *slog.Logger
	JS       jetstream.JetStream
	Subjects events.Subjects
	// Apply applies one chunk of writes in one transaction, within the
	// database budget and through the breaker.
	Apply func(ctx context.Context, chunk []metastore.Write) (metastore.Result, error)
	// Logged puts the chunk's applied writes that the change log lacks in it.
	Logged func(ctx context.Context, chunk []metastore.Write, applied map[int64]int64)
	// Announce publishes replay.completed.
	Announce func(ctx context.Context, ev events.ReplayCompleted) error
	Metrics  replayMetrics
}

// replayMetrics are the replay's metrics.
type replayMetrics struct {
	Applied, Stale prometheus.Counter
	Duration       prometheus.Observer
}

// newReplayer makes the node's replayer, on the node's database (through
// its breaker and retries), change log and events.
func (n *Node) newReplayer() (*replayer, error) {
	return newReplayerOf(replayConfig{NodeID: n.cfg.NodeID, BatchSize: n.cfg.ReplayBatchSize,
		MaxBytes: n.cfg.ReplayMaxBytes, BatchInterval: n.cfg.ReplayBatchInterval}, replayDeps{
		Log: n.log, JS: n.js, Subjects: n.subj,
		Apply: func(ctx context.Context, chunk []metastore.Write) (res metastore.Result, err error) {
			err = n.dbCall(ctx, opReplay, func(ctx context.Context) error {
				res, err = n.store.ApplyBatchCopy(ctx, chunk)
				return err
			})
			return res, err
		},
		Logged: n.logReplayed,
		Announce: func(ctx context.Context, ev events.ReplayCompleted) error {
			return n.publishEvent(ctx, n.subj.Of(events.SubjectReplayCompleted), ev)
		},
		Metrics: replayMetrics{Applied: n.metrics.replayed, Stale: n.metrics.replayStale, Duration: n.metrics.replayTime},
	})
}

func newReplayerOf(cfg replayConfig, deps replayDeps) (*replayer, error) {
	switch {
	case cfg.NodeID == "" || cfg.BatchSize < 1 || cfg.MaxBytes < 1 || cfg.BatchInterval < 0:
		return nil, fmt.Errorf("replayer: invalid configuration %+v", cfg)
	case deps.Log == nil || deps.JS == nil || deps.Apply == nil || deps.Logged == nil || deps.Announce == nil ||
		deps.Metrics.Applied == nil || deps.Metrics.Stale == nil || deps.Metrics.Duration == nil:
		return nil, errors.New("replayer: missing dependency")
	}
	return &replayer{replayDeps: deps, cfg: cfg}, nil
}

// start drains the shared buffer for epoch in the background, after
// stopping the replay of an earlier epoch.
func (r *replayer) start(epoch int64) {
	r.run.stop()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	r.run.mu.Lock()
	r.run.cancel, r.run.done, r.run.epoch = cancel, done, epoch
	r.run.mu.Unlock()
	go func() {
		defer close(done)
		r.loop(ctx, epoch)
	}()
}

// stop ends the running replay, if any, and waits for it.
func (r *replayer) stop() { r.run.stop() }

// completedEpoch is the newest epoch this node reported replay.completed for.
func (r *replayer) completedEpoch() int64 { return r.run.completedEpoch() }

type replayCounts struct {
	replayed, stale, failed int64
}

// loop drains the buffer into PostgreSQL, retrying with backoff after a
// database failure for as long as the mode stays recovering at epoch. Buffer
// messages are acknowledged only after their batch committed.
func (r *replayer) loop(ctx context.Context, epoch int64) {
	start := time.Now()
	r.Log.Info("Recovery started: replaying buffered writes", "epoch", epoch)
	var total replayCounts
	backoff := 250 * time.Millisecond
	for ctx.Err() == nil {
		r.drainMu.Lock()
		done, err := r.drain(ctx, &total)
		r.drainMu.Unlock()
		if err == nil && done {
			break
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.Log.Warn("replay stopped by an error, will retry", "epoch", epoch, "error", err, "replayed", total.replayed)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Second)
		}
	}
	if ctx.Err() != nil {
		return
	}
	ev := events.ReplayCompleted{
		Envelope: events.Envelope{OccurredAt: time.Now().UTC(), Source: r.cfg.NodeID},
		Epoch:    epoch, Replayed: total.replayed, SkippedStale: total.stale, Failed: total.failed,
		DurationMS: time.Since(start).Milliseconds(),
	}
	r.Metrics.Duration.Observe(float64(ev.DurationMS) / 1000)
	// The buffer was drained: report it even if the mode moves on meanwhile
	// (the manager may already have announced normal), within a bound of its own.
	pctx, pcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer pcancel()
	for {
		err := r.Announce(pctx, ev)
		if err == nil {
			break
		}
		r.Log.Warn("publish replay.completed failed, retrying", "error", err)
		select {
		case <-pctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
	r.run.mu.Lock()
	if epoch > r.run.completed {
		r.run.completed = epoch
	}
	r.run.mu.Unlock()
	r.Log.Info("Replay completed", "epoch", epoch, "replayed", total.replayed, "skipped_stale", total.stale,
		"failed", total.failed, "duration_ms", ev.DurationMS)
}

// replayWorkers is how many appliers one drain runs at once, beside its
// fetcher: while one waits for PostgreSQL (its COPY, or its merge) the other
// has PostgreSQL work on its own, and the fetcher fetches the next batch, so
// the replay uses both the node's and the database's cores. Two connections
// at most: a database that just came back is not flattened.
const replayWorkers = 2

// fetchedBatch is one fetch of buffer messages and, once decoded, the
// writes they hold; bad[i] is why message i could not be decoded (nil if it
// could).
type fetchedBatch struct {
	msgs   []jetstream.Msg
	writes []metastore.Write
	bad    []error
}

// inProgress tells JetStream the batch is being worked on: its ack wait
// starts again.
func (b fetchedBatch) inProgress() {
	for _, m := range b.msgs {
		_ = m.InProgress()
	}
}

// nakAll hands the batch back for redelivery.
func (b fetchedBatch) nakAll() {
	for _, m := range b.msgs {
		_ = m.NakWithDelay(time.Second)
	}
}

// drain applies batches until the buffer is empty (done) or an error.
// One fetcher fetches, one batch ahead of the appliers; the
// first error stops them all, and the drain is retried whole (every batch
// not committed is handed back).
func (r *replayer) drain(ctx context.Context, total *replayCounts) (bool, error) {
	cons, err := r.JS.Consumer(ctx, r.Subjects.Name(events.StreamBuffer), r.Subjects.Name(events.ConsumerReplay))
	if err != nil {
		return false, err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches := make(chan fetchedBatch)
	counts := make([]replayCounts, replayWorkers)
	errs := make([]error, replayWorkers+1)
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(batches)
		if errs[replayWorkers] = r.fetch(wctx, cons, batches); errs[replayWorkers] != nil {
			cancel()
		}
	})
	for i := range replayWorkers {
		wg.Go(func() {
			for b := range batches {
				if errs[i] != nil || wctx.Err() != nil {
					b.nakAll()
					continue
				}
				if errs[i] = r.applyBatch(wctx, b, &counts[i]); errs[i] != nil {
					b.nakAll()
					cancel()
					continue
				}
				r.pause(wctx)
			}
		})
	}
	wg.Wait()
	for _, c := range counts {
		total.replayed += c.replayed
		total.stale += c.stale
		total.failed += c.failed
	}
	var first error
	for _, err := range errs {
		if err != nil && (first == nil || errors.Is(first, context.Canceled)) {
			first = err
		}
	}
	if first != nil {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		return false, first
	}
	if err := r.sweepOrphans(ctx, total); err != nil {
		return false, err
	}
	return true, nil
}

// pause waits REPLAY_BATCH_INTERVAL after a batch, the pace that
// spares a database that just came back.
func (r *replayer) pause(ctx context.Context) {
	if r.cfg.BatchInterval <= 0 {
		return
	}
	select {
	case <-ctx.Done():
	case <-time.After(r.cfg.BatchInterval):
	}
}

// fetch fetches batches for the appliers until the buffer is empty
// (nil) or an error.
func (r *replayer) fetch(ctx context.Context, cons jetstream.Consumer, out chan<- fetchedBatch) error {
	for ctx.Err() == nil {
		msgs, err := r.fetchBuffered(cons)
		if err != nil {
			return err
		}
		if len(msgs) == 0 {
			info, err := cons.Info(ctx)
			if err != nil {
				return err
			}
			// Empty means nothing pending and nothing in flight at any node
			// (this node's appliers included); a dead node's unacknowledged
			// messages come back after AckWait.
			if info.NumPending == 0 && info.NumAckPending == 0 {
				return nil
			}
			continue
		}
		// Decoded by the applier: a decoded batch holds two to three times
		// its bytes, and only the raw one waits here.
		if b := (fetchedBatch{msgs: msgs}); !handOver(ctx, out, b) {
			b.nakAll()
		}
	}
	return ctx.Err()
}

// handOver waits until an applier takes b (true) or ctx ends (false). While
// it waits behind busy appliers it tells JetStream every few seconds that
// the batch is in progress: a batch must not outwait the consumer's ack
// wait here and be delivered again, to another node, while this one still
// holds it.
func handOver(ctx context.Context, out chan<- fetchedBatch, b fetchedBatch) bool {
	t := time.NewTicker(topology.WriteAckWait / 4)
	defer t.Stop()
	for {
		select {
		case out <- b:
			return true
		case <-t.C:
			b.inProgress()
		case <-ctx.Done():
			return false
		}
	}
}

// fetchBuffered fetches the next batch of buffer messages (none when the
// fetch found nothing within its wait).
func (r *replayer) fetchBuffered(cons jetstream.Consumer) ([]jetstream.Msg, error) {
	// A fetch is bounded in messages (REPLAY_BATCH_SIZE) and in bytes
	// (REPLAY_MAX_BYTES): one group-committed message can hold up to 1 MiB,
	// and a fetch of REPLAY_BATCH_SIZE of them could exceed the node's
	// memory budget; after an OOM kill the batch would go to the next node,
	// and recovery could crash-loop across the fleet. Fetch with a byte
	// bound, not FetchBytes: FetchBytes asks for up to a million messages,
	// and the client sizes its channels by that count, 32 MB allocated by
	// every fetch whatever the messages hold (the heap profile of a replay:
	// the node's live heap stayed at 32 MB and its peak RSS near its 100 MiB
	// budget).
	batch, err := cons.Fetch(r.cfg.BatchSize, jetstream.FetchMaxBytes(r.cfg.MaxBytes), jetstream.FetchMaxWait(500*time.Millisecond))
	if err != nil {
		return nil, err
	}
	msgs := make([]jetstream.Msg, 0, min(r.cfg.BatchSize, 64))
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	// A fetch bounded in bytes may end with "batch completed" or "max bytes
	// exceeded" status: the end of this fetch, not a failure.
	if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) &&
		!errors.Is(err, jetstream.ErrBatchCompleted) && !errors.Is(err, jetstream.ErrMaxBytesExceeded) && len(msgs) == 0 {
		return nil, err
	}
	return msgs, nil
}

// applyBatch applies a fetched batch, copies what could not be decoded to
// the poison stream, and acknowledges the rest.
func (r *replayer) applyBatch(ctx context.Context, b fetchedBatch, total *replayCounts) error {
	msgs := b.msgs
	payloads := make([][]byte, len(msgs))
	for i, m := range msgs {
		payloads[i] = m.Data()
	}
	b.writes, b.bad = decodeBuffered(payloads)
	// Every committed statement extends the messages' ack wait, so a slow but
	// live replay keeps its batch and a dead node's batch returns soon.
	if err := r.applyDecoded(ctx, b.writes, b.bad, total, b.inProgress); err != nil {
		return err
	}
	bad := b.bad
	good := msgs[:0:0]
	for i, m := range msgs {
		if bad[i] != nil {
			// A message that can never be applied is copied to the poison
			// stream with its reason, then terminated and counted, not
			// retried for ever; while it cannot be copied it stays.
			seq := uint64(0)
			if meta, err := m.Metadata(); err == nil {
				seq = meta.Sequence.Stream
			}
			if err := r.poison(ctx, m.Data(), seq, bad[i]); err != nil {
				r.Log.Warn("undecodable buffer message kept: it could not be copied to the poison stream", "sequence", seq, "error", err)
				_ = m.NakWithDelay(5 * time.Second)
				continue
			}
			_ = m.Term()
			continue
		}
		good = append(good, m)
	}
	// Acknowledge in a pipeline and wait only for the last one: the server
	// processes acks in order, so when the last is confirmed all are.
	for i, m := range good {
		if i < len(good)-1 {
			if err := m.Ack(); err != nil {
				r.Log.Warn("ack of replayed buffer message failed", "error", err)
			}
			continue
		}
		// The batch is committed: its acknowledgement must not be cancelled
		// by another applier's failure stopping the drain (chaos seed 27:
		// the message came back and was counted again as stale).
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		err := m.DoubleAck(actx)
		cancel()
		if err != nil {
			// The batch is committed; a redelivery is harmless (versions make it stale).
			r.Log.Warn("ack of replayed buffer message failed", "error", err)
		}
	}
	return nil
}

// applyBuffered applies the writes of buffer messages and reports, for each
// message, why it could not be decoded (nil if it could): those are counted
// as failed and never retried. progress, if not nil, is called after each
// committed statement.
func (r *replayer) applyBuffered(ctx context.Context, payloads [][]byte, total *replayCounts, progress func()) (bad []error, err error) {
	writes, bad := decodeBuffered(payloads)
	return bad, r.applyDecoded(ctx, writes, bad, total, progress)
}

// applyDecoded applies decoded buffer writes; bad are the decode errors of
// their messages, counted as failed.
func (r *replayer) applyDecoded(ctx context.Context, writes []metastore.Write, bad []error, total *replayCounts, progress func()) error {
	for _, err := range bad {
		if err != nil {
			r.Log.Error("undecodable buffer message", "error", err)
			total.failed++
		}
	}
	// One fetch may hold many group-committed messages of up to hundreds of
	// writes each: apply them in statements of at most replayChunkRows rows,
	// each within its own database budget, so a large backlog never turns into
	// one statement that cannot finish in time. The messages are acknowledged
	// only after every chunk committed; a chunk applied before a failure is
	// harmless when the batch comes back (its versions make it stale).
	var applied, stale int64
	for start := 0; start < len(writes); start += replayChunkRows {
		chunk := writes[start:min(start+replayChunkRows, len(writes))]
		res, err := r.Apply(ctx, chunk)
		if err != nil {
			return err
		}
		applied += int64(res.Applied)
		stale += int64(res.Stale)
		r.Logged(ctx, chunk, res.AppliedKeys)
		if progress != nil && start+replayChunkRows < len(writes) {
			progress()
		}
	}
	total.replayed += applied
	total.stale += stale
	r.replayed.Add(applied)
	r.stale.Add(stale)
	r.Metrics.Applied.Add(float64(applied))
	r.Metrics.Stale.Add(float64(stale))
	return nil
}

// sweepOrphans applies and removes buffer messages that a NATS restart
// left in the stream after the replay consumer saw them acknowledged (see
// topology.SweepOrphans): the replay consumer will never deliver them, and
// the system would otherwise wait for an empty buffer for ever.
func (r *replayer) sweepOrphans(ctx context.Context, total *replayCounts) error {
	for {
		removed, err := topology.SweepOrphans(ctx, r.JS, r.Subjects.Name(events.StreamBuffer), r.Subjects.Name(events.ConsumerReplay), 500,
			func(ctx context.Context, msgs []*jetstream.RawStreamMsg) error {
				payloads := make([][]byte, len(msgs))
				for i, m := range msgs {
					payloads[i] = m.Data
				}
				bad, err := r.applyBuffered(ctx, payloads, total, nil)
				if err != nil {
					return err
				}
				// The sweep removes the messages: keep a copy of those that
				// could not be applied first.
				for i, reason := range bad {
					if reason != nil {
						if err := r.poison(ctx, msgs[i].Data, msgs[i].Sequence, reason); err != nil {
							return err
						}
					}
				}
				return nil
			})
		if err != nil {
			return err
		}
		if removed == 0 {
			return nil
		}
		r.Log.Warn("the write buffer held acknowledged messages after a NATS restart: applied them again (versions make repeats stale) and removed them", "messages", removed)
	}
}

// backgroundDrain replays writes buffered by the fast path (a transient
// database error too short for the monitor to declare an outage) in normal
// mode, and in recovering once this node's replay for the epoch is done:
// without it they would wait for the next outage's recovery, and the manager,
// which announces normal only with an empty buffer, would wait for ever.
func (n *Node) backgroundDrain(ctx context.Context) {
	if n.breaker.State() != resilience.StateClosed || n.bufStatus.Load().Pending == 0 {
		return
	}
	switch mc, _ := n.mode.get(); {
	case mc.Mode == events.ModeNormal:
	case mc.Mode == events.ModeRecovering && n.replayer.completedEpoch() >= mc.Epoch:
	default:
		return
	}
	n.replayer.drainInBackground(ctx)
}

// drainInBackground drains the buffer once, for up to 30 s, unless a drain
// is running already.
func (r *replayer) drainInBackground(ctx context.Context) {
	if !r.drainMu.TryLock() {
		return
	}
	defer r.drainMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var total replayCounts
	if _, err := r.drain(ctx, &total); err != nil && ctx.Err() == nil {
		r.Log.Warn("background drain of the write buffer stopped", "error", err)
	}
	if total.replayed+total.stale > 0 {
		r.Log.Info("drained writes buffered in normal mode", "replayed", total.replayed, "skipped_stale", total.stale)
	}
}

// Headers of a buffer message copied to the poison stream.
const (
	HeaderPoisonReason   = "AniVault-Poison-Reason"
	HeaderPoisonSequence = "AniVault-Buffer-Sequence"
)

// poison copies an undecodable buffer message to the poison stream
// (poison.buffer) with the reason it could not be applied and its buffer
// sequence, and waits for JetStream's acknowledgement: a write an operator
// may still recover is kept, never silently dropped.
func (r *replayer) poison(ctx context.Context, data []byte, seq uint64, reason error) error {
	msg := nats.NewMsg(r.Subjects.Of(events.SubjectPoisonBuffer))
	msg.Data = data
	msg.Header.Set(HeaderPoisonReason, reason.Error())
	msg.Header.Set(HeaderPoisonSequence, strconv.FormatUint(seq, 10))
	msg.Header.Set(events.HeaderSource, r.cfg.NodeID)
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := r.JS.PublishMsg(pctx, msg, jetstream.WithMsgID(fmt.Sprintf("buffer-poison-%d", seq))); err != nil {
		return fmt.Errorf("copy buffer message %d to the poison stream: %w", seq, err)
	}
	r.Log.Error("undecodable buffer message copied to the poison stream", "sequence", seq, "reason", reason)
	return nil
}
