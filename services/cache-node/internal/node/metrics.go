package node

import (
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/resilience"
	"github.com/anivault/anivault/pkg/svckit"
)

// HTTP route labels: the fixed routes of the API, and "other" for anything
// that matched none (a 404 or 405 from the router). /metrics, /healthz and
// /readyz are not counted: scrapes and probes would drown the API's figures.
const (
	routeAnime  = "/v1/anime/{tmdb_id}"
	routeStatus = "/v1/status"
	routeOther  = "other"
)

// Database operation labels of anivault_db_query_duration_seconds: one per
// kind of call the node makes through dbCall.
const (
	opGet              = "get"
	opGetMany          = "get_many"
	opWrite            = "write"
	opReplay           = "replay"
	opExpireTombstones = "expire_tombstones"
	opVersionsSince    = "versions_since"
	opVersionsAfter    = "versions_after"
)

var dbOps = []string{opGet, opGetMany, opWrite, opReplay, opExpireTombstones, opVersionsSince, opVersionsAfter}

// writeOutcomes are the values of anivault_writes_total{outcome}.
var writeOutcomes = []string{StatusCommitted, StatusBuffered, "failed", StatusSuperseded, "reversioned", "refused_busy"}

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
	replayTime  prometheus.Histogram
	dbLatency   *prometheus.HistogramVec
	retries     *prometheus.CounterVec
	// reads counts reads that missed the cache, by where they were answered from.
	reads         *prometheus.CounterVec
	corrections   prometheus.Counter
	invalidations prometheus.Counter
	reconciled    prometheus.Counter
	unauthorized  *prometheus.CounterVec
	expired       prometheus.Counter

	// The buffer stream's size and limits, as the last status refresh read them.
	bufBytes, bufMaxMsgs, bufMaxBytes atomic.Int64

	// reqCounters and reqLatency hold the children of requests and latency
	// by their labels (requestKey, latencyKey): a label lookup hashes and
	// locks, and was a tenth of a cache hit's CPU. Their keys are bounded:
	// fixed routes, methodLabel's methods, the codes the handlers answer.
	reqCounters, reqLatency sync.Map
}

type requestKey struct {
	route, method string
	code          int
}

type latencyKey struct{ route, method string }

func (m *metrics) requestCounter(route, method string, code int) prometheus.Counter {
	k := requestKey{route, method, code}
	if c, ok := m.reqCounters.Load(k); ok {
		return c.(prometheus.Counter)
	}
	c, _ := m.reqCounters.LoadOrStore(k, m.requests.WithLabelValues(route, method, strconv.Itoa(code)))
	return c.(prometheus.Counter)
}

func (m *metrics) requestLatency(route, method string) prometheus.Observer {
	k := latencyKey{route, method}
	if o, ok := m.reqLatency.Load(k); ok {
		return o.(prometheus.Observer)
	}
	o, _ := m.reqLatency.LoadOrStore(k, m.latency.WithLabelValues(route, method))
	return o.(prometheus.Observer)
}

func newMetrics(n *Node) *metrics {
	reg := svckit.NewRegistry("cache-node")
	m := &metrics{
		registry: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "anivault_http_requests_total",
			Help: "HTTP API requests by route, method and status code (not /metrics, /healthz, /readyz)."}, []string{"route", "method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "anivault_http_request_duration_seconds",
			Help:    "HTTP API request latency by route and method (not /metrics, /healthz, /readyz).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, []string{"route", "method"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "anivault_writes_total",
			Help: "Writes by outcome: committed, buffered, failed, refused_busy; superseded (a producer write older than the stored version) and reversioned (an HTTP write versioned again above a newer one) are the version conflicts."}, []string{"outcome"}),
		invalid:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "anivault_invalid_requests_total", Help: "Rejected bad input by transport."}, []string{"transport"}),
		breakerTx:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "anivault_circuit_breaker_transitions_total", Help: "Circuit breaker state changes."}, []string{"from", "to"}),
		replayed:    prometheus.NewCounter(prometheus.CounterOpts{Name: "anivault_replay_applied_total", Help: "Buffered writes applied by replay."}),
		replayStale: prometheus.NewCounter(prometheus.CounterOpts{Name: "anivault_replay_skipped_stale_total", Help: "Buffered writes skipped on replay because the row was newer."}),
		replayTime: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "anivault_replay_duration_seconds",
			Help:    "Duration of this node's completed replay runs (from mode recovering to its replay.completed).",
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800}}),
		dbLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "anivault_db_query_duration_seconds",
			Help:    "Latency of each PostgreSQL call (every attempt, retries included; not calls the breaker refused), by operation.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, []string{"operation"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "anivault_db_retries_total",
			Help: "Retries of PostgreSQL calls (second and later attempts), by their result: success or failure."}, []string{"result"}),
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
	m.bufMaxMsgs.Store(-1)
	m.bufMaxBytes.Store(-1)
	m.startAtZero()
	m.mode = svckit.NewModeGauges(reg, string(events.ModeNormal), string(events.ModeCacheOnly), string(events.ModeRecovering))
	reg.MustRegister(m.requests, m.latency, m.writes, m.invalid, m.breakerTx, m.replayed, m.replayStale, m.replayTime,
		m.dbLatency, m.retries, m.reads, m.corrections, m.invalidations, m.reconciled, m.unauthorized, m.expired)
	reg.MustRegister(nodeCollectors(n, m)...)
	reg.MustRegister(breakerState{n})
	return m
}

// startAtZero makes the series of bounded label sets exist from the start
// at 0, so that rate() and the alert rules see them before the first event.
func (m *metrics) startAtZero() {
	for _, o := range writeOutcomes {
		m.writes.WithLabelValues(o)
	}
	for _, r := range []string{"success", "failure"} {
		m.retries.WithLabelValues(r)
	}
	for _, s := range []string{string(SourceDatabase), string(SourceReplica)} {
		m.reads.WithLabelValues(s)
	}
	for _, tr := range []string{"http", "nats", "event"} {
		m.invalid.WithLabelValues(tr)
	}
	for _, r := range []string{"missing_or_invalid", "forbidden"} {
		m.unauthorized.WithLabelValues(r)
	}
	for _, op := range dbOps {
		m.dbLatency.WithLabelValues(op)
	}
	for _, tr := range [][2]string{{resilience.StateClosed, resilience.StateOpen}, {resilience.StateOpen, resilience.StateHalfOpen},
		{resilience.StateHalfOpen, resilience.StateClosed}, {resilience.StateHalfOpen, resilience.StateOpen}} {
		m.breakerTx.WithLabelValues(tr[0], tr[1])
	}
}

// gaugeFunc and counterFunc are metrics read from f at each scrape.
func gaugeFunc(name, help string, f func() float64) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
}

func counterFunc(name, help string, f func() float64) prometheus.Collector {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f)
}

// nodeCollectors are the metrics read from the node's parts at each scrape.
func nodeCollectors(n *Node, m *metrics) []prometheus.Collector {
	gauge, counter := gaugeFunc, counterFunc
	retryStat := func(f func(resilience.RetryStats) uint64) func() float64 {
		return func() float64 {
			if n.retrier == nil {
				return 0
			}
			return float64(f(n.retrier.Stats()))
		}
	}
	dbOperation := func(result string, f func(resilience.RetryStats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "anivault_db_operations_total",
			Help:        "PostgreSQL operations (one call with its retries) by result: success, failed_after_retries (transient errors until attempts or time ran out), non_retriable (not transient, refused by the open breaker, or canceled).",
			ConstLabels: prometheus.Labels{"result": result}}, retryStat(f))
	}
	return []prometheus.Collector{
		gauge("anivault_changelog_lag_seconds", "How long ago the node last proved it had applied every change log entry (reads lag writes by at most this).",
			func() float64 { return n.changes.lag().Seconds() }),
		gauge("anivault_changelog_index_keys", "Records in the node's index of the change log.", func() float64 { return float64(n.changes.keys()) }),
		gauge("anivault_changelog_unlogged_writes", "Durable writes this node has not put in the change log yet.", func() float64 {
			n.pendingLog.mu.Lock()
			defer n.pendingLog.mu.Unlock()
			return float64(len(n.pendingLog.m))
		}),
		counter("anivault_changelog_batches_total", "Atomic batches of durable writes' change-log entries (group commit of the log).",
			func() float64 { return float64(n.logBatch.batches.Load()) }),
		counter("anivault_changelog_batched_entries_total", "Change-log entries stored by those batches (divided by anivault_changelog_batches_total: the mean batch size).",
			func() float64 { return float64(n.logBatch.batched.Load()) }),
		gauge("anivault_cache_entries", "Entries in the cache.", func() float64 { return float64(n.cache.Len()) }),
		gauge("anivault_cache_bytes", "Bytes of encoded records in the cache.", func() float64 { return float64(n.cache.Bytes()) }),
		gauge("anivault_cache_max_bytes", "The cache's byte bound: three quarters of CACHE_MAX_MEMORY_MB less the change log's index.",
			func() float64 { return float64(n.cache.Stats().MaxBytes) }),
		counter("anivault_cache_hits_total", "Cache lookups that found the record.", func() float64 { return float64(n.cache.Stats().Hits) }),
		counter("anivault_cache_misses_total", "Cache lookups that did not find the record.", func() float64 { return float64(n.cache.Stats().Misses) }),
		counter("anivault_cache_evictions_total", "Cache entries dropped to respect CACHE_MAX_SIZE or CACHE_MAX_MEMORY_MB.", func() float64 { return float64(n.cache.Stats().Evictions) }),
		gauge("anivault_buffer_pending", "Messages waiting in the write buffer (the same figure as anivault_buffer_pending_writes).", func() float64 { return float64(n.bufStatus.Load().Pending) }),
		gauge("anivault_buffer_pending_writes", "Buffered writes waiting for replay, counted in buffer messages (each holds one or more writes: group commit).",
			func() float64 { return float64(n.bufStatus.Load().Pending) }),
		gauge("anivault_buffer_oldest_pending_age_seconds", "Age of the oldest message waiting in the write buffer (0 when empty).",
			func() float64 { return n.bufStatus.Load().OldestPendingAgeSeconds }),
		gauge("anivault_buffer_bytes", "Bytes stored in the write buffer stream.", func() float64 { return float64(m.bufBytes.Load()) }),
		gauge("anivault_buffer_limit_messages", "The write buffer stream's message limit (BUFFER_MAX_MSGS; -1 when unlimited or not known yet).",
			func() float64 { return float64(m.bufMaxMsgs.Load()) }),
		gauge("anivault_buffer_limit_bytes", "The write buffer stream's byte limit (BUFFER_MAX_BYTES; -1 when unlimited or not known yet).",
			func() float64 { return float64(m.bufMaxBytes.Load()) }),
		counter("anivault_db_attempts_total", "Calls to PostgreSQL made through the retry policy: first attempts and retries.",
			retryStat(func(s resilience.RetryStats) uint64 { return s.TotalAttempts })),
		dbOperation("success", func(s resilience.RetryStats) uint64 { return s.Successes }),
		dbOperation("failed_after_retries", func(s resilience.RetryStats) uint64 { return s.FailedAfterRetries }),
		dbOperation("non_retriable", func(s resilience.RetryStats) uint64 { return s.NonRetriableFailures }),
		counter("anivault_db_retried_successes_total", "PostgreSQL operations that succeeded after at least one retry.",
			retryStat(func(s resilience.RetryStats) uint64 { return s.SuccessfulRetries })),
	}
}

// breakerState is anivault_circuit_breaker_state{state}: 1 for the
// breaker's current state, 0 for the other two, read once per scrape so the
// three series always agree.
type breakerState struct{ n *Node }

var breakerStateDesc = prometheus.NewDesc("anivault_circuit_breaker_state",
	"The database circuit breaker's state: 1 for the current one (closed, open, half_open), 0 for the others.", []string{"state"}, nil)

func (b breakerState) Describe(ch chan<- *prometheus.Desc) { ch <- breakerStateDesc }

func (b breakerState) Collect(ch chan<- prometheus.Metric) {
	cur := resilience.StateClosed
	if b.n.breaker != nil {
		cur = b.n.breaker.State()
	}
	for _, s := range []string{resilience.StateClosed, resilience.StateOpen, resilience.StateHalfOpen} {
		v := 0.0
		if s == cur {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(breakerStateDesc, prometheus.GaugeValue, v, s)
	}
}

// breakerChanged runs inside the breaker's lock: it only counts.
func (m *metrics) breakerChanged(from, to string) {
	m.breakerTx.WithLabelValues(from, to).Inc()
}

func (m *metrics) setMode(mode events.Mode, epoch int64) {
	m.mode.Set(string(mode), epoch)
}

// dbAttempt records one attempt of a database operation: its latency when
// it reached PostgreSQL (ran), and its result when it was a retry.
func (m *metrics) dbAttempt(op string, attempt int, ran bool, took time.Duration, err error) {
	if ran {
		m.dbLatency.WithLabelValues(op).Observe(took.Seconds())
	}
	if attempt > 0 {
		result := "success"
		if err != nil {
			result = "failure"
		}
		m.retries.WithLabelValues(result).Inc()
	}
}

// bufferStream records the buffer stream's size and limits.
func (m *metrics) bufferStream(info *jetstream.StreamInfo) {
	if info == nil {
		return
	}
	m.bufBytes.Store(int64(info.State.Bytes))
	m.bufMaxMsgs.Store(info.Config.MaxMsgs)
	m.bufMaxBytes.Store(info.Config.MaxBytes)
}

// statusRecorder keeps the status code and the route label of one request.
type statusRecorder struct {
	http.ResponseWriter
	code  int
	route string
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the server's writer (Flush).
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// route labels the requests h serves with the fixed route name; an empty
// name leaves them out of the HTTP metrics. It must be registered on the
// mux that instrument wraps.
func (m *metrics) route(name string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rec, ok := w.(*statusRecorder); ok {
			rec.route = name
		}
		h.ServeHTTP(w, r)
	})
}

// instrument counts and times the requests of h (a mux whose handlers are
// wrapped by route): by route, method and code. Requests no route matched
// are counted under "other".
func (m *metrics) instrument(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK, route: routeOther}
		h.ServeHTTP(rec, r)
		if rec.route == "" {
			return
		}
		method := methodLabel(r.Method)
		m.requestCounter(rec.route, method, rec.code).Inc()
		m.requestLatency(rec.route, method).Observe(time.Since(start).Seconds())
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
