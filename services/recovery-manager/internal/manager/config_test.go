package manager

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
	// The contract's defaults, and the README's.
	if !c.AutoRecovery || c.RecoveryCheckInterval != 60*time.Second || c.CheckTimeout != 5*time.Second ||
		c.NodeTimeout != 5*time.Second || c.EvalInterval != 250*time.Millisecond || c.AdminAddr != ":9090" ||
		c.Buffer != (topology.BufferLimits{MaxMsgs: 1_000_000, MaxBytes: 1 << 30, Replicas: 1}) || c.NoProvision {
		t.Fatalf("defaults changed: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("the defaults do not validate: %v", err)
	}
}

func TestLoadConfigReportsEveryProblem(t *testing.T) {
	t.Parallel()
	_, err := LoadConfig(envconfig.FromMap(map[string]string{
		"AUTO_RECOVERY_ENABLED": "perhaps", "RECOVERY_CHECK_INTERVAL": "1x", "NODE_TIMEOUT": "0",
		"BUFFER_MAX_BYTES": "1024", "NATS_INBOX_PREFIX": "_INBOX.>",
	}))
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		"configuration: ", `AUTO_RECOVERY_ENABLED: invalid boolean "perhaps"`, "RECOVERY_CHECK_INTERVAL: invalid duration",
		"NODE_TIMEOUT: must be greater than zero", "BUFFER_MAX_BYTES: 1024 is out of range [1048576, 1125899906842624]",
		"NATS_*: NATS_INBOX_PREFIX: ",
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
		mutate   func(*Config)
	}{
		{"NATS_URL", func(c *Config) { c.NATS.URL = "" }},
		{"DATABASE_URL", func(c *Config) { c.DatabaseURL = "" }},
		{"NODE_ID", func(c *Config) { c.NodeID = "" }},
		{"RECOVERY_CHECK_INTERVAL", func(c *Config) { c.RecoveryCheckInterval = 0 }},
		{"HEALTH_CHECK_TIMEOUT", func(c *Config) { c.CheckTimeout = 0 }},
		{"NODE_TIMEOUT", func(c *Config) { c.NodeTimeout = -time.Second }},
		{"MODE_EVAL_INTERVAL", func(c *Config) { c.EvalInterval = 0 }},
		{"BUFFER_MAX_MSGS", func(c *Config) { c.Buffer.MaxMsgs = 0 }},
		{"BUFFER_MAX_BYTES", func(c *Config) { c.Buffer.MaxBytes = 0 }},
		{"BUFFER_REPLICAS", func(c *Config) { c.Buffer.Replicas = 0 }},
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
	c := DefaultConfig()
	c.AdminAddr, c.AutoRecovery = "", false // no admin endpoints; no automatic recovery
	if err := c.Validate(); err != nil {
		t.Fatalf("empty ADMIN_ADDR, no auto recovery: %v", err)
	}
}
