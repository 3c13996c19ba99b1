package manager

import (
	"math"
	"testing"
	"time"

	"github.com/anivault/anivault/events"
)

// The system's retry success rate is successes per operation over all nodes.
// A node that retried a lot (many attempts per operation) must not weigh
// more than its operations: weighting the nodes' rates by their attempts
// gave (0.5*300 + 1*10) / 310 = 0.516 here instead of 60/110 = 0.545.
func TestSumRetriesWeighsNodesByOperations(t *testing.T) {
	t.Parallel()
	got := sumRetries([]events.RetryStatistics{
		{TotalAttempts: 300, SuccessfulRetries: 20, FailedAfterRetries: 50, Operations: 100, Successes: 50, SuccessRate: 0.5},
		{TotalAttempts: 10, Operations: 10, Successes: 10, SuccessRate: 1},
	})
	if want := 60.0 / 110.0; math.Abs(got.SuccessRate-want) > 1e-9 {
		t.Errorf("success rate %.4f, want %.4f", got.SuccessRate, want)
	}
	if got.TotalAttempts != 310 || got.Operations != 110 || got.Successes != 60 || got.SuccessfulRetries != 20 || got.FailedAfterRetries != 50 {
		t.Errorf("sums: %+v", got)
	}
	if r := sumRetries(nil); r.SuccessRate != 1 {
		t.Errorf("no operations: rate %v, want 1 (as each node reports before any)", r.SuccessRate)
	}
}

// A health report turns stale after two of its monitor's intervals; a report
// without an interval is judged by the contract's default 30s.
func TestHealthReportAges(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	h := events.DBHealth{Status: events.HealthHealthy, IntervalSeconds: 1}
	for _, tt := range []struct {
		after time.Duration
		want  events.HealthStatus
	}{{0, events.HealthHealthy}, {1900 * time.Millisecond, events.HealthHealthy}, {2100 * time.Millisecond, events.HealthStale}} {
		if got, age := h.Aged(at, at.Add(tt.after)); got != tt.want || math.Abs(age-tt.after.Seconds()) > 1e-9 {
			t.Errorf("after %s: %s (age %v), want %s", tt.after, got, age, tt.want)
		}
	}
	old := events.DBHealth{Status: events.HealthUnhealthy}
	if got, _ := old.Aged(at, at.Add(59*time.Second)); got != events.HealthUnhealthy {
		t.Errorf("no interval, 59s: %s, want unhealthy", got)
	}
	if got, _ := old.Aged(at, at.Add(61*time.Second)); got != events.HealthStale {
		t.Errorf("no interval, 61s: %s, want stale", got)
	}
}
