package node

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/anivault/anivault/pkg/envconfig"
	"github.com/anivault/anivault/pkg/topology"
)

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	c, err := LoadConfig(envconfig.FromMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	if def := DefaultConfig(); !reflect.DeepEqual(c, def) {
		t.Fatalf("LoadConfig with nothing set = %+v, want DefaultConfig %+v", c, def)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("the defaults do not validate: %v", err)
	}
	// The contract's and the README's defaults.
	if c.HTTPAddr != ":8080" || c.CacheMaxSize != 1000 || c.CacheMaxMemoryMB != 100 || c.DBTimeout != 5*time.Second ||
		c.Buffer != (topology.BufferLimits{MaxMsgs: 1_000_000, MaxBytes: 1 << 30, Replicas: 1}) ||
		c.HTTPWriteTimeout != 20*time.Second || c.ReplayMaxBytes != topology.MaxBufferMsgBytes+64<<10 || c.NoProvision {
		t.Fatalf("defaults changed: %+v", c)
	}
}

// DB_TIMEOUT defaults to HEALTH_CHECK_TIMEOUT, HTTP_WRITE_TIMEOUT to the
// database budget plus the buffer's plus 10 s.
func TestConfigDerivedDefaults(t *testing.T) {
	t.Parallel()
	c, err := LoadConfig(envconfig.FromMap(map[string]string{"HEALTH_CHECK_TIMEOUT": "2s", "BUFFER_TIMEOUT": "3s"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.DBTimeout != 2*time.Second || c.HTTPWriteTimeout != 15*time.Second {
		t.Fatalf("DB_TIMEOUT %v, HTTP_WRITE_TIMEOUT %v; want 2s and 15s", c.DBTimeout, c.HTTPWriteTimeout)
	}
}

// Every problem is reported at once, each naming its variable, with the
// Reader's wording whether reading or Validate finds it.
func TestLoadConfigReportsEveryProblem(t *testing.T) {
	t.Parallel()
	_, err := LoadConfig(envconfig.FromMap(map[string]string{
		"CACHE_MAX_SIZE": "lots", "CACHE_MAX_MEMORY_MB": "-1", "STALENESS_BOUND": "0s",
		"HEALTH_CHECK_TIMEOUT": "0", "BUFFER_REPLICAS": "9", "NATS_CERT": "c.pem",
		"RETRY_BASE_DELAY": "2s", "RETRY_MAX_DELAY": "1s",
	}))
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	for _, want := range []string{
		"configuration: ", `CACHE_MAX_SIZE: invalid integer "lots"`, "CACHE_MAX_MEMORY_MB: -1 is out of range [1, 1048576]",
		"STALENESS_BOUND: must be greater than zero", "HEALTH_CHECK_TIMEOUT: must be greater than zero",
		"BUFFER_REPLICAS: 9 is out of range [1, 5]", "NATS_*: NATS_CERT and NATS_KEY: set both or neither",
		"RETRY_BASE_DELAY: must not exceed RETRY_MAX_DELAY",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not say %q:\n%s", want, msg)
		}
	}
	if n := strings.Count(msg, "NATS_CERT"); n != 1 {
		t.Errorf("NATS_CERT reported %d times:\n%s", n, msg)
	}
	// HEALTH_CHECK_TIMEOUT=0 makes DB_TIMEOUT 0 too: reported under both names.
	if !strings.Contains(msg, "DB_TIMEOUT: must be greater than zero") {
		t.Errorf("DB_TIMEOUT taken from HEALTH_CHECK_TIMEOUT=0 not reported:\n%s", msg)
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		variable string
		mutate   func(*Config)
	}{
		{"NATS_URL", func(c *Config) { c.NATS.URL = "" }},
		{"DATABASE_URL", func(c *Config) { c.DatabaseURL = "" }},
		{"HTTP_ADDR", func(c *Config) { c.HTTPAddr = "" }},
		{"NODE_ID", func(c *Config) { c.NodeID = "" }},
		{"CACHE_MAX_SIZE", func(c *Config) { c.CacheMaxSize = 0 }},
		{"CACHE_MAX_MEMORY_MB", func(c *Config) { c.CacheMaxMemoryMB = 1<<20 + 1 }},
		{"DB_TIMEOUT", func(c *Config) { c.DBTimeout = 0 }},
		{"DB_MAX_CONNS", func(c *Config) { c.DBMaxConns = 1001 }},
		{"BREAKER_FAILURE_THRESHOLD", func(c *Config) { c.BreakerFailureThreshold = 0 }},
		{"BREAKER_OPEN_TIMEOUT", func(c *Config) { c.BreakerOpenTimeout = 0 }},
		{"RETRY_MAX_ATTEMPTS", func(c *Config) { c.RetryMaxAttempts = 21 }},
		{"RETRY_BASE_DELAY", func(c *Config) { c.RetryBaseDelay = -time.Millisecond }},
		{"RETRY_BASE_DELAY", func(c *Config) { c.RetryBaseDelay = 2 * c.RetryMaxDelay }},
		{"BUFFER_MAX_MSGS", func(c *Config) { c.Buffer.MaxMsgs = 0 }},
		{"BUFFER_MAX_BYTES", func(c *Config) { c.Buffer.MaxBytes = 1 }},
		{"BUFFER_REPLICAS", func(c *Config) { c.Buffer.Replicas = 6 }},
		{"BUFFER_GROUP_COMMIT_WINDOW", func(c *Config) { c.GroupCommitWindow = -1 }},
		{"BUFFER_GROUP_COMMIT_MAX", func(c *Config) { c.GroupCommitMax = 0 }},
		{"BUFFER_TIMEOUT", func(c *Config) { c.BufferTimeout = 0 }},
		{"DB_GROUP_COMMIT_MAX", func(c *Config) { c.DBGroupCommitMax = 1001 }},
		{"REPLAY_BATCH_SIZE", func(c *Config) { c.ReplayBatchSize = 0 }},
		{"REPLAY_BATCH_INTERVAL", func(c *Config) { c.ReplayBatchInterval = -1 }},
		{"REPLAY_MAX_BYTES", func(c *Config) { c.ReplayMaxBytes = topology.MaxBufferMsgBytes }},
		{"NODE_STATUS_INTERVAL", func(c *Config) { c.StatusInterval = 0 }},
		{"STALENESS_BOUND", func(c *Config) { c.StalenessBound = 0 }},
		{"CACHE_REVALIDATE_AFTER", func(c *Config) { c.CacheRevalidateAfter = -1 }},
		{"LOG_RECONCILE_INTERVAL", func(c *Config) { c.LogReconcileInterval = 0 }},
		{"HTTP_READ_TIMEOUT", func(c *Config) { c.HTTPReadTimeout = 0 }},
		{"HTTP_WRITE_TIMEOUT", func(c *Config) { c.HTTPWriteTimeout = 0 }},
		{"MAX_CONCURRENT_WRITES", func(c *Config) { c.MaxConcurrentWrites = 0 }},
		{"SHUTDOWN_DELAY", func(c *Config) { c.ShutdownDelay = -1 }},
		{"TOMBSTONE_RETENTION", func(c *Config) { c.TombstoneRetention = -1 }},
	}
	for _, tt := range tests {
		t.Run(tt.variable, func(t *testing.T) {
			t.Parallel()
			c := DefaultConfig()
			tt.mutate(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.variable+":") || strings.Contains(err.Error(), "\n") {
				t.Fatalf("Validate() = %v, want one error naming %s", err, tt.variable)
			}
			if _, err := New(c, nil); err == nil {
				t.Fatalf("New accepted a bad %s", tt.variable)
			}
		})
	}
	// Zero means "off" or "the package default" for these.
	c := DefaultConfig()
	c.CacheRevalidateAfter, c.TombstoneRetention, c.ShutdownDelay, c.GroupCommitWindow, c.ReplayBatchInterval = 0, 0, 0, 0, 0
	c.RetryBaseDelay, c.RetryMaxDelay = 0, 0
	if err := c.Validate(); err != nil {
		t.Fatalf("zeros that mean off: %v", err)
	}
}
