package node

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/svckit"
)

// metrics are the node's Prometheus metrics, on a registry of its own.
type metrics struct {
	registry    *prometheus.Registry
	requests    *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	writes      *prometheus.CounterVec
	invalid     *prometheus.CounterVec
	breakerTx   *prometheus.CounterVec
	mode        *svckit.ModeGauges
	replayed    prometheus.Counter
	replayStale prometheus.Counter
	// reads counts reads that missed the cache, by where they were answered from.
	reads         *prometheus.CounterVec
	corrections   prometheus.Counter
	invalidations prometheus.Counter
	reconciled    prometheus.Counter
	unauthorized  *prometheus.CounterVec
	expired       prometheus.Counter
}

func newMetrics(n *Node) *metrics {
	reg := svckit.NewRegistry("cache-node")
	m := &metrics{
		registry: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "anivault_http_requests_total", Help: "HTTP requests by method and status code."}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "anivault_http_request_duration_seconds", Help: "HTTP request latency.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, []string{"method"}),
		writes:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "anivault_writes_total", Help: "Writes by outcome: committed, buffered, failed; superseded (a producer write older than the stored version), reversioned (an HTTP write versioned again above a newer one)."}, []string{"outcome"}),
		invalid:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "anivault_invalid_requests_total", Help: "Rejected bad input by transport."}, []string{"transport"}),
		breakerTx:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "anivault_circuit_breaker_transitions_total", Help: "Circuit breaker state changes."}, []string{"from", "to"}),
		replayed:    prometheus.NewCounter(prometheus.CounterOpts{Name: "anivault_replay_applied_total", Help: "Buffered writes applied by replay."}),
		replayStale: prometheus.NewCounter(prometheus.CounterOpts{Name: "anivault_replay_skipped_stale_total", Help: "Buffered writes skipped on replay because the row was newer."}),
		reads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "anivault_reads_total",
			Help: "Reads that missed the cache, by source: database, or replica (the change log)."}, []string{"source"}),
		corrections: prometheus.NewCounter(prometheus.CounterOpts{Name: "anivault_cache_corrections_total",
			Help: "Cached entries that revalidation found different from the database (changed by another path)."}),
		invalidations: prometheus.NewCounter(prometheus.CounterOpts{Name: "anivault_cache_invalidations_total",
			Help: "Cached entries dropped because the change log held a newer version."}),
		reconciled: prometheus.NewCounter(prometheus.CounterOpts{Name: "anivault_changelog_reconciled_total",
			Help: "Rows the change log was behind on, logged by the reconcile pass."}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{Name: "anivault_tombstones_expired_total",
			Help: "Tombstones removed from the table and the change log after TOMBSTONE_RETENTION."}),
		unauthorized: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "anivault_http_unauthorized_total",
			Help: "HTTP requests refused for their credentials: missing_or_invalid (401) or forbidden (403)."}, []string{"reason"}),
	}
	stat := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	m.mode = svckit.NewModeGauges(reg, string(events.ModeNormal), string(events.ModeCacheOnly), string(events.ModeRecovering))
	reg.MustRegister(m.requests, m.latency, m.writes, m.invalid, m.breakerTx, m.replayed, m.replayStale,
		m.reads, m.corrections, m.invalidations, m.reconciled, m.unauthorized, m.expired,
		stat("anivault_changelog_lag_seconds", "How long ago the node last proved it had applied every change log entry (reads lag writes by at most this).",
			func() float64 { return n.changes.lag().Seconds() }),
		stat("anivault_changelog_index_keys", "Records in the node's index of the change log.", func() float64 { return float64(n.changes.keys()) }),
		stat("anivault_changelog_unlogged_writes", "Durable writes this node has not put in the change log yet.", func() float64 {
			n.pendingLog.mu.Lock()
			defer n.pendingLog.mu.Unlock()
			return float64(len(n.pendingLog.m))
		}),
		stat("anivault_cache_entries", "Entries in the cache.", func() float64 { return float64(n.cache.Len()) }),
		stat("anivault_cache_bytes", "Bytes of encoded records in the cache.", func() float64 { return float64(n.cache.Bytes()) }),
		stat("anivault_cache_hits", "Cache hits.", func() float64 { return float64(n.cache.Stats().Hits) }),
		stat("anivault_cache_misses", "Cache misses.", func() float64 { return float64(n.cache.Stats().Misses) }),
		stat("anivault_cache_evictions", "Cache evictions.", func() float64 { return float64(n.cache.Stats().Evictions) }),
		stat("anivault_buffer_pending", "Messages waiting in the write buffer.", func() float64 { return float64(n.bufStatus.Load().Pending) }),
		stat("anivault_buffer_pending_writes", "Buffered writes waiting for replay, counted in buffer messages (each holds one or more writes: group commit).",
			func() float64 { return float64(n.bufStatus.Load().Pending) }),
		stat("anivault_buffer_oldest_pending_age_seconds", "Age of the oldest message waiting in the write buffer (0 when empty).",
			func() float64 { return n.bufStatus.Load().OldestPendingAgeSeconds }),
		stat("anivault_circuit_breaker_open", "1 when the breaker is open, 0.5 half-open, 0 closed.", func() float64 {
			switch n.breaker.State() {
			case "open":
				return 1
			case "half_open":
				return 0.5
			}
			return 0
		}),
	)
	return m
}

// breakerChanged runs inside the breaker's lock: it only counts.
func (m *metrics) breakerChanged(from, to string) {
	m.breakerTx.WithLabelValues(from, to).Inc()
}

func (m *metrics) setMode(mode events.Mode, epoch int64) {
	m.mode.Set(string(mode), epoch)
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the server's writer (Flush).
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (m *metrics) instrument(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(rec, r)
		method := methodLabel(r.Method)
		m.requests.WithLabelValues(method, strconv.Itoa(rec.code)).Inc()
		m.latency.WithLabelValues(method).Observe(time.Since(start).Seconds())
	})
}

// methodLabel bounds the method label to the methods HTTP defines: net/http
// passes any token through, and each new label value would make a series
// that is never removed (a client sending random methods grew /metrics
// without bound).
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace:
		return m
	}
	return "other"
}
