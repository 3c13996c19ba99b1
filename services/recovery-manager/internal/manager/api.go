package manager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go/micro"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/natsconn"
	"github.com/anivault/anivault/pkg/wmnats"
)

// newRouter consumes db.unhealthy/db.recovered and replay.completed through the
// manager's durable consumers, and db.health/node.status on core NATS.
func (m *Manager) newRouter(ctx context.Context) (*message.Router, error) {
	router, err := wmnats.NewRouter(wmnats.RouterConfig{
		PoisonPublisher: m.jsPub, PoisonTopic: m.subj.Of(events.SubjectPoisonEvents),
		Retry: 3, RetryInitial: 200 * time.Millisecond, RetryMaxTimeout: 5 * time.Second,
	}, m.wmLog)
	if err != nil {
		return nil, err
	}
	durable := func(name, consumer string, h message.NoPublishHandlerFunc) error {
		conn, err := natsconn.Connect(ctx, m.cfg.NATS, "anivault-recovery-manager-"+name+"-"+m.cfg.NodeID, m.log)
		if err != nil {
			return err
		}
		sub, err := wmnats.NewDurableSubscriber(conn, m.subj.Name(events.StreamEvents), m.subj.Name(consumer), time.Second, m.wmLog)
		if err != nil {
			return err
		}
		// A durable subscriber reads its consumer whatever the topic: the
		// topic names the consumer, not a subject.
		router.AddConsumerHandler(name, m.subj.Name(consumer), sub, h)
		return nil
	}
	if err := durable("db_events", events.ConsumerManagerDB, m.handleDBEvent); err != nil {
		return nil, err
	}
	if err := durable("replay_events", events.ConsumerManagerReplay, m.handleReplayCompleted); err != nil {
		return nil, err
	}
	for _, c := range []struct {
		subject string
		h       message.NoPublishHandlerFunc
	}{
		{events.SubjectDBHealth, m.handleHealth},
		{events.SubjectNodeStatus, m.handleNodeStatus},
	} {
		conn, err := natsconn.Connect(ctx, m.cfg.NATS, "anivault-recovery-manager-"+c.subject+"-"+m.cfg.NodeID, m.log)
		if err != nil {
			return nil, err
		}
		sub, err := wmnats.NewCoreSubscriber(conn, m.wmLog)
		if err != nil {
			return nil, err
		}
		router.AddConsumerHandler(c.subject, m.subj.Of(c.subject), sub, c.h)
	}
	return router, nil
}

func (m *Manager) handleDBEvent(msg *message.Message) error {
	subject := m.subj.Base(msg.Metadata.Get(wmnats.MetaSubject))
	ctx := msg.Context()
	switch subject {
	case events.SubjectDBUnhealthy:
		var ev events.DBUnhealthy
		if err := json.Unmarshal(msg.Payload, &ev); err != nil {
			return &wmnats.Permanent{Err: fmt.Errorf("decode db.unhealthy: %w", err)}
		}
		_, err := m.submit(ctx, func(ctx context.Context) (any, error) {
			cur, _, err := m.readMode(ctx)
			if err != nil {
				return nil, err
			}
			if !ev.OccurredAt.IsZero() && ev.OccurredAt.Before(cur.Since) {
				m.log.Info("ignoring db.unhealthy older than the current mode", "occurred_at", ev.OccurredAt, "since", cur.Since)
				return nil, nil
			}
			m.monitors.heard(ev.Source, events.HealthUnhealthy, true, ev.OccurredAt, time.Now(), false)
			m.pendingVerdict, m.pendingVerdictReason = events.SubjectDBUnhealthy, ev.Reason
			return nil, m.actOnVerdict(ctx, cur)
		})
		return err
	case events.SubjectDBRecovered:
		var ev events.DBRecovered
		if err := json.Unmarshal(msg.Payload, &ev); err != nil {
			return &wmnats.Permanent{Err: fmt.Errorf("decode db.recovered: %w", err)}
		}
		_, err := m.submit(ctx, func(ctx context.Context) (any, error) {
			cur, _, err := m.readMode(ctx)
			if err != nil {
				return nil, err
			}
			if !ev.OccurredAt.IsZero() && ev.OccurredAt.Before(cur.Since) {
				return nil, nil
			}
			m.monitors.heard(ev.Source, events.HealthHealthy, false, ev.OccurredAt, time.Now(), false)
			if !m.cfg.AutoRecovery {
				m.log.Info("database recovered; automatic recovery is disabled, waiting for recovery.force")
				return nil, nil
			}
			m.pendingVerdict, m.pendingVerdictReason = events.SubjectDBRecovered, ""
			return nil, m.actOnVerdict(ctx, cur)
		})
		return err
	}
	return nil
}

func (m *Manager) handleReplayCompleted(msg *message.Message) error {
	var ev events.ReplayCompleted
	if err := json.Unmarshal(msg.Payload, &ev); err != nil {
		return &wmnats.Permanent{Err: fmt.Errorf("decode replay.completed: %w", err)}
	}
	_, err := m.submit(msg.Context(), func(context.Context) (any, error) {
		m.log.Info("node replay completed", "node_id", ev.Source, "epoch", ev.Epoch, "replayed", ev.Replayed,
			"skipped_stale", ev.SkippedStale, "failed", ev.Failed, "duration_ms", ev.DurationMS)
		if n, ok := m.nodes[ev.Source]; ok && ev.Epoch > n.status.ReplayedEpoch {
			n.status.ReplayedEpoch = ev.Epoch
			m.nodes[ev.Source] = n
		}
		return nil, nil
	})
	return err
}

func (m *Manager) handleHealth(msg *message.Message) error {
	var ev events.DBHealth
	if err := json.Unmarshal(msg.Payload, &ev); err != nil {
		return nil // a status feed: drop what cannot be read
	}
	_, err := m.submit(msg.Context(), func(context.Context) (any, error) {
		m.health, m.healthAt = &ev, time.Now()
		if ev.Source != "" && ev.Status != events.HealthUnknown {
			m.monitors.heard(ev.Source, ev.Status, ev.Error != "", ev.OccurredAt, time.Now(), true)
		}
		return nil, nil
	})
	return err
}

// actOnVerdict moves the mode for the pending monitor transition once a
// majority of the live monitors agrees with it; until then it waits (the
// loop re-evaluates on every tick).
func (m *Manager) actOnVerdict(ctx context.Context, cur events.ModeChanged) error {
	now := time.Now()
	switch m.pendingVerdict {
	case events.SubjectDBUnhealthy:
		yes, agree, live := m.monitors.majority(events.HealthUnhealthy, time.Time{}, now)
		if !yes {
			if !m.minorityLogged {
				m.log.Warn("db.unhealthy from a minority of the health-monitors: not acting until a majority agrees", "unhealthy", agree, "monitors", live)
				m.minorityLogged = true
			}
			return nil // keep waiting: the others still reach the database
		}
		m.pendingVerdict, m.minorityLogged = "", false
		reason := m.pendingVerdictReason
		if live > 1 {
			reason = fmt.Sprintf("%s (%d of %d monitors)", reason, agree, live)
		}
		_, err := m.transition(ctx, func(c events.ModeChanged) (events.ModeChanged, bool) {
			return OnUnhealthy(c, reason, now)
		})
		return err
	case events.SubjectDBRecovered:
		if yes, _, _ := m.monitors.majority(events.HealthUnhealthy, time.Time{}, now); yes {
			return nil // a majority still sees the database down
		}
		m.pendingVerdict = ""
		_, err := m.transition(ctx, func(c events.ModeChanged) (events.ModeChanged, bool) {
			return OnRecovered(c, m.cfg.AutoRecovery, now)
		})
		return err
	}
	return nil
}

func (m *Manager) handleNodeStatus(msg *message.Message) error {
	var ev events.NodeStatus
	if err := json.Unmarshal(msg.Payload, &ev); err != nil || ev.ID == "" {
		return nil
	}
	_, err := m.submit(msg.Context(), func(context.Context) (any, error) {
		prev, ok := m.nodes[ev.ID]
		if ok && prev.status.ReplayedEpoch > ev.ReplayedEpoch {
			ev.ReplayedEpoch = prev.status.ReplayedEpoch
		}
		m.nodes[ev.ID] = nodeSeen{status: ev, seen: time.Now()}
		return nil, nil
	})
	return err
}

// addMicroService exposes the operator requests as NATS micro endpoints.
func (m *Manager) addMicroService() (micro.Service, error) {
	svc, err := micro.AddService(m.nc, micro.Config{
		Name: events.ServiceRecoveryManager, Version: "1.0.0",
		Description: "AniVault recovery-manager: mode control and system status",
		Metadata:    map[string]string{"node_id": m.cfg.NodeID},
	})
	if err != nil {
		return nil, fmt.Errorf("micro service: %w", err)
	}
	for _, ep := range []struct {
		name, subject string
		h             micro.HandlerFunc
	}{
		{"force", events.SubjectRecoveryForce, m.handleForce},
		{"cache_only_enter", events.SubjectCacheOnlyEnter, m.handleEnter},
		{"cache_only_exit", events.SubjectCacheOnlyExit, m.handleExit},
		{"complete", events.SubjectRecoveryComplete, m.handleComplete},
		{"status", events.SubjectStatusGet, m.handleStatus},
	} {
		if err := svc.AddEndpoint(ep.name, ep.h, micro.WithEndpointSubject(m.subj.Of(ep.subject))); err != nil {
			return nil, fmt.Errorf("micro endpoint %s: %w", ep.name, err)
		}
	}
	if err := m.nc.FlushTimeout(5 * time.Second); err != nil {
		return nil, fmt.Errorf("micro flush: %w", err)
	}
	return svc, nil
}

func reply(req micro.Request, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		replyError(req, 500, err)
		return
	}
	_ = req.Respond(b)
}

func replyError(req micro.Request, code int, err error) {
	rep := events.ErrorReply{Error: err.Error(), Code: code}
	var ve *events.ValidationError
	if errors.As(err, &ve) {
		rep.Field = ve.Field
	}
	b, _ := json.Marshal(rep)
	_ = req.Error(strconv.Itoa(code), err.Error(), b)
}

// decodeEmpty accepts an empty body or a JSON object with no unknown fields.
func decodeEmpty(data []byte, v any) error {
	if strings.TrimSpace(string(data)) == "" {
		return nil
	}
	return events.DecodeStrict(data, v)
}

func (m *Manager) requestCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), m.cfg.CheckTimeout+5*time.Second)
}

func (m *Manager) handleForce(req micro.Request) {
	var body struct{}
	if err := decodeEmpty(req.Data(), &body); err != nil {
		replyError(req, 400, err)
		return
	}
	ctx, cancel := m.requestCtx()
	defer cancel()
	// The check runs outside the loop: it may take up to the timeout.
	dbErr := m.checkDB(ctx)
	health := events.HealthHealthy
	if dbErr != nil {
		health = events.HealthUnhealthy
	}
	v, err := m.submit(ctx, func(ctx context.Context) (any, error) {
		attempted := false
		next, err := m.transition(ctx, func(c events.ModeChanged) (events.ModeChanged, bool) {
			n, changed, att := OnForce(c, dbErr == nil, time.Now())
			attempted = att
			return n, changed
		})
		if err != nil {
			return nil, err
		}
		m.log.Info("Recovery attempt (forced by operator)", "trigger", "forced", "attempted", attempted, "health_status", health, "mode", next.Mode, "epoch", next.Epoch, "db_error", errString(dbErr))
		return events.ForceRecoveryReply{Attempted: attempted, HealthStatus: health, Mode: next.Mode, Epoch: next.Epoch}, nil
	})
	if err != nil {
		replyError(req, 503, err)
		return
	}
	reply(req, v)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// serveOnLoop decodes the request into body, then runs do on the loop
// goroutine and replies with its result: 400 for a bad request, 503 when the
// mode could not be read or written.
func (m *Manager) serveOnLoop(req micro.Request, body any, validate func() error, do func(ctx context.Context) (any, error)) {
	if err := decodeEmpty(req.Data(), body); err != nil {
		replyError(req, 400, err)
		return
	}
	if validate != nil {
		if err := validate(); err != nil {
			replyError(req, 400, err)
			return
		}
	}
	ctx, cancel := m.requestCtx()
	defer cancel()
	v, err := m.submit(ctx, do)
	if err != nil {
		replyError(req, 503, err)
		return
	}
	reply(req, v)
}

// modeChange applies a state-machine step and answers with the mode in force.
func (m *Manager) modeChange(step func(c events.ModeChanged) (events.ModeChanged, bool)) func(ctx context.Context) (any, error) {
	return func(ctx context.Context) (any, error) {
		next, err := m.transition(ctx, step)
		return events.ModeReply{Mode: next.Mode, Epoch: next.Epoch}, err
	}
}

func (m *Manager) handleEnter(req micro.Request) {
	var body events.CacheOnlyEnterRequest
	reason := ""
	m.serveOnLoop(req, &body, func() error {
		reason = strings.TrimSpace(body.Reason)
		if reason == "" {
			reason = "entered by operator"
		}
		if len(reason) > 1024 {
			return &events.ValidationError{Field: "reason", Message: "must be at most 1024 bytes"}
		}
		return nil
	}, m.modeChange(func(c events.ModeChanged) (events.ModeChanged, bool) {
		return OnEnterCacheOnly(c, reason, time.Now())
	}))
}

// handleComplete ends recovering at the operator's word when the replay
// cannot finish (a node that never reports replay.completed): once the
// database takes writes, the mode moves to normal; writes still buffered
// are drained in the background by the nodes in normal mode.
func (m *Manager) handleComplete(req micro.Request) {
	m.serveOnLoop(req, &struct{}{}, nil, func(ctx context.Context) (any, error) {
		cur, _, err := m.readMode(ctx)
		if err != nil {
			return nil, err
		}
		if cur.Mode != events.ModeRecovering {
			return events.ModeReply{Mode: cur.Mode, Epoch: cur.Epoch}, nil
		}
		if err := m.checkDB(ctx); err != nil {
			return nil, fmt.Errorf("the database does not take writes yet, staying in recovering: %w", err)
		}
		var waiting []string
		for _, n := range m.liveNodes(time.Now()) {
			if n.status.ReplayedEpoch < cur.Epoch {
				waiting = append(waiting, n.status.ID)
			}
		}
		pending, _ := m.bufferPending(ctx)
		m.log.Warn("Recovery completed by the operator before every node replayed; what is still buffered drains in the background",
			"epoch", cur.Epoch, "nodes_not_replayed", waiting, "buffer_pending", pending)
		next, err := m.transition(ctx, func(c events.ModeChanged) (events.ModeChanged, bool) {
			return OnReplayDone(c, cur.Epoch, time.Now())
		})
		return events.ModeReply{Mode: next.Mode, Epoch: next.Epoch}, err
	})
}

func (m *Manager) handleExit(req micro.Request) {
	m.serveOnLoop(req, &struct{}{}, nil, m.modeChange(func(c events.ModeChanged) (events.ModeChanged, bool) {
		return OnExitCacheOnly(c, time.Now())
	}))
}

func (m *Manager) handleStatus(req micro.Request) {
	m.serveOnLoop(req, &struct{}{}, nil, func(ctx context.Context) (any, error) { return m.systemStatus(ctx), nil })
}

// systemStatus merges the mode, the monitor's latest health report and the nodes' reports.
func (m *Manager) systemStatus(ctx context.Context) events.SystemStatus {
	cur, _, err := m.readMode(ctx)
	if err != nil {
		cur = m.lastStatus
	}
	c := counters(cur)
	st := events.SystemStatus{
		Mode: cur.Mode, Epoch: cur.Epoch, CacheOnlyMode: cur.Mode == events.ModeCacheOnly,
		HealthStatus:        events.HealthUnknown,
		HealthStatistics:    events.HealthStatistics{CurrentStatus: events.HealthUnknown},
		CircuitBreakerState: "closed",
		TotalFailures:       c.TotalFailures, TotalRecoveries: c.TotalRecoveries, RecoveryAttempts: c.RecoveryAttempts,
		LastFailureTime: c.LastFailureTime, LastRecoveryTime: c.LastRecoveryTime,
		AutoRecoveryEnabled: m.cfg.AutoRecovery,
		Nodes:               []events.NodeStatus{},
	}
	if cur.Mode == events.ModeCacheOnly {
		st.CacheOnlyReason = cur.Reason
	}
	if h := m.health; h != nil {
		status, age := h.Aged(m.healthAt, time.Now())
		st.HealthStatus, st.HealthStatusAgeSeconds = status, &age
		st.HealthStatistics = h.Statistics
	}
	// With several monitors, the verdict is the majority's.
	now := time.Now()
	if yes, _, live := m.monitors.majority(events.HealthUnhealthy, time.Time{}, now); live > 1 && yes {
		st.HealthStatus = events.HealthUnhealthy
	} else if yes, _, live := m.monitors.majority(events.HealthHealthy, time.Time{}, now); live > 1 && yes {
		st.HealthStatus = events.HealthHealthy
	}
	rank := map[string]int{"closed": 0, "half_open": 1, "open": 2}
	var retries []events.RetryStatistics
	for _, n := range m.liveNodes(time.Now()) {
		ns := n.status
		st.Nodes = append(st.Nodes, ns)
		if rank[ns.CircuitBreakerState] > rank[st.CircuitBreakerState] {
			st.CircuitBreakerState = ns.CircuitBreakerState
		}
		cs := &st.CacheStatistics
		cs.Hits += ns.CacheStatistics.Hits
		cs.Misses += ns.CacheStatistics.Misses
		cs.Evictions += ns.CacheStatistics.Evictions
		cs.TotalRequests += ns.CacheStatistics.TotalRequests
		cs.CacheSize += ns.CacheStatistics.CacheSize
		cs.MemoryUsageBytes += ns.CacheStatistics.MemoryUsageBytes
		retries = append(retries, ns.RetryStatistics)
		st.Buffer.ReplayedTotal += ns.Buffer.ReplayedTotal
		st.Buffer.AcceptedTotal += ns.Buffer.AcceptedTotal
		st.Buffer.SkippedStaleTotal += ns.Buffer.SkippedStaleTotal
	}
	if st.CacheStatistics.TotalRequests > 0 {
		st.CacheStatistics.HitRate = float64(st.CacheStatistics.Hits) / float64(st.CacheStatistics.TotalRequests)
	}
	st.RetryStatistics = sumRetries(retries)
	if s, err := m.js.Stream(ctx, m.subj.Name(events.StreamBuffer)); err == nil {
		info := s.CachedInfo()
		st.Buffer.Pending = int64(info.State.Msgs)
		if info.State.Msgs > 0 {
			st.Buffer.OldestPendingAgeSeconds = time.Since(info.State.FirstTime).Seconds()
		}
	}
	// Operational: reads are served (some node is up) and writes are either
	// committed or durably buffered.
	st.IsOperational = len(st.Nodes) > 0
	return st
}

// sumRetries adds the nodes' retry statistics. The rate is successes per
// operation over all nodes: each node weighs by its operations, not by its
// attempts (which count the retries too).
func sumRetries(nodes []events.RetryStatistics) events.RetryStatistics {
	var sum events.RetryStatistics
	for _, r := range nodes {
		sum.TotalAttempts += r.TotalAttempts
		sum.SuccessfulRetries += r.SuccessfulRetries
		sum.FailedAfterRetries += r.FailedAfterRetries
		sum.NonRetriableFailures += r.NonRetriableFailures
		sum.Operations += r.Operations
		sum.Successes += r.Successes
	}
	sum.SuccessRate = 1
	if sum.Operations > 0 {
		sum.SuccessRate = float64(sum.Successes) / float64(sum.Operations)
	}
	return sum
}
