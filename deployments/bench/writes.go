package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/deployments/launch"
	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/metastore"
	"github.com/anivault/anivault/pkg/pgdb"
)

// WritesResult is phase 2.
type WritesResult struct {
	Keys          int
	BodyBytesMean int
	Committed     runStats // normal mode, 200, DB_GROUP_COMMIT_MAX=1
	// CommittedGroup: the same on a node with DB_GROUP_COMMIT_MAX=GroupCommitMax.
	CommittedGroup runStats
	GroupCommitMax int
	GroupOverRawPG float64
	WrkCommand     string
	Buffered       runStats // cache-only mode, 202
	RawJetStream   runStats // js.Publish awaiting the ack, one message per write
	RawPostgres    runStats // metastore.Store.Upsert, one row per statement
	Rounds         []runStats
	// Group commit observed during the buffered run.
	BufferMsgs         uint64
	WritesPerMsg       float64
	BufferedOverRawJS  float64
	CommittedOverRawPG float64
	// The replay of the buffered run's writes (node-made batches).
	ReplayOfRun     *replayRun
	NodePerfProfile string
}

const writeKeyBase = 2_000_000

// benchGroupCommitMax is DB_GROUP_COMMIT_MAX of the writes phase's second node.
const benchGroupCommitMax = 256

func (r *runner) phaseWrites(ctx context.Context) error {
	res := &WritesResult{Keys: 10_000}
	r.rep.Writes = res
	bodies := make([][]byte, res.Keys)
	payloads := make([][]byte, res.Keys) // the buffer message the node would publish for this write alone
	total := 0
	now := time.Now().UTC()
	for k := range res.Keys {
		rec := r.record(k, int64(writeKeyBase+k))
		b, err := events.Marshal(&rec)
		if err != nil {
			return err
		}
		bodies[k] = b
		total += len(b)
		cp := rec
		v := r.clock.Now()
		cp.Version, cp.UpdatedAt = v, &now
		p, err := events.Marshal(events.BufferBatch{Writes: []events.BufferedWrite{{TMDBID: rec.TMDBID, Version: v, AcceptedAt: now, Node: "bench", Record: &cp}}})
		if err != nil {
			return err
		}
		payloads[k] = p
	}
	res.BodyBytesMean = total / res.Keys
	ids := make([]int64, res.Keys)
	for k := range ids {
		ids[k] = int64(writeKeyBase + k)
	}
	puts, err := newWrkPutLoad(r.cfg.dir, ids, bodies, r.cfg.conns)
	if err != nil {
		return err
	}
	res.WrkCommand = puts.CommandLine("http://<node>", r.cfg.writeDur)
	// Committed writes one by one and with group commit, each on a node of
	// its own whatever the default (node-1 takes the buffered runs).
	res.GroupCommitMax = benchGroupCommitMax
	nodeOne, err := r.st.StartNode(ctx, "node-single", "", launch.MergeEnv(r.common, map[string]string{"DB_GROUP_COMMIT_MAX": "1"}))
	if err != nil {
		return fmt.Errorf("start the node without group commit: %w", err)
	}
	defer r.stopNode(nodeOne)
	nodeGC, err := r.st.StartNode(ctx, "node-gc", "", launch.MergeEnv(r.common, map[string]string{"DB_GROUP_COMMIT_MAX": strconv.Itoa(benchGroupCommitMax)}))
	if err != nil {
		return fmt.Errorf("start the group-commit node: %w", err)
	}
	defer r.stopNode(nodeGC)

	recs := make([]events.Record, res.Keys)
	for k := range recs {
		recs[k] = r.record(k, int64(writeKeyBase+k))
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	// Raw JetStream: one synchronous publish per write, same server, same payload.
	_, err = r.js.CreateOrUpdateStream(sctx, jetstream.StreamConfig{Name: "BENCH_RAW", Subjects: []string{"bench.raw"},
		Storage: jetstream.FileStorage, Retention: jetstream.LimitsPolicy, MaxMsgSize: 1 << 20})
	cancel()
	if err != nil {
		return err
	}
	defer func() {
		dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = r.js.DeleteStream(dctx, "BENCH_RAW")
		dcancel()
	}()
	jsOp := func(ctx context.Context, rng *rand.Rand) (int, bool) {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := r.js.Publish(pctx, "bench.raw", payloads[rng.IntN(res.Keys)])
		return 0, err == nil
	}
	// Raw PostgreSQL: single-row versioned upserts.
	var upErr atomic.Value
	pgOp := func(ctx context.Context, rng *rand.Rand) (int, bool) {
		uctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		k := rng.IntN(res.Keys)
		_, err := r.benchStore.Upsert(uctx, &recs[k], r.clock.Now(), time.Now())
		if err != nil {
			upErr.Store(err)
		}
		return 0, err == nil
	}
	// Rounds, interleaved (each path beside its baseline), so that a burst of
	// other work on the machine does not decide a ratio; each figure is the best round.
	keep := func(best *runStats, s runStats, unit string) {
		r.say("  %s: %.0f %s p50 %v p99 %v failed %d codes %v", s.Name, s.RPS(), unit, s.P50, s.P99, s.Errors, s.Codes)
		res.Rounds = append(res.Rounds, s)
		if s.RPS() > best.RPS() {
			*best = s
		}
	}
	d := r.cfg.writeDur

	// Normal mode: committed to PostgreSQL, beside raw single-row upserts.
	if err := r.waitNormalEmpty(ctx, 30*time.Second); err != nil {
		return err
	}
	for round := 1; round <= r.cfg.writeRounds; round++ {
		r.say("writes round %d: PUT in normal mode (committed), then raw PostgreSQL upserts; %d clients, %v each", round, r.cfg.conns, d)
		s, err := puts.runPuts(ctx, r, fmt.Sprintf("cache-node PUT, normal mode, 200 committed, DB_GROUP_COMMIT_MAX=1 (round %d)", round), nodeOne, "committed", time.Second, d)
		if err != nil {
			return err
		}
		keep(&res.Committed, s, "writes/s")
		if s, err = puts.runPuts(ctx, r, fmt.Sprintf("cache-node PUT, normal mode, 200 committed, DB_GROUP_COMMIT_MAX=%d (round %d)", benchGroupCommitMax, round), nodeGC, "committed", time.Second, d); err != nil {
			return err
		}
		keep(&res.CommittedGroup, s, "writes/s")
		// Writes buffered by the fast path (a transient error) would be drained in the background.
		if err := r.waitNormalEmpty(ctx, 60*time.Second); err != nil {
			return err
		}
		keep(&res.RawPostgres, runFixed(ctx, fmt.Sprintf("raw PostgreSQL upsert, metastore.Store.Upsert (round %d)", round), r.cfg.conns, time.Second, d, newCPUWatch(0), pgOp), "rows/s")
	}
	if e := upErr.Load(); e != nil && res.RawPostgres.Errors > 0 {
		res.RawPostgres.Note = fmt.Sprint(e)
	}

	// Cache-only mode: buffered in JetStream with group commit, beside the raw per-message publish.
	from := r.ev.mark()
	if _, err := r.request(events.SubjectCacheOnlyEnter, `{"reason":"benchmark: buffered writes"}`); err != nil {
		return err
	}
	if _, err := r.waitModes(ctx, r.st.Nodes, events.ModeCacheOnly, 10*time.Second); err != nil {
		return err
	}
	msgs0, _ := r.bufferMsgs(ctx)
	st0, _ := r.nodeStatus(r.nodeA)
	for round := 1; round <= r.cfg.writeRounds; round++ {
		r.say("writes round %d: PUT in cache-only mode (buffered), then raw JetStream publish; %d clients, %v each", round, r.cfg.conns, d)
		s, err := puts.runPuts(ctx, r, fmt.Sprintf("cache-node PUT, cache-only mode, 202 buffered (round %d)", round), r.nodeA, "buffered", time.Second, d)
		if err != nil {
			return err
		}
		keep(&res.Buffered, s, "writes/s")
		keep(&res.RawJetStream, runFixed(ctx, fmt.Sprintf("raw JetStream publish awaiting each ack (round %d)", round), r.cfg.conns, time.Second, d, newCPUWatch(0), jsOp), "msgs/s")
	}
	time.Sleep(600 * time.Millisecond) // one status refresh
	msgs1, _ := r.bufferMsgs(ctx)
	st1, _ := r.nodeStatus(r.nodeA)
	res.BufferMsgs = msgs1 - msgs0
	accepted := st1.Buffer.AcceptedTotal - st0.Buffer.AcceptedTotal
	if res.BufferMsgs > 0 {
		res.WritesPerMsg = float64(accepted) / float64(res.BufferMsgs)
		r.writesPerMsg = res.WritesPerMsg
	}
	r.say("  group commit: %d writes in %d buffer messages (%.1f per message)", accepted, res.BufferMsgs, res.WritesPerMsg)
	{
		r.say("writes: profiling the node with perf during another buffered run")
		res.NodePerfProfile = r.perfProfile(ctx, r.nodeA.Pid(), 6*time.Second, func(d time.Duration) {
			_, _, _, _ = puts.exec(ctx, r.nodeA.URL(), d)
		})
		msgs1, _ = r.bufferMsgs(ctx)
		st1, _ = r.nodeStatus(r.nodeA)
		accepted = st1.Buffer.AcceptedTotal - st0.Buffer.AcceptedTotal
	}
	// Leave cache-only mode: the node replays what it buffered (batches made by group commit).
	rr, err := r.timeReplay(ctx, from, int(accepted), int(msgs1))
	if err != nil {
		return fmt.Errorf("replay after the buffered run: %w", err)
	}
	res.ReplayOfRun = rr
	r.say("  replay of those %d writes: %v (recovering → normal)", accepted, rr.RecoveringToNormal)

	if res.RawJetStream.RPS() > 0 {
		res.BufferedOverRawJS = res.Buffered.RPS() / res.RawJetStream.RPS()
	}
	if res.RawPostgres.RPS() > 0 {
		res.CommittedOverRawPG = res.Committed.RPS() / res.RawPostgres.RPS()
		res.GroupOverRawPG = res.CommittedGroup.RPS() / res.RawPostgres.RPS()
	}
	return nil
}

// replayRun is one timed replay.
type replayRun struct {
	Writes, Msgs       int
	BatchSize          int // REPLAY_BATCH_SIZE
	ExitToRecovering   time.Duration
	RecoveringToNormal time.Duration
	NodeReplayMS       []int64 // replay.completed duration_ms per node
	Replayed, Stale    int64
	WritesPerSecond    float64
	// ReplayErrors counts "replay stopped by an error" log lines of the nodes during this replay.
	ReplayErrors int
	TimedOut     bool // mode.normal not seen within the limit
	// CPU: node-1 (Server), PostgreSQL, this process (NATS server) from the exit request to mode normal.
	CPU cpuUsage
	// When it timed out: the node was restarted with RescueBatchSize, and
	// mode normal came RescueTime after that restart.
	RescueBatchSize   int
	RescueTime        time.Duration
	Epoch             int64
	ReplayErrorSample string
	BreakerOpened     int
	// Profile is perf's view of the replay's first seconds (when asked).
	Profile string `json:"-"`
}

// timeReplay asks the manager to leave cache-only mode and times the replay:
// from the mode.recovering event to the mode.normal event.
func (r *runner) timeReplay(ctx context.Context, from, writes, msgs int) (*replayRun, error) {
	return r.timeReplayWithin(ctx, writes, msgs, 5*time.Minute, false)
}

// timeReplayWithin is timeReplay giving up after limit (TimedOut set, no
// error). With profile, perf samples the machine for the replay's first
// seconds (Profile).
func (r *runner) timeReplayWithin(ctx context.Context, writes, msgs int, limit time.Duration, profile bool) (*replayRun, error) {
	rr := &replayRun{Writes: writes, Msgs: msgs}
	logMark := r.logMarks()
	defer func() {
		lines := r.logSince(logMark)
		for _, l := range lines {
			switch {
			case strings.Contains(l, "replay stopped by an error"):
				rr.ReplayErrors++
				rr.ReplayErrorSample = logField(l, "error")
			case strings.Contains(l, "Circuit breaker state changed") && strings.Contains(l, "-> open"):
				rr.BreakerOpened++
			}
		}
	}()
	mark := r.ev.mark()
	cw := newCPUWatch(r.nodeA.Pid())
	cw.begin()
	cpuStart := time.Now()
	defer func() {
		cw.end(time.Since(cpuStart).Seconds())
		rr.CPU = cw.Result
	}()
	tExit := time.Now()
	if _, err := r.request(events.SubjectCacheOnlyExit, `{}`); err != nil {
		return nil, err
	}
	rec, err := r.ev.wait(ctx, mark, 15*time.Second, isSubject(events.SubjectModeRecovering))
	if err != nil {
		return nil, fmt.Errorf("mode.recovering: %w", err)
	}
	epoch := rec.num("epoch")
	rr.Epoch = int64(epoch)
	if profile {
		profiled := make(chan struct{})
		defer func() { <-profiled }()
		go func() {
			defer close(profiled)
			rr.Profile = r.perfProfile(ctx, r.nodeA.Pid(), 3*time.Second, func(d time.Duration) {
				select {
				case <-time.After(d):
				case <-ctx.Done():
				}
			})
		}()
	}
	norm, err := r.ev.wait(ctx, mark, limit, func(e event) bool {
		return e.Subject == events.SubjectModeNormal && e.num("epoch") > epoch
	})
	if err != nil {
		rr.TimedOut = true
		rr.ExitToRecovering = rec.At.Sub(tExit)
		rr.RecoveringToNormal = time.Since(rec.At)
		return rr, nil
	}
	rr.ExitToRecovering = rec.At.Sub(tExit)
	rr.RecoveringToNormal = norm.At.Sub(rec.At)
	for _, e := range r.ev.since(mark) {
		if e.Subject == events.SubjectReplayCompleted && e.num("epoch") == epoch {
			rr.NodeReplayMS = append(rr.NodeReplayMS, int64(e.num("duration_ms")))
			rr.Replayed += int64(e.num("replayed"))
			rr.Stale += int64(e.num("skipped_stale"))
		}
	}
	if rr.RecoveringToNormal > 0 {
		rr.WritesPerSecond = float64(writes) / rr.RecoveringToNormal.Seconds()
	}
	return rr, nil
}

// countRange counts rows with base <= tmdb_id < base+n in store, retrying
// while the pool still holds connections of a killed server.
func countRange(ctx context.Context, s *metastore.Store, base int64, n int) (int, error) {
	var c int
	var err error
	for range 20 {
		err = s.DB().NewRaw("SELECT count(*) FROM anime_metadata WHERE tmdb_id >= ? AND tmdb_id < ?", base, base+int64(n)).Scan(ctx, &c)
		if err == nil {
			return c, nil
		}
		pgdb.DropIdle(s.DB(), 64)
		time.Sleep(200 * time.Millisecond)
	}
	return c, err
}

// logMarks returns the current length of every node's output.
func (r *runner) logMarks() map[string]int {
	m := map[string]int{}
	for _, n := range r.st.Nodes {
		m[n.ID] = len(n.Output())
	}
	return m
}

// logSince returns the nodes' output lines printed after marks.
func (r *runner) logSince(marks map[string]int) []string {
	var out []string
	for _, n := range r.st.Nodes {
		o := n.Output()
		from := marks[n.ID]
		if from > len(o) {
			from = 0
		}
		for _, l := range strings.Split(o[from:], "\n") {
			if l != "" {
				out = append(out, n.ID+": "+l)
			}
		}
	}
	return out
}

// logField extracts a JSON log line's string field.
func logField(line, field string) string {
	_, rest, ok := strings.Cut(line, `"`+field+`":`)
	if !ok {
		return line
	}
	var v string
	if err := json.NewDecoder(strings.NewReader(rest)).Decode(&v); err != nil {
		return rest
	}
	return v
}
