package main

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/anivault/anivault/deployments/local/stack"
	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/metastore"
)

// ReplayResult is phase 3.
type ReplayResult struct {
	Writes        int
	WritesPerMsg  int
	Default       *replayRun
	Trials        []*replayRun // other REPLAY_BATCH_SIZE values
	RowsAfter     int
	CeilingChunk  int
	Ceiling       time.Duration // set-based ApplyBatch, chunks of CeilingChunk, one goroutine
	NaiveN        int
	Naive         time.Duration // NaiveN one-row upserts, one goroutine
	NaiveExtrap   time.Duration // extrapolated to Writes
	Ratio         float64       // ceiling time / replay time (throughput ratio)
	CeilingCPU    cpuUsage
	BestRatio     float64
	BestBatchSize int
	Big           *bigReplay
}

// bigReplay is the replay of messages as large as group commit makes them.
type bigReplay struct {
	Run          *replayRun
	PerMsg       int
	RowsPerFetch int
	Limit        time.Duration
	RowsAfter    int
}

const bigBase = 70_000_000

// replayBig fills the buffer with n writes in messages of per writes and
// times their replay with the default REPLAY_BATCH_SIZE, giving up after a
// limit; then it finishes the replay with a smaller REPLAY_BATCH_SIZE.
func (r *runner) replayBig(ctx context.Context, n, per int) (*bigReplay, error) {
	b := &bigReplay{PerMsg: per, RowsPerFetch: min(n, 500*per), Limit: 30 * time.Second}
	if err := r.waitNormalEmpty(ctx, time.Minute); err != nil {
		return b, err
	}
	if _, err := r.request(events.SubjectCacheOnlyEnter, `{"reason":"benchmark: large messages"}`); err != nil {
		return b, err
	}
	if _, err := r.waitModes(ctx, r.st.Nodes, events.ModeCacheOnly, 10*time.Second); err != nil {
		return b, err
	}
	r.say("replay: %d writes in messages of %d (one fetch of 500 messages = %d rows)", n, per, b.RowsPerFetch)
	msgs, err := r.publishBuffer(ctx, bigBase, n, per)
	if err != nil {
		return b, err
	}
	rr, err := r.timeReplayWithin(ctx, n, msgs, b.Limit)
	if err != nil {
		return b, err
	}
	rr.BatchSize = 500
	b.Run = rr
	r.say("  timed out: %v; %v; replay errors %d (%s); breaker opened %d times", rr.TimedOut, rr.RecoveringToNormal.Round(time.Millisecond), rr.ReplayErrors, rr.ReplayErrorSample, rr.BreakerOpened)
	if rr.TimedOut {
		if err := r.rescue(ctx, rr, max(1, 1000/per)); err != nil {
			return b, err
		}
	}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	b.RowsAfter, _ = countRange(cctx, r.mainStore, bigBase, n)
	cancel()
	return b, r.waitNormalEmpty(ctx, time.Minute)
}

const (
	replayBase  = 10_000_000
	ceilingBase = 20_000_000
	naiveBase   = 30_000_000
	trialBase   = 60_000_000
)

func (r *runner) phaseReplay(ctx context.Context) error {
	n := r.cfg.replayN
	per := int(math.Round(r.writesPerMsg))
	if per < 1 {
		per = 32
	}
	per = min(per, 256)
	res := &ReplayResult{Writes: n, WritesPerMsg: per, CeilingChunk: 5000, NaiveN: r.cfg.naiveN}
	r.rep.Replay = res

	run, err := r.replayOnce(ctx, replayBase, n, per, 500, 3*time.Minute)
	if err != nil {
		return err
	}
	res.Default = run
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	res.RowsAfter, _ = countRange(cctx, r.mainStore, replayBase, n)
	cancel()

	// The ceiling: the same rows, set-based, chunks of 5,000, one goroutine,
	// into a database of their own on the same server.
	writes := make([]metastore.Write, n)
	now := time.Now().UTC()
	for i := range writes {
		rec := r.record(i, int64(ceilingBase+i))
		writes[i] = metastore.Write{TMDBID: rec.TMDBID, Version: r.clock.Now(), UpdatedAt: now, Record: &rec}
	}
	r.say("replay: ceiling, %d rows by ApplyBatch in chunks of %d, one goroutine", n, res.CeilingChunk)
	cw := newCPUWatch(0)
	cw.begin()
	t0 := time.Now()
	for i := 0; i < n; i += res.CeilingChunk {
		actx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		_, err := r.benchStore.ApplyBatch(actx, writes[i:min(i+res.CeilingChunk, n)])
		cancel()
		if err != nil {
			return fmt.Errorf("ceiling: %w", err)
		}
	}
	res.Ceiling = time.Since(t0)
	cw.end(res.Ceiling.Seconds())
	res.CeilingCPU = cw.Result
	r.say("  %v (%.0f rows/s)", res.Ceiling, float64(n)/res.Ceiling.Seconds())

	// The naive way: one upsert per row, one goroutine.
	r.say("replay: naive, %d single-row upserts, one goroutine", res.NaiveN)
	t0 = time.Now()
	for i := range res.NaiveN {
		rec := r.record(i, int64(naiveBase+i))
		uctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := r.benchStore.Upsert(uctx, &rec, r.clock.Now(), now)
		cancel()
		if err != nil {
			return fmt.Errorf("naive: %w", err)
		}
	}
	res.Naive = time.Since(t0)
	res.NaiveExtrap = time.Duration(float64(res.Naive) * float64(n) / float64(res.NaiveN))
	r.say("  %v (extrapolated to %d: %v)", res.Naive, n, res.NaiveExtrap)

	// Full group-commit messages: the fetch is counted in messages, so one
	// fetch of 256-write messages is one very large statement, which must fit
	// in DB_TIMEOUT.
	if r.cfg.bigReplay > 0 {
		big, err := r.replayBig(ctx, r.cfg.bigReplay, 256)
		res.Big = big
		if err != nil {
			return err
		}
	}

	res.Ratio = res.Ceiling.Seconds() / run.RecoveringToNormal.Seconds()
	res.BestRatio, res.BestBatchSize = res.Ratio, 500
	r.say("replay: ceiling/replay = %.2f (goal ≥ 0.5)", res.Ratio)
	if res.Ratio >= 0.35 {
		return nil
	}
	// Far off: try other paces. One fetch of REPLAY_BATCH_SIZE messages is one statement.
	sizes := []int{250, 1000}
	base := int64(trialBase)
	for i, bs := range sizes {
		if bs == 500 || (i > 0 && bs == sizes[i-1]) {
			continue
		}
		if err := r.restartNodeA(ctx, map[string]string{"REPLAY_BATCH_SIZE": fmt.Sprint(bs)}); err != nil {
			return err
		}
		tr, err := r.replayOnce(ctx, base, n, per, bs, 90*time.Second)
		base += int64(n)
		if err != nil {
			return fmt.Errorf("trial REPLAY_BATCH_SIZE=%d: %w", bs, err)
		}
		res.Trials = append(res.Trials, tr)
		if q := res.Ceiling.Seconds() / tr.RecoveringToNormal.Seconds(); q > res.BestRatio {
			res.BestRatio, res.BestBatchSize = q, bs
		}
	}
	return r.restartNodeA(ctx, nil)
}

// replayOnce enters cache-only mode, fills the buffer with n writes and times
// their replay after cache_only.exit.
func (r *runner) replayOnce(ctx context.Context, base int64, n, per, batchSize int, limit time.Duration) (*replayRun, error) {
	if err := r.waitNormalEmpty(ctx, time.Minute); err != nil {
		return nil, err
	}
	from := r.ev.mark()
	if _, err := r.request(events.SubjectCacheOnlyEnter, `{"reason":"benchmark: replay"}`); err != nil {
		return nil, err
	}
	if _, err := r.waitModes(ctx, r.st.Nodes, events.ModeCacheOnly, 10*time.Second); err != nil {
		return nil, err
	}
	r.say("replay: filling the buffer with %d writes, %d per message (REPLAY_BATCH_SIZE=%d)", n, per, batchSize)
	t0 := time.Now()
	msgs, err := r.publishBuffer(ctx, base, n, per)
	if err != nil {
		return nil, err
	}
	got, _ := r.bufferMsgs(ctx)
	r.say("  %d messages published in %v; buffer holds %d", msgs, time.Since(t0).Round(time.Millisecond), got)
	_ = from
	rr, err := r.timeReplayWithin(ctx, n, msgs, limit)
	if err != nil {
		return nil, err
	}
	rr.BatchSize = batchSize
	r.say("  replay: recovering → normal %v (%.0f writes/s); node replay %v ms; replayed %d, stale %d; replay errors %d; timed out %v",
		rr.RecoveringToNormal.Round(time.Millisecond), rr.WritesPerSecond, rr.NodeReplayMS, rr.Replayed, rr.Stale, rr.ReplayErrors, rr.TimedOut)
	if rr.TimedOut {
		if err := r.rescue(ctx, rr, max(1, 1000/per)); err != nil {
			return rr, err
		}
	}
	return rr, nil
}

// restartNodeA restarts the node under test with extra settings.
func (r *runner) restartNodeA(ctx context.Context, extra map[string]string) error {
	r.stopNode(r.nodeA)
	n, err := r.st.StartNode(ctx, "node-1", r.nodeA.Addr, stack.MergeEnv(r.common, extra))
	if err != nil {
		return err
	}
	r.nodeA = n
	return nil
}

// rescue finishes a replay that did not end within its limit: the node is
// restarted with a REPLAY_BATCH_SIZE of batchSize, then with the defaults.
func (r *runner) rescue(ctx context.Context, rr *replayRun, batchSize int) error {
	rr.RescueBatchSize = batchSize
	r.say("  replay not finished after %v: restarting the node with REPLAY_BATCH_SIZE=%d to finish it", rr.RecoveringToNormal.Round(time.Second), batchSize)
	mark := r.ev.mark()
	t0 := time.Now()
	if err := r.restartNodeA(ctx, map[string]string{"REPLAY_BATCH_SIZE": fmt.Sprint(batchSize)}); err != nil {
		return err
	}
	if _, err := r.ev.wait(ctx, mark, 3*time.Minute, func(e event) bool {
		return e.Subject == events.SubjectModeNormal && e.num("epoch") > float64(rr.Epoch)
	}); err != nil {
		return fmt.Errorf("rescue: %w", err)
	}
	rr.RescueTime = time.Since(t0)
	r.say("  normal %v after the restart", rr.RescueTime.Round(time.Millisecond))
	return r.restartNodeA(ctx, nil)
}
