// Package manager is the recovery-manager: the one owner of the system's mode.
// The mode lives in the KV bucket anivault, key mode, and moves only by
// compare-and-swap on the key's revision, so two managers can never both
// advance it and a restarted manager resumes where it was.
package manager

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/envconfig"
	"github.com/anivault/anivault/pkg/natsconn"
	"github.com/anivault/anivault/pkg/pgdb"
	"github.com/anivault/anivault/pkg/svckit"
	"github.com/anivault/anivault/pkg/topology"
	"github.com/anivault/anivault/pkg/wmnats"
)

// Run reads the configuration and manages the mode until ctx is done.
func Run(ctx context.Context, log *slog.Logger) error {
	cfg, err := LoadConfig(envconfig.New(nil))
	if err != nil {
		return err
	}
	log = log.With("node", cfg.NodeID)
	log.Info("starting recovery-manager", "nats", cfg.NATS, "auto_recovery", cfg.AutoRecovery,
		"recovery_check_interval", cfg.RecoveryCheckInterval)
	m, err := New(cfg, log)
	if err != nil {
		return err
	}
	return m.Run(ctx)
}

// Manager owns the mode.
type Manager struct {
	cfg  Config
	log  *slog.Logger
	subj events.Subjects

	nc    *nats.Conn
	js    jetstream.JetStream
	kv    jetstream.KeyValue
	jsPub message.Publisher
	wmLog watermill.LoggerAdapter

	inputs chan input
	prober *pgdb.Prober
	// runCtx is Run's context, cancelled when Run returns: announcements
	// are retried until it ends.
	runCtx context.Context
	top    *topology.Topology
	// bg holds the goroutines Run starts outside its errgroup (the admin
	// endpoints, the announcements being retried, the re-announcement at
	// start); they end with runCtx, and Run waits for them before it returns.
	bg sync.WaitGroup

	registry    *prometheus.Registry
	transitions *prometheus.CounterVec
	modes       *svckit.ModeGauges
	peers       *peers // the monitors and nodes heard, for /metrics
	ready       atomic.Bool

	// Owned by the loop goroutine.
	health   *events.DBHealth
	healthAt time.Time // when health arrived (or was stored, for one read back at start)
	monitors monitorVotes
	// pendingVerdict is a transition (db.unhealthy or db.recovered) a
	// minority of the monitors reported, with its reason, waiting for a
	// majority.
	pendingVerdict       string
	pendingVerdictReason string
	minorityLogged       bool
	nodes                map[string]nodeSeen
	lastStatus           events.ModeChanged
	// unconfirmed is the last mode write that got no answer, until a read
	// shows whether it was applied.
	unconfirmed *unconfirmedWrite
}

type nodeSeen struct {
	status events.NodeStatus
	seen   time.Time
}

// input is one thing for the loop to do; reply receives its result.
type input struct {
	do    func(ctx context.Context) (any, error)
	reply chan result
}

type result struct {
	v   any
	err error
}

// New builds a manager.
func New(cfg Config, log *slog.Logger) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("manager: %w", err)
	}
	prober, err := pgdb.NewProber(cfg.DatabaseURL, "anivault-recovery-manager", cfg.CheckTimeout)
	if err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, log: log, subj: events.NewSubjects(cfg.SubjectPrefix), prober: prober,
		inputs: make(chan input), nodes: map[string]nodeSeen{}, monitors: monitorVotes{},
		registry: svckit.NewRegistry("recovery-manager")}
	m.transitions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "anivault_mode_transitions_total",
		Help: "Mode changes this manager made, by the mode entered."}, []string{"to"})
	m.peers = &peers{nodeTimeout: cfg.NodeTimeout}
	m.registry.MustRegister(m.transitions, m.peers)
	for _, to := range []events.Mode{events.ModeNormal, events.ModeCacheOnly, events.ModeRecovering} {
		m.transitions.WithLabelValues(string(to)) // 0 until the first transition
	}
	m.modes = svckit.NewModeGauges(m.registry, string(events.ModeNormal), string(events.ModeCacheOnly), string(events.ModeRecovering))
	return m, nil
}

// Run serves until ctx is done.
//
// Run owns every goroutine it starts and everything New opened, and stops
// them, however it returns, in this order:
//  1. ctx ends (or a part of the errgroup fails): the NATS micro service
//     stops answering, the router closes and the decision loop ends; Run
//     waits for the errgroup;
//  2. runCtx is cancelled: the admin endpoints stop, announcements still
//     being retried give up, and Run waits for them (m.bg);
//  3. the NATS connection drains (after the errgroup ran) and closes;
//  4. the prober closes its database connections.
func (m *Manager) Run(ctx context.Context) error {
	defer func() { _ = m.prober.Close() }() // 4
	var err error
	m.nc, err = natsconn.Connect(ctx, m.cfg.NATS, "anivault-recovery-manager-"+m.cfg.NodeID, m.log)
	if err != nil {
		return err
	}
	defer m.nc.Close() // 3
	runCtx, cancel := context.WithCancel(ctx)
	m.runCtx = runCtx
	stopBackground := func() { cancel(); m.bg.Wait() } // 2; safe to call twice
	defer stopBackground()
	m.js, err = jetstream.New(m.nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	m.bg.Go(func() {
		svckit.ServeAdmin(runCtx, m.cfg.AdminAddr, m.registry, func() (bool, string) {
			if !m.ready.Load() {
				return false, "JetStream not provisioned or endpoints not serving yet"
			}
			return true, ""
		}, m.log)
	})
	if err := m.provision(ctx); err != nil {
		return err
	}
	m.wmLog = wmnats.Logger(m.log)
	m.jsPub, err = wmnats.NewJetStreamPublisher(m.nc, m.wmLog)
	if err != nil {
		return err
	}
	m.resumeFromKV(ctx, runCtx)
	m.seedHealth(ctx)
	router, err := m.newRouter(ctx)
	if err != nil {
		return err
	}
	svc, err := m.addMicroService()
	if err != nil {
		return err
	}
	m.ready.Store(true)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return router.Run(gctx) })
	g.Go(func() error { m.loop(gctx); return nil })
	g.Go(func() error {
		<-gctx.Done()
		_ = svc.Stop()
		_ = router.Close()
		return nil
	})
	err = g.Wait() // 1
	stopBackground()
	_ = m.nc.Drain()
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// provision builds the topology and, retrying until ctx is done, makes
// sure the events stream and KV bucket, the writes stream (when missing)
// and the manager's consumers exist (or, with NATS_PROVISION=false, waits
// for them). It sets m.top and m.kv.
func (m *Manager) provision(ctx context.Context) error {
	top, err := topology.New(m.js, m.subj)
	if err != nil {
		return err
	}
	top.Replicas = m.cfg.Buffer.Replicas
	top.CheckOnly = m.cfg.NoProvision
	if top.CheckOnly {
		m.log.Info("NATS_PROVISION=false: creating no stream, bucket or consumer, waiting for the ones the provision command makes")
	}
	m.top = top
	return svckit.RetryUntil(ctx, m.log, top.Step(), func(ctx context.Context) error {
		kv, err := top.EnsureEvents(ctx)
		if err != nil {
			return err
		}
		m.kv = kv
		if err := top.EnsureWritesIfMissing(ctx, m.cfg.Buffer); err != nil {
			return err
		}
		return top.EnsureManagerConsumers(ctx)
	})
}

// resumeFromKV reads the mode in KV: on the system's first start it writes
// the initial mode; otherwise it resumes from the stored one and, past
// epoch 0, announces it again in the background (until bgCtx ends). A
// failed read is left to the loop.
func (m *Manager) resumeFromKV(ctx, bgCtx context.Context) {
	cur, rev, err := m.readMode(ctx)
	if err != nil {
		return
	}
	if rev == 0 {
		// First start of the system: write the initial mode so that
		// `nats kv get anivault mode` and every node see it at once.
		if err := m.initMode(ctx, cur); err != nil {
			m.log.Warn("writing the initial mode failed", "error", err)
		}
		return
	}
	m.log.Info("resuming from KV", "mode", cur.Mode, "epoch", cur.Epoch)
	if cur.Epoch > 0 {
		m.bg.Go(func() { m.reannounce(bgCtx, cur) })
	}
}

// submit runs do on the loop goroutine and waits for its result.
func (m *Manager) submit(ctx context.Context, do func(ctx context.Context) (any, error)) (any, error) {
	in := input{do: do, reply: make(chan result, 1)}
	select {
	case m.inputs <- in:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case r := <-in.reply:
		return r.v, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// loop serialises every decision of this manager.
func (m *Manager) loop(ctx context.Context) {
	eval := time.NewTicker(m.cfg.EvalInterval)
	defer eval.Stop()
	check := time.NewTicker(m.cfg.RecoveryCheckInterval)
	defer check.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case in := <-m.inputs:
			v, err := in.do(ctx)
			in.reply <- result{v, err}
		case <-eval.C:
			m.evaluate(ctx)
			m.peers.observe(m.monitors, m.nodes)
		case <-check.C:
			m.periodicCheck(ctx)
		}
	}
}

// readMode returns the current mode and its KV revision (0 when the key is absent).
func (m *Manager) readMode(ctx context.Context) (events.ModeChanged, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	e, err := m.kv.Get(ctx, events.KeyMode)
	if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		// The bucket was deleted: make it again, then treat the key as lost.
		if kv, perr := m.top.EnsureEvents(ctx); perr != nil {
			return events.ModeChanged{}, 0, fmt.Errorf("read mode: the bucket is gone and making it again failed (%s): %w", m.top.Step(), perr)
		} else {
			m.kv = kv
		}
		m.log.Warn("the mode bucket was deleted: made it again", "bucket", m.subj.Name(events.BucketName))
		err = jetstream.ErrKeyNotFound
	}
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return m.lostMode(ctx), 0, nil
	}
	if err != nil {
		return events.ModeChanged{}, 0, fmt.Errorf("read mode: %w", err)
	}
	m.settle(ctx, e)
	mc, err := events.DecodeMode(e.Value())
	if err != nil {
		return events.ModeChanged{}, 0, fmt.Errorf("read mode: invalid value at revision %d: %w", e.Revision(), err)
	}
	m.lastStatus = mc
	m.modes.Set(string(mc.Mode), mc.Epoch)
	return mc, e.Revision(), nil
}

// lostMode is the mode to continue from when the key is absent: a fresh
// system starts in normal mode at epoch 0, but a key that was deleted (or a
// bucket made again) must not send the epochs back to 0, or every node,
// which only ever moves to newer epochs, would stay on its old one for
// ever. The newest epoch known is this manager's last, or the newest
// announced in the events stream; the key is written again with it.
func (m *Manager) lostMode(ctx context.Context) events.ModeChanged {
	base := events.ModeChanged{Mode: events.ModeNormal, Epoch: 0, Counters: &events.ManagerCounters{}}
	if m.lastStatus.Epoch > 0 {
		base = m.lastStatus
	}
	if ann, ok := m.lastAnnounced(ctx); ok && ann.Epoch > base.Epoch {
		base = ann
		if base.Counters == nil {
			base.Counters = &events.ManagerCounters{}
		}
	}
	if base.Epoch > 0 {
		m.log.Warn("the mode key is missing: writing it again from the newest epoch known", "mode", base.Mode, "epoch", base.Epoch)
		if err := m.initMode(ctx, base); err != nil {
			m.log.Warn("writing the mode key again failed", "error", err)
		}
	}
	return base
}

// lastAnnounced returns the newest mode event in the events stream.
func (m *Manager) lastAnnounced(ctx context.Context) (events.ModeChanged, bool) {
	st, err := m.js.Stream(ctx, m.subj.Name(events.StreamEvents))
	if err != nil {
		return events.ModeChanged{}, false
	}
	var (
		last  events.ModeChanged
		found bool
	)
	for _, mode := range []events.Mode{events.ModeNormal, events.ModeCacheOnly, events.ModeRecovering} {
		msg, err := st.GetLastMsgForSubject(ctx, m.subj.Of(mode.Subject()))
		if err != nil {
			continue
		}
		if mc, err := events.DecodeMode(msg.Data); err == nil && (!found || mc.Epoch > last.Epoch) {
			last, found = mc, true
		}
	}
	return last, found
}

// seedHealth reads the newest db.health back from the events stream, so that
// a restarted manager's status shows the last verdict with its age instead of
// "unknown" until the next report. It only runs before the loop starts.
func (m *Manager) seedHealth(ctx context.Context) {
	st, err := m.js.Stream(ctx, m.subj.Name(events.StreamEvents))
	if err != nil {
		return
	}
	gctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	msg, err := st.GetLastMsgForSubject(gctx, m.subj.Of(events.SubjectDBHealth))
	if err != nil {
		return
	}
	var ev events.DBHealth
	if json.Unmarshal(msg.Data, &ev) != nil || (ev.Status != events.HealthHealthy && ev.Status != events.HealthUnhealthy) {
		return
	}
	m.health, m.healthAt = &ev, msg.Time
}

// initMode creates the mode key with cur (epoch 0, normal, on a fresh
// system); losing the race to another manager is fine.
func (m *Manager) initMode(ctx context.Context, cur events.ModeChanged) error {
	cur.Envelope = events.Envelope{OccurredAt: time.Now().UTC(), Source: m.cfg.NodeID}
	if cur.Since.IsZero() {
		cur.Since = cur.OccurredAt
	}
	b, err := json.Marshal(cur)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, err := m.kv.Create(ctx, events.KeyMode, b); err != nil && !isCASConflict(err) {
		return err
	}
	return nil
}

// transition applies f to the current mode with compare-and-swap, retrying
// when another manager moved the mode first. It returns the mode in force.
func (m *Manager) transition(ctx context.Context, f func(cur events.ModeChanged) (events.ModeChanged, bool)) (events.ModeChanged, error) {
	for attempt := 0; attempt < 10; attempt++ {
		cur, rev, err := m.readMode(ctx)
		if err != nil {
			return events.ModeChanged{}, err
		}
		next, changed := f(cur)
		if !changed {
			return cur, nil
		}
		next.Envelope = events.Envelope{OccurredAt: time.Now().UTC(), Source: m.cfg.NodeID}
		if next.Counters != nil {
			c := *next.Counters
			c.AutoRecoveryEnabled = &m.cfg.AutoRecovery
			next.Counters = &c
		}
		b, err := json.Marshal(next)
		if err != nil {
			return cur, fmt.Errorf("encode mode: %w", err)
		}
		wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		if rev == 0 {
			_, err = m.kv.Create(wctx, events.KeyMode, b)
		} else {
			_, err = m.kv.Update(wctx, events.KeyMode, b, rev)
		}
		cancel()
		if err != nil {
			if isCASConflict(err) {
				m.log.Info("mode moved by another manager, re-reading", "epoch", cur.Epoch)
				continue
			}
			// No answer is not a refusal: a server that stored the write
			// and failed before replying (a leader election) leaves it
			// applied. Remember it and read it back, now and at every
			// later read, so that an applied mode is always announced.
			m.unconfirmed = &unconfirmedWrite{prev: cur, next: next, value: b, rev: rev}
			m.log.Warn("writing the mode got no answer: reading it back", "mode", next.Mode, "epoch", next.Epoch, "error", err)
			if m.readBack(ctx) {
				return next, nil
			}
			return cur, fmt.Errorf("write mode: %w", err)
		}
		m.written(cur, next)
		return next, nil
	}
	return events.ModeChanged{}, errors.New("write mode: too many concurrent updates")
}

// written records next, which replaced cur in KV, and announces it when
// its epoch is new (a counters-only update is not a mode change).
func (m *Manager) written(cur, next events.ModeChanged) {
	m.lastStatus = next
	m.modes.Set(string(next.Mode), next.Epoch)
	if next.Epoch != cur.Epoch {
		m.transitions.WithLabelValues(string(next.Mode)).Inc()
		m.announce(cur, next)
	}
}

// unconfirmedWrite is a mode write whose reply never came: it may or may
// not be in KV.
type unconfirmedWrite struct {
	prev, next events.ModeChanged
	value      []byte // the exact value written: its envelope makes it unique
	rev        uint64 // the revision it was to replace
}

// readBack reads the mode right after a write without an answer and
// reports whether that write is now known to be applied.
func (m *Manager) readBack(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	e, err := m.kv.Get(ctx, events.KeyMode)
	if err != nil {
		return false
	}
	return m.settle(ctx, e)
}

// settle decides an unconfirmed write against the key's entry e: applied
// when e, or an older entry of the key's history, holds the value written;
// lost when the key moved past the revision the write expected without it
// (its compare-and-swap can no longer succeed); still unknown otherwise. An
// applied write is recorded and announced (late, but never missing from the
// events stream), and reported true.
func (m *Manager) settle(ctx context.Context, e jetstream.KeyValueEntry) bool {
	u := m.unconfirmed
	if u == nil {
		return false
	}
	applied := bytes.Equal(e.Value(), u.value)
	if !applied && e.Revision() == u.rev {
		return false // not applied yet; it may still be
	}
	if !applied {
		hist, err := m.kv.History(ctx, events.KeyMode)
		if err != nil {
			return false
		}
		for _, h := range hist {
			if bytes.Equal(h.Value(), u.value) {
				applied = true
			}
		}
	}
	m.unconfirmed = nil
	if !applied {
		m.log.Info("the mode write that got no answer was not applied", "epoch", u.next.Epoch)
		return false
	}
	m.log.Warn("the mode write that got no answer was applied: announcing it", "mode", u.next.Mode, "epoch", u.next.Epoch)
	if bytes.Equal(e.Value(), u.value) {
		m.written(u.prev, u.next)
	} else {
		// Superseded since: announce it without making it the last status.
		m.transitions.WithLabelValues(string(u.next.Mode)).Inc()
		m.announce(u.prev, u.next)
	}
	return true
}

func isCASConflict(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
		return true
	}
	return errors.Is(err, jetstream.ErrKeyExists)
}

// announce logs the contract's phrases and publishes the mode event.
func (m *Manager) announce(prev, next events.ModeChanged) {
	attrs := []any{"from", prev.Mode, "to", next.Mode, "epoch", next.Epoch}
	switch next.Mode {
	case events.ModeCacheOnly:
		m.log.Warn("Cache-only mode enabled", append(attrs, "reason", next.Reason, "manual", next.Manual)...)
	case events.ModeRecovering:
		if prev.Mode == events.ModeCacheOnly {
			m.log.Info("Cache-only mode disabled", attrs...)
		}
		m.log.Info("Recovery started", append(attrs, "reason", next.Reason)...)
	case events.ModeNormal:
		m.log.Info("Recovery completed", append(attrs, "total_recoveries", counters(next).TotalRecoveries)...)
	}
	m.publishMode(next)
}

// publishMode publishes the mode event of next until JetStream takes it or
// the manager stops. The KV holds the truth; the event announces it. Its
// message id is the epoch's, so that a repeat (a retry, or the announcement
// a restarted manager makes again) is dropped by the stream's dedupe window.
func (m *Manager) publishMode(next events.ModeChanged) {
	b, err := json.Marshal(next)
	if err != nil {
		return
	}
	subject := m.subj.Of(next.Mode.Subject())
	id := fmt.Sprintf("anivault-mode-epoch-%d", next.Epoch)
	m.bg.Go(func() {
		for {
			if err := m.jsPub.Publish(subject, message.NewMessage(id, b)); err == nil {
				return
			} else {
				m.log.Warn("publish mode event failed, retrying", "subject", subject, "epoch", next.Epoch, "error", err)
			}
			select {
			case <-m.runCtx.Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	})
}

// reannounce publishes again every mode in the key's KV history newer than
// the newest mode event in the events stream: the manager that wrote them
// may have died before JetStream took their announcements, or lost a
// write's reply. cur is the mode in force.
func (m *Manager) reannounce(ctx context.Context, cur events.ModeChanged) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var last int64 = -1
	if ann, ok := m.lastAnnounced(ctx); ok {
		last = ann.Epoch
	}
	missing := []events.ModeChanged{cur}
	if hist, err := m.kv.History(ctx, events.KeyMode); err == nil {
		missing = missing[:0]
		for _, h := range hist {
			if mc, err := events.DecodeMode(h.Value()); err == nil && mc.Epoch > last &&
				(len(missing) == 0 || mc.Epoch > missing[len(missing)-1].Epoch) {
				missing = append(missing, mc)
			}
		}
	}
	if len(missing) == 0 || missing[len(missing)-1].Epoch <= last {
		m.log.Info("the mode in KV is announced", "epoch", cur.Epoch)
		return
	}
	for _, mc := range missing {
		m.log.Warn("the mode in KV was never announced (its manager stopped first): announcing it now", "mode", mc.Mode, "epoch", mc.Epoch, "last_announced_epoch", last)
		m.publishMode(mc)
	}
}

// evaluate acts on the monitors' majority (a db.unhealthy or db.recovered
// that a minority sent is acted on once a majority agrees), and finishes a
// recovery once every live node replayed and the buffer is empty.
func (m *Manager) evaluate(ctx context.Context) {
	cur, _, err := m.readMode(ctx)
	if err != nil {
		return
	}
	if m.pendingVerdict != "" {
		if err := m.actOnVerdict(ctx, cur); err != nil {
			m.log.Warn("acting on the monitors' verdict failed", "error", err)
		}
		if cur, _, err = m.readMode(ctx); err != nil {
			return
		}
	}
	if cur.Mode != events.ModeRecovering {
		return
	}
	// A fresh unhealthy verdict of a majority of the monitors during replay
	// sends the system back to cache-only.
	if yes, agree, live := m.monitors.failing(cur.Since, time.Now()); yes {
		reason := fmt.Sprintf("health check failed during recovery (%d of %d monitors)", agree, live)
		if h := m.health; h != nil && h.Error != "" {
			reason += ": " + h.Error
		}
		m.onUnhealthy(ctx, reason)
		return
	}
	live := m.liveNodes(time.Now())
	for _, n := range live {
		if n.status.ReplayedEpoch < cur.Epoch {
			return
		}
	}
	pending, err := m.bufferPending(ctx)
	if err != nil || pending > 0 {
		return
	}
	if _, err := m.transition(ctx, func(c events.ModeChanged) (events.ModeChanged, bool) {
		return OnReplayDone(c, cur.Epoch, time.Now())
	}); err != nil {
		m.log.Error("finishing recovery failed", "error", err)
	}
}

func (m *Manager) bufferPending(ctx context.Context) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	s, err := m.js.Stream(ctx, m.subj.Name(events.StreamBuffer))
	if err != nil {
		return 0, err
	}
	return s.CachedInfo().State.Msgs, nil
}

func (m *Manager) liveNodes(now time.Time) []nodeSeen {
	var out []nodeSeen
	for id, n := range m.nodes {
		if now.Sub(n.seen) > m.cfg.NodeTimeout {
			if now.Sub(n.seen) > 10*m.cfg.NodeTimeout {
				delete(m.nodes, id)
			}
			continue
		}
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].status.ID < out[j].status.ID })
	return out
}

// periodicCheck makes sure a lost db.recovered cannot strand the system in cache-only mode.
func (m *Manager) periodicCheck(ctx context.Context) {
	cur, _, err := m.readMode(ctx)
	if err != nil || cur.Mode != events.ModeCacheOnly || cur.Manual || !m.cfg.AutoRecovery {
		return
	}
	if err := m.checkDB(ctx); err != nil {
		m.log.Info("Recovery attempt (periodic): database still unavailable, staying in cache-only mode", "trigger", "periodic", "outcome", "database_unavailable", "error", err)
		return
	}
	m.log.Info("Recovery attempt (periodic): database healthy, starting recovery", "trigger", "periodic", "outcome", "recovery_started")
	if _, err := m.transition(ctx, func(c events.ModeChanged) (events.ModeChanged, bool) {
		return OnRecovered(c, m.cfg.AutoRecovery, time.Now())
	}); err != nil {
		m.log.Error("starting recovery failed", "error", err)
	}
}

// checkDB runs SELECT 1 on a fresh connection within the health-check timeout.
func (m *Manager) checkDB(ctx context.Context) error {
	_, err := m.prober.Probe(ctx)
	return err
}

func (m *Manager) onUnhealthy(ctx context.Context, reason string) {
	if _, err := m.transition(ctx, func(c events.ModeChanged) (events.ModeChanged, bool) {
		return OnUnhealthy(c, reason, time.Now())
	}); err != nil {
		m.log.Error("entering cache-only mode failed", "error", err)
	}
}
