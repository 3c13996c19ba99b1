package node

import (
	"errors"
	"fmt"
	"time"

	"github.com/anivault/anivault/pkg/envconfig"
	"github.com/anivault/anivault/pkg/natsconn"
	"github.com/anivault/anivault/pkg/pgdb"
	"github.com/anivault/anivault/pkg/svckit"
	"github.com/anivault/anivault/pkg/topology"
)

// Config is the cache-node's configuration, read once from the environment.
type Config struct {
	NATS          natsconn.Config
	DatabaseURL   string
	HTTPAddr      string
	NodeID        string
	SubjectPrefix string
	// NoProvision (NATS_PROVISION=false) creates no stream, bucket or
	// consumer: the node only waits for the ones the provision command makes
	// as the admin role, for NATS roles that may not create them.
	NoProvision bool

	// CacheMaxSize bounds the cache's entries (CACHE_MAX_SIZE); CacheMaxMemoryMB
	// is the node's memory budget (CACHE_MAX_MEMORY_MB), three quarters of
	// which the cache may hold (see cacheBytes).
	CacheMaxSize     int
	CacheMaxMemoryMB int
	// GoMemLimit is GOMEMLIMIT as set, "" when unset. The Go runtime applies
	// it; when it is unset the node sets a soft memory limit derived from
	// CacheMaxMemoryMB (see memoryLimit).
	GoMemLimit string
	// CacheDisabled turns the cache off (CACHE_DISABLED), so every read goes to the
	// database: for benchmarks that compare the two paths.
	CacheDisabled bool

	// DBTimeout is the whole budget of one request's database work, retries
	// included (DB_TIMEOUT, default HEALTH_CHECK_TIMEOUT): no request waits on
	// the database longer than this.
	DBTimeout time.Duration
	// DBMaxConns limits the pool (DB_MAX_CONNS).
	DBMaxConns int

	BreakerFailureThreshold int
	BreakerOpenTimeout      time.Duration
	RetryMaxAttempts        int
	RetryBaseDelay          time.Duration
	RetryMaxDelay           time.Duration

	// Buffer limits (BUFFER_MAX_MSGS, BUFFER_MAX_BYTES, BUFFER_REPLICAS) and
	// group commit (BUFFER_GROUP_COMMIT_WINDOW, BUFFER_GROUP_COMMIT_MAX).
	Buffer            topology.BufferLimits
	GroupCommitWindow time.Duration
	GroupCommitMax    int
	BufferTimeout     time.Duration
	// DBGroupCommitMax (DB_GROUP_COMMIT_MAX) is the most committed writes
	// one statement and one change-log batch carry; 1 writes one by one.
	DBGroupCommitMax int

	// ReplayBatchSize and ReplayBatchInterval pace the replay so that a database
	// that just came back is not flattened.
	ReplayBatchSize     int
	ReplayBatchInterval time.Duration
	// ReplayMaxBytes (REPLAY_MAX_BYTES) bounds the bytes of one replay
	// fetch; the default and the least is one largest buffer message (1 MiB
	// plus room): applying a fetch takes many times its size in memory
	// (decoding, the statement, the driver's buffers), and a message of
	// small writes holds hundreds of them anyway.
	ReplayMaxBytes int

	// StatusInterval is how often the node publishes node.status (NODE_STATUS_INTERVAL).
	StatusInterval time.Duration

	// StalenessBound (STALENESS_BOUND) is the most a read may lag behind an
	// acknowledged write: the node serves from its cache only while it can
	// prove it has applied every change log entry published longer ago than
	// this, and drops its cache when it cannot.
	StalenessBound time.Duration
	// CacheRevalidateAfter (CACHE_REVALIDATE_AFTER, 0 to turn off) is the age
	// after which a cached entry is checked against the database on its next
	// read in normal mode: a safety net for rows changed by another path.
	CacheRevalidateAfter time.Duration
	// HTTPReadTimeout (HTTP_READ_TIMEOUT) bounds reading a whole request,
	// body included; HTTPWriteTimeout (HTTP_WRITE_TIMEOUT) bounds a request
	// from the end of its headers to the end of its answer. A slow client
	// holds a goroutine and memory no longer than these.
	HTTPReadTimeout  time.Duration
	HTTPWriteTimeout time.Duration
	// TombstoneRetention (TOMBSTONE_RETENTION, 0 to keep them for ever) is
	// how long a delete's tombstone is kept, in the table and the change log.
	// A tombstone is never removed while a buffered or producer write older
	// than it may still be applied (it would resurrect the record).
	TombstoneRetention time.Duration
	// AuthTokensFile (HTTP_AUTH_TOKENS_FILE) names a file of bearer tokens
	// ("read <token>" or "write <token>" a line); when set, reads need a
	// read or write token and writes a write token. Unset, the API is open.
	AuthTokensFile string
	// ShutdownDelay (SHUTDOWN_DELAY) is how long a node keeps serving after
	// SIGTERM with /readyz failing, so that load balancers stop sending to
	// it before its listener closes.
	ShutdownDelay time.Duration
	// MaxConcurrentWrites (MAX_CONCURRENT_WRITES) bounds the writes a node
	// handles at once; past it a write is answered 503 with Retry-After.
	MaxConcurrentWrites int
	// LogReconcileInterval (LOG_RECONCILE_INTERVAL) is how often the node
	// compares recently written rows with the change log and logs those the
	// log is behind on.
	LogReconcileInterval time.Duration
}

// LoadConfig reads the environment through r.
func LoadConfig(r *envconfig.Reader) (Config, error) {
	healthTimeout := r.Duration("HEALTH_CHECK_TIMEOUT", 5*time.Second)
	c := Config{
		NATS:             natsconn.FromEnv(r),
		DatabaseURL:      r.String("DATABASE_URL", pgdb.DefaultDSN),
		HTTPAddr:         r.String("HTTP_ADDR", ":8080"),
		NodeID:           r.String("NODE_ID", svckit.DefaultNodeID()),
		SubjectPrefix:    r.String("SUBJECT_PREFIX", ""),
		NoProvision:      !r.Bool("NATS_PROVISION", true),
		CacheMaxSize:     int(r.Int("CACHE_MAX_SIZE", 1000, 1, 1<<31-1)),
		CacheMaxMemoryMB: int(r.Int("CACHE_MAX_MEMORY_MB", 100, 1, 1<<20)),
		GoMemLimit:       r.String("GOMEMLIMIT", ""),
		CacheDisabled:    r.Bool("CACHE_DISABLED", false),
		DBTimeout:        r.Duration("DB_TIMEOUT", healthTimeout),
		DBMaxConns:       int(r.Int("DB_MAX_CONNS", 16, 1, 1000)),

		BreakerFailureThreshold: int(r.Int("BREAKER_FAILURE_THRESHOLD", 5, 1, 1000)),
		BreakerOpenTimeout:      r.Duration("BREAKER_OPEN_TIMEOUT", 5*time.Second),
		RetryMaxAttempts:        int(r.Int("RETRY_MAX_ATTEMPTS", 3, 1, 20)),
		RetryBaseDelay:          r.Duration("RETRY_BASE_DELAY", 50*time.Millisecond),
		RetryMaxDelay:           r.Duration("RETRY_MAX_DELAY", time.Second),

		Buffer: topology.BufferLimits{
			MaxMsgs:  r.Int("BUFFER_MAX_MSGS", 1_000_000, 1, 1<<40),
			MaxBytes: r.Int("BUFFER_MAX_BYTES", 1<<30, 1<<20, 1<<50),
			Replicas: int(r.Int("BUFFER_REPLICAS", 1, 1, 5)),
		},
		GroupCommitWindow: r.Duration("BUFFER_GROUP_COMMIT_WINDOW", time.Millisecond),
		GroupCommitMax:    int(r.Int("BUFFER_GROUP_COMMIT_MAX", 256, 1, 10_000)),
		BufferTimeout:     r.Duration("BUFFER_TIMEOUT", 5*time.Second),
		DBGroupCommitMax:  int(r.Int("DB_GROUP_COMMIT_MAX", 256, 1, 1000)),

		ReplayBatchSize:     int(r.Int("REPLAY_BATCH_SIZE", 500, 1, 100_000)),
		ReplayBatchInterval: r.Duration("REPLAY_BATCH_INTERVAL", 10*time.Millisecond),
		StatusInterval:      r.Duration("NODE_STATUS_INTERVAL", time.Second),

		StalenessBound:       r.Duration("STALENESS_BOUND", 5*time.Second),
		CacheRevalidateAfter: r.Duration("CACHE_REVALIDATE_AFTER", time.Minute),
		LogReconcileInterval: r.Duration("LOG_RECONCILE_INTERVAL", 10*time.Second),
		HTTPReadTimeout:      r.Duration("HTTP_READ_TIMEOUT", 15*time.Second),
		MaxConcurrentWrites:  int(r.Int("MAX_CONCURRENT_WRITES", 1024, 1, 1<<20)),
		ShutdownDelay:        r.Duration("SHUTDOWN_DELAY", 2*time.Second),
		AuthTokensFile:       r.String("HTTP_AUTH_TOKENS_FILE", ""),
		TombstoneRetention:   r.Duration("TOMBSTONE_RETENTION", 30*24*time.Hour),
	}
	minFetch := int64(topology.MaxBufferMsgBytes + 64<<10)
	c.ReplayMaxBytes = int(r.Int("REPLAY_MAX_BYTES", minFetch, minFetch, 1<<30))
	// A write may wait the database budget and then the buffer's.
	c.HTTPWriteTimeout = r.Duration("HTTP_WRITE_TIMEOUT", c.DBTimeout+c.BufferTimeout+10*time.Second)
	r.Positive("HEALTH_CHECK_TIMEOUT", healthTimeout)
	r.Positive("DB_TIMEOUT", c.DBTimeout)
	r.Positive("BREAKER_OPEN_TIMEOUT", c.BreakerOpenTimeout)
	r.Positive("NODE_STATUS_INTERVAL", c.StatusInterval)
	r.Positive("BUFFER_TIMEOUT", c.BufferTimeout)
	r.Positive("STALENESS_BOUND", c.StalenessBound)
	r.Positive("LOG_RECONCILE_INTERVAL", c.LogReconcileInterval)
	r.Positive("HTTP_READ_TIMEOUT", c.HTTPReadTimeout)
	if c.TombstoneRetention < 0 {
		r.Fail("TOMBSTONE_RETENTION", "must not be negative")
	}
	if c.ShutdownDelay < 0 {
		r.Fail("SHUTDOWN_DELAY", "must not be negative")
	}
	r.Positive("HTTP_WRITE_TIMEOUT", c.HTTPWriteTimeout)
	if c.CacheRevalidateAfter < 0 {
		r.Fail("CACHE_REVALIDATE_AFTER", "must not be negative")
	}
	if c.HTTPAddr == "" {
		r.Fail("HTTP_ADDR", "must not be empty")
	}
	if err := r.Err(); err != nil {
		return Config{}, fmt.Errorf("configuration: %w", err)
	}
	return c, c.Validate()
}

// Validate checks the settings that depend on each other.
func (c Config) Validate() error {
	var errs []error
	if c.RetryBaseDelay > c.RetryMaxDelay {
		errs = append(errs, errors.New("RETRY_BASE_DELAY: must not exceed RETRY_MAX_DELAY"))
	}
	if c.NodeID == "" {
		errs = append(errs, errors.New("NODE_ID: must not be empty"))
	}
	return errors.Join(errs...)
}
