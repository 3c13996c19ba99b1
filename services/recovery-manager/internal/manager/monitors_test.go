package manager

import (
	"testing"
	"time"

	"github.com/anivault/anivault/events"
)

func TestMonitorVotes(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	v := monitorVotes{}
	// Three monitors checking every 200 ms, all healthy.
	for i := range 3 {
		for _, id := range []string{"a", "b", "c"} {
			v.heard(id, events.HealthHealthy, false, at(i*200), at(i*200), true)
		}
	}
	if yes, agree, live := v.majority(events.HealthHealthy, time.Time{}, at(450)); !yes || agree != 3 || live != 3 {
		t.Fatalf("all healthy: %v %d of %d", yes, agree, live)
	}
	// One cut off from the database: a minority.
	v.heard("c", events.HealthUnhealthy, true, at(600), at(600), true)
	if yes, agree, live := v.majority(events.HealthUnhealthy, time.Time{}, at(650)); yes || agree != 1 || live != 3 {
		t.Fatalf("one of three unhealthy is not a majority: %v %d of %d", yes, agree, live)
	}
	// A second one agrees: a majority.
	v.heard("b", events.HealthUnhealthy, true, at(620), at(620), false)
	if yes, _, _ := v.majority(events.HealthUnhealthy, time.Time{}, at(650)); !yes {
		t.Fatal("two of three unhealthy is a majority")
	}
	// A verdict made before since does not count.
	if yes, _, _ := v.majority(events.HealthUnhealthy, at(610), at(650)); yes {
		t.Fatal("c's verdict predates since, so only b agrees")
	}
	// a dies: after three of its intervals it no longer counts, and b and c
	// are the whole electorate.
	v.heard("b", events.HealthUnhealthy, true, at(800), at(800), true)
	v.heard("c", events.HealthUnhealthy, true, at(800), at(800), true)
	if live := len(v.live(at(1000))); live != 3 {
		t.Fatalf("a is still live within three intervals: %d live", live)
	}
	if live := len(v.live(at(1050))); live != 2 {
		t.Fatalf("a is not live after three intervals: %d live", live)
	}
	// A verdict still unhealthy while the checks succeed again (waiting for
	// the recovery threshold) is no fresh failure: chaos seed 82 went back
	// to cache-only on one during a recovery the manager's own check began.
	w := monitorVotes{}
	w.heard("m", events.HealthUnhealthy, false, at(100), at(100), true)
	if yes, _, _ := w.failing(at(50), at(110)); yes {
		t.Fatal("a successful check under an unhealthy verdict counted as a failure")
	}
	w.heard("m", events.HealthUnhealthy, true, at(300), at(300), true)
	if yes, _, _ := w.failing(at(50), at(310)); !yes {
		t.Fatal("a failed check under an unhealthy verdict is a failure")
	}
	// One monitor alone decides.
	one := monitorVotes{}
	one.heard("x", events.HealthUnhealthy, true, at(0), at(0), false)
	if yes, agree, live := one.majority(events.HealthUnhealthy, time.Time{}, at(10)); !yes || agree != 1 || live != 1 {
		t.Fatalf("a single monitor: %v %d of %d", yes, agree, live)
	}
}
