package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/procs"
)

// The status tells how old its health verdict is, and does not pass off an
// old one as current: a verdict older than two check intervals is "stale",
// on status.get and on a node's /v1/status; a restarted manager shows the
// last verdict it can read back (with its age) instead of "unknown". Every
// periodic recovery check is logged as a "Recovery attempt".
func TestStatusAgesTheHealthVerdict(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{PrivatePG: true, AutoRecovery: true, RecoveryCheck: 300 * time.Millisecond})
	n1 := s.StartNode("n1", nil)
	mon := s.StartMonitor(nil)
	s.StartManager(nil)

	// A fresh verdict: healthy, younger than two intervals (200ms each).
	waitHealth(t, s, n1, func(st events.SystemStatus) error {
		if st.HealthStatus != events.HealthHealthy || st.HealthStatusAgeSeconds == nil || *st.HealthStatusAgeSeconds > 0.4 {
			return fmt.Errorf("health %q age %v, want a fresh healthy verdict", st.HealthStatus, age(st))
		}
		return nil
	})

	// During an outage the manager checks the database itself every 300ms
	// and logs each check with the old guide's phrase.
	startOutage(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	if err := s.Manager.WaitOutput(ctx, "Recovery attempt (periodic): database still unavailable"); err != nil {
		t.Errorf("periodic recovery check not logged as a Recovery attempt: %v", err)
	}
	cancel()
	endOutage(t, s)

	// The monitor stops: its last verdict turns stale everywhere.
	if err := mon.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	waitHealth(t, s, n1, func(st events.SystemStatus) error {
		if st.HealthStatus != events.HealthStale || st.HealthStatusAgeSeconds == nil || *st.HealthStatusAgeSeconds < 0.4 {
			return fmt.Errorf("health %q age %v %s after the monitor stopped, want stale", st.HealthStatus, age(st), time.Since(stopped))
		}
		return nil
	})

	// A restarted manager reads the last verdict back: stale, with its age, not unknown.
	if err := s.Manager.Kill(); err != nil {
		t.Fatal(err)
	}
	s.StartManager(nil)
	st, err := s.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.HealthStatus != events.HealthStale || st.HealthStatusAgeSeconds == nil || *st.HealthStatusAgeSeconds < time.Since(stopped).Seconds()-1 {
		t.Errorf("restarted manager: health %q age %v, want the stored verdict, stale, about %s old", st.HealthStatus, age(st), time.Since(stopped).Round(time.Millisecond))
	}

	// The monitor is back: healthy and fresh again.
	s.StartMonitor(nil)
	waitHealth(t, s, n1, func(st events.SystemStatus) error {
		if st.HealthStatus != events.HealthHealthy || st.HealthStatusAgeSeconds == nil || *st.HealthStatusAgeSeconds > 0.4 {
			return fmt.Errorf("health %q age %v, want fresh and healthy", st.HealthStatus, age(st))
		}
		return nil
	})
}

func age(st events.SystemStatus) any {
	if st.HealthStatusAgeSeconds == nil {
		return nil
	}
	return *st.HealthStatusAgeSeconds
}

// waitHealth polls status.get and the node's /v1/status until both satisfy cond.
func waitHealth(t *testing.T, s *System, n *Node, cond func(events.SystemStatus) error) {
	t.Helper()
	err := procs.Eventually(15*time.Second, 50*time.Millisecond, func() error {
		st, err := s.Status()
		if err != nil {
			return err
		}
		if err := cond(st); err != nil {
			return fmt.Errorf("status.get: %w", err)
		}
		r, err := do("GET", n.URL()+"/v1/status", nil)
		if err != nil {
			return err
		}
		var ns events.SystemStatus
		if err := json.Unmarshal(r.Body, &ns); err != nil {
			return err
		}
		if err := cond(ns); err != nil {
			return fmt.Errorf("node %s: %w", n.ID, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
