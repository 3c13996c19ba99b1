package e2e_test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anivault/anivault/pkg/procs"
)

// A bad configuration value stops every service at start with a message naming the variable.
func TestBadConfigurationStopsTheProcess(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, bin, variable, value string
	}{
		{"cache size", "cache-node", "CACHE_MAX_SIZE", "lots"},
		{"cache memory", "cache-node", "CACHE_MAX_MEMORY_MB", "-1"},
		{"db timeout", "cache-node", "DB_TIMEOUT", "soon"},
		{"interval", "health-monitor", "HEALTH_CHECK_INTERVAL", "-5s"},
		{"threshold", "health-monitor", "HEALTH_FAILURE_THRESHOLD", "0"},
		{"auto recovery", "recovery-manager", "AUTO_RECOVERY_ENABLED", "perhaps"},
		{"recovery interval", "recovery-manager", "RECOVERY_CHECK_INTERVAL", "1x"},
		{"log level", "recovery-manager", "LOG_LEVEL", "loud"},
		{"missing tokens file", "cache-node", "HTTP_AUTH_TOKENS_FILE", "/nonexistent/tokens"},
		{"staleness bound", "cache-node", "STALENESS_BOUND", "0s"},
		{"shutdown delay", "cache-node", "SHUTDOWN_DELAY", "-1s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := procs.New(tt.bin, filepath.Join(binDir, tt.bin), filepath.Join(t.TempDir(), "log"), map[string]string{
				tt.variable: tt.value, "NATS_URL": "nats://127.0.0.1:1", "HTTP_ADDR": "127.0.0.1:0",
			})
			if err := p.Start(); err != nil {
				t.Fatal(err)
			}
			if err := procs.Eventually(20*time.Second, 20*time.Millisecond, func() error {
				if p.Running() {
					return errStillRunning
				}
				return nil
			}); err != nil {
				_ = p.Kill()
				t.Fatalf("%s=%s did not stop %s: %v", tt.variable, tt.value, tt.bin, err)
			}
			if p.ExitErr() == nil {
				t.Fatalf("%s exited 0 with %s=%s", tt.bin, tt.variable, tt.value)
			}
			if !strings.Contains(p.Output(), tt.variable) {
				t.Fatalf("message does not name %s:\n%s", tt.variable, p.Output())
			}
		})
	}
}

type stillRunning struct{}

func (stillRunning) Error() string { return "still running" }

var errStillRunning error = stillRunning{}
