package events

import "time"

// Mode is the system's operating mode.
type Mode string

// The three modes of the contract.
const (
	ModeNormal     Mode = "normal"
	ModeCacheOnly  Mode = "cache_only"
	ModeRecovering Mode = "recovering"
)

// Valid reports whether m is one of the contract's modes.
func (m Mode) Valid() bool {
	return m == ModeNormal || m == ModeCacheOnly || m == ModeRecovering
}

// Subject returns the mode.* subject (without prefix) announcing m.
func (m Mode) Subject() string { return "mode." + string(m) }

// HealthStatus is the health-monitor's verdict on the database.
type HealthStatus string

// Health statuses.
const (
	HealthUnknown   HealthStatus = "unknown"
	HealthHealthy   HealthStatus = "healthy"
	HealthUnhealthy HealthStatus = "unhealthy"
	// HealthStale is shown in a status for a health report older than two
	// of its monitor's check intervals: no monitor has spoken for too long
	// to trust the last verdict either way.
	HealthStale HealthStatus = "stale"
)

// Envelope carries the fields every event payload has.
type Envelope struct {
	OccurredAt time.Time `json:"occurred_at"`
	Source     string    `json:"source"`
}

// HealthStatistics are the health checker's counters (the original get_health_statistics()).
type HealthStatistics struct {
	CurrentStatus        HealthStatus `json:"current_status"`
	TotalChecks          int64        `json:"total_checks"`
	SuccessfulChecks     int64        `json:"successful_checks"`
	FailedChecks         int64        `json:"failed_checks"`
	ConsecutiveSuccesses int64        `json:"consecutive_successes"`
	ConsecutiveFailures  int64        `json:"consecutive_failures"`
	LastCheckTime        *time.Time   `json:"last_check_time"`
	LastSuccessTime      *time.Time   `json:"last_success_time"`
	LastFailureTime      *time.Time   `json:"last_failure_time"`
	SuccessRate          float64      `json:"success_rate"`
	IsMonitoring         bool         `json:"is_monitoring"`
}

// DBHealth is published on db.health after every check.
type DBHealth struct {
	Envelope
	Status     HealthStatus     `json:"status"`
	LatencyMS  float64          `json:"latency_ms"`
	Error      string           `json:"error,omitempty"`
	Statistics HealthStatistics `json:"statistics"`
	// IntervalSeconds is the monitor's HEALTH_CHECK_INTERVAL (an extension:
	// it tells a reader when the next report is due, see Aged).
	IntervalSeconds float64 `json:"interval_seconds,omitempty"`
}

// DefaultHealthInterval is the contract's HEALTH_CHECK_INTERVAL, assumed for
// a report that does not carry its interval.
const DefaultHealthInterval = 30 * time.Second

// Aged returns the status to show for the report h, received at received:
// h.Status while the report is younger than two of its monitor's check
// intervals, HealthStale after that; and the report's age in seconds.
func (h *DBHealth) Aged(received, now time.Time) (HealthStatus, float64) {
	interval := DefaultHealthInterval
	if h.IntervalSeconds > 0 {
		interval = time.Duration(h.IntervalSeconds * float64(time.Second))
	}
	age := max(now.Sub(received), 0)
	if age > 2*interval {
		return HealthStale, age.Seconds()
	}
	return h.Status, age.Seconds()
}

// DBUnhealthy is published on db.unhealthy when consecutive failures reach the threshold.
type DBUnhealthy struct {
	Envelope
	Reason              string `json:"reason"`
	ConsecutiveFailures int64  `json:"consecutive_failures"`
	LastError           string `json:"last_error"`
}

// DBRecovered is published on db.recovered when consecutive successes reach the threshold after db.unhealthy.
type DBRecovered struct {
	Envelope
	ConsecutiveSuccesses int64   `json:"consecutive_successes"`
	DowntimeSeconds      float64 `json:"downtime_seconds"`
}

// ModeChanged is the payload of mode.cache_only, mode.recovering and mode.normal,
// and the value of KV key "mode" in bucket "anivault".
type ModeChanged struct {
	Envelope
	Mode   Mode      `json:"mode"`
	Epoch  int64     `json:"epoch"`
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
	// Manual is true when an operator entered cache-only mode; automatic
	// recovery never leaves such a mode (an extension of the contract).
	Manual bool `json:"manual,omitempty"`
	// Counters are the recovery-manager's outage counters, kept with the mode
	// so that one compare-and-swap moves both and a restarted manager resumes
	// them (an extension of the contract).
	Counters *ManagerCounters `json:"counters,omitempty"`
}

// ManagerCounters are the recovery-manager's persistent counters.
type ManagerCounters struct {
	TotalFailures    int64      `json:"total_failures"`
	TotalRecoveries  int64      `json:"total_recoveries"`
	RecoveryAttempts int64      `json:"recovery_attempts"`
	LastFailureTime  *time.Time `json:"last_failure_time"`
	LastRecoveryTime *time.Time `json:"last_recovery_time"`
	// InOutage is true from a failure until the next normal mode, so that
	// each outage counts one failure and one recovery however often it flaps.
	InOutage bool `json:"in_outage"`
	// AutoRecoveryEnabled is the AUTO_RECOVERY_ENABLED of the manager that
	// wrote the mode last, so that every node reports it; nil when written
	// by a manager that did not say.
	AutoRecoveryEnabled *bool `json:"auto_recovery_enabled,omitempty"`
}

// ReplayCompleted is published by a cache-node after it replayed its share of the buffer for Epoch.
type ReplayCompleted struct {
	Envelope
	Epoch        int64 `json:"epoch"`
	Replayed     int64 `json:"replayed"`
	SkippedStale int64 `json:"skipped_stale"`
	Failed       int64 `json:"failed"`
	DurationMS   int64 `json:"duration_ms"`
}

// MetadataChanged is published after a write was committed (Buffered false) or
// durably buffered (Buffered true). Record carries the written record (nil for
// deletes) so that other nodes can serve a buffered write without the database.
type MetadataChanged struct {
	Envelope
	TMDBID   int64   `json:"tmdb_id"`
	Version  int64   `json:"version"`
	Deleted  bool    `json:"deleted"`
	Buffered bool    `json:"buffered"`
	Record   *Record `json:"record,omitempty"`
}

// BackfillProgress is the change log backfill's progress (subject
// changes._backfill): every row with a tmdb_id up to Cursor has been compared
// with the log; Done once the whole table was.
type BackfillProgress struct {
	Cursor    int64     `json:"cursor"`
	Done      bool      `json:"done"`
	Published int64     `json:"published"`
	UpdatedAt time.Time `json:"updated_at"`
}

// DeleteRequest is the payload of metadata.delete.
type DeleteRequest struct {
	TMDBID int64 `json:"tmdb_id"`
}

// GetRequest is the request of metadata.get.
type GetRequest struct {
	TMDBID int64 `json:"tmdb_id"`
}

// ErrorReply is the reply to an invalid or failed request.
type ErrorReply struct {
	Error string `json:"error"`
	Code  int    `json:"code"`
	Field string `json:"field,omitempty"`
}

// ForceRecoveryReply answers recovery.force.
type ForceRecoveryReply struct {
	Attempted    bool         `json:"attempted"`
	HealthStatus HealthStatus `json:"health_status"`
	Mode         Mode         `json:"mode"`
	Epoch        int64        `json:"epoch"`
}

// CacheOnlyEnterRequest is the request of recovery.cache_only.enter.
type CacheOnlyEnterRequest struct {
	Reason string `json:"reason"`
}

// ModeReply answers recovery.cache_only.enter and recovery.cache_only.exit.
type ModeReply struct {
	Mode  Mode  `json:"mode"`
	Epoch int64 `json:"epoch"`
}

// RetryStatistics are the retry policy's counters.
type RetryStatistics struct {
	TotalAttempts        int64 `json:"total_attempts"`
	SuccessfulRetries    int64 `json:"successful_retries"`
	FailedAfterRetries   int64 `json:"failed_after_retries"`
	NonRetriableFailures int64 `json:"non_retriable_failures"`
	// SuccessRate is Successes / Operations: the share of database
	// operations (each tried one or more times) that succeeded, 1 before any.
	SuccessRate float64 `json:"success_rate"`
	// Operations and Successes are the counts behind SuccessRate (an
	// extension: a sum over nodes weights each node by its operations).
	Operations int64 `json:"operations"`
	Successes  int64 `json:"successes"`
}

// CacheStatistics are the bounded cache's counters.
type CacheStatistics struct {
	Hits             int64   `json:"hits"`
	Misses           int64   `json:"misses"`
	Evictions        int64   `json:"evictions"`
	TotalRequests    int64   `json:"total_requests"`
	CacheSize        int64   `json:"cache_size"`
	MemoryUsageBytes int64   `json:"memory_usage_bytes"`
	HitRate          float64 `json:"hit_rate"`
}

// BufferStatus describes the durable write buffer.
type BufferStatus struct {
	Pending                 int64   `json:"pending"`
	OldestPendingAgeSeconds float64 `json:"oldest_pending_age_seconds"`
	ReplayedTotal           int64   `json:"replayed_total"`
	// Extensions: writes this node accepted into the buffer, and stale writes skipped on replay.
	AcceptedTotal     int64 `json:"accepted_total"`
	SkippedStaleTotal int64 `json:"skipped_stale_total"`
}

// NodeStatus is one cache-node's report, published on node.status and shown in
// the system status's nodes list.
type NodeStatus struct {
	Envelope
	ID                  string          `json:"id"`
	Mode                Mode            `json:"mode"`
	Epoch               int64           `json:"epoch"`
	CircuitBreakerState string          `json:"circuit_breaker_state"`
	CacheStatistics     CacheStatistics `json:"cache_statistics"`
	Buffer              BufferStatus    `json:"buffer"`
	LastSeen            time.Time       `json:"last_seen"`
	RetryStatistics     RetryStatistics `json:"retry_statistics"`
	ReplayedEpoch       int64           `json:"replayed_epoch"`
	HTTPAddr            string          `json:"http_addr,omitempty"`
}

// SystemStatus is the reply to status.get and (for one node) GET /v1/status.
type SystemStatus struct {
	IsOperational   bool         `json:"is_operational"`
	Mode            Mode         `json:"mode"`
	Epoch           int64        `json:"epoch"`
	CacheOnlyMode   bool         `json:"cache_only_mode"`
	CacheOnlyReason string       `json:"cache_only_reason"`
	HealthStatus    HealthStatus `json:"health_status"`
	// HealthStatusAgeSeconds is the age of the health report behind
	// HealthStatus, null when none was received (an extension).
	HealthStatusAgeSeconds *float64         `json:"health_status_age_seconds"`
	HealthStatistics       HealthStatistics `json:"health_statistics"`
	CircuitBreakerState    string           `json:"circuit_breaker_state"`
	RetryStatistics        RetryStatistics  `json:"retry_statistics"`
	CacheStatistics        CacheStatistics  `json:"cache_statistics"`
	TotalFailures          int64            `json:"total_failures"`
	TotalRecoveries        int64            `json:"total_recoveries"`
	RecoveryAttempts       int64            `json:"recovery_attempts"`
	LastFailureTime        *time.Time       `json:"last_failure_time"`
	LastRecoveryTime       *time.Time       `json:"last_recovery_time"`
	AutoRecoveryEnabled    bool             `json:"auto_recovery_enabled"`
	Buffer                 BufferStatus     `json:"buffer"`
	Nodes                  []NodeStatus     `json:"nodes"`
	// NodeID is set on a single node's status (GET /v1/status).
	NodeID string `json:"node_id,omitempty"`
	// ChangeLog is set on a single node's status: how far it follows the change log.
	ChangeLog *ChangeLogStatus `json:"change_log,omitempty"`
}

// ChangeLogStatus is a cache-node's view of the change log (an extension of
// GET /v1/status).
type ChangeLogStatus struct {
	// Current is true while the node can prove it has applied every entry
	// published more than StalenessBoundSeconds ago: only then does it serve
	// from its cache.
	Current               bool    `json:"current"`
	LagSeconds            float64 `json:"lag_seconds"`
	StalenessBoundSeconds float64 `json:"staleness_bound_seconds"`
	// IndexedRecords is how many records the node knows the latest version of.
	IndexedRecords int64 `json:"indexed_records"`
	// AppliedSequence is the stream sequence the node has applied up to.
	AppliedSequence uint64 `json:"applied_sequence"`
	// BackfillDone is true once the whole table is known to be in the log.
	BackfillDone bool `json:"backfill_done"`
	// UnloggedWrites are durable writes this node has yet to put in the log.
	UnloggedWrites int64 `json:"unlogged_writes"`
}

// BufferedWrite is one write held in the durable buffer. Delete is a tombstone.
type BufferedWrite struct {
	TMDBID     int64     `json:"tmdb_id"`
	Version    int64     `json:"version"`
	Deleted    bool      `json:"deleted"`
	AcceptedAt time.Time `json:"accepted_at"`
	Node       string    `json:"node"`
	Record     *Record   `json:"record,omitempty"`
}

// BufferBatch is one message of the write buffer: concurrent writes gathered
// into one durable append (group commit).
type BufferBatch struct {
	Writes []BufferedWrite `json:"writes"`
}
