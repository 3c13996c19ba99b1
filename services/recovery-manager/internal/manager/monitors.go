package manager

import (
	"time"

	"github.com/anivault/anivault/events"
)

// Several health-monitors may run. The manager acts on a majority of the
// monitors it heard from recently: a monitor cut off from PostgreSQL alone
// cannot put the fleet in cache-only mode, and a monitor that died stops
// counting after three of its check intervals. One monitor decides alone,
// as before.

// monitorSeen is what the manager knows of one monitor.
type monitorSeen struct {
	last     time.Time     // when its latest db.health (or transition) arrived
	interval time.Duration // the time between its last two db.health, 0 until known
	status   events.HealthStatus
	// failed is true when the monitor's latest check failed: a monitor whose
	// verdict is still unhealthy while its checks succeed again (it waits for
	// HEALTH_RECOVERY_THRESHOLD successes) does not count as seeing a failure.
	failed bool
	// reported is when the monitor made its latest verdict (its payload's occurred_at).
	reported time.Time
}

// defaultMonitorLife is how long a monitor whose interval is not known yet
// counts as live after it was last heard from.
const defaultMonitorLife = 5 * time.Second

// monitorVotes keeps every monitor's latest verdict.
type monitorVotes map[string]monitorSeen

// heard records a verdict from monitor id, made at reported; failed tells
// whether the check behind it failed.
func (v monitorVotes) heard(id string, status events.HealthStatus, failed bool, reported, now time.Time, isHealth bool) {
	m := v[id]
	if isHealth && !m.last.IsZero() {
		if d := now.Sub(m.last); d > 0 {
			m.interval = d
		}
	}
	m.last, m.status, m.failed, m.reported = now, status, failed, reported
	v[id] = m
}

// failing tells whether more than half of the live monitors declared the
// database unhealthy and saw their latest check fail after since: a fresh
// failure, not a verdict that waits for enough successes to turn.
func (v monitorVotes) failing(since, now time.Time) (yes bool, agree, live int) {
	for _, m := range v.live(now) {
		live++
		if m.status == events.HealthUnhealthy && m.failed && !m.reported.Before(since) {
			agree++
		}
	}
	return live > 0 && 2*agree > live, agree, live
}

// live returns the monitors heard from within three of their intervals.
func (v monitorVotes) live(now time.Time) map[string]monitorSeen {
	out := map[string]monitorSeen{}
	for id, m := range v {
		life := defaultMonitorLife
		if m.interval > 0 {
			life = 3 * m.interval
		}
		if now.Sub(m.last) <= life {
			out[id] = m
		} else if now.Sub(m.last) > 100*life {
			delete(v, id)
		}
	}
	return out
}

// majority tells whether more than half of the live monitors report status
// in a verdict made after since, and gives the counts.
func (v monitorVotes) majority(status events.HealthStatus, since, now time.Time) (yes bool, agree, live int) {
	for _, m := range v.live(now) {
		live++
		if m.status == status && !m.reported.Before(since) {
			agree++
		}
	}
	return live > 0 && 2*agree > live, agree, live
}
