package monitor

import (
	"errors"
	"fmt"
	"time"

	"github.com/anivault/anivault/pkg/envconfig"
	"github.com/anivault/anivault/pkg/svckit"
)

// Config is the health-monitor's configuration.
type Config struct {
	// Shared holds the settings every service reads: NATS, DATABASE_URL,
	// NODE_ID, SUBJECT_PREFIX, NATS_PROVISION.
	svckit.Shared
	// Interval is the time between two checks (HEALTH_CHECK_INTERVAL);
	// Timeout bounds one check (HEALTH_CHECK_TIMEOUT).
	Interval time.Duration
	Timeout  time.Duration
	// FailureThreshold consecutive failures declare the database unhealthy
	// (HEALTH_FAILURE_THRESHOLD); RecoveryThreshold consecutive successes
	// declare it recovered (HEALTH_RECOVERY_THRESHOLD).
	FailureThreshold  int
	RecoveryThreshold int
	// AdminAddr (ADMIN_ADDR) serves /metrics, /healthz and /readyz; empty for none.
	AdminAddr string
}

// DefaultConfig returns the health-monitor's defaults, the contract's.
func DefaultConfig() Config {
	return Config{
		Shared:            svckit.DefaultShared(),
		Interval:          30 * time.Second,
		Timeout:           5 * time.Second,
		FailureThreshold:  3,
		RecoveryThreshold: 2,
		AdminAddr:         svckit.DefaultAdminAddr,
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
		Shared:            svckit.LoadShared(r),
		Interval:          r.Duration("HEALTH_CHECK_INTERVAL", def.Interval),
		Timeout:           r.Duration("HEALTH_CHECK_TIMEOUT", def.Timeout),
		FailureThreshold:  int(r.Int("HEALTH_FAILURE_THRESHOLD", int64(def.FailureThreshold), lo, hi)),
		RecoveryThreshold: int(r.Int("HEALTH_RECOVERY_THRESHOLD", int64(def.RecoveryThreshold), lo, hi)),
		AdminAddr:         r.String("ADMIN_ADDR", def.AdminAddr),
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
		envconfig.Positive("HEALTH_CHECK_INTERVAL", c.Interval),
		envconfig.Positive("HEALTH_CHECK_TIMEOUT", c.Timeout),
		envconfig.InRange("HEALTH_FAILURE_THRESHOLD", c.FailureThreshold, 1, 1000),
		envconfig.InRange("HEALTH_RECOVERY_THRESHOLD", c.RecoveryThreshold, 1, 1000),
	)
}
