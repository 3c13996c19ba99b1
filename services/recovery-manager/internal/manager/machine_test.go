package manager

import (
	"testing"
	"time"

	"github.com/anivault/anivault/events"
)

func TestMachineOneOutage(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	m := events.ModeChanged{Mode: events.ModeNormal}
	var ok bool
	expect := func(want events.Mode) func(events.ModeChanged, bool) events.ModeChanged {
		return func(next events.ModeChanged, changed bool) events.ModeChanged {
			t.Helper()
			if !changed || next.Mode != want {
				t.Fatalf("got %s changed=%v, want %s", next.Mode, changed, want)
			}
			return next
		}
	}
	m = expect(events.ModeCacheOnly)(OnUnhealthy(m, "x", now))
	if _, ok = OnUnhealthy(m, "again", now); ok {
		t.Fatal("a second db.unhealthy changed the mode")
	}
	if m.Epoch != 1 || counters(m).TotalFailures != 1 {
		t.Fatalf("after failure: %+v %+v", m, counters(m))
	}
	m = expect(events.ModeRecovering)(OnRecovered(m, true, now))
	// The database fails again during replay: back to cache-only, same outage.
	m = expect(events.ModeCacheOnly)(OnUnhealthy(m, "during replay", now))
	m = expect(events.ModeRecovering)(OnRecovered(m, true, now))
	if _, ok = OnReplayDone(m, m.Epoch-1, now); ok {
		t.Fatal("replay of an older epoch finished the recovery")
	}
	m = expect(events.ModeNormal)(OnReplayDone(m, m.Epoch, now))
	c := counters(m)
	if m.Epoch != 5 || c.TotalFailures != 1 || c.TotalRecoveries != 1 || c.RecoveryAttempts != 2 || c.InOutage {
		t.Fatalf("after recovery: epoch %d %+v", m.Epoch, c)
	}
}

func TestMachineManualAndForce(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		run  func(t *testing.T)
	}{
		{name: "auto recovery never ends maintenance", run: func(t *testing.T) {
			m, _ := OnEnterCacheOnly(events.ModeChanged{Mode: events.ModeNormal}, "maintenance", now)
			if !m.Manual || m.Mode != events.ModeCacheOnly {
				t.Fatalf("%+v", m)
			}
			if _, ok := OnRecovered(m, true, now); ok {
				t.Fatal("automatic recovery ended maintenance")
			}
			next, ok := OnExitCacheOnly(m, now)
			if !ok || next.Mode != events.ModeRecovering || next.Epoch != m.Epoch+1 {
				t.Fatalf("exit: %+v", next)
			}
			done, _ := OnReplayDone(next, next.Epoch, now)
			if c := counters(done); c.TotalFailures != 0 || c.TotalRecoveries != 0 {
				t.Fatalf("maintenance counted as an outage: %+v", c)
			}
		}},
		{name: "force while unhealthy counts the attempt only", run: func(t *testing.T) {
			m, _ := OnUnhealthy(events.ModeChanged{Mode: events.ModeNormal}, "x", now)
			next, changed, attempted := OnForce(m, false, now)
			if !changed || !attempted || next.Mode != events.ModeCacheOnly || next.Epoch != m.Epoch || counters(next).RecoveryAttempts != 1 {
				t.Fatalf("%+v changed=%v attempted=%v", next, changed, attempted)
			}
		}},
		{name: "force when healthy recovers, even from maintenance", run: func(t *testing.T) {
			m, _ := OnEnterCacheOnly(events.ModeChanged{Mode: events.ModeNormal}, "m", now)
			next, _, attempted := OnForce(m, true, now)
			if !attempted || next.Mode != events.ModeRecovering || next.Manual {
				t.Fatalf("%+v", next)
			}
		}},
		{name: "force in normal mode attempts nothing", run: func(t *testing.T) {
			_, changed, attempted := OnForce(events.ModeChanged{Mode: events.ModeNormal}, true, now)
			if changed || attempted {
				t.Fatal("force in normal mode did something")
			}
		}},
		{name: "auto recovery off", run: func(t *testing.T) {
			m, _ := OnUnhealthy(events.ModeChanged{Mode: events.ModeNormal}, "x", now)
			if _, ok := OnRecovered(m, false, now); ok {
				t.Fatal("recovered with auto recovery off")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.run(t)
		})
	}
}
