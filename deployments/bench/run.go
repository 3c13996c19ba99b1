package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/deployments/launch"
	"github.com/anivault/anivault/deployments/local/fixtures"
	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/hlc"
	"github.com/anivault/anivault/pkg/metastore"
	"github.com/anivault/anivault/pkg/modefollow"
	"github.com/anivault/anivault/pkg/pgdb"
)

// Health settings of the run: the detection bound is interval × threshold.
const (
	healthInterval    = 500 * time.Millisecond
	healthThreshold   = 2
	recoveryThreshold = 2
	benchDB           = "anivault_bench"
)

// runner holds the system under test and the report being filled.
type runner struct {
	cfg     config
	begin   time.Time
	st      *launch.System
	nc      *nats.Conn
	js      jetstream.JetStream
	ev      *eventLog
	records []events.Record
	common  map[string]string
	rep     *Report
	http    *http.Client // short requests: status, readiness
	clock   *hlc.Clock

	mainStore  *metastore.Store // the services' database
	benchStore *metastore.Store // a second database on the same server, for the raw baselines

	nodeA, nodeB *launch.Node // the node under test, the second node for the outage phases
	// writesPerMsg is the mean number of writes in one buffer message measured in the write phase.
	writesPerMsg float64
	// snapshots counts the read phase's snapshots of a node's counters (each is two GET requests).
	snapshots int64
}

func (r *runner) say(format string, a ...any) {
	launch.Say(os.Stdout, r.begin, format, a...)
}

func run(ctx context.Context, c config) (*Report, error) {
	r := &runner{cfg: c, begin: time.Now(), http: &http.Client{Timeout: 2 * time.Second}, clock: hlc.New("bench", nil)}
	r.rep = &Report{Started: time.Now(), Machine: machineInfo(c.dir)}
	if err := os.MkdirAll(c.out, 0o755); err != nil {
		return nil, err
	}
	_ = os.RemoveAll(c.dir)
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return nil, err
	}
	recs, err := fixtures.Records()
	if err != nil {
		return nil, err
	}
	r.records = recs
	r.rep.Machine.FsyncMicros = measureFsync(c.dir)

	phases := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"reads", r.phaseReads},
		{"changelog", r.phaseChangeLog},
		{"writes", r.phaseWrites},
		{"ingest", r.phaseIngest},
		{"replay", r.phaseReplay},
		{"memory", r.phaseMemory},
		{"detect", r.phaseDetect},
		{"timeline", r.phaseTimeline},
	}
	needStack := false
	for _, p := range phases {
		needStack = needStack || c.want(p.name)
	}
	if needStack {
		if err := r.startStack(ctx); err != nil {
			r.rep.Errors = append(r.rep.Errors, "start: "+err.Error())
			r.stopStack()
			return r.finish(), err
		}
		for _, p := range phases {
			if !c.want(p.name) {
				continue
			}
			if ctx.Err() != nil {
				break
			}
			r.say("==== phase %s ====", p.name)
			t0 := time.Now()
			if err := p.fn(ctx); err != nil {
				r.say("phase %s failed: %v", p.name, err)
				r.rep.Errors = append(r.rep.Errors, fmt.Sprintf("phase %s: %v", p.name, err))
			}
			r.rep.PhaseTimes = append(r.rep.PhaseTimes, phaseTime{p.name, time.Since(t0)})
		}
		r.say("stopping the system")
		r.stopStack()
	}
	if c.want("micro") && !c.skipMicro && ctx.Err() == nil {
		r.say("==== phase micro ====")
		t0 := time.Now()
		if err := r.phaseMicro(ctx); err != nil {
			r.rep.Errors = append(r.rep.Errors, "phase micro: "+err.Error())
		}
		r.rep.PhaseTimes = append(r.rep.PhaseTimes, phaseTime{"micro", time.Since(t0)})
	}
	if ctx.Err() == nil {
		r.say("==== profiles for goals not met ====")
		r.profiles(ctx)
	}
	return r.finish(), ctx.Err()
}

func (r *runner) finish() *Report {
	r.rep.Total = time.Since(r.begin)
	r.rep.Machine.LoadAvgEnd = loadAvg()
	return r.rep
}

func (r *runner) startStack(ctx context.Context) error {
	r.say("building the services, starting NATS (JetStream, SyncAlways) and a private PostgreSQL ...")
	sctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	st, err := launch.Start(sctx, launch.Options{Dir: r.cfg.dir, ModuleDir: r.cfg.moduleDir})
	if err != nil {
		return err
	}
	r.st = st
	if st.PG == nil {
		return errors.New("the benchmark needs a private PostgreSQL (it kills it)")
	}
	pgDataDir = st.PG.DataDir()
	r.common = map[string]string{
		"HEALTH_CHECK_INTERVAL": healthInterval.String(), "HEALTH_CHECK_TIMEOUT": "1s",
		"HEALTH_FAILURE_THRESHOLD": fmt.Sprint(healthThreshold), "HEALTH_RECOVERY_THRESHOLD": fmt.Sprint(recoveryThreshold),
		"RECOVERY_CHECK_INTERVAL": "5s", "NODE_STATUS_INTERVAL": "500ms", "NODE_TIMEOUT": "3s",
		"DB_TIMEOUT": "5s", "BREAKER_OPEN_TIMEOUT": "1s", "CACHE_MAX_SIZE": "20000", "LOG_LEVEL": "info",
	}
	r.rep.Settings = r.common
	if err := st.StartMonitor(r.common); err != nil {
		return err
	}
	if err := st.StartManager(r.common); err != nil {
		return err
	}
	r.nc, err = nats.Connect(st.NATS.URL(), nats.MaxReconnects(-1))
	if err != nil {
		return err
	}
	if r.js, err = jetstream.New(r.nc); err != nil {
		return err
	}
	if r.ev, err = followEvents(r.nc); err != nil {
		return err
	}
	r.rep.Machine.NATSVersion = r.nc.ConnectedServerVersion()
	if err := st.PG.CreateDatabase(sctx, benchDB); err != nil {
		return err
	}
	if r.mainStore, err = openStore(sctx, st.DSN, 64); err != nil {
		return err
	}
	if r.benchStore, err = openStore(sctx, st.PG.DSNFor(benchDB), 64); err != nil {
		return err
	}
	var v string
	if err := r.mainStore.DB().NewRaw("SELECT version()").Scan(sctx, &v); err == nil {
		r.rep.Machine.PostgresVersion = v
	}
	r.nodeA, err = st.StartNode(ctx, "node-1", "", r.common)
	if err != nil {
		return err
	}
	r.say("NATS %s, PostgreSQL %s, cache-node %s", st.NATS.URL(), st.DSN, r.nodeA.URL())
	return nil
}

func (r *runner) stopStack() {
	if r.nc != nil {
		r.nc.Close()
	}
	for _, s := range []*metastore.Store{r.mainStore, r.benchStore} {
		if s != nil {
			_ = s.DB().Close()
		}
	}
	if r.st != nil {
		r.st.Close(context.Background())
	}
}

func openStore(ctx context.Context, dsn string, conns int) (*metastore.Store, error) {
	db, err := pgdb.Open(pgdb.Config{DSN: dsn, MaxOpenConns: conns, MaxIdleConns: conns, ReadTimeout: time.Minute, WriteTimeout: time.Minute, AppName: "anivault-bench"})
	if err != nil {
		return nil, err
	}
	if err := metastore.Migrate(ctx, db); err != nil {
		_ = db.Close()
		return nil, err
	}
	return metastore.New(db)
}

// nodeStatus reads a node's GET /v1/status.
func (r *runner) nodeStatus(n *launch.Node) (events.SystemStatus, error) {
	return launch.NodeStatus(context.Background(), r.http, n) // bounded by r.http's timeout
}

// waitModes polls every node's status every 10 ms until each is in mode and
// returns when each node was first seen in it.
func (r *runner) waitModes(ctx context.Context, nodes []*launch.Node, mode events.Mode, timeout time.Duration) (map[string]time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out := map[string]time.Time{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, len(nodes))
	for _, n := range nodes {
		wg.Go(func() {
			c := &http.Client{Timeout: 500 * time.Millisecond}
			for {
				resp, err := c.Get(n.URL() + "/v1/status")
				if err == nil {
					var s events.SystemStatus
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if json.Unmarshal(b, &s) == nil && s.Mode == mode {
						mu.Lock()
						out[n.ID] = time.Now()
						mu.Unlock()
						return
					}
				}
				select {
				case <-ctx.Done():
					errs <- fmt.Errorf("%s not in mode %s after %v", n.ID, mode, timeout)
					return
				case <-time.After(10 * time.Millisecond):
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return out, <-errs
}

// request sends an operator request to the recovery-manager.
func (r *runner) request(subject string, body string) (map[string]any, error) {
	m, err := r.nc.Request(subject, []byte(body), 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", subject, err)
	}
	var v map[string]any
	if err := json.Unmarshal(m.Data, &v); err != nil {
		return nil, fmt.Errorf("%s reply: %w", subject, err)
	}
	if e, ok := v["error"]; ok {
		return v, fmt.Errorf("%s: %v", subject, e)
	}
	return v, nil
}

// bufferMsgs returns the buffer stream's message count.
func (r *runner) bufferMsgs(ctx context.Context) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := r.js.Stream(ctx, events.StreamBuffer)
	if err != nil {
		return 0, err
	}
	return s.CachedInfo().State.Msgs, nil
}

// waitNormalEmpty waits for mode normal in KV and an empty buffer.
func (r *runner) waitNormalEmpty(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		mode, err := r.kvMode(ctx)
		n, err2 := r.bufferMsgs(ctx)
		if err == nil && err2 == nil && mode.Mode == events.ModeNormal && n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not healed after %v: mode %s, %d buffer messages (%v %v)", timeout, mode.Mode, n, err, err2)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// kvMode reads the mode key of the services' SUBJECT_PREFIX; an absent key
// is normal mode.
func (r *runner) kvMode(ctx context.Context) (events.ModeChanged, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	subj := events.NewSubjects(r.st.Env(r.common)["SUBJECT_PREFIX"])
	mc, _, err := modefollow.NewBucket(r.js, subj).Read(ctx)
	return mc, err
}

// record returns fixture record i (cycled) under id, its tmdb_id replaced.
func (r *runner) record(i int, id int64) events.Record {
	rec := r.records[i%len(r.records)]
	rec.TMDBID = id
	return rec
}

// ensureNodeB starts the second cache-node for the outage phases.
func (r *runner) ensureNodeB(ctx context.Context) error {
	if r.nodeB != nil && r.nodeB.Running() {
		return nil
	}
	n, err := r.st.StartNode(ctx, "node-2", "", r.common)
	if err != nil {
		return err
	}
	r.nodeB = n
	return nil
}

// stopNode stops a node and drops it from the stack's list.
func (r *runner) stopNode(n *launch.Node) {
	_ = n.Stop(10 * time.Second)
	kept := r.st.Nodes[:0]
	for _, m := range r.st.Nodes {
		if m != n {
			kept = append(kept, m)
		}
	}
	r.st.Nodes = kept
}

func writeFile(dir, name string, b []byte) error {
	return os.WriteFile(filepath.Join(dir, name), b, 0o644)
}

// checkpoint asks PostgreSQL for a checkpoint before it is killed, so that
// crash recovery replays little WAL: the earlier phases wrote hundreds of
// megabytes, and the run measures the system's recovery, not PostgreSQL's.
func (r *runner) checkpoint(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	t0 := time.Now()
	if _, err := r.mainStore.DB().ExecContext(cctx, "CHECKPOINT"); err != nil {
		r.say("checkpoint: %v", err)
		return
	}
	r.say("checkpoint before the kill: %v", time.Since(t0).Round(time.Millisecond))
}
