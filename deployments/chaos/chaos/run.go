package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/uptrace/bun"

	"github.com/anivault/anivault/deployments/launch"
	"github.com/anivault/anivault/deployments/local/fixtures"
	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/faultproxy"
	"github.com/anivault/anivault/pkg/modefollow"
	"github.com/anivault/anivault/pkg/natsembed"
	"github.com/anivault/anivault/pkg/pgdb"
	"github.com/anivault/anivault/pkg/procs"
)

// Executed is a fault as it really happened.
type Executed struct {
	Fault
	Start time.Time // when the fault was injected
	End   time.Time // when it was reverted (database reachable, process started again)
	Err   string    // the injection or the revert failed
}

// ScheduleResult is the outcome of one schedule.
type ScheduleResult struct {
	Seed     uint64
	Schedule Schedule
	Dir      string
	// Err is an infrastructure failure (the stack did not start, a fault
	// could not be reverted); the checkers may not have run.
	Err      error
	Counters Counters
	Ledger   LedgerResult
	// Reads is the stale-read checker's result over the workload's reads;
	// Final the read-back of every key from every live node after the drain.
	Reads    ReadResult
	Final    FinalReads
	Checks   []*Check
	Executed []Executed
	Outages  []Outage
	// TotalFailures and TotalRecoveries are the recovery-manager's counters.
	TotalFailures, TotalRecoveries int64
	// Detections are fault start -> mode.cache_only; Recoveries fault end -> mode.normal.
	Detections, Recoveries    []Timing
	LongestDetection          Timing
	LongestRecovery           Timing
	DrainTime                 time.Duration
	Accepted, Replayed, Stale int64 // buffer totals summed over the nodes' status
	ReplayEventsSum           int64 // replayed + skipped_stale over replay.completed events
	Elapsed                   time.Duration
	// UnknownCauses counts the writes with an unknown outcome by cause.
	UnknownCauses map[string]int
	strict        bool
}

// Timing is one measured detection or recovery.
type Timing struct {
	D     time.Duration
	Seed  uint64
	Fault Fault
}

// Passed reports whether every checker passed and nothing broke.
func (r ScheduleResult) Passed() bool {
	if r.Err != nil {
		return false
	}
	for _, c := range r.Checks {
		if !c.OK && (!c.Warn || r.strict) {
			return false
		}
	}
	return true
}

// Run runs cfg.Schedules schedules, seeds cfg.Seed, cfg.Seed+1, ..., one after
// another, each on a fresh system, and keeps the JSON report at cfg.Report
// up to date. The error is only for a bad configuration, a cancelled ctx or
// a report that could not be written; failed checks are in the report.
func Run(ctx context.Context, cfg Config) (Report, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return Report{}, err
	}
	rep := Report{Config: cfg}
	started := time.Now()
	// The JSON report exists before the first schedule (a path that cannot
	// be written stops the run before anything ran) and is rewritten after
	// every schedule, so that an interrupted run leaves the finished ones.
	if err := WriteJSON(cfg.Report, rep.JSON(started, false, "")); err != nil {
		return Report{}, err
	}
	var writeErr error
	write := func(finished bool, interrupted string) {
		if err := WriteJSON(cfg.Report, rep.JSON(started, finished, interrupted)); err != nil {
			fmt.Fprintf(cfg.Out, "WARNING: %v\n", err)
			writeErr = err
		}
	}
	for i := range cfg.Schedules {
		if ctx.Err() != nil {
			break
		}
		res := RunSchedule(ctx, cfg, cfg.Seed+uint64(i))
		rep.Results = append(rep.Results, res)
		PrintResult(cfg.Out, res)
		if i < cfg.Schedules-1 {
			write(false, "")
		}
	}
	if err := ctx.Err(); err != nil {
		write(false, fmt.Sprintf("%v with %d of %d schedules run (the last one may have been cut short)", err, len(rep.Results), cfg.Schedules))
		return rep, err
	}
	write(true, "")
	return rep, writeErr
}

// runner is the state of one schedule.
type runner struct {
	cfg   Config
	seed  uint64
	sched Schedule
	out   io.Writer
	begin time.Time // start of the load

	st    *launch.System
	proxy *faultproxy.Proxy
	nc    *nats.Conn
	js    jetstream.JetStream
	subj  events.Subjects
	nodes []*launch.Node
	// streams are the JetStream streams at the start (cluster mode).
	streams []string

	mu       sync.Mutex
	executed []Executed
	printMu  sync.Mutex
}

func (r *runner) say(format string, a ...any) {
	r.printMu.Lock()
	defer r.printMu.Unlock()
	at := 0.0
	if !r.begin.IsZero() {
		at = time.Since(r.begin).Seconds()
	}
	fmt.Fprintf(r.out, "  [%d] %7.2fs  %s\n", r.seed, at, fmt.Sprintf(format, a...))
}

func (r *runner) verbose(format string, a ...any) {
	if !r.cfg.Quiet {
		r.say(format, a...)
	}
}

// RunSchedule runs the schedule of seed on a fresh system and checks it.
func RunSchedule(ctx context.Context, cfg Config, seed uint64) (res ScheduleResult) {
	cfg.Defaults()
	start := time.Now()
	sched := Generate(seed, cfg.ScheduleOptions())
	res = ScheduleResult{Seed: seed, Schedule: sched, strict: cfg.Strict}
	fmt.Fprintf(cfg.Out, "\n==== seed %d ====\n%s", seed, sched)
	dir, err := filepath.Abs(filepath.Join(cfg.Dir, fmt.Sprintf("seed-%d", seed)))
	if err != nil {
		res.Err = err
		return res
	}
	res.Dir = dir
	_ = os.RemoveAll(dir)
	r := &runner{cfg: cfg, seed: seed, sched: sched, out: cfg.Out}
	defer func() {
		res.Elapsed = time.Since(start)
		if !res.Passed() || cfg.KeepDirs {
			// Keep the logs and the NATS store; the binaries can be rebuilt.
			_ = os.RemoveAll(filepath.Join(dir, "bin"))
			return
		}
		_ = os.RemoveAll(dir)
	}()
	if err := r.run(ctx, &res); err != nil && res.Err == nil {
		res.Err = err
	}
	return res
}

func (r *runner) run(ctx context.Context, res *ScheduleResult) error {
	cfg := r.cfg
	r.subj = events.NewSubjects(cfg.Env["SUBJECT_PREFIX"])
	if n := cfg.clusterSize(); n > 0 {
		r.say("starting NATS (a cluster of %d servers, BUFFER_REPLICAS=%s, JetStream fsync on every ack), PostgreSQL and the services", n, cfg.ServiceEnv()["BUFFER_REPLICAS"])
	} else {
		r.say("starting NATS (JetStream, fsync on every ack), PostgreSQL and the services")
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	st, err := launch.Start(sctx, launch.Options{Dir: res.Dir, ModuleDir: cfg.ModuleDir, Env: cfg.ServiceEnv(), NATSCluster: cfg.clusterSize(), NodeReadyTimeout: time.Minute})
	cancel()
	if err != nil {
		return fmt.Errorf("start stack: %w", err)
	}
	r.st = st
	defer func() {
		// Keep the PostgreSQL server log with the service logs.
		if st.PG != nil {
			if b, err := os.ReadFile(st.PG.LogPath()); err == nil {
				_ = os.WriteFile(filepath.Join(res.Dir, "logs", "postgres.log"), b, 0o644)
			}
		}
		st.Close(context.Background())
	}()
	if st.PG == nil {
		return errors.New("chaos needs a private PostgreSQL (unset DATABASE_URL)")
	}
	if cfg.PGMaxConnections > 0 {
		if err := setMaxConnections(ctx, st, cfg.PGMaxConnections); err != nil {
			return err
		}
	}
	var dsn string
	r.proxy, dsn, err = st.ProxyDatabase()
	if err != nil {
		return err
	}
	defer r.proxy.Close()
	ids := make([]string, cfg.Nodes)
	for i := range ids {
		ids[i] = NodeID(i)
	}
	if r.nodes, err = st.StartServices(ctx, map[string]string{"DATABASE_URL": dsn}, ids...); err != nil {
		return err
	}
	urls := launch.URLs(r.nodes)
	r.nc, err = nats.Connect(st.NATSURL(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond),
		nats.ReconnectBufSize(64<<20), nats.Name("anivault-chaos"))
	if err != nil {
		return err
	}
	defer r.nc.Close()
	if r.js, err = jetstream.New(r.nc); err != nil {
		return err
	}
	if _, err := r.managerStatus(ctx, 30*time.Second); err != nil {
		return fmt.Errorf("recovery-manager not answering: %w", err)
	}
	if err := r.follow(); err != nil {
		return err
	}
	if len(st.Cluster) > 0 {
		r.say("NATS cluster %s: %s", st.NATSURL(), r.streamReplicas(ctx))
	}
	recs, err := fixtures.Records()
	if err != nil {
		return err
	}
	r.say("%d cache-nodes %s; DATABASE_URL through the fault proxy %s; load for %v", cfg.Nodes, strings.Join(urls, " "), r.proxy.Addr(), cfg.Duration)

	// The load and the schedule.
	wl := NewWorkload(urls, r.js, r.subj, recs, SplitKeys(recs), cfg.Pause)
	r.begin = time.Now()
	wl.Start(r.seed, cfg.HTTPWriters, cfg.Producers, cfg.Readers)
	var faults sync.WaitGroup
	r.execute(ctx, &faults)
	liveDone := make(chan struct{})
	go r.live(wl, liveDone)
	select {
	case <-ctx.Done():
	case <-time.After(cfg.Duration):
	}
	close(liveDone)
	wl.Stop()
	r.say("load stopped; waiting for the last faults to be reverted")
	faults.Wait()
	res.Counters = wl.Counters()
	reads := wl.Reads()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	r.mu.Lock()
	res.Executed = append([]Executed(nil), r.executed...)
	r.mu.Unlock()
	sort.Slice(res.Executed, func(i, j int) bool { return res.Executed[i].Start.Before(res.Executed[j].Start) })
	var infra []string
	for _, e := range res.Executed {
		if e.Err != "" {
			infra = append(infra, fmt.Sprintf("%s %s: %s", e.Kind, e.Target, e.Err))
		}
	}
	if len(infra) > 0 {
		res.Err = fmt.Errorf("fault injection: %s", strings.Join(infra, "; "))
	}

	// Processes that died although no fault killed them (every fault has
	// been reverted by now, so every process should run).
	alive := newCheck("no process died on its own")
	alive.Detail = "every service process runs after the schedule"
	for _, p := range r.procs() {
		if !p.Running() {
			alive.fail("%s exited: %v; last output:\n%s", p.Name, p.ExitErr(), indentedTail(p.Output(), 15))
		}
	}

	// Heal and drain.
	if err := r.heal(ctx); err != nil {
		return fmt.Errorf("heal: %w", err)
	}
	r.say("healed: proxy without faults, PostgreSQL, NATS and every process running; waiting for the drain")
	drainStart := time.Now()
	converge, kvMode := r.drain(ctx)
	res.DrainTime = time.Since(drainStart)
	r.say("drain: %s after %v", map[bool]string{true: "done", false: "NOT DONE"}[converge.OK], res.DrainTime.Round(100*time.Millisecond))

	// Checks.
	table, err := st.ReadTable(ctx)
	if err != nil {
		return fmt.Errorf("read table: %w", err)
	}
	ops := wl.Ops()
	res.Ledger = CheckLedger(ops, table)
	res.UnknownCauses = unknownCauses(ops)
	names := r.nodeNames()
	res.Reads = CheckReads(ops, reads, cfg.StalenessBound, func(a, b time.Time) string { return r.faultsDuring(res.Executed, a, b) })
	nameNodes(res.Reads.Check, names)
	r.say("reads: %d judged, stale %d, 503 unavailable %d, from the change log %d; waiting the staleness bound (%v) to read every key back from every node",
		res.Reads.Checked, res.Reads.Stale, res.Reads.Unavailable, res.Reads.Replica, cfg.StalenessBound)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(cfg.StalenessBound):
	}
	res.Final = CheckFinalReads(r.readBack(ctx, writtenKeys(ops)), table, cfg.StalenessBound)
	nameNodes(res.Final.Check, names)
	r.say("final reads: %d compared with the table, %d differ", res.Final.Compared, res.Final.Differing)
	// A cluster that was just restarted may answer "no responders" while its
	// stream leaders are elected: read the history again for up to 30 s.
	var hist History
	deadline := time.Now().Add(30 * time.Second)
	for {
		hist, err = ReadHistory(ctx, r.js, r.subj)
		if err == nil || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	if err != nil {
		return err
	}
	status, err := r.managerStatus(ctx, 30*time.Second)
	if err != nil {
		return fmt.Errorf("status.get: %w", err)
	}
	res.TotalFailures, res.TotalRecoveries = status.TotalFailures, status.TotalRecoveries
	announced := newCheck("every mode change announced")
	if missing := hist.MissingEpochs(kvMode.Epoch); len(missing) > 0 {
		announced.fail("epochs %v are in no mode.* event of %s (the KV is at epoch %d)", missing, events.StreamEvents, kvMode.Epoch)
	}
	announced.Detail = fmt.Sprintf("mode events for epochs 1..%d in %s", kvMode.Epoch, events.StreamEvents)
	leak := r.checkConnections(ctx)
	orphans := r.checkOrphans(ctx)
	res.Checks = append(res.Checks, res.Ledger.Checks...)
	res.Checks = append(res.Checks, res.Reads.Check, res.Final.Check)
	res.Checks = append(res.Checks, converge, r.checkBuffer(ctx, res, hist), r.checkCounters(res, hist), r.checkCacheOnlyCause(res, hist),
		announced, alive, r.checkPoison(ctx), leak, orphans, r.checkHealthView(status))
	return nil
}

// nodeNames maps the nodes' base URLs to their ids.
func (r *runner) nodeNames() map[string]string {
	m := map[string]string{}
	for _, n := range r.nodes {
		m[n.URL()] = n.ID
	}
	return m
}

// nameNodes writes the nodes' ids next to their URLs in a check's violations.
func nameNodes(c *Check, names map[string]string) {
	for i, e := range c.Errors {
		for url, id := range names {
			e = strings.ReplaceAll(e, url, id+" ("+url+")")
		}
		c.Errors[i] = e
	}
}

// faultsDuring describes the faults active at some time between a and b,
// with their times relative to the start of the load.
func (r *runner) faultsDuring(executed []Executed, a, b time.Time) string {
	var parts []string
	for _, e := range executed {
		if e.Start.Before(b) && e.End.After(a) {
			parts = append(parts, fmt.Sprintf("%s on %s +%.2fs..+%.2fs", e.Kind, e.Target, e.Start.Sub(r.begin).Seconds(), e.End.Sub(r.begin).Seconds()))
		}
	}
	return strings.Join(parts, ", ")
}

// writtenKeys lists the keys of every write attempted, in order.
func writtenKeys(ops []Op) []int64 {
	seen := map[int64]bool{}
	var keys []int64
	for _, op := range ops {
		if !seen[op.Key] {
			seen[op.Key] = true
			keys = append(keys, op.Key)
		}
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	return keys
}

// readBack GETs every key from every live node, once each.
func (r *runner) readBack(ctx context.Context, keys []int64) []FinalAnswer {
	var out []FinalAnswer
	for _, n := range r.nodes {
		if !n.Running() {
			continue
		}
		for _, id := range keys {
			a := FinalAnswer{Node: n.URL(), Key: id}
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/v1/anime/%d", n.URL(), id), nil)
			resp, err := httpClient.Do(req)
			if err != nil {
				a.Err = err.Error()
				out = append(out, a)
				continue
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			a.Status, a.Source = resp.StatusCode, resp.Header.Get("X-AniVault-Source")
			var v struct {
				TMDBID  int64 `json:"tmdb_id"`
				Version int64 `json:"version"`
			}
			switch {
			case err != nil:
				a.Status, a.Err = 0, "read body: "+err.Error()
			case a.Status == 200:
				if json.Unmarshal(b, &v) != nil || v.TMDBID != id {
					a.Err = "body: " + truncate(string(b), 100)
				}
				a.Version = v.Version
			case a.Status != 404:
				a.Err = truncate(strings.TrimSpace(string(b)), 100)
			}
			out = append(out, a)
		}
	}
	return out
}

func (r *runner) procs() []*procs.Proc {
	ps := []*procs.Proc{r.st.Monitor, r.st.Manager}
	for _, n := range r.nodes {
		ps = append(ps, n.Proc)
	}
	return ps
}

// indentedTail is the last n lines of s, indented under a check's line.
func indentedTail(s string, n int) string {
	return "    " + strings.ReplaceAll(launch.Tail(s, n), "\n", "\n    ")
}

// follow prints the system's events as they happen (best effort: during a
// NATS restart or a server's loss some are missed here; the checkers read them
// back from the stream).
func (r *runner) follow() error {
	for _, s := range []string{events.SubjectDBUnhealthy, events.SubjectDBRecovered, events.SubjectsMode, events.SubjectReplayCompleted} {
		_, err := r.nc.Subscribe(r.subj.Of(s), func(m *nats.Msg) {
			var v map[string]any
			_ = json.Unmarshal(m.Data, &v)
			base := r.subj.Base(m.Subject)
			detail := ""
			switch {
			case strings.HasPrefix(base, "mode."):
				detail = fmt.Sprintf("epoch %v %v", v["epoch"], v["reason"])
			case base == "db.unhealthy":
				detail = fmt.Sprintf("%v", v["last_error"])
			case base == "db.recovered":
				detail = fmt.Sprintf("after %.1fs down", v["downtime_seconds"])
			case base == "replay.completed":
				detail = fmt.Sprintf("%v epoch %v: replayed %v, skipped stale %v, failed %v in %vms", v["source"], v["epoch"], v["replayed"], v["skipped_stale"], v["failed"], v["duration_ms"])
			}
			r.verbose("event %-17s %s", base, truncate(detail, 160))
		})
		if err != nil {
			return err
		}
	}
	return r.nc.Flush()
}

func (r *runner) live(wl *Workload, done chan struct{}) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		c := wl.Counters()
		r.verbose("live  acked=%d (committed %d, buffered %d, producer %d) unknown=%d refused=%d reads=%d reads_503=%d last_error=%s",
			c.Acked(), c.HTTPCommitted, c.HTTPBuffered, c.ProducerAcked, c.HTTPIndeterminate+c.ProducerIndeterminate, c.Refused,
			c.Reads, c.ReadsUnavailable, truncate(wl.LastError(), 100))
	}
}

// execute starts the schedule: one goroutine runs the database faults in
// order (one at a time: a PostgreSQL restart that runs late delays the next
// one), one goroutine per process fault.
func (r *runner) execute(ctx context.Context, wg *sync.WaitGroup) {
	db := r.sched.Database()
	wg.Go(func() {
		for _, f := range db {
			if !r.sleepUntil(ctx, f.At) {
				return
			}
			r.inject(ctx, f)
		}
	})
	for _, f := range r.sched.Faults {
		if f.Kind.IsDatabase() {
			continue
		}
		wg.Go(func() {
			if r.sleepUntil(ctx, f.At) {
				r.inject(ctx, f)
			}
		})
	}
}

func (r *runner) sleepUntil(ctx context.Context, at time.Duration) bool {
	d := time.Until(r.begin.Add(at))
	if d <= 0 {
		return ctx.Err() == nil
	}
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// inject applies f, waits its duration and reverts it.
func (r *runner) inject(ctx context.Context, f Fault) {
	e := Executed{Fault: f, Start: time.Now()}
	late := e.Start.Sub(r.begin.Add(f.At))
	lateNote := ""
	if late > 200*time.Millisecond {
		lateNote = fmt.Sprintf(" (%.1fs late: the previous database fault ended late)", late.Seconds())
	}
	var errs []string
	note := func(what string, err error) {
		if err != nil {
			errs = append(errs, what+": "+err.Error())
		}
	}
	node := func() *launch.Node {
		for _, n := range r.nodes {
			if n.ID == f.Target {
				return n
			}
		}
		return nil
	}()
	var server *natsembed.Server // the one server a nats_server_kill stopped
	switch f.Kind {
	case PGKill:
		note("kill", r.st.PG.Kill())
	case PGStopFast, PGStopImmediate:
		mode := "fast"
		if f.Kind == PGStopImmediate {
			mode = "immediate"
		}
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if err := r.st.PG.Stop(sctx, mode); err != nil {
			note("stop "+mode, err)
			note("kill after a failed stop", r.st.PG.Kill())
		}
		cancel()
	case ProxyRefuse:
		r.proxy.Disable()
	case ProxyBlackHole:
		note("black hole", r.proxy.BlackHole())
	case ProxyLatency:
		note("latency", r.proxy.Latency(time.Duration(f.Param)*time.Millisecond))
	case ProxyReset:
		note("reset", r.proxy.ResetPeer())
	case ProxyFlap:
		note("flap", r.proxy.Flap(float32(f.Param)/100))
	case NodeKill:
		note("kill", node.Kill())
	case NATSRestart:
		// In cluster mode, the whole cluster: NATS as a whole goes away.
		for _, srv := range r.st.NATSServers() {
			srv.Shutdown()
		}
	case NATSServerKill:
		i, why := r.pickServer(ctx, f)
		server = r.st.Cluster[i]
		e.Target = fmt.Sprintf("s%d (%s)", i+1, why)
		server.Shutdown()
	case ManagerKill:
		note("kill", r.st.Manager.Kill())
	case MonitorKill:
		note("kill", r.st.Monitor.Kill())
	}
	r.verbose("**** FAULT %s on %s for %.2fs%s", f.Kind, e.Target, f.Duration.Seconds(), lateNote)
	select {
	case <-ctx.Done():
	case <-time.After(f.Duration):
	}
	rctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	switch f.Kind {
	case PGKill, PGStopFast, PGStopImmediate:
		note("start", retry(rctx, func() error { return r.st.PG.Start(rctx) }))
	case ProxyRefuse:
		note("enable", r.proxy.Enable())
	case ProxyBlackHole, ProxyReset, ProxyFlap:
		note("heal", r.proxy.Heal())
	case ProxyLatency:
		note("latency off", r.proxy.Latency(0))
	case NodeKill:
		note("start", retry(rctx, func() error {
			if !node.Running() {
				if err := node.Start(); err != nil {
					return err
				}
			}
			return launch.WaitReady(rctx, node)
		}))
	case NATSRestart:
		for i, srv := range r.st.NATSServers() {
			what := "restart"
			if len(r.st.Cluster) > 0 {
				what = fmt.Sprintf("restart s%d", i+1)
			}
			note(what, retry(rctx, func() error { return srv.Restart(rctx) }))
		}
		if len(r.st.Cluster) > 0 {
			// Reverted once JetStream answers again (a meta leader and every
			// stream's leader elected), not when the processes listen.
			r.waitNATSHealed(rctx, f, e.Start, false)
		}
	case NATSServerKill:
		note("restart", retry(rctx, func() error { return server.Restart(rctx) }))
		// Reverted once the server caught up: every stream has all its
		// replicas current again, so the next server's loss is one server's loss.
		r.waitNATSHealed(rctx, f, e.Start, true)
	case ManagerKill:
		note("start", r.st.Manager.Start())
	case MonitorKill:
		note("start", r.st.Monitor.Start())
	}
	e.End = time.Now()
	e.Err = strings.Join(errs, "; ")
	if e.Err != "" {
		r.say("**** FAULT %s on %s: %s", f.Kind, e.Target, e.Err)
	}
	r.verbose("**** healed %s on %s (%.2fs after injection)", f.Kind, e.Target, e.End.Sub(e.Start).Seconds())
	r.mu.Lock()
	r.executed = append(r.executed, e)
	r.mu.Unlock()
}

// streamReplicas describes the replicas and the leader of every stream, and
// notes their names for waitNATSHealed.
func (r *runner) streamReplicas(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var parts []string
	lister := r.js.ListStreams(ctx)
	for info := range lister.Info() {
		leader := "none"
		if info.Cluster != nil && info.Cluster.Leader != "" {
			leader = info.Cluster.Leader
		}
		parts = append(parts, fmt.Sprintf("%s R%d leader %s", info.Config.Name, info.Config.Replicas, leader))
		r.streams = append(r.streams, info.Config.Name)
	}
	if err := lister.Err(); err != nil {
		parts = append(parts, "list streams: "+err.Error())
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// pickServer chooses the server a nats_server_kill stops: the leader of the
// buffer stream (stream info's Cluster.Leader, "s<i>" as
// natsembed.StartCluster names them), else server f.Param, drawn from the
// schedule's seed.
func (r *runner) pickServer(ctx context.Context, f Fault) (int, string) {
	ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	why := ""
	s, err := r.js.Stream(ictx, r.subj.Name(events.StreamBuffer))
	switch {
	case err != nil:
		why = err.Error()
	case s.CachedInfo().Cluster == nil || s.CachedInfo().Cluster.Leader == "":
		why = "no leader"
	default:
		leader := s.CachedInfo().Cluster.Leader
		for i, srv := range r.st.Cluster {
			if leader == fmt.Sprintf("s%d", i+1) && srv.Running() {
				return i, "the buffer leader"
			}
		}
		why = "leader " + leader + " is no running server"
	}
	i := 0
	if f.Param >= 1 {
		i = (f.Param - 1) % len(r.st.Cluster)
	}
	return i, fmt.Sprintf("from the seed; buffer leader unknown: %s", truncate(why, 60))
}

// waitNATSHealed waits (at most a minute) until JetStream answers and every
// stream has a leader, and with current also every replica current and
// online (a restarted server has caught up). It only reports a timeout; the
// checkers judge.
func (r *runner) waitNATSHealed(ctx context.Context, f Fault, start time.Time, current bool) {
	var state string
	err := procs.Eventually(time.Minute, 100*time.Millisecond, func() error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		var behind []string
		n := 0
		seen := map[string]bool{}
		lister := r.js.ListStreams(lctx)
		for info := range lister.Info() {
			n++
			ci := info.Cluster
			if ci == nil {
				seen[info.Config.Name] = true
				continue
			}
			if ci.Leader == "" {
				behind = append(behind, info.Config.Name+": no leader")
				continue
			}
			seen[info.Config.Name] = true
			if !current {
				continue
			}
			for _, p := range ci.Replicas {
				if !p.Current || p.Offline {
					behind = append(behind, fmt.Sprintf("%s: %s current=%v offline=%v lag=%d", info.Config.Name, p.Name, p.Current, p.Offline, p.Lag))
				}
			}
		}
		for _, name := range r.streams {
			if !seen[name] {
				// A stream without a leader may be left out of the list.
				behind = append(behind, name+": not listed")
			}
		}
		switch {
		case lister.Err() != nil:
			state = "list streams: " + lister.Err().Error()
		case n == 0:
			state = "no stream listed"
		case len(behind) > 0:
			state = strings.Join(behind, ", ")
		default:
			return nil
		}
		return errors.New(state)
	})
	if err != nil {
		r.say("**** %s: NATS not healed %.1fs after injection (%s); going on", f.Kind, time.Since(start).Seconds(), truncate(state, 300))
	}
}

func retry(ctx context.Context, fn func() error) error {
	var err error
	for range 3 {
		if err = fn(); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(500 * time.Millisecond):
		}
	}
	return err
}

// heal makes sure that nothing is left broken: no toxic, PostgreSQL and NATS
// running, every process running.
func (r *runner) heal(ctx context.Context) error {
	if err := r.proxy.Heal(); err != nil {
		return err
	}
	hctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if !r.st.PG.Running() {
		if err := r.st.PG.Start(hctx); err != nil {
			return err
		}
	}
	restarted := false
	for _, srv := range r.st.NATSServers() {
		if !srv.Running() {
			if err := srv.Restart(hctx); err != nil {
				return err
			}
			restarted = true
		}
	}
	if restarted && len(r.st.Cluster) > 0 {
		r.waitNATSHealed(hctx, Fault{Kind: "heal"}, time.Now(), true)
	}
	for _, p := range []*procs.Proc{r.st.Monitor, r.st.Manager} {
		if !p.Running() {
			if err := p.Start(); err != nil {
				return err
			}
		}
	}
	for _, n := range r.nodes {
		if !n.Running() {
			if err := n.Start(); err != nil {
				return err
			}
		}
		if err := launch.WaitReady(hctx, n); err != nil {
			return err
		}
	}
	return nil
}

// drain waits until the KV mode is normal, every node reports normal at the
// KV's epoch, and the buffer and producer streams are empty.
func (r *runner) drain(ctx context.Context) (*Check, events.ModeChanged) {
	c := newCheck("every node converged on normal with the same epoch")
	deadline := time.Now().Add(r.cfg.DrainTimeout)
	var last string
	var mode events.ModeChanged
	nextPrint := time.Now().Add(5 * time.Second)
	for {
		state, m, ok := r.converged(ctx)
		mode, last = m, state
		if !ok && time.Now().After(nextPrint) {
			r.verbose("draining: %s", state)
			nextPrint = time.Now().Add(5 * time.Second)
		}
		if ok {
			c.Detail = state
			return c, mode
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			c.fail("not converged %v after the heal: %s", r.cfg.DrainTimeout, last)
			c.Detail = last
			return c, mode
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func (r *runner) converged(ctx context.Context) (string, events.ModeChanged, bool) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	mode, err := r.kvMode(ctx)
	if err != nil {
		return "kv: " + err.Error(), mode, false
	}
	var parts []string
	ok := mode.Mode == events.ModeNormal
	parts = append(parts, fmt.Sprintf("kv %s epoch %d", mode.Mode, mode.Epoch))
	for _, n := range r.nodes {
		st, err := launch.NodeStatus(ctx, httpClient, n)
		if err != nil {
			ok = false
			parts = append(parts, fmt.Sprintf("%s: %v", n.ID, err))
			continue
		}
		if st.Mode != events.ModeNormal || st.Epoch != mode.Epoch {
			ok = false
		}
		parts = append(parts, fmt.Sprintf("%s %s epoch %d", n.ID, st.Mode, st.Epoch))
	}
	// Drained means nothing left to deliver and nothing in flight on either
	// work queue (the consumers' view; see checkOrphans for the streams' count).
	for _, c := range [][2]string{{events.StreamBuffer, events.ConsumerReplay}, {events.StreamMetadata, events.ConsumerMetadataWriter}} {
		s, err := r.js.Stream(ctx, r.subj.Name(c[0]))
		if err != nil {
			ok = false
			parts = append(parts, fmt.Sprintf("%s: %v", c[0], err))
			continue
		}
		msgs := s.CachedInfo().State.Msgs
		ci, err := r.js.Consumer(ctx, r.subj.Name(c[0]), r.subj.Name(c[1]))
		if err != nil {
			ok = false
			parts = append(parts, fmt.Sprintf("%s: %v", c[1], err))
			continue
		}
		info := ci.CachedInfo()
		if info.NumPending > 0 || info.NumAckPending > 0 {
			ok = false
		}
		parts = append(parts, fmt.Sprintf("%s %d msgs (%s pending %d, ack pending %d)", c[0], msgs, c[1], info.NumPending, info.NumAckPending))
	}
	return strings.Join(parts, ", "), mode, ok
}

// kvMode reads the mode key; an absent key is an error (a manager has
// written the mode by the time the run checks it).
func (r *runner) kvMode(ctx context.Context) (events.ModeChanged, error) {
	mc, rev, err := modefollow.NewBucket(r.js, r.subj).Read(ctx)
	if err == nil && rev == 0 {
		err = jetstream.ErrKeyNotFound
	}
	return mc, err
}

var httpClient = &http.Client{Timeout: 5 * time.Second}

func (r *runner) managerStatus(ctx context.Context, timeout time.Duration) (events.SystemStatus, error) {
	var st events.SystemStatus
	err := procs.Eventually(timeout, 200*time.Millisecond, func() error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		msg, err := r.nc.Request(r.subj.Of(events.SubjectStatusGet), []byte("{}"), 3*time.Second)
		if err != nil {
			return err
		}
		var e events.ErrorReply
		if json.Unmarshal(msg.Data, &e) == nil && e.Error != "" {
			return fmt.Errorf("status.get: %s", e.Error)
		}
		return json.Unmarshal(msg.Data, &st)
	})
	return st, err
}

// checkBuffer checks the write buffer's accounting: the buffer is empty, and
// the writes the nodes accepted into it equal those they replayed or skipped
// as stale.
//
// The counters are in-memory per process, so the equality is asserted only
// when no cache-node was killed (a killed node forgets what it accepted and
// replayed). A NATS restart, or the loss of one server of a cluster (the
// stream's leader, or the server a node's connection was on), can make a
// buffer append whose acknowledgement was lost (answered 503, not counted as
// accepted, but stored by the quorum) and a replayed message whose ack was
// lost (replayed again, counted stale twice) count more on the replay side,
// so with either only accepted <= replayed + stale is asserted: no buffered
// write was left unreplayed.
func (r *runner) checkBuffer(ctx context.Context, res *ScheduleResult, hist History) *Check {
	c := newCheck("buffer accounting")
	for _, e := range hist.Replays {
		res.ReplayEventsSum += e.Replayed + e.SkippedStale
	}
	killed, natsRestart, serverKill := false, false, false
	for _, e := range res.Executed {
		killed = killed || e.Kind == NodeKill
		natsRestart = natsRestart || e.Kind == NATSRestart
		serverKill = serverKill || e.Kind == NATSServerKill
	}
	natsFault := natsRestart || serverKill
	// The nodes refresh their buffer figures every NODE_STATUS_INTERVAL: poll
	// until the sums settle.
	var acc, rep, stale, pending int64
	var perNode []string
	_ = procs.Eventually(5*time.Second, 250*time.Millisecond, func() error {
		acc, rep, stale, pending, perNode = 0, 0, 0, 0, nil
		for _, n := range r.nodes {
			st, err := launch.NodeStatus(ctx, httpClient, n)
			if err != nil {
				return err
			}
			acc += st.Buffer.AcceptedTotal
			rep += st.Buffer.ReplayedTotal
			stale += st.Buffer.SkippedStaleTotal
			pending = max(pending, st.Buffer.Pending) // every node reports the one shared stream
			perNode = append(perNode, fmt.Sprintf("%s accepted %d replayed %d stale %d pending %d", n.ID,
				st.Buffer.AcceptedTotal, st.Buffer.ReplayedTotal, st.Buffer.SkippedStaleTotal, st.Buffer.Pending))
		}
		if pending != 0 || (!killed && !natsFault && acc != rep+stale) {
			return errors.New("not settled")
		}
		return nil
	})
	res.Accepted, res.Replayed, res.Stale = acc, rep, stale
	c.Detail = fmt.Sprintf("accepted %d, replayed %d + skipped stale %d = %d (replay.completed events: %d); %s",
		acc, rep, stale, rep+stale, res.ReplayEventsSum, strings.Join(perNode, "; "))
	if pending != 0 {
		c.fail("buffer still has %d pending messages after the drain", pending)
	}
	switch {
	case killed:
		c.Detail += " [a cache-node was killed: its counters restarted at zero, only pending = 0 is asserted]"
	case natsFault:
		what := "NATS restarted"
		switch {
		case natsRestart && serverKill:
			what = "NATS restarted and a NATS server lost"
		case serverKill:
			what = "a NATS server lost"
		}
		c.Detail += " [" + what + ": accepted <= replayed + stale asserted]"
		if acc > rep+stale {
			c.fail("accepted %d > replayed %d + skipped stale %d: %d buffered writes were never replayed", acc, rep, stale, acc-rep-stale)
		}
	default:
		if acc != rep+stale {
			c.fail("accepted %d != replayed %d + skipped stale %d (difference %d)", acc, rep, stale, acc-rep-stale)
		}
	}
	return c
}

// checkCounters compares the recovery-manager's total_failures and
// total_recoveries with the outages injected and the outages announced.
func (r *runner) checkCounters(res *ScheduleResult, hist History) *Check {
	c := newCheck("failures and recoveries agree with the outages")
	var db []Executed
	var monitorDown, natsDown [][2]time.Time
	for _, e := range res.Executed {
		switch {
		case e.Kind.IsDatabase():
			db = append(db, e)
		case e.Kind == MonitorKill:
			// A restarted monitor needs a moment to connect before its first check.
			monitorDown = append(monitorDown, [2]time.Time{e.Start, e.End.Add(1500 * time.Millisecond)})
		case e.Kind == NATSRestart:
			// One server or a whole cluster (whose End is when JetStream answered again).
			natsDown = append(natsDown, [2]time.Time{e.Start, e.End.Add(time.Second)})
		case e.Kind == NATSServerKill:
			// No NATS outage: a quorum stays up, the services reconnect to
			// another server at once, and the monitor publishes a transition
			// again on each check until JetStream takes it, so a hard
			// database outage during a server's loss must be counted too.
		}
	}
	outages := hist.Outages()
	slack := r.cfg.HealthInterval + r.cfg.HealthTimeout + time.Second
	perFault := make([]int, len(db))
	for i := range outages {
		o := &outages[i]
		t := o.Trigger
		if t.IsZero() {
			t = o.Start
		}
		for j := len(db) - 1; j >= 0; j-- {
			if !db[j].Start.After(t.Add(100*time.Millisecond)) && !t.After(db[j].End.Add(slack)) {
				o.Fault = j
				perFault[j]++
				break
			}
		}
		if o.Fault < 0 {
			c.fail("outage at +%.2fs (epoch %d, %q, db.unhealthy at +%.2fs) matches no database fault",
				o.Start.Sub(r.begin).Seconds(), o.StartEpoch, o.Reason, t.Sub(r.begin).Seconds())
			continue
		}
		f := db[o.Fault]
		if hist.ModeAt(f.Start.Add(-time.Millisecond)) == events.ModeNormal && perFault[o.Fault] == 1 {
			res.Detections = append(res.Detections, Timing{D: o.Start.Sub(f.Start), Seed: r.seed, Fault: f.Fault})
		}
	}
	for _, o := range outages {
		if o.End.IsZero() {
			continue
		}
		// Recovery is measured from the end of the last database fault that began before the normal mode.
		var last *Executed
		for j := range db {
			if db[j].Start.Before(o.End) && db[j].Start.After(o.Start.Add(-time.Minute)) {
				last = &db[j]
			}
		}
		if last != nil && last.End.Before(o.End) {
			res.Recoveries = append(res.Recoveries, Timing{D: o.End.Sub(last.End), Seed: r.seed, Fault: last.Fault})
		}
	}
	for _, t := range res.Detections {
		if t.D > res.LongestDetection.D {
			res.LongestDetection = t
		}
	}
	for _, t := range res.Recoveries {
		if t.D > res.LongestRecovery.D {
			res.LongestRecovery = t
		}
	}
	res.Outages = outages

	// Lower bound: a hard outage that starts in normal mode and lasts the
	// detection bound plus a second while the monitor and NATS are up must be
	// counted.
	lower := 0
	var qualifying []string
	for _, e := range db {
		if !e.Kind.HardOutage() || e.Err != "" || hist.ModeAt(e.Start) != events.ModeNormal {
			continue
		}
		need := r.cfg.detectionBound(e.Kind) + time.Second
		if longestFree(e.Start, e.End, append(append([][2]time.Time{}, monitorDown...), natsDown...)) >= need {
			lower++
			qualifying = append(qualifying, fmt.Sprintf("%s at +%.2fs for %.2fs", e.Kind, e.Start.Sub(r.begin).Seconds(), e.End.Sub(e.Start).Seconds()))
		}
	}
	// Upper bound: one failure per database fault, except that a flapping
	// connection can be declared unhealthy, recover and fail again within one fault.
	upper := len(db)
	for j, e := range db {
		if e.Kind == ProxyFlap && perFault[j] > 1 {
			upper += perFault[j] - 1
		}
	}
	f, rc := res.TotalFailures, res.TotalRecoveries
	c.Detail = fmt.Sprintf("total_failures %d, total_recoveries %d; outages announced %d; database faults %d (hard outages long enough to be detected for sure: %d)",
		f, rc, len(outages), len(db), lower)
	if rc != f {
		c.fail("total_recoveries %d != total_failures %d: an outage did not heal", rc, f)
	}
	if f < int64(lower) {
		c.fail("total_failures %d < %d hard outages that must have been detected: %s", f, lower, strings.Join(qualifying, ", "))
	}
	if f > int64(upper) {
		c.fail("total_failures %d > %d database faults (flapping re-detections included)", f, upper)
	}
	if len(hist.MissingEpochs(lastEpoch(hist))) == 0 && f != int64(len(outages)) {
		c.fail("total_failures %d != %d outages announced by mode events (normal -> cache_only)", f, len(outages))
	}
	return c
}

func lastEpoch(h History) int64 {
	if len(h.Modes) == 0 {
		return 0
	}
	return h.Modes[len(h.Modes)-1].Epoch
}

// longestFree returns the longest part of [a, b] outside every blocked interval.
func longestFree(a, b time.Time, blocked [][2]time.Time) time.Duration {
	sort.Slice(blocked, func(i, j int) bool { return blocked[i][0].Before(blocked[j][0]) })
	best := time.Duration(0)
	cur := a
	for _, iv := range blocked {
		if !iv[1].After(cur) {
			continue
		}
		if iv[0].After(b) {
			break
		}
		if iv[0].After(cur) {
			best = max(best, iv[0].Sub(cur))
		}
		cur = iv[1]
	}
	if b.After(cur) {
		best = max(best, b.Sub(cur))
	}
	return best
}

// checkPoison: every producer write of the workload is valid, so none may end
// in the poison stream (a poisoned write is a lost write).
func (r *runner) checkPoison(ctx context.Context) *Check {
	c := newCheck("no producer write poisoned")
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := r.js.Stream(ctx, r.subj.Name(events.StreamPoison))
	if err != nil {
		c.Skipped = true
		c.Detail = "no poison stream: " + err.Error()
		return c
	}
	n := s.CachedInfo().State.Msgs
	c.Detail = fmt.Sprintf("%s holds %d messages", events.StreamPoison, n)
	if n > 0 {
		c.fail("%d messages in %s", n, events.StreamPoison)
	}
	return c
}

// checkCacheOnlyCause: every automatic entry into cache_only (from normal or
// from recovering) has a cause, a failed health check during a database
// fault. Its time is the db.unhealthy that triggered it, or, for a return to
// cache_only decided by the manager during replay, the transition itself.
func (r *runner) checkCacheOnlyCause(res *ScheduleResult, hist History) *Check {
	c := newCheck("no cache-only mode without a database fault")
	var db []Executed
	for _, e := range res.Executed {
		if e.Kind.IsDatabase() {
			db = append(db, e)
		}
	}
	slack := r.cfg.HealthInterval + r.cfg.HealthTimeout + time.Second
	n := 0
	for _, m := range hist.Modes {
		if m.Mode != events.ModeCacheOnly || m.Manual {
			continue
		}
		n++
		t := m.Since
		if !strings.Contains(m.Reason, "during recovery") {
			for _, u := range hist.Unhealthy {
				if !u.OccurredAt.After(m.Since) {
					t = u.OccurredAt
				}
			}
		}
		found := false
		for _, f := range db {
			if !f.Start.After(t.Add(100*time.Millisecond)) && !t.After(f.End.Add(slack)) {
				found = true
				break
			}
		}
		if !found {
			last := "none"
			for _, f := range db {
				if f.Start.Before(t) {
					last = fmt.Sprintf("%s +%.2fs..+%.2fs", f.Kind, f.Start.Sub(r.begin).Seconds(), f.End.Sub(r.begin).Seconds())
				}
			}
			c.fail("epoch %d cache_only at +%.2fs (%q, cause at +%.2fs) while no database fault was active (last one: %s)",
				m.Epoch, m.Since.Sub(r.begin).Seconds(), m.Reason, t.Sub(r.begin).Seconds(), last)
		}
	}
	c.Detail = fmt.Sprintf("%d automatic cache_only entries, each within a database fault (+%v)", n, slack)
	return c
}

// checkHealthView (advisory): the recovery-manager's view of the database
// health (status.get health_statistics, and what it decides recovery on) is
// current: its last check is at most a few check intervals old.
func (r *runner) checkHealthView(st events.SystemStatus) *Check {
	c := newCheck("the manager's health view is current")
	c.Warn = true
	bound := 3*r.cfg.HealthInterval + r.cfg.HealthTimeout + time.Second
	last := st.HealthStatistics.LastCheckTime
	if last == nil {
		c.fail("status.get has no last_check_time")
		return c
	}
	lag := time.Since(*last)
	c.Detail = fmt.Sprintf("status.get health_statistics.last_check_time is %.1fs old (bound %v), %d checks seen", lag.Seconds(), bound, st.HealthStatistics.TotalChecks)
	if lag > bound {
		c.fail("the manager's latest db.health is %.1fs old while the monitor checks every %v: its db.health feed lags", lag.Seconds(), r.cfg.HealthInterval)
	}
	return c
}

// setMaxConnections raises max_connections and restarts PostgreSQL.
func setMaxConnections(ctx context.Context, st *launch.System, n int) error {
	db, err := pgdb.Open(pgdb.Config{DSN: st.DSN})
	if err != nil {
		return err
	}
	_, err = db.ExecContext(ctx, fmt.Sprintf("ALTER SYSTEM SET max_connections = %d", n))
	_ = db.Close()
	if err != nil {
		return fmt.Errorf("max_connections: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := st.PG.Stop(sctx, "fast"); err != nil {
		return err
	}
	return st.PG.Start(sctx)
}

// checkConnections counts the server connections of each service once the
// system is idle: the health-monitor and the recovery-manager probe with one
// short-lived connection at a time, the cache-nodes are bounded by their
// pools (DB_MAX_CONNS, 16 by default). More means connections leak, and a
// leak ends in "too many clients" outages.
func (r *runner) checkConnections(ctx context.Context) *Check {
	c := newCheck("no database connection leak")
	db, err := pgdb.Open(pgdb.Config{DSN: r.st.DSN})
	if err != nil {
		c.fail("open: %v", err)
		return c
	}
	defer db.Close()
	var rows []struct {
		App   string `bun:"app"`
		Count int    `bun:"n"`
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := db.NewRaw(`SELECT coalesce(application_name, '') AS app, count(*) AS n FROM pg_stat_activity
		WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() GROUP BY 1 ORDER BY 1`).Scan(qctx, &rows); err != nil {
		c.fail("pg_stat_activity: %v", err)
		return c
	}
	limits := map[string]int{"anivault-health-monitor": 2, "anivault-recovery-manager": 2, "anivault-cache-node": 16 * r.cfg.Nodes}
	var parts []string
	for _, row := range rows {
		name := row.App
		if name == "" {
			name = "(no name)"
		}
		parts = append(parts, fmt.Sprintf("%s %d", name, row.Count))
		if lim, ok := limits[row.App]; ok && row.Count > lim {
			c.fail("%s holds %d server connections (at most %d expected) after the drain:%s", row.App, row.Count, lim, connDetails(qctx, db, row.App))
		}
	}
	c.Detail = "server connections after the drain: " + strings.Join(parts, ", ")
	return c
}

// checkOrphans (advisory): once the consumers have nothing pending and
// nothing in flight, the buffer and the producers' write stream must come to
// be empty too. A message the
// consumer already acknowledged but the stream kept (seen after NATS server
// restarts) is an orphan: it is never delivered again and keeps the stream's
// message count, which the recovery-manager reads as "buffer pending", above
// zero for ever.
func (r *runner) checkOrphans(ctx context.Context) *Check {
	c := newCheck("work queues hold no orphan messages")
	c.Warn = true
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var parts []string
	for _, sc := range [][2]string{{events.StreamBuffer, events.ConsumerReplay}, {events.StreamMetadata, events.ConsumerMetadataWriter}} {
		s, err := r.js.Stream(ctx, r.subj.Name(sc[0]))
		if err != nil {
			c.fail("%s: %v", sc[0], err)
			continue
		}
		ci, err := r.js.Consumer(ctx, r.subj.Name(sc[0]), r.subj.Name(sc[1]))
		if err != nil {
			c.fail("%s: %v", sc[1], err)
			continue
		}
		st, info := s.CachedInfo().State, ci.CachedInfo()
		// The nodes remove what was acknowledged within a status interval
		// (the buffer's orphans by a sweep, the producers' write stream,
		// not a work queue, by a trim below the ack floor): give them a few.
		for wait := time.Now().Add(5 * time.Second); st.Msgs > 0 && time.Now().Before(wait) && ctx.Err() == nil; {
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
			if info, err := s.Info(ctx); err == nil {
				st = info.State
			}
		}
		parts = append(parts, fmt.Sprintf("%s %d msgs", sc[0], st.Msgs))
		if st.Msgs == 0 || info.NumPending > 0 || info.NumAckPending > 0 {
			continue
		}
		var shown []string
		for q := st.FirstSeq; q <= st.LastSeq && len(shown) < 3; q++ {
			m, err := s.GetMsg(ctx, q)
			if err != nil {
				continue
			}
			shown = append(shown, fmt.Sprintf("seq %d %s %s at %s", q, m.Subject, truncate(string(m.Data), 80), m.Time.Format("15:04:05.000")))
		}
		c.fail("%s holds %d messages (first seq %d, last %d) that consumer %s (ack floor %d, delivered %d, pending 0, ack pending 0) will never deliver: %s",
			sc[0], st.Msgs, st.FirstSeq, st.LastSeq, sc[1], info.AckFloor.Stream, info.Delivered.Stream, strings.Join(shown, "; "))
	}
	c.Detail = strings.Join(parts, ", ")
	return c
}

// unknownCauses groups the writes with an unknown outcome by a short cause.
func unknownCauses(ops []Op) map[string]int {
	m := map[string]int{}
	for _, op := range ops {
		if !op.Indeterminate {
			continue
		}
		cause := op.Err
		switch {
		case op.Producer:
			cause = "producer: " + cause
		case op.Status != 0:
			cause = fmt.Sprintf("http %d: %s", op.Status, cause)
		default:
			cause = "http transport: " + cause
		}
		// Drop addresses and ids so that equal causes group.
		if i := strings.Index(cause, "tmdb:"); i >= 0 {
			cause = cause[:i]
		}
		for _, cut := range []string{" 127.0.0.1", "\"127.0.0.1", " dial tcp", " read tcp"} {
			if i := strings.Index(cause, cut); i >= 0 {
				cause = cause[:i] + cut + "…"
			}
		}
		m[truncate(cause, 110)]++
	}
	return m
}

// connDetails lists an application's server connections: when each started,
// its state and since when, and its last query.
func connDetails(ctx context.Context, db *bun.DB, app string) string {
	var rows []struct {
		Age   float64 `bun:"age"`
		State string  `bun:"state"`
		Since float64 `bun:"since"`
		Port  int     `bun:"port"`
		Query string  `bun:"query"`
	}
	err := db.NewRaw(`SELECT extract(epoch FROM now() - backend_start)::float8 AS age, coalesce(state, '') AS state,
		coalesce(extract(epoch FROM now() - state_change), 0)::float8 AS since, coalesce(client_port, 0) AS port, left(coalesce(query, ''), 60) AS query
		FROM pg_stat_activity WHERE application_name = ? AND backend_type = 'client backend' ORDER BY backend_start LIMIT 12`, app).Scan(ctx, &rows)
	if err != nil {
		return " (details: " + err.Error() + ")"
	}
	var b strings.Builder
	for _, r := range rows {
		fmt.Fprintf(&b, "\n           started %.1fs ago, %s for %.1fs, client port %d, last query %q", r.Age, r.State, r.Since, r.Port, r.Query)
	}
	return b.String()
}
