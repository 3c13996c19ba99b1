// Package node is the cache-node: it serves anime metadata from its cache and
// PostgreSQL, writes through a circuit breaker and retry, buffers writes
// durably in JetStream while the database is unavailable, and replays them
// when the recovery-manager announces recovery.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/uptrace/bun"
	"golang.org/x/sync/errgroup"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/cache"
	"github.com/anivault/anivault/pkg/envconfig"
	"github.com/anivault/anivault/pkg/hlc"
	"github.com/anivault/anivault/pkg/metastore"
	"github.com/anivault/anivault/pkg/natsconn"
	"github.com/anivault/anivault/pkg/pgdb"
	"github.com/anivault/anivault/pkg/resilience"
	"github.com/anivault/anivault/pkg/svckit"
	"github.com/anivault/anivault/pkg/topology"
	"github.com/anivault/anivault/pkg/wmnats"
)

// Run reads the configuration from the environment and runs a cache-node until ctx is done.
func Run(ctx context.Context, log *slog.Logger) error {
	cfg, err := LoadConfig(envconfig.New(nil))
	if err != nil {
		return err
	}
	log = log.With("node", cfg.NodeID)
	log.Info("starting cache-node", "nats", cfg.NATS, "http_addr", cfg.HTTPAddr, "prefix", cfg.SubjectPrefix)
	applyMemoryLimit(cfg, log)
	n, err := New(cfg, log)
	if err != nil {
		return err
	}
	return n.Run(ctx)
}

// entry is a cached record: its encoded JSON (version and updated_at
// included), or a tombstone.
type entry struct {
	version int64
	deleted bool
	body    []byte
	at      int64 // when it was cached (unix nanos), for revalidation
}

// entryOverhead is what one cache entry costs the heap besides its body: the
// LRU list element (golang-lru's entry holding the key, this entry with its
// cache time, the cache's size and an expiry time the cache does not use:
// 120 bytes) and the map slot pointing at it (17 bytes at a load between 7/16
// and 7/8: 19 to 39 bytes). TestEntrySizeCoversHeap measures 149 to 166
// bytes; 176 keeps the cache's count an upper bound.
const entryOverhead = 176

// size is what e costs the heap: its body's allocation (the capacity, which
// is the size class the encoder's buffer grew to, not the length) and the
// entry's bookkeeping.
func (e entry) size() int64 { return int64(cap(e.body)) + entryOverhead }

// Node is one cache-node process.
type Node struct {
	cfg   Config
	log   *slog.Logger
	subj  events.Subjects
	clock *hlc.Clock
	cache *cache.Cache[int64, entry]

	breaker *resilience.Breaker
	retrier *resilience.Retrier
	metrics *metrics
	// changes is the change log: the proof that the cache is current, the
	// replica read during an outage.
	changes *changeLog
	// logBatch gathers concurrent writes' change-log entries into atomic batches.
	logBatch *logBatcher
	// pendingLog holds durable writes not yet in the change log.
	pendingLog unlogged
	// backfillDone is set once the whole table is known to be in the change log.
	backfillDone atomic.Bool
	// budgetStarved is set while the change log's index leaves the cache
	// only its floor (fitBudget).
	budgetStarved atomic.Bool

	// Set up in Run.
	db      *bun.DB
	store   *metastore.Store
	nc      *nats.Conn
	js      jetstream.JetStream
	kv      jetstream.KeyValue
	buffer  *buffer
	corePub message.Publisher
	// changedPub publishes metadata.changed on the subscriber's no-echo connection.
	changedPub message.Publisher
	jsPub      message.Publisher
	wmLog      watermill.LoggerAdapter
	ready      atomic.Bool
	// stopping is set when shutdown begins: /readyz fails from then on.
	stopping atomic.Bool
	// migrated is set once the schema exists; until then the database counts as unavailable.
	migrated atomic.Bool
	// migrateTried is set after the first migration attempt, success or not.
	migrateTried atomic.Bool
	mode         modeState
	// replayer drains the write buffer into the database (set up in Run).
	replayer  *replayer
	bufStatus atomic.Pointer[events.BufferStatus]
	// health is the monitor\'s latest db.health, shown in /v1/status.
	health atomic.Pointer[healthReport]
	// committer groups committed writes (nil with DB_GROUP_COMMIT_MAX=1).
	committer *committer

	// nats is the NATS transport.
	nats *natsAPI
	// http is the HTTP transport.
	http *httpAPI

	acceptedTotal atomic.Int64
}

// New builds a node from cfg without touching the network.
func New(cfg Config, log *slog.Logger) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c, err := cache.New[int64, entry](cache.Config{MaxEntries: cfg.CacheMaxSize, MaxBytes: cacheBytes(cfg.CacheMaxMemoryMB)})
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	n := &Node{
		cfg:   cfg,
		log:   log,
		subj:  events.NewSubjects(cfg.SubjectPrefix),
		clock: hlc.New(cfg.NodeID, nil),
		cache: c,
	}
	n.changes = newChangeLog(n.subj, cfg.NodeID, cfg.StalenessBound, log)
	n.logBatch = newLogBatcher(n.changes)
	n.changes.onChange = func(id, version int64, _ bool) { n.invalidate(id, version) }
	n.changes.onLapse = func() { n.cache.Purge() }
	n.changes.validate = func(id, version int64, deleted bool, raw []byte) ([]byte, error) {
		if deleted {
			if !n.clock.Observe(version) {
				return nil, fmt.Errorf("version %d is beyond the clock's drift bound", version)
			}
			return nil, nil
		}
		return n.storedRecord(id, version, raw)
	}
	n.pendingLog.m = map[int64]logEntry{}
	n.metrics = newMetrics(n)
	if n.http, err = n.newHTTPAPI(); err != nil {
		return nil, err
	}
	if n.nats, err = n.newNATSAPI(); err != nil {
		return nil, err
	}
	n.breaker, err = resilience.NewBreaker(resilience.BreakerConfig{
		Name:             "postgres",
		FailureThreshold: uint32(cfg.BreakerFailureThreshold),
		OpenTimeout:      cfg.BreakerOpenTimeout,
		OnStateChange:    n.metrics.breakerChanged,
	}, log)
	if err != nil {
		return nil, fmt.Errorf("breaker: %w", err)
	}
	n.retrier, err = resilience.NewRetrier(resilience.RetryConfig{
		MaxAttempts: cfg.RetryMaxAttempts, BaseDelay: cfg.RetryBaseDelay, MaxDelay: cfg.RetryMaxDelay,
	})
	if err != nil {
		return nil, fmt.Errorf("retry: %w", err)
	}
	n.bufStatus.Store(&events.BufferStatus{})
	return n, nil
}

// Run connects, provisions, serves and blocks until ctx is done, then shuts
// down in order. It builds the node's parts in the order they depend on each
// other:
//
//  1. the database pool and the store (openDatabase);
//  2. the NATS connection, the topology and the change log (connectNATS);
//  3. the write parts: the buffer, the replayer, the group committer
//     (buildWriteParts);
//  4. the transports: the NATS router and micro endpoints, the HTTP
//     listener (buildTransports);
//
// then runs every loop of every part in one errgroup (serve). Shutdown is
// serve's last step (shutdown): readiness fails, the transports drain, the
// loops stop, and only then do the NATS connection and the database pool
// close, in the reverse order of their opening.
func (n *Node) Run(ctx context.Context) error {
	closeDB, err := n.openDatabase()
	if err != nil {
		return err
	}
	defer closeDB()
	if err := n.connectNATS(ctx); err != nil {
		return err
	}
	defer n.nc.Close()
	if err := n.buildWriteParts(); err != nil {
		return err
	}
	t, err := n.buildTransports(ctx)
	if err != nil {
		return err
	}
	err = n.serve(ctx, t)
	_ = n.nc.Drain()
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// openDatabase opens the pool and the store; the schema is migrated later,
// in the background, since the database may be down at start.
func (n *Node) openDatabase() (closeDB func(), err error) {
	n.db, err = pgdb.Open(pgdb.Config{
		DSN: n.cfg.DatabaseURL, AppName: "anivault-cache-node",
		DialTimeout: min(n.cfg.DBTimeout, 2*time.Second), ReadTimeout: n.cfg.DBTimeout, WriteTimeout: n.cfg.DBTimeout,
		MaxOpenConns: n.cfg.DBMaxConns,
	})
	if err != nil {
		return nil, err
	}
	if n.store, err = metastore.New(n.db); err != nil {
		_ = n.db.Close()
		return nil, err
	}
	return func() { _ = n.db.Close() }, nil
}

// connectNATS connects, provisions the streams, bucket and consumers, and
// attaches the change log; the caller closes n.nc.
func (n *Node) connectNATS(ctx context.Context) error {
	var err error
	n.nc, err = natsconn.Connect(ctx, n.cfg.NATS, "anivault-cache-node-"+n.cfg.NodeID, n.log)
	if err != nil {
		return err
	}
	if n.js, err = jetstream.New(n.nc); err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	if err := n.provision(ctx); err != nil {
		return err
	}
	return n.changes.attach(ctx, n.js)
}

// buildWriteParts makes the write buffer, the replayer and (with
// DB_GROUP_COMMIT_MAX above 1) the group committer, and registers their metrics.
func (n *Node) buildWriteParts() error {
	var err error
	n.buffer, err = newBuffer(n.js, n.subj.Of(events.SubjectBufferWrites), n.cfg.GroupCommitWindow, n.cfg.GroupCommitMax, n.cfg.BufferTimeout)
	if err != nil {
		return err
	}
	if n.replayer, err = n.newReplayer(); err != nil {
		return err
	}
	if n.cfg.DBGroupCommitMax > 1 {
		if n.committer, err = n.newCommitter(); err != nil {
			return err
		}
		n.metrics.registry.MustRegister(
			counterFunc("anivault_db_group_commits_total", "Statements of the group commit of committed writes (each carries one or more writes).",
				func() float64 { return float64(n.committer.batches.Load()) }),
			counterFunc("anivault_db_group_commit_writes_total", "Writes carried by group-commit statements (divided by anivault_db_group_commits_total: the mean group size).",
				func() float64 { return float64(n.committer.grouped.Load()) }),
		)
	}
	return nil
}

// transports are the node's ways in: NATS (the watermill router and the
// micro endpoints) and HTTP.
type transports struct {
	router *message.Router
	svc    micro.Service
	srv    *http.Server
	ln     net.Listener
}

// buildTransports makes the publishers, the NATS router and micro
// endpoints, and listens for HTTP.
func (n *Node) buildTransports(ctx context.Context) (transports, error) {
	var (
		t   transports
		err error
	)
	n.wmLog = wmnats.Logger(n.log)
	if n.corePub, err = wmnats.NewCorePublisher(n.nc, n.wmLog); err != nil {
		return t, err
	}
	if n.jsPub, err = wmnats.NewJetStreamPublisher(n.nc, n.wmLog); err != nil {
		return t, err
	}
	// metadata.changed is published and received on one connection with
	// no_echo: the server does not send a node its own events, which it would
	// only skip (in a busy node that was a few µs of CPU per write).
	changedConn, err := natsconn.Connect(ctx, n.cfg.NATS, "anivault-cache-node-changed-"+n.cfg.NodeID, n.log, nats.NoEcho())
	if err != nil {
		return t, err
	}
	if n.changedPub, err = wmnats.NewCorePublisher(changedConn, n.wmLog); err != nil {
		return t, err
	}
	n.nats.attach(n.nc, n.js, n.jsPub, n.wmLog)
	if t.router, err = n.nats.router(ctx, changedConn); err != nil {
		return t, err
	}
	if t.svc, err = n.nats.microService(); err != nil {
		return t, err
	}
	if t.ln, err = net.Listen("tcp", n.cfg.HTTPAddr); err != nil {
		return t, fmt.Errorf("listen %s: %w", n.cfg.HTTPAddr, err)
	}
	t.srv = &http.Server{Handler: n.http.handler(), ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute,
		ReadTimeout: n.cfg.HTTPReadTimeout, WriteTimeout: n.cfg.HTTPWriteTimeout}
	n.log.Info("HTTP listening", "addr", t.ln.Addr().String())
	return t, nil
}

// serve runs every loop of every part in one errgroup until ctx is done and
// the shutdown finished. Everything but the HTTP server runs until the
// server has drained: a write in flight when SIGTERM comes still finds its
// buffer, its database pool and its change log.
func (n *Node) serve(ctx context.Context, t transports) error {
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	g, gctx := errgroup.WithContext(runCtx)
	g.Go(func() error { return t.router.Run(gctx) })
	g.Go(func() error {
		if err := t.srv.Serve(t.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http: %w", err)
		}
		return nil
	})
	loops := []func(context.Context){
		n.migrateLoop, n.buffer.run, n.watchMode, n.statusLoop, n.drainLoop, n.trimLoop, n.budgetLoop,
		n.changes.run, n.logBatch.run, n.relogLoop, n.syncLog, n.expireLoop,
	}
	if n.committer != nil {
		loops = append(loops, n.committer.run)
	}
	for _, loop := range loops {
		g.Go(func() error { loop(gctx); return nil })
	}
	g.Go(func() error { n.shutdown(ctx, gctx, cancel, t); return nil })
	return g.Wait()
}

// shutdown waits for ctx (a signal) or gctx (a part failed), then stops in
// order: readiness fails first, the node keeps serving for SHUTDOWN_DELAY
// so that load balancers stop sending to it, metadata.get moves to the
// other nodes, the HTTP server drains the requests in flight, and only then
// do the loops (stopAll), the consumers and the running replay stop.
func (n *Node) shutdown(ctx, gctx context.Context, stopAll context.CancelFunc, t transports) {
	signalled := false
	select {
	case <-ctx.Done():
		signalled = true
	case <-gctx.Done(): // a component failed
	}
	n.stopping.Store(true)
	n.log.Info("shutting down: not ready, serving for the shutdown delay", "shutdown_delay", n.cfg.ShutdownDelay.String())
	if signalled && n.cfg.ShutdownDelay > 0 {
		select {
		case <-gctx.Done():
		case <-time.After(n.cfg.ShutdownDelay):
		}
	}
	_ = t.svc.Stop()
	sctx, scancel := context.WithTimeout(context.Background(), n.cfg.HTTPWriteTimeout)
	defer scancel()
	if err := t.srv.Shutdown(sctx); err != nil {
		n.log.Warn("HTTP server did not drain in time", "error", err)
	}
	n.log.Info("HTTP server drained: stopping the rest")
	stopAll()
	_ = t.router.Close()
	n.replayer.stop()
}

// provision makes the node's streams, bucket and consumers, retrying for up
// to 30 s. With NATS_PROVISION=false it makes nothing and waits, as long as
// it takes, for the ones the provision command makes.
func (n *Node) provision(ctx context.Context) error {
	top, err := topology.New(n.js, n.subj)
	if err != nil {
		return err
	}
	top.Replicas = n.cfg.Buffer.Replicas
	top.CheckOnly = n.cfg.NoProvision
	var (
		pctx   context.Context
		cancel context.CancelFunc
	)
	if top.CheckOnly {
		n.log.Info("NATS_PROVISION=false: creating no stream, bucket or consumer, waiting for the ones the provision command makes")
		pctx, cancel = context.WithCancel(ctx)
	} else {
		pctx, cancel = context.WithTimeout(ctx, 30*time.Second)
	}
	defer cancel()
	// No deadline per attempt: every request of the Ensure methods has its own.
	return svckit.Retry(pctx, n.log, top.Step(), 0, func(ctx context.Context) error {
		kv, err := top.EnsureEvents(ctx)
		if err == nil {
			err = top.EnsureWrites(ctx, n.cfg.Buffer)
		}
		if err == nil {
			n.kv = kv
		}
		return err
	})
}

func (n *Node) migrateLoop(ctx context.Context) {
	delay := 100 * time.Millisecond
	for {
		mctx, cancel := context.WithTimeout(ctx, n.cfg.DBTimeout+5*time.Second)
		err := metastore.Migrate(mctx, n.db)
		cancel()
		if err == nil {
			n.migrated.Store(true)
			n.migrateTried.Store(true)
			return
		}
		n.migrateTried.Store(true)
		n.log.Warn("database migration failed, will retry", "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(delay*2, time.Second)
	}
}

// publishChanged tells every node about a committed or buffered write: body
// is the record's encoding, nil for a delete. The source also travels as a
// header, so that the publishing node skips its own event without decoding it.
func (n *Node) publishChanged(id, version int64, buffered bool, body []byte) {
	payload, err := encodeChanged(n.cfg.NodeID, time.Now().UTC(), id, version, body == nil, buffered, body)
	if err == nil {
		msg := message.NewMessage(watermill.NewUUID(), payload)
		msg.Metadata.Set(events.HeaderSource, n.cfg.NodeID)
		err = n.changedPub.Publish(n.subj.Of(events.SubjectMetadataChanged), msg)
	}
	if err != nil {
		n.log.Warn("publish metadata.changed failed", "tmdb_id", id, "error", err)
	}
}

func (n *Node) publishCore(subject string, v any) error {
	b, err := events.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", subject, err)
	}
	return n.corePub.Publish(subject, message.NewMessage(watermill.NewUUID(), b))
}

// modeState is the node's view of the system mode, only ever moving to newer epochs.
type modeState struct {
	mu    sync.RWMutex
	cur   events.ModeChanged
	known bool
}

func (m *modeState) get() (events.ModeChanged, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.cur, m.known
}

// set stores mc when it is newer and returns the previous value.
func (m *modeState) set(mc events.ModeChanged) (prev events.ModeChanged, wasKnown, changed bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.known && mc.Epoch <= m.cur.Epoch {
		return m.cur, true, false
	}
	prev, wasKnown = m.cur, m.known
	m.cur, m.known = mc, true
	return prev, wasKnown, true
}

// currentMode is the mode that decides the read and write paths; unknown counts as normal.
func (n *Node) currentMode() events.Mode {
	mc, ok := n.mode.get()
	if !ok {
		return events.ModeNormal
	}
	return mc.Mode
}

// healthReport is a db.health report and when it arrived (its age decides
// whether /v1/status shows it or "stale").
type healthReport struct {
	report events.DBHealth
	at     time.Time
}
