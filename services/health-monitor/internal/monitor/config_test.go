package monitor_test

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/anivault/anivault/pkg/envconfig"
	"github.com/anivault/anivault/services/health-monitor/internal/monitor"
)

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	c, err := monitor.LoadConfig(envconfig.FromMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	if def := monitor.DefaultConfig(); !reflect.DeepEqual(c, def) {
		t.Fatalf("LoadConfig with nothing set = %+v, want DefaultConfig %+v", c, def)
	}
	// The contract's defaults.
	if c.Interval != 30*time.Second || c.Timeout != 5*time.Second || c.FailureThreshold != 3 ||
		c.RecoveryThreshold != 2 || c.AdminAddr != ":9090" || c.SubjectPrefix != "" || c.NoProvision {
		t.Fatalf("defaults changed: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("the defaults do not validate: %v", err)
	}
}

func TestLoadConfigReportsEveryProblem(t *testing.T) {
	t.Parallel()
	_, err := monitor.LoadConfig(envconfig.FromMap(map[string]string{
		"HEALTH_CHECK_INTERVAL": "-5s", "HEALTH_CHECK_TIMEOUT": "0", "HEALTH_FAILURE_THRESHOLD": "0",
		"HEALTH_RECOVERY_THRESHOLD": "x", "NATS_PASSWORD": "p",
	}))
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		"configuration: ", "HEALTH_CHECK_INTERVAL: invalid duration", "HEALTH_CHECK_TIMEOUT: must be greater than zero",
		"HEALTH_FAILURE_THRESHOLD: 0 is out of range [1, 1000]", `HEALTH_RECOVERY_THRESHOLD: invalid integer "x"`,
		"NATS_*: NATS_PASSWORD: set NATS_USER too",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		variable string
		mutate   func(*monitor.Config)
	}{
		{"NATS_URL", func(c *monitor.Config) { c.NATS.URL = "" }},
		{"DATABASE_URL", func(c *monitor.Config) { c.DatabaseURL = "" }},
		{"NODE_ID", func(c *monitor.Config) { c.NodeID = "" }},
		{"HEALTH_CHECK_INTERVAL", func(c *monitor.Config) { c.Interval = 0 }},
		{"HEALTH_CHECK_TIMEOUT", func(c *monitor.Config) { c.Timeout = -time.Second }},
		{"HEALTH_FAILURE_THRESHOLD", func(c *monitor.Config) { c.FailureThreshold = 0 }},
		{"HEALTH_RECOVERY_THRESHOLD", func(c *monitor.Config) { c.RecoveryThreshold = 1001 }},
	}
	for _, tt := range tests {
		t.Run(tt.variable, func(t *testing.T) {
			t.Parallel()
			c := monitor.DefaultConfig()
			tt.mutate(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.variable+":") || strings.Contains(err.Error(), "\n") {
				t.Fatalf("Validate() = %v, want one error naming %s", err, tt.variable)
			}
			if _, err := monitor.New(c, nil); err == nil {
				t.Fatalf("New accepted a bad %s", tt.variable)
			}
		})
	}
	c := monitor.DefaultConfig()
	c.AdminAddr = "" // serves no admin endpoints
	if err := c.Validate(); err != nil {
		t.Fatalf("empty ADMIN_ADDR: %v", err)
	}
}
