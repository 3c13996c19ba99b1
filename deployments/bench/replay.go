package main

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/uptrace/bun/driver/pgdriver"

	"github.com/anivault/anivault/deployments/launch"
	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/metastore"
)

// ReplayResult is phase 3.
type ReplayResult struct {
	Writes       int
	WritesPerMsg int
	Default      *replayRun
	Trials       []*replayRun // other REPLAY_BATCH_SIZE values
	RowsAfter    int
	// The ceilings, on the same rows, in a second database on the same
	// server, timed by this process around each statement: CopyCeiling is
	// one COPY of all rows into a temporary table (the node's staging
	// table), Ceiling the set-based versioned upsert of all of them from
	// there, one INSERT … SELECT … ON CONFLICT DO UPDATE … WHERE version <
	// EXCLUDED.version RETURNING (metastore.UpsertFromSQL, the statement the
	// node's bulk apply runs), into fresh keys as the replay writes them;
	// CeilingNewer the same statement again with every version one higher
	// (every row updated).
	CopyCeiling  time.Duration
	Ceiling      time.Duration
	CeilingNewer time.Duration
	CeilingCPU   cpuUsage // during the COPY and the upsert
	// StoreBulk is Store.ApplyBatch (COPY and merge, one transaction per
	// chunk) in chunks of CeilingChunk, one goroutine: the node's apply
	// without NATS.
	CeilingChunk int
	StoreBulk    time.Duration
	NaiveN       int
	Naive        time.Duration // NaiveN one-row upserts, one goroutine
	NaiveExtrap  time.Duration // extrapolated to Writes
	// Ratio is the replay's rows/s over the set-based ceiling's (Ceiling /
	// replay time).
	Ratio         float64
	BestRatio     float64
	BestBatchSize int
	Big           *bigReplay
	// Unlogged is a replay of writes the change log lacks (a node died
	// between the buffer's acknowledgement and the log): the node logs each
	// one again during the replay.
	Unlogged *replayRun
}

// GoalRowsPerSec is issue 15's replay goal.
const replayGoalRowsPerSec = 50_000

// RowsPerSec returns the default replay's rows per second.
func (r *ReplayResult) RowsPerSec() float64 {
	if r.Default == nil || r.Default.RecoveringToNormal <= 0 {
		return 0
	}
	return float64(r.Writes) / r.Default.RecoveringToNormal.Seconds()
}

// CeilingRowsPerSec returns the set-based ceiling's rows per second.
func (r *ReplayResult) CeilingRowsPerSec() float64 {
	if r.Ceiling <= 0 {
		return 0
	}
	return float64(r.Writes) / r.Ceiling.Seconds()
}

// bigReplay is the replay of messages as large as group commit makes them.
type bigReplay struct {
	Run       *replayRun
	PerMsg    int
	Limit     time.Duration
	RowsAfter int
}

const bigBase = 70_000_000

// replayBig fills the buffer with n writes in messages of per writes and
// times their replay with the default REPLAY_BATCH_SIZE, giving up after a
// limit; then it finishes the replay with a smaller REPLAY_BATCH_SIZE.
func (r *runner) replayBig(ctx context.Context, n, per int) (*bigReplay, error) {
	b := &bigReplay{PerMsg: per, Limit: 30 * time.Second}
	if err := r.waitNormalEmpty(ctx, time.Minute); err != nil {
		return b, err
	}
	if _, err := r.request(events.SubjectCacheOnlyEnter, `{"reason":"benchmark: large messages"}`); err != nil {
		return b, err
	}
	if _, err := r.waitModes(ctx, r.st.Nodes, events.ModeCacheOnly, 10*time.Second); err != nil {
		return b, err
	}
	r.say("replay: %d writes in messages of %d", n, per)
	msgs, err := r.fillBuffer(ctx, bigBase, n, per, true)
	if err != nil {
		return b, err
	}
	rr, err := r.timeReplayWithin(ctx, n, msgs, b.Limit, false)
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
	replayBase   = 10_000_000
	ceilingBase  = 20_000_000
	naiveBase    = 30_000_000
	storeBase    = 40_000_000
	unloggedBase = 50_000_000
	trialBase    = 60_000_000
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
	r.waitBackfill(ctx, 3*time.Minute)

	run, err := r.replayOnce(ctx, replayBase, n, per, 500, 3*time.Minute, true, true)
	if err != nil {
		return err
	}
	res.Default = run
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	res.RowsAfter, _ = countRange(cctx, r.mainStore, replayBase, n)
	cancel()

	// The ceilings: the same rows, in a database of their own on the same server.
	writes := make([]metastore.Write, n)
	now := time.Now().UTC()
	for i := range writes {
		rec := r.record(i, int64(ceilingBase+i))
		writes[i] = metastore.Write{TMDBID: rec.TMDBID, Version: r.clock.Now(), UpdatedAt: now, Record: &rec}
	}
	if err := r.bulkCeilings(ctx, res, writes); err != nil {
		return fmt.Errorf("ceiling: %w", err)
	}

	// The store's own bulk apply, chunk by chunk, without NATS.
	for i := range writes {
		writes[i].TMDBID += storeBase - ceilingBase
		rec := *writes[i].Record
		rec.TMDBID = writes[i].TMDBID
		writes[i].Record = &rec
	}
	r.say("replay: Store.ApplyBatch, %d rows in chunks of %d, one goroutine", n, res.CeilingChunk)
	t0 := time.Now()
	for i := 0; i < n; i += res.CeilingChunk {
		actx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		_, err := r.benchStore.ApplyBatch(actx, writes[i:min(i+res.CeilingChunk, n)])
		cancel()
		if err != nil {
			return fmt.Errorf("store bulk apply: %w", err)
		}
	}
	res.StoreBulk = time.Since(t0)
	r.say("  %v (%.0f rows/s)", res.StoreBulk, float64(n)/res.StoreBulk.Seconds())

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

	// Writes the change log lacks: each is logged again during the replay.
	if un := n / 5; un > 0 {
		r.say("replay: %d writes the change log lacks", un)
		rr, err := r.replayOnce(ctx, unloggedBase, un, per, 500, 3*time.Minute, false, false)
		res.Unlogged = rr
		if err != nil {
			return fmt.Errorf("unlogged replay: %w", err)
		}
	}

	// Full group-commit messages: the fetch is bounded by REPLAY_MAX_BYTES,
	// and each chunk of it must fit in DB_TIMEOUT.
	if r.cfg.bigReplay > 0 {
		big, err := r.replayBig(ctx, r.cfg.bigReplay, 256)
		res.Big = big
		if err != nil {
			return err
		}
	}

	res.Ratio = res.Ceiling.Seconds() / run.RecoveringToNormal.Seconds()
	res.BestRatio, res.BestBatchSize = res.Ratio, 500
	r.say("replay: %.0f rows/s, set-based ceiling %.0f rows/s: ratio %.2f (goal ≥ %d rows/s and ≥ 0.5)", res.RowsPerSec(), res.CeilingRowsPerSec(), res.Ratio, replayGoalRowsPerSec)
	if res.Ratio >= 0.35 {
		return nil
	}
	// Far off: try other paces.
	sizes := []int{250, 1000}
	base := int64(trialBase)
	for i, bs := range sizes {
		if bs == 500 || (i > 0 && bs == sizes[i-1]) {
			continue
		}
		if err := r.restartNodeA(ctx, map[string]string{"REPLAY_BATCH_SIZE": fmt.Sprint(bs)}); err != nil {
			return err
		}
		tr, err := r.replayOnce(ctx, base, n, per, bs, 90*time.Second, true, false)
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

// waitBackfill waits until the node under test has compared the whole table
// with the change log once (it does after its first start, walking the
// table and reading the log): a replay timed during that walk measures both.
func (r *runner) waitBackfill(ctx context.Context, limit time.Duration) {
	deadline := time.Now().Add(limit)
	// The node's status says so: a node restarted after the backfill (the
	// ingest phase restarts it) finds it done and logs nothing.
	done := func() bool {
		st, err := r.nodeStatus(r.nodeA)
		return err == nil && st.ChangeLog != nil && st.ChangeLog.BackfillDone
	}
	for !done() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			r.say("replay: the node did not report its change log backfill complete within %v", limit)
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// bulkCeilings times, on one connection of the bench database, a COPY of
// writes into a temporary table (as the node's bulk apply stages them), then
// the set-based versioned upsert of all of them from there into fresh keys,
// then the same upsert with every version one higher.
func (r *runner) bulkCeilings(ctx context.Context, res *ReplayResult, writes []metastore.Write) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	conn, err := r.benchStore.DB().Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	const stage = "bench_stage"
	if _, err := conn.ExecContext(ctx, "DROP TABLE IF EXISTS "+stage+"; CREATE TEMP TABLE "+stage+" (LIKE anime_metadata)"); err != nil {
		return err
	}
	defer func() { _, _ = conn.ExecContext(context.WithoutCancel(ctx), "DROP TABLE IF EXISTS "+stage) }()
	src, err := metastore.NewCopyReader(writes)
	if err != nil {
		return err
	}
	upsert := func() (int, error) {
		rows, err := conn.QueryContext(ctx, metastore.UpsertFromSQL(stage))
		if err != nil {
			return 0, err
		}
		k := 0
		for rows.Next() {
			k++
		}
		if err := rows.Close(); err != nil {
			return k, err
		}
		return k, rows.Err()
	}
	n := len(writes)
	r.say("replay: ceilings, %d rows: one COPY into a temporary table, then one INSERT … SELECT … ON CONFLICT DO UPDATE … RETURNING", n)
	cw := newCPUWatch(0)
	cw.begin()
	t0 := time.Now()
	if _, err := pgdriver.CopyFrom(ctx, conn, src, "COPY "+stage+" ("+metastore.CopyColumns+") FROM STDIN"); err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	res.CopyCeiling = time.Since(t0)
	t1 := time.Now()
	applied, err := upsert()
	if err != nil {
		return fmt.Errorf("upsert: %w", err)
	}
	res.Ceiling = time.Since(t1)
	cw.end(time.Since(t0).Seconds())
	res.CeilingCPU = cw.Result
	if applied != n {
		return fmt.Errorf("the ceiling's upsert wrote %d of %d rows", applied, n)
	}
	if _, err := conn.ExecContext(ctx, "UPDATE "+stage+" SET version = version + 1"); err != nil {
		return err
	}
	t2 := time.Now()
	if applied, err = upsert(); err != nil || applied != n {
		return fmt.Errorf("upsert of newer versions: %d of %d rows: %v", applied, n, err)
	}
	res.CeilingNewer = time.Since(t2)
	r.say("  COPY %v (%.0f rows/s); upsert, fresh keys %v (%.0f rows/s); upsert, every row newer %v (%.0f rows/s)",
		res.CopyCeiling, float64(n)/res.CopyCeiling.Seconds(), res.Ceiling, float64(n)/res.Ceiling.Seconds(), res.CeilingNewer, float64(n)/res.CeilingNewer.Seconds())
	return nil
}

// fillBuffer fills the write buffer directly with n writes (distinct keys
// from base), perMsg writes to a message, as the nodes' group commit would.
// With logged, each write is also put in the change log first, as a node
// does before it answers 202; without, the log lacks them all (the case of a
// node that died between the buffer's acknowledgement and the log).
// Publishes are asynchronous with at most 64 awaiting their acknowledgement.
func (r *runner) fillBuffer(ctx context.Context, base int64, n, perMsg int, logged bool) (int, error) {
	now := time.Now().UTC()
	msgs := 0
	var window []jetstream.PubAckFuture
	wait := func() error {
		for _, f := range window {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				return fmt.Errorf("buffer fill: %w", err)
			case <-time.After(time.Minute):
				return fmt.Errorf("buffer fill: no acknowledgement within a minute")
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		window = window[:0]
		return nil
	}
	publish := func(msg *nats.Msg) error {
		f, err := r.js.PublishMsgAsync(msg)
		if err != nil {
			return err
		}
		if window = append(window, f); len(window) >= 64 {
			return wait()
		}
		return nil
	}
	for i := 0; i < n; i += perMsg {
		bb := events.BufferBatch{}
		for j := i; j < min(i+perMsg, n); j++ {
			rec := r.record(j, base+int64(j))
			v := r.clock.Now()
			rec.Version, rec.UpdatedAt = v, &now
			bb.Writes = append(bb.Writes, events.BufferedWrite{TMDBID: rec.TMDBID, Version: v, AcceptedAt: now, Node: "bench", Record: &rec})
			if !logged {
				continue
			}
			entry, err := events.Marshal(events.MetadataChanged{Envelope: events.Envelope{OccurredAt: now, Source: "bench"},
				TMDBID: rec.TMDBID, Version: v, Buffered: true, Record: &rec})
			if err != nil {
				return msgs, err
			}
			lm := &nats.Msg{Subject: events.ChangeSubject(rec.TMDBID), Data: entry, Header: nats.Header{}}
			lm.Header.Set(events.HeaderVersion, strconv.FormatInt(v, 10))
			lm.Header.Set(events.HeaderSource, "bench")
			if err := publish(lm); err != nil {
				return msgs, err
			}
		}
		data, err := events.Marshal(bb)
		if err != nil {
			return msgs, err
		}
		msg := &nats.Msg{Subject: events.SubjectBufferWrites, Data: data, Header: nats.Header{}}
		msg.Header.Set(events.HeaderWrites, strconv.Itoa(len(bb.Writes)))
		if err := publish(msg); err != nil {
			return msgs, err
		}
		msgs++
	}
	return msgs, wait()
}

// replayOnce enters cache-only mode, fills the buffer with n writes (and the
// change log, with logged) and times their replay after cache_only.exit.
func (r *runner) replayOnce(ctx context.Context, base int64, n, per, batchSize int, limit time.Duration, logged, profile bool) (*replayRun, error) {
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
	r.say("replay: filling the buffer with %d writes, %d per message (REPLAY_BATCH_SIZE=%d; in the change log too: %v)", n, per, batchSize, logged)
	t0 := time.Now()
	msgs, err := r.fillBuffer(ctx, base, n, per, logged)
	if err != nil {
		return nil, err
	}
	got, _ := r.bufferMsgs(ctx)
	r.say("  %d messages published in %v; buffer holds %d", msgs, time.Since(t0).Round(time.Millisecond), got)
	_ = from
	rr, err := r.timeReplayWithin(ctx, n, msgs, limit, profile)
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
	n, err := r.st.StartNode(ctx, "node-1", r.nodeA.Addr, launch.MergeEnv(r.common, extra))
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
