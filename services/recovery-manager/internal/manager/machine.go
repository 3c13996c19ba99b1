package manager

import (
	"time"

	"github.com/anivault/anivault/events"
)

// The mode state machine, pure: each function takes the current mode and
// returns the next one and whether it changed. Every change increases the
// epoch by one. Counters travel with the mode, so a compare-and-swap moves both.

func counters(cur events.ModeChanged) events.ManagerCounters {
	if cur.Counters == nil {
		return events.ManagerCounters{}
	}
	return *cur.Counters
}

func advance(cur events.ModeChanged, mode events.Mode, reason string, manual bool, c events.ManagerCounters, now time.Time) events.ModeChanged {
	return events.ModeChanged{
		Mode: mode, Epoch: cur.Epoch + 1, Reason: reason, Since: now.UTC(), Manual: manual, Counters: &c,
	}
}

// OnUnhealthy: the database was declared unhealthy.
func OnUnhealthy(cur events.ModeChanged, reason string, now time.Time) (events.ModeChanged, bool) {
	if cur.Mode == events.ModeCacheOnly {
		return cur, false
	}
	c := counters(cur)
	if !c.InOutage {
		c.TotalFailures++
		t := now.UTC()
		c.LastFailureTime = &t
		c.InOutage = true
	}
	return advance(cur, events.ModeCacheOnly, "database unhealthy: "+reason, false, c, now), true
}

// OnRecovered: the database is healthy again (db.recovered, or the manager's
// own periodic check). Only automatic recovery from an automatic cache-only mode.
func OnRecovered(cur events.ModeChanged, autoRecovery bool, now time.Time) (events.ModeChanged, bool) {
	if cur.Mode != events.ModeCacheOnly || cur.Manual || !autoRecovery {
		return cur, false
	}
	c := counters(cur)
	c.RecoveryAttempts++
	return advance(cur, events.ModeRecovering, "database recovered", false, c, now), true
}

// OnForce: an operator asked to recover; healthy is the result of a check made now.
// It reports whether recovery was attempted (the mode was not normal).
func OnForce(cur events.ModeChanged, healthy bool, now time.Time) (next events.ModeChanged, changed, attempted bool) {
	if cur.Mode == events.ModeNormal {
		return cur, false, false
	}
	c := counters(cur)
	c.RecoveryAttempts++
	if !healthy || cur.Mode != events.ModeCacheOnly {
		// Count the attempt without changing the mode.
		next = cur
		next.Counters = &c
		return next, true, true
	}
	return advance(cur, events.ModeRecovering, "recovery forced by operator", false, c, now), true, true
}

// OnEnterCacheOnly: planned maintenance. Not an outage: no failure is counted.
func OnEnterCacheOnly(cur events.ModeChanged, reason string, now time.Time) (events.ModeChanged, bool) {
	if cur.Mode == events.ModeCacheOnly {
		if cur.Manual {
			return cur, false
		}
		// Pin an automatic cache-only mode: from now on only the operator ends it.
		next := advance(cur, events.ModeCacheOnly, reason, true, counters(cur), now)
		return next, true
	}
	return advance(cur, events.ModeCacheOnly, reason, true, counters(cur), now), true
}

// OnExitCacheOnly: the operator ends cache-only mode; it goes through recovering.
func OnExitCacheOnly(cur events.ModeChanged, now time.Time) (events.ModeChanged, bool) {
	if cur.Mode != events.ModeCacheOnly {
		return cur, false
	}
	return advance(cur, events.ModeRecovering, "cache-only mode exited by operator", false, counters(cur), now), true
}

// OnReplayDone: every live node replayed for the recovering epoch and the buffer is empty.
func OnReplayDone(cur events.ModeChanged, epoch int64, now time.Time) (events.ModeChanged, bool) {
	if cur.Mode != events.ModeRecovering || cur.Epoch != epoch {
		return cur, false
	}
	c := counters(cur)
	if c.InOutage {
		c.TotalRecoveries++
		t := now.UTC()
		c.LastRecoveryTime = &t
		c.InOutage = false
	}
	return advance(cur, events.ModeNormal, "", false, c, now), true
}
