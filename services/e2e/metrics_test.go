package e2e_test

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/anivault/anivault/pkg/procs"
)

// Every service serves the contract's metrics; the health-monitor and the
// recovery-manager serve /metrics, /healthz and /readyz on ADMIN_ADDR.
// Counters end in _total, the breaker state is one 0/1 series per state,
// HTTP metrics are per route and leave out /metrics and the probes, and the
// figures the alert rules need are there: check latency, monitors and nodes
// heard, replay duration, database latency.
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
	for range 2 {
		if r, err := n1.Get(1); err != nil || r.Code != 200 {
			t.Fatalf("get: %v %d", err, r.Code)
		}
	}

	route := `route="/v1/anime/{tmdb_id}"`
	want := map[string][]string{
		"http://" + monAddr: {`anivault_health_checks_total{result="success"}`, `anivault_mode{mode="cache_only"} 1`,
			`anivault_mode_epoch 1`, `anivault_build_info{go_version=`, `anivault_health_check_duration_seconds_bucket{result="success",le="0.005"}`,
			`anivault_health_checks_total{result="failure"} 0`, `anivault_health_database_up 1`},
		"http://" + mgrAddr: {`anivault_mode_transitions_total{to="cache_only"} 1`, `anivault_mode_transitions_total{to="recovering"} 0`,
			`anivault_mode{mode="cache_only"} 1`, `anivault_mode_epoch 1`, `anivault_build_info{go_version=`,
			`anivault_monitors_live 1`, `anivault_nodes_live 1`, `anivault_monitor_last_report_age_seconds{monitor="monitor"}`},
		n1.URL(): {`anivault_writes_total{outcome="buffered"} 5`, `anivault_writes_total{outcome="failed"} 0`,
			`anivault_buffer_pending_writes`, `anivault_buffer_oldest_pending_age_seconds`, `anivault_buffer_limit_messages 1e+06`,
			`anivault_mode{mode="cache_only"} 1`, `anivault_mode_epoch 1`, `anivault_build_info{go_version=`,
			`anivault_http_requests_total{code="202",method="PUT",` + route + `} 5`,
			`anivault_http_requests_total{code="200",method="GET",` + route + `} 2`,
			`anivault_http_request_duration_seconds_count{method="PUT",` + route + `} 5`,
			`# TYPE anivault_cache_hits_total counter`, `# TYPE anivault_cache_misses_total counter`, `# TYPE anivault_cache_evictions_total counter`,
			`anivault_circuit_breaker_state{state="closed"} 1`, `anivault_circuit_breaker_state{state="open"} 0`,
			`anivault_circuit_breaker_state{state="half_open"} 0`, `anivault_db_retries_total{result="failure"} 0`,
			`anivault_db_operations_total{result="success"}`, `anivault_reads_total{source="replica"}`,
			`anivault_replay_duration_seconds_count 0`},
	}
	// Never: scrapes and probes in the HTTP metrics, the old gauges.
	never := []string{`route="/metrics"`, `route="/healthz"`, `route="/readyz"`, "anivault_cache_hits ", "anivault_circuit_breaker_open"}
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
		body := waitMetrics(t, base, lines...)
		for _, bad := range never {
			if strings.Contains(body, bad) {
				t.Errorf("%s/metrics has %q", base, bad)
			}
		}
	}

	// Replay: its duration is observed, its statements timed.
	s.ExitMaintenance()
	body := waitMetrics(t, n1.URL(), `anivault_replay_duration_seconds_count 1`, `anivault_mode{mode="normal"} 1`)
	if v := metricIn(body, `anivault_replay_applied_total`); v < 1 {
		t.Errorf("anivault_replay_applied_total = %v after replaying 5 writes", v)
	}
	if v := metricIn(body, `anivault_db_query_duration_seconds_count{operation="replay"}`); v < 1 {
		t.Errorf("no replay statement timed: %v", v)
	}
	waitMetrics(t, "http://"+mgrAddr, `anivault_mode_transitions_total{to="recovering"} 1`, `anivault_mode_transitions_total{to="normal"} 1`)
}

// waitMetrics polls base/metrics until it holds every line given, and returns it.
func waitMetrics(t *testing.T, base string, lines ...string) string {
	t.Helper()
	var body string
	if err := procs.Eventually(20*time.Second, 100*time.Millisecond, func() error {
		r, err := do("GET", base+"/metrics", nil)
		if err != nil || r.Code != 200 {
			return fmt.Errorf("%s/metrics: %v %d", base, err, r.Code)
		}
		body = string(r.Body)
		for _, line := range lines {
			if !strings.Contains(body, line) {
				return fmt.Errorf("%s/metrics lacks %q", base, line)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return body
}

// metricIn sums the values of the series of body whose line starts with prefix.
func metricIn(body, prefix string) float64 {
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}
