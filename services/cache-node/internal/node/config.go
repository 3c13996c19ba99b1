package node

import (
	"errors"
	"fmt"
	"time"

	"github.com/anivault/anivault/pkg/envconfig"
	"github.com/anivault/anivault/pkg/svckit"
	"github.com/anivault/anivault/pkg/topology"
)

// Config is the cache-node's configuration, read once from the environment.
type Config struct {
	// Shared holds the settings every service reads: NATS, DATABASE_URL,
	// NODE_ID, SUBJECT_PREFIX, NATS_PROVISION.
	svckit.Shared
	HTTPAddr string

	// CacheMaxSize bounds the cache's entries (CACHE_MAX_SIZE); CacheMaxMemoryMB
	// is the node's memory budget (CACHE_MAX_MEMORY_MB), three quarters of
	// which, less the change log's index, the cache may hold (see cacheBound).
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

// minReplayFetch is REPLAY_MAX_BYTES's default and least: one largest
// buffer message plus room.
const minReplayFetch = topology.MaxBufferMsgBytes + 64<<10

// httpWriteTimeout is HTTP_WRITE_TIMEOUT's default: a write may wait the
// database budget and then the buffer's.
func httpWriteTimeout(dbTimeout, bufferTimeout time.Duration) time.Duration {
	return dbTimeout + bufferTimeout + 10*time.Second
}

// DefaultConfig returns the cache-node's defaults: those of the contract's
// configuration table and of the README.
func DefaultConfig() Config {
	c := Config{
		Shared:   svckit.DefaultShared(),
		HTTPAddr: ":8080",

		CacheMaxSize:     1000,
		CacheMaxMemoryMB: 100,
		DBTimeout:        5 * time.Second, // HEALTH_CHECK_TIMEOUT's default
		DBMaxConns:       16,

		BreakerFailureThreshold: 5,
		BreakerOpenTimeout:      5 * time.Second,
		RetryMaxAttempts:        3,
		RetryBaseDelay:          50 * time.Millisecond,
		RetryMaxDelay:           time.Second,

		Buffer:            topology.DefaultBufferLimits(),
		GroupCommitWindow: time.Millisecond,
		GroupCommitMax:    256,
		BufferTimeout:     5 * time.Second,
		DBGroupCommitMax:  256,

		ReplayBatchSize:     500,
		ReplayBatchInterval: 10 * time.Millisecond,
		ReplayMaxBytes:      minReplayFetch,
		StatusInterval:      time.Second,

		StalenessBound:       5 * time.Second,
		CacheRevalidateAfter: time.Minute,
		HTTPReadTimeout:      15 * time.Second,
		TombstoneRetention:   30 * 24 * time.Hour,
		ShutdownDelay:        2 * time.Second,
		MaxConcurrentWrites:  1024,
		LogReconcileInterval: 10 * time.Second,
	}
	c.HTTPWriteTimeout = httpWriteTimeout(c.DBTimeout, c.BufferTimeout)
	return c
}

// LoadConfig reads the environment through r: every variable unset takes
// its DefaultConfig value, and every problem, whether reading or Validate
// finds it, is reported at once, each naming its variable.
func LoadConfig(r *envconfig.Reader) (Config, error) {
	def := DefaultConfig()
	shared := svckit.LoadShared(r)
	// DB_TIMEOUT's default is HEALTH_CHECK_TIMEOUT, which the node reads for nothing else.
	healthTimeout := r.Duration("HEALTH_CHECK_TIMEOUT", def.DBTimeout)
	r.Positive("HEALTH_CHECK_TIMEOUT", healthTimeout)
	// Integers are read whole and their ranges checked by Validate.
	lo, hi := envconfig.IntMin, envconfig.IntMax
	c := Config{
		Shared:           shared,
		HTTPAddr:         r.String("HTTP_ADDR", def.HTTPAddr),
		CacheMaxSize:     int(r.Int("CACHE_MAX_SIZE", int64(def.CacheMaxSize), lo, hi)),
		CacheMaxMemoryMB: int(r.Int("CACHE_MAX_MEMORY_MB", int64(def.CacheMaxMemoryMB), lo, hi)),
		GoMemLimit:       r.String("GOMEMLIMIT", def.GoMemLimit),
		CacheDisabled:    r.Bool("CACHE_DISABLED", def.CacheDisabled),
		DBTimeout:        r.Duration("DB_TIMEOUT", healthTimeout),
		DBMaxConns:       int(r.Int("DB_MAX_CONNS", int64(def.DBMaxConns), lo, hi)),

		BreakerFailureThreshold: int(r.Int("BREAKER_FAILURE_THRESHOLD", int64(def.BreakerFailureThreshold), lo, hi)),
		BreakerOpenTimeout:      r.Duration("BREAKER_OPEN_TIMEOUT", def.BreakerOpenTimeout),
		RetryMaxAttempts:        int(r.Int("RETRY_MAX_ATTEMPTS", int64(def.RetryMaxAttempts), lo, hi)),
		RetryBaseDelay:          r.Duration("RETRY_BASE_DELAY", def.RetryBaseDelay),
		RetryMaxDelay:           r.Duration("RETRY_MAX_DELAY", def.RetryMaxDelay),

		// BUFFER_* are read here, not in svckit: see svckit.Shared.
		Buffer: topology.BufferLimits{
			MaxMsgs:  r.Int("BUFFER_MAX_MSGS", def.Buffer.MaxMsgs, lo, hi),
			MaxBytes: r.Int("BUFFER_MAX_BYTES", def.Buffer.MaxBytes, lo, hi),
			Replicas: int(r.Int("BUFFER_REPLICAS", int64(def.Buffer.Replicas), lo, hi)),
		},
		GroupCommitWindow: r.Duration("BUFFER_GROUP_COMMIT_WINDOW", def.GroupCommitWindow),
		GroupCommitMax:    int(r.Int("BUFFER_GROUP_COMMIT_MAX", int64(def.GroupCommitMax), lo, hi)),
		BufferTimeout:     r.Duration("BUFFER_TIMEOUT", def.BufferTimeout),
		DBGroupCommitMax:  int(r.Int("DB_GROUP_COMMIT_MAX", int64(def.DBGroupCommitMax), lo, hi)),

		ReplayBatchSize:     int(r.Int("REPLAY_BATCH_SIZE", int64(def.ReplayBatchSize), lo, hi)),
		ReplayBatchInterval: r.Duration("REPLAY_BATCH_INTERVAL", def.ReplayBatchInterval),
		ReplayMaxBytes:      int(r.Int("REPLAY_MAX_BYTES", int64(def.ReplayMaxBytes), lo, hi)),
		StatusInterval:      r.Duration("NODE_STATUS_INTERVAL", def.StatusInterval),

		StalenessBound:       r.Duration("STALENESS_BOUND", def.StalenessBound),
		CacheRevalidateAfter: r.Duration("CACHE_REVALIDATE_AFTER", def.CacheRevalidateAfter),
		LogReconcileInterval: r.Duration("LOG_RECONCILE_INTERVAL", def.LogReconcileInterval),
		HTTPReadTimeout:      r.Duration("HTTP_READ_TIMEOUT", def.HTTPReadTimeout),
		MaxConcurrentWrites:  int(r.Int("MAX_CONCURRENT_WRITES", int64(def.MaxConcurrentWrites), lo, hi)),
		ShutdownDelay:        r.Duration("SHUTDOWN_DELAY", def.ShutdownDelay),
		AuthTokensFile:       r.String("HTTP_AUTH_TOKENS_FILE", def.AuthTokensFile),
		TombstoneRetention:   r.Duration("TOMBSTONE_RETENTION", def.TombstoneRetention),
	}
	c.HTTPWriteTimeout = r.Duration("HTTP_WRITE_TIMEOUT", httpWriteTimeout(c.DBTimeout, c.BufferTimeout))
	r.Check(c.Validate())
	if err := r.Err(); err != nil {
		return Config{}, fmt.Errorf("configuration: %w", err)
	}
	return c, nil
}

// Validate reports every setting out of its range and every inconsistent
// pair, each naming its variable, all at once. A zero where the field's
// comment gives zero a meaning (CACHE_REVALIDATE_AFTER, TOMBSTONE_RETENTION,
// SHUTDOWN_DELAY, and the retry delays and group commit window, which then
// take their package's defaults or do not wait) is valid.
func (c Config) Validate() error {
	errs := []error{
		c.Shared.Validate(),
		envconfig.NotEmpty("HTTP_ADDR", c.HTTPAddr),
		envconfig.InRange("CACHE_MAX_SIZE", c.CacheMaxSize, 1, 1<<31-1),
		envconfig.InRange("CACHE_MAX_MEMORY_MB", c.CacheMaxMemoryMB, 1, 1<<20),
		envconfig.Positive("DB_TIMEOUT", c.DBTimeout),
		envconfig.InRange("DB_MAX_CONNS", c.DBMaxConns, 1, 1000),

		envconfig.InRange("BREAKER_FAILURE_THRESHOLD", c.BreakerFailureThreshold, 1, 1000),
		envconfig.Positive("BREAKER_OPEN_TIMEOUT", c.BreakerOpenTimeout),
		envconfig.InRange("RETRY_MAX_ATTEMPTS", c.RetryMaxAttempts, 1, 20),
		envconfig.NotNegative("RETRY_BASE_DELAY", c.RetryBaseDelay),
		envconfig.NotNegative("RETRY_MAX_DELAY", c.RetryMaxDelay),

		c.Buffer.Validate(),
		envconfig.NotNegative("BUFFER_GROUP_COMMIT_WINDOW", c.GroupCommitWindow),
		envconfig.InRange("BUFFER_GROUP_COMMIT_MAX", c.GroupCommitMax, 1, 10_000),
		envconfig.Positive("BUFFER_TIMEOUT", c.BufferTimeout),
		envconfig.InRange("DB_GROUP_COMMIT_MAX", c.DBGroupCommitMax, 1, 1000),

		envconfig.InRange("REPLAY_BATCH_SIZE", c.ReplayBatchSize, 1, 100_000),
		envconfig.NotNegative("REPLAY_BATCH_INTERVAL", c.ReplayBatchInterval),
		envconfig.InRange("REPLAY_MAX_BYTES", c.ReplayMaxBytes, minReplayFetch, 1<<30),
		envconfig.Positive("NODE_STATUS_INTERVAL", c.StatusInterval),

		envconfig.Positive("STALENESS_BOUND", c.StalenessBound),
		envconfig.NotNegative("CACHE_REVALIDATE_AFTER", c.CacheRevalidateAfter),
		envconfig.Positive("LOG_RECONCILE_INTERVAL", c.LogReconcileInterval),
		envconfig.Positive("HTTP_READ_TIMEOUT", c.HTTPReadTimeout),
		envconfig.Positive("HTTP_WRITE_TIMEOUT", c.HTTPWriteTimeout),
		envconfig.InRange("MAX_CONCURRENT_WRITES", c.MaxConcurrentWrites, 1, 1<<20),
		envconfig.NotNegative("SHUTDOWN_DELAY", c.ShutdownDelay),
		envconfig.NotNegative("TOMBSTONE_RETENTION", c.TombstoneRetention),
	}
	if c.RetryBaseDelay > c.RetryMaxDelay {
		errs = append(errs, errors.New("RETRY_BASE_DELAY: must not exceed RETRY_MAX_DELAY"))
	}
	return errors.Join(errs...)
}
