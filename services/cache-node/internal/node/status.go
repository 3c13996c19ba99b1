package node

// The node's reports: node.status on NATS at every status interval (and at
// once after a mode change), /v1/status and the loops that run at the same
// pace (the background drain, the trim of the producers' write stream).

import (
	"context"
	"time"

	"github.com/anivault/anivault/events"
)

// statusLoop refreshes the buffer figures and publishes this node's report
// on node.status, at every status interval.
func (n *Node) statusLoop(ctx context.Context) {
	n.every(ctx, func(ctx context.Context) {
		n.refreshBufferStatus(ctx)
		if err := n.publishCore(n.subj.Of(events.SubjectNodeStatus), n.nodeStatus()); err != nil {
			n.log.Debug("publish node.status failed", "error", err)
		}
	})
}

// drainLoop drains, at every status interval, what the fast path buffered
// (see backgroundDrain).
func (n *Node) drainLoop(ctx context.Context) { n.every(ctx, n.backgroundDrain) }

// trimLoop trims, at every status interval, the producers' write stream of
// the writes applied (see trimWrites).
func (n *Node) trimLoop(ctx context.Context) { n.every(ctx, n.nats.trimWrites) }

// every runs f at once and then at every status interval until ctx is done;
// a run that takes longer delays the next one.
func (n *Node) every(ctx context.Context, f func(context.Context)) {
	t := time.NewTicker(n.cfg.StatusInterval)
	defer t.Stop()
	for {
		f(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// statusNow publishes node.status without waiting for the next tick (after
// a mode change); it never blocks the caller.
func (n *Node) statusNow() {
	if n.corePub == nil {
		return
	}
	go func() {
		if err := n.publishCore(n.subj.Of(events.SubjectNodeStatus), n.nodeStatus()); err != nil {
			n.log.Debug("publish node.status failed", "error", err)
		}
	}()
}

func (n *Node) refreshBufferStatus(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st := events.BufferStatus{
		ReplayedTotal: n.replayer.replayed.Load(), AcceptedTotal: n.acceptedTotal.Load(), SkippedStaleTotal: n.replayer.stale.Load(),
	}
	s, err := n.js.Stream(ctx, n.subj.Name(events.StreamBuffer))
	if err == nil {
		info := s.CachedInfo()
		n.metrics.bufferStream(info)
		st.Pending = int64(info.State.Msgs)
		if info.State.Msgs > 0 && !info.State.FirstTime.IsZero() {
			st.OldestPendingAgeSeconds = time.Since(info.State.FirstTime).Seconds()
		}
	} else {
		prev := n.bufStatus.Load()
		st.Pending, st.OldestPendingAgeSeconds = prev.Pending, prev.OldestPendingAgeSeconds
	}
	n.bufStatus.Store(&st)
}

func (n *Node) nodeStatus() events.NodeStatus {
	mc, _ := n.mode.get()
	now := time.Now().UTC()
	return events.NodeStatus{
		Envelope:            events.Envelope{OccurredAt: now, Source: n.cfg.NodeID},
		ID:                  n.cfg.NodeID,
		Mode:                n.currentMode(),
		Epoch:               mc.Epoch,
		CircuitBreakerState: n.breaker.State(),
		CacheStatistics:     n.cacheStats(),
		Buffer:              *n.bufStatus.Load(),
		LastSeen:            now,
		RetryStatistics:     n.retryStats(),
		ReplayedEpoch:       n.replayer.completedEpoch(),
		HTTPAddr:            n.cfg.HTTPAddr,
	}
}

func (n *Node) cacheStats() events.CacheStatistics {
	s := n.cache.Stats()
	return events.CacheStatistics{
		Hits: int64(s.Hits), Misses: int64(s.Misses), Evictions: int64(s.Evictions), TotalRequests: int64(s.TotalRequests),
		CacheSize: int64(s.CacheSize), MemoryUsageBytes: s.MemoryUsageBytes, HitRate: s.HitRate,
	}
}

func (n *Node) retryStats() events.RetryStatistics {
	s := n.retrier.Stats()
	return events.RetryStatistics{
		TotalAttempts: int64(s.TotalAttempts), SuccessfulRetries: int64(s.SuccessfulRetries),
		FailedAfterRetries: int64(s.FailedAfterRetries), NonRetriableFailures: int64(s.NonRetriableFailures),
		SuccessRate: s.SuccessRate, Operations: int64(s.Operations), Successes: int64(s.Successes),
	}
}

// status is this node's view for GET /v1/status.
func (n *Node) status() events.SystemStatus {
	mc, _ := n.mode.get()
	mode := n.currentMode()
	hs, hstats := events.HealthUnknown, events.HealthStatistics{CurrentStatus: events.HealthUnknown}
	var hage *float64
	if h := n.health.Load(); h != nil {
		status, age := h.report.Aged(h.at, time.Now())
		hs, hstats, hage = status, h.report.Statistics, &age
	}
	st := events.SystemStatus{
		// Operational: the node knows the mode and can serve reads and take writes.
		IsOperational:          n.ready.Load() && !n.stopping.Load(),
		Mode:                   mode,
		Epoch:                  mc.Epoch,
		CacheOnlyMode:          mode == events.ModeCacheOnly,
		HealthStatus:           hs,
		HealthStatusAgeSeconds: hage,
		HealthStatistics:       hstats,
		CircuitBreakerState:    n.breaker.State(),
		RetryStatistics:        n.retryStats(),
		CacheStatistics:        n.cacheStats(),
		Buffer:                 *n.bufStatus.Load(),
		NodeID:                 n.cfg.NodeID,
		Nodes:                  []events.NodeStatus{},
		ChangeLog:              n.changeLogStatus(),
	}
	if mode == events.ModeCacheOnly {
		st.CacheOnlyReason = mc.Reason
	}
	// The manager keeps its counters with the mode; the node shows them as it read them.
	if c := mc.Counters; c != nil {
		st.TotalFailures, st.TotalRecoveries, st.RecoveryAttempts = c.TotalFailures, c.TotalRecoveries, c.RecoveryAttempts
		st.LastFailureTime, st.LastRecoveryTime = c.LastFailureTime, c.LastRecoveryTime
		st.AutoRecoveryEnabled = c.AutoRecoveryEnabled != nil && *c.AutoRecoveryEnabled
	}
	return st
}

func (n *Node) changeLogStatus() *events.ChangeLogStatus {
	n.pendingLog.mu.Lock()
	unlogged := len(n.pendingLog.m)
	n.pendingLog.mu.Unlock()
	return &events.ChangeLogStatus{
		Current: n.changes.current(), LagSeconds: n.changes.lag().Seconds(), StalenessBoundSeconds: n.cfg.StalenessBound.Seconds(),
		IndexedRecords: int64(n.changes.keys()), AppliedSequence: n.changes.applied.Load(),
		BackfillDone: n.backfillDone.Load(), UnloggedWrites: int64(unlogged),
	}
}
