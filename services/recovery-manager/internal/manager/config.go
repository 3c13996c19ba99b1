package manager

import (
	"errors"
	"fmt"
	"time"

	"github.com/anivault/anivault/pkg/envconfig"
	"github.com/anivault/anivault/pkg/svckit"
	"github.com/anivault/anivault/pkg/topology"
)

// Config is the recovery-manager's configuration.
type Config struct {
	// Shared holds the settings every service reads: NATS, DATABASE_URL,
	// NODE_ID, SUBJECT_PREFIX, NATS_PROVISION.
	svckit.Shared
	// AutoRecovery (AUTO_RECOVERY_ENABLED) lets the manager leave an
	// automatic cache-only mode by itself once the database is back.
	AutoRecovery bool
	// RecoveryCheckInterval (RECOVERY_CHECK_INTERVAL) is how often the
	// manager checks the database itself while in automatic cache-only mode.
	RecoveryCheckInterval time.Duration
	// CheckTimeout (HEALTH_CHECK_TIMEOUT) bounds one such check.
	CheckTimeout time.Duration
	// NodeTimeout (NODE_TIMEOUT) is how long a node counts as live after its
	// last node.status.
	NodeTimeout time.Duration
	// EvalInterval (MODE_EVAL_INTERVAL) is how often the manager weighs the
	// monitors' verdicts and the nodes' replay.
	EvalInterval time.Duration
	// Buffer (BUFFER_MAX_MSGS, BUFFER_MAX_BYTES, BUFFER_REPLICAS) limits
	// the write streams the manager makes when they are missing.
	Buffer topology.BufferLimits
	// AdminAddr (ADMIN_ADDR) serves /metrics, /healthz and /readyz; empty for none.
	AdminAddr string
}

// DefaultConfig returns the recovery-manager's defaults, the contract's.
func DefaultConfig() Config {
	return Config{
		Shared:                svckit.DefaultShared(),
		AutoRecovery:          true,
		RecoveryCheckInterval: 60 * time.Second,
		CheckTimeout:          5 * time.Second,
		NodeTimeout:           5 * time.Second,
		EvalInterval:          250 * time.Millisecond,
		Buffer:                topology.DefaultBufferLimits(),
		AdminAddr:             svckit.DefaultAdminAddr,
	}
}

// LoadConfig reads the environment through r: every variable unset takes
// its DefaultConfig value, and every problem, whether reading or Validate
// finds it, is reported at once, each naming its variable.
func LoadConfig(r *envconfig.Reader) (Config, error) {
	def := DefaultConfig()
	// Integers are read whole and their ranges checked by Validate.
	lo, hi := envconfig.IntMin, envconfig.IntMax
	c := Config{
		Shared:                svckit.LoadShared(r),
		AutoRecovery:          r.Bool("AUTO_RECOVERY_ENABLED", def.AutoRecovery),
		RecoveryCheckInterval: r.Duration("RECOVERY_CHECK_INTERVAL", def.RecoveryCheckInterval),
		CheckTimeout:          r.Duration("HEALTH_CHECK_TIMEOUT", def.CheckTimeout),
		NodeTimeout:           r.Duration("NODE_TIMEOUT", def.NodeTimeout),
		EvalInterval:          r.Duration("MODE_EVAL_INTERVAL", def.EvalInterval),
		AdminAddr:             r.String("ADMIN_ADDR", def.AdminAddr),
		// BUFFER_* are read here, not in svckit: see svckit.Shared.
		Buffer: topology.BufferLimits{
			MaxMsgs:  r.Int("BUFFER_MAX_MSGS", def.Buffer.MaxMsgs, lo, hi),
			MaxBytes: r.Int("BUFFER_MAX_BYTES", def.Buffer.MaxBytes, lo, hi),
			Replicas: int(r.Int("BUFFER_REPLICAS", int64(def.Buffer.Replicas), lo, hi)),
		},
	}
	r.Check(c.Validate())
	if err := r.Err(); err != nil {
		return Config{}, fmt.Errorf("configuration: %w", err)
	}
	return c, nil
}

// Validate reports every setting out of its range, each naming its
// variable, all at once. An empty AdminAddr is valid: it serves nothing.
func (c Config) Validate() error {
	return errors.Join(
		c.Shared.Validate(),
		envconfig.Positive("RECOVERY_CHECK_INTERVAL", c.RecoveryCheckInterval),
		envconfig.Positive("HEALTH_CHECK_TIMEOUT", c.CheckTimeout),
		envconfig.Positive("NODE_TIMEOUT", c.NodeTimeout),
		envconfig.Positive("MODE_EVAL_INTERVAL", c.EvalInterval),
		c.Buffer.Validate(),
	)
}
