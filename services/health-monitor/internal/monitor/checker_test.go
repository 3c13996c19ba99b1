package monitor_test

import (
	"testing"
	"time"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/services/health-monitor/internal/monitor"
)

func TestCheckerThresholds(t *testing.T) {
	t.Parallel()
	type step struct {
		ok   bool
		want monitor.Transition
		st   events.HealthStatus
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{name: "first failures do not skip the threshold", steps: []step{
			{false, monitor.NoTransition, events.HealthUnknown},
			{false, monitor.NoTransition, events.HealthUnknown},
			{false, monitor.BecameUnhealthy, events.HealthUnhealthy},
			{false, monitor.NoTransition, events.HealthUnhealthy},
		}},
		{name: "first success does not skip the threshold", steps: []step{
			{true, monitor.NoTransition, events.HealthUnknown},
			{true, monitor.BecameHealthy, events.HealthHealthy},
			{true, monitor.NoTransition, events.HealthHealthy},
		}},
		{name: "recovery needs consecutive successes", steps: []step{
			{true, monitor.NoTransition, events.HealthUnknown},
			{true, monitor.BecameHealthy, events.HealthHealthy},
			{false, monitor.NoTransition, events.HealthHealthy},
			{false, monitor.NoTransition, events.HealthHealthy},
			{true, monitor.NoTransition, events.HealthHealthy}, // resets the failure streak
			{false, monitor.NoTransition, events.HealthHealthy},
			{false, monitor.NoTransition, events.HealthHealthy},
			{false, monitor.BecameUnhealthy, events.HealthUnhealthy},
			{true, monitor.NoTransition, events.HealthUnhealthy},
			{false, monitor.NoTransition, events.HealthUnhealthy},
			{true, monitor.NoTransition, events.HealthUnhealthy},
			{true, monitor.Recovered, events.HealthHealthy},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := monitor.NewChecker(3, 2)
			at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			for i, s := range tt.steps {
				at = at.Add(time.Second)
				got := c.Record(s.ok, "boom", at)
				if got != s.want || c.Stats().CurrentStatus != s.st {
					t.Fatalf("step %d: got %v %s, want %v %s", i, got, c.Stats().CurrentStatus, s.want, s.st)
				}
			}
			st := c.Stats()
			if st.TotalChecks != int64(len(tt.steps)) || st.SuccessfulChecks+st.FailedChecks != st.TotalChecks {
				t.Fatalf("counts: %+v", st)
			}
			if want := float64(st.SuccessfulChecks) / float64(st.TotalChecks); st.SuccessRate != want {
				t.Fatalf("success rate %v want %v", st.SuccessRate, want)
			}
		})
	}
}

func TestCheckerDowntime(t *testing.T) {
	t.Parallel()
	c := monitor.NewChecker(1, 1)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if c.Record(false, "refused", t0) != monitor.BecameUnhealthy {
		t.Fatal("threshold 1 should declare unhealthy at once")
	}
	if c.LastError() != "refused" {
		t.Fatalf("last error %q", c.LastError())
	}
	if c.Record(true, "", t0.Add(90*time.Second)) != monitor.Recovered {
		t.Fatal("want recovered")
	}
	if d := c.Downtime(t0.Add(90 * time.Second)); d != 90*time.Second {
		t.Fatalf("downtime %v", d)
	}
}
