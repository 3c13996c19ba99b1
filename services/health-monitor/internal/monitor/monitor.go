// Package monitor is the health-monitor: it probes PostgreSQL with SELECT 1 on
// an interval, under a hard deadline, and publishes db.health on every check
// and db.unhealthy / db.recovered when the thresholds are crossed.
package monitor

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/envconfig"
	"github.com/anivault/anivault/pkg/modefollow"
	"github.com/anivault/anivault/pkg/natsconn"
	"github.com/anivault/anivault/pkg/pgdb"
	"github.com/anivault/anivault/pkg/svckit"
	"github.com/anivault/anivault/pkg/topology"
	"github.com/anivault/anivault/pkg/wmnats"
)

// Run reads the configuration and monitors until ctx is done.
func Run(ctx context.Context, log *slog.Logger) error {
	cfg, err := LoadConfig(envconfig.New(nil))
	if err != nil {
		return err
	}
	log = log.With("node", cfg.NodeID)
	log.Info("starting health-monitor", "nats", cfg.NATS, "interval", cfg.Interval, "timeout", cfg.Timeout,
		"failure_threshold", cfg.FailureThreshold, "recovery_threshold", cfg.RecoveryThreshold)
	m, err := New(cfg, log)
	if err != nil {
		return err
	}
	return m.Run(ctx)
}

// Monitor probes the database and publishes what it finds.
type Monitor struct {
	cfg     Config
	log     *slog.Logger
	subj    events.Subjects
	checker *Checker
	prober  *pgdb.Prober
	pub     message.Publisher
	// pending holds transition events not yet acknowledged by JetStream: a
	// db.unhealthy must not be lost because NATS was briefly away.
	pending []outgoing

	registry *prometheus.Registry
	checks   *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	modes    *svckit.ModeGauges
	ready    atomic.Bool
}

type outgoing struct {
	subject string
	payload any
}

// New builds a monitor.
func New(cfg Config, log *slog.Logger) (*Monitor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("monitor: %w", err)
	}
	prober, err := pgdb.NewProber(cfg.DatabaseURL, "anivault-health-monitor", cfg.Timeout)
	if err != nil {
		return nil, err
	}
	m := &Monitor{cfg: cfg, log: log, subj: events.NewSubjects(cfg.SubjectPrefix), prober: prober,
		checker: NewChecker(cfg.FailureThreshold, cfg.RecoveryThreshold), registry: svckit.NewRegistry("health-monitor")}
	m.checks = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "anivault_health_checks_total",
		Help: "Database health checks by result: success or failure (the database did not answer, or does not take writes)."}, []string{"result"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "anivault_health_check_duration_seconds",
		Help:    "How long each database health check took (a failed one up to HEALTH_CHECK_TIMEOUT), by result.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}, []string{"result"})
	for _, r := range []string{"success", "failure"} {
		m.checks.WithLabelValues(r)
		m.latency.WithLabelValues(r)
	}
	m.registry.MustRegister(m.checks, m.latency,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "anivault_health_consecutive_failures", Help: "Consecutive failed health checks."},
			func() float64 { return float64(m.checker.Stats().ConsecutiveFailures) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "anivault_health_database_up", Help: "1 while this monitor's verdict is healthy, 0 when unhealthy or unknown."},
			func() float64 {
				if m.checker.Stats().CurrentStatus == events.HealthHealthy {
					return 1
				}
				return 0
			}))
	m.modes = svckit.NewModeGauges(m.registry, string(events.ModeNormal), string(events.ModeCacheOnly), string(events.ModeRecovering))
	return m, nil
}

// watchMode keeps the mode gauges current from the mode key in KV.
func (m *Monitor) watchMode(ctx context.Context, js jetstream.JetStream) {
	bucket := modefollow.NewBucket(js, m.subj)
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		// An absent key (revision 0) leaves the gauges as they are.
		if mc, rev, err := bucket.Read(gctx); err == nil && rev > 0 {
			m.modes.Set(string(mc.Mode), mc.Epoch)
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Run probes every interval until ctx is done.
//
// Run owns every goroutine it starts (the admin endpoints and the mode
// watch, in one errgroup) and everything New opened, and stops them, however
// it returns, in this order:
//  1. the check loop ends (ctx is done), or a start-up step fails;
//  2. the errgroup's goroutines are cancelled and Run waits for them;
//  3. the NATS connection drains (after a normal stop) and closes;
//  4. the prober closes its database connections.
func (m *Monitor) Run(ctx context.Context) error {
	defer func() { _ = m.prober.Close() }() // 4
	nc, err := natsconn.Connect(ctx, m.cfg.NATS, "anivault-health-monitor-"+m.cfg.NodeID, m.log)
	if err != nil {
		return err
	}
	defer nc.Close() // 3
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	gctx, cancel := context.WithCancel(ctx)
	var g errgroup.Group
	stop := func() { cancel(); _ = g.Wait() } // 2; safe to call twice
	defer stop()
	g.Go(func() error {
		svckit.ServeAdmin(gctx, m.cfg.AdminAddr, m.registry, func() (bool, string) {
			if !m.ready.Load() {
				return false, "JetStream not provisioned or no health check done yet"
			}
			return true, ""
		}, m.log)
		return nil
	})
	top, err := topology.New(js, m.subj)
	if err != nil {
		return err
	}
	top.CheckOnly = m.cfg.NoProvision
	if top.CheckOnly {
		m.log.Info("NATS_PROVISION=false: creating no stream or bucket, waiting for the ones the provision command makes")
	}
	if err := svckit.RetryUntil(ctx, m.log, top.Step(), func(ctx context.Context) error {
		return top.EnsureEventsIfMissing(ctx)
	}); err != nil {
		return err
	}
	m.pub, err = wmnats.NewJetStreamPublisher(nc, wmnats.Logger(m.log))
	if err != nil {
		return err
	}
	g.Go(func() error { m.watchMode(gctx, js); return nil })
	t := time.NewTicker(m.cfg.Interval)
	defer t.Stop()
	for {
		m.check(ctx)
		m.ready.Store(true)
		select {
		case <-ctx.Done(): // 1
			m.checker.SetMonitoring(false)
			stop()
			_ = nc.Drain()
			return nil
		case <-t.C:
		}
	}
}

func (m *Monitor) check(ctx context.Context) {
	lat, err := m.prober.Probe(ctx)
	if ctx.Err() != nil {
		return
	}
	now := time.Now().UTC()
	errText := ""
	if err != nil {
		errText = err.Error()
		m.log.Warn("Database health check failed", "error", err, "latency_ms", ms(lat),
			"consecutive_failures", m.checker.Stats().ConsecutiveFailures+1)
	} else {
		m.log.Info("Database health check succeeded", "latency_ms", ms(lat))
	}
	result := "success"
	if err != nil {
		result = "failure"
	}
	m.checks.WithLabelValues(result).Inc()
	m.latency.WithLabelValues(result).Observe(lat.Seconds())
	tr := m.checker.Record(err == nil, errText, now)
	st := m.checker.Stats()
	env := events.Envelope{OccurredAt: now, Source: m.cfg.NodeID}
	switch tr {
	case BecameUnhealthy:
		m.log.Error("database declared unhealthy", "consecutive_failures", st.ConsecutiveFailures, "last_error", errText)
		m.pending = append(m.pending, outgoing{m.subj.Of(events.SubjectDBUnhealthy), events.DBUnhealthy{
			Envelope: env, Reason: fmt.Sprintf("%d consecutive health checks failed", st.ConsecutiveFailures),
			ConsecutiveFailures: st.ConsecutiveFailures, LastError: errText,
		}})
	case Recovered:
		down := m.checker.Downtime(now)
		m.log.Info("database recovered", "consecutive_successes", st.ConsecutiveSuccesses, "downtime_seconds", down.Seconds())
		m.pending = append(m.pending, outgoing{m.subj.Of(events.SubjectDBRecovered), events.DBRecovered{
			Envelope: env, ConsecutiveSuccesses: st.ConsecutiveSuccesses, DowntimeSeconds: down.Seconds(),
		}})
	case BecameHealthy:
		m.log.Info("database healthy", "consecutive_successes", st.ConsecutiveSuccesses)
	}
	status := st.CurrentStatus
	health := events.DBHealth{Envelope: env, Status: status, LatencyMS: ms(lat), Error: errText, Statistics: st,
		IntervalSeconds: m.cfg.Interval.Seconds()}
	// Transitions first, in order; db.health is best effort (the next check sends another).
	for len(m.pending) > 0 {
		if err := m.publish(m.pending[0].subject, m.pending[0].payload); err != nil {
			m.log.Warn("publish failed, will retry on the next check", "subject", m.pending[0].subject, "error", err)
			break
		}
		m.pending = m.pending[1:]
	}
	if err := m.publish(m.subj.Of(events.SubjectDBHealth), health); err != nil {
		m.log.Debug("publish db.health failed", "error", err)
	}
}

func (m *Monitor) publish(subject string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", subject, err)
	}
	return m.pub.Publish(subject, message.NewMessage(watermill.NewUUID(), b))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
