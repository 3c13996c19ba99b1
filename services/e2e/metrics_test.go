package e2e_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/anivault/anivault/pkg/procs"
)

// Every service serves the contract's metrics; the health-monitor and the
// recovery-manager serve /metrics, /healthz and /readyz on ADMIN_ADDR.
func TestEveryServiceServesItsMetrics(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{AutoRecovery: true})
	n1 := s.StartNode("n1", nil)
	monAddr, mgrAddr := freeAddr(t), freeAddr(t)
	s.StartMonitor(map[string]string{"ADMIN_ADDR": monAddr})
	s.StartManager(map[string]string{"ADMIN_ADDR": mgrAddr})
	s.EnterMaintenance("metrics", n1)
	l := newLedger()
	writeAll(t, []*Node{n1}, l, idRange(1, 5), false, "buffered", 202)

	want := map[string][]string{
		"http://" + monAddr: {`anivault_health_checks_total{result="success"}`, `anivault_mode{mode="cache_only"} 1`,
			`anivault_mode_epoch 1`, `anivault_build_info{go_version=`},
		"http://" + mgrAddr: {`anivault_mode_transitions_total{to="cache_only"} 1`, `anivault_mode{mode="cache_only"} 1`,
			`anivault_mode_epoch 1`, `anivault_build_info{go_version=`},
		n1.URL(): {`anivault_writes_total{outcome="buffered"} 5`, `anivault_buffer_pending_writes`, `anivault_buffer_oldest_pending_age_seconds`,
			`anivault_mode{mode="cache_only"} 1`, `anivault_mode_epoch 1`, `anivault_build_info{go_version=`},
	}
	for base, lines := range want {
		for _, path := range []string{"/healthz", "/readyz"} {
			if err := procs.Eventually(20*time.Second, 50*time.Millisecond, func() error {
				r, err := do("GET", base+path, nil)
				if err != nil || r.Code != 200 {
					return fmt.Errorf("%s%s: %v %d %s", base, path, err, r.Code, r.Body)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
		if err := procs.Eventually(20*time.Second, 100*time.Millisecond, func() error {
			r, err := do("GET", base+"/metrics", nil)
			if err != nil || r.Code != 200 {
				return fmt.Errorf("%s/metrics: %v %d", base, err, r.Code)
			}
			for _, line := range lines {
				if !strings.Contains(string(r.Body), line) {
					return fmt.Errorf("%s/metrics lacks %q", base, line)
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}
