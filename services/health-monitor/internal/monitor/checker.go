package monitor

import (
	"time"

	"github.com/anivault/anivault/events"
)

// Transition is what a check result changed.
type Transition int

// Transitions of the health status.
const (
	NoTransition Transition = iota
	// BecameUnhealthy: consecutive failures reached the failure threshold.
	BecameUnhealthy
	// BecameHealthy: consecutive successes reached the recovery threshold from unknown.
	BecameHealthy
	// Recovered: consecutive successes reached the recovery threshold after unhealthy.
	Recovered
)

// Checker is the pure health state machine: thresholds and statistics, no I/O.
// The first checks do not skip the thresholds: the status stays unknown until
// one of them is reached.
type Checker struct {
	failureThreshold, recoveryThreshold int64
	stats                               events.HealthStatistics
	unhealthySince                      time.Time
	lastError                           string
}

// NewChecker returns a Checker in status unknown.
func NewChecker(failureThreshold, recoveryThreshold int) *Checker {
	return &Checker{
		failureThreshold:  int64(max(failureThreshold, 1)),
		recoveryThreshold: int64(max(recoveryThreshold, 1)),
		stats:             events.HealthStatistics{CurrentStatus: events.HealthUnknown, IsMonitoring: true, SuccessRate: 0},
	}
}

// Record applies one check result taken at `at` and reports the transition.
func (c *Checker) Record(ok bool, errText string, at time.Time) Transition {
	s := &c.stats
	t := at.UTC()
	s.TotalChecks++
	s.LastCheckTime = &t
	if ok {
		s.SuccessfulChecks++
		s.ConsecutiveSuccesses++
		s.ConsecutiveFailures = 0
		s.LastSuccessTime = &t
	} else {
		s.FailedChecks++
		s.ConsecutiveFailures++
		s.ConsecutiveSuccesses = 0
		s.LastFailureTime = &t
		c.lastError = errText
	}
	s.SuccessRate = float64(s.SuccessfulChecks) / float64(s.TotalChecks)

	switch {
	case !ok && s.CurrentStatus != events.HealthUnhealthy && s.ConsecutiveFailures >= c.failureThreshold:
		s.CurrentStatus = events.HealthUnhealthy
		c.unhealthySince = t
		return BecameUnhealthy
	case ok && s.CurrentStatus == events.HealthUnhealthy && s.ConsecutiveSuccesses >= c.recoveryThreshold:
		s.CurrentStatus = events.HealthHealthy
		return Recovered
	case ok && s.CurrentStatus == events.HealthUnknown && s.ConsecutiveSuccesses >= c.recoveryThreshold:
		s.CurrentStatus = events.HealthHealthy
		return BecameHealthy
	}
	return NoTransition
}

// Stats returns a copy of the statistics.
func (c *Checker) Stats() events.HealthStatistics { return c.stats }

// LastError is the error of the latest failed check.
func (c *Checker) LastError() string { return c.lastError }

// Downtime is how long the database has been unhealthy, measured from the
// check that declared it, as of at.
func (c *Checker) Downtime(at time.Time) time.Duration {
	if c.unhealthySince.IsZero() {
		return 0
	}
	return at.Sub(c.unhealthySince)
}

// SetMonitoring records whether the monitor is running.
func (c *Checker) SetMonitoring(on bool) { c.stats.IsMonitoring = on }
