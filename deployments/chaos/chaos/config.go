// Package chaos runs seeded, randomized fault schedules against a whole
// AniVault (embedded NATS with JetStream, a private PostgreSQL reached through
// an in-process toxiproxy, a health-monitor, a recovery-manager and several
// cache-nodes as OS processes) while HTTP writers and JetStream producers
// write overlapping keys, then heals everything, waits for the system to
// drain, and checks Jepsen-style that no acknowledged write was lost, that
// every key ends in its last acknowledged state, that no delete was undone,
// that the nodes converged, that the write buffer's accounting holds, that
// the recovery-manager's counters agree with the outages injected, that no
// read served a version older than a write acknowledged more than the
// staleness bound before it, and that after the drain every node serves
// exactly the table.
//
// A schedule is generated up front from its seed alone (math/rand/v2 PCG),
// printed before it runs, and replays exactly from that seed.
package chaos

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"time"
)

// Config shapes a chaos run.
type Config struct {
	// Seed of the first schedule; schedule i runs with Seed+i.
	Seed uint64
	// Schedules is the number of schedules to run.
	Schedules int
	// Duration of the load (and of the fault schedule) of one schedule.
	Duration time.Duration
	// Nodes is the number of cache-nodes.
	Nodes int
	// NATSCluster is the number of NATS servers: 0 or 1 runs one server; 3
	// to 5 run a cluster (natsembed.StartCluster, fsync on every ack), give
	// the services every server's URL in NATS_URL and BUFFER_REPLICAS=N (every
	// stream and the KV bucket replicated N ways), and add the
	// nats_server_kill fault to the schedules.
	NATSCluster int
	// ModuleDir is the repository root, for go build ("." by default).
	ModuleDir string
	// Dir holds one working directory per schedule (binaries, NATS store,
	// service logs under <dir>/seed-N/logs). Kept for failed schedules.
	Dir string
	// KeepDirs keeps the working directories of passing schedules too.
	KeepDirs bool
	// Report is the JSON report's path (JSONReport), rewritten atomically
	// before the first schedule and after every one; <Dir>/report.json by
	// default.
	Report string
	// Out receives progress lines (nil: discarded).
	Out io.Writer
	// Quiet prints only the schedule and its verdict, not every event.
	Quiet bool

	// HTTPWriters, Producers and Readers are the concurrent clients.
	HTTPWriters, Producers, Readers int
	// Pause between two requests of one client.
	Pause time.Duration

	// MinFault and MaxFault bound a database fault's duration; MinGap and
	// MaxGap the quiet time between two database faults.
	MinFault, MaxFault, MinGap, MaxGap time.Duration
	// ProcessFaults per schedule (0: one per 10 s, at least 2).
	ProcessFaults int

	// Service settings the checkers' time bounds depend on.
	HealthInterval   time.Duration // HEALTH_CHECK_INTERVAL
	HealthTimeout    time.Duration // HEALTH_CHECK_TIMEOUT
	FailureThreshold int           // HEALTH_FAILURE_THRESHOLD
	// StalenessBound (STALENESS_BOUND, 5s by default) is how long after a
	// write is acknowledged a node may still serve an older version of its
	// record. The services get it and the read checkers judge with it; a
	// STALENESS_BOUND in Env sets it when the field is zero.
	StalenessBound time.Duration
	// Env is added to (and overrides) every service's environment.
	Env map[string]string
	// LogLevel of the services (LOG_LEVEL).
	LogLevel string

	// PGMaxConnections, when > 0, raises PostgreSQL's max_connections (200
	// in pgembed) before the services start: a workaround that keeps a
	// service's connection leak from turning into "too many clients" outages
	// so that the other checkers can still be exercised. The connection-leak
	// checker runs either way.
	PGMaxConnections int

	// Strict makes advisory checkers fail the schedule too.
	Strict bool

	// DrainTimeout bounds the wait for the healed system to drain.
	DrainTimeout time.Duration
}

// Defaults fills the zero fields.
func (c *Config) Defaults() {
	if c.Schedules <= 0 {
		c.Schedules = 1
	}
	if c.Duration <= 0 {
		c.Duration = 60 * time.Second
	}
	if c.Nodes <= 0 {
		c.Nodes = 3
	}
	if c.ModuleDir == "" {
		c.ModuleDir = "."
	}
	if c.Dir == "" {
		c.Dir = ".anivault/chaos"
	}
	if c.Report == "" {
		c.Report = filepath.Join(c.Dir, "report.json")
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	if c.HTTPWriters <= 0 {
		c.HTTPWriters = 4
	}
	if c.Producers <= 0 {
		c.Producers = 2
	}
	if c.Readers < 0 {
		c.Readers = 0
	}
	if c.Pause <= 0 {
		c.Pause = 5 * time.Millisecond
	}
	if c.MinFault <= 0 {
		c.MinFault = time.Second
	}
	if c.MaxFault <= 0 {
		c.MaxFault = 8 * time.Second
	}
	if c.MinGap <= 0 {
		c.MinGap = time.Second
	}
	if c.MaxGap <= 0 {
		c.MaxGap = 5 * time.Second
	}
	if c.HealthInterval <= 0 {
		c.HealthInterval = 200 * time.Millisecond
	}
	if c.HealthTimeout <= 0 {
		c.HealthTimeout = time.Second
	}
	if c.FailureThreshold <= 0 {
		c.FailureThreshold = 2
	}
	if c.StalenessBound <= 0 {
		c.StalenessBound = 5 * time.Second
		if d := parseDuration(c.Env["STALENESS_BOUND"]); d > 0 {
			c.StalenessBound = d
		}
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 2 * time.Minute
	}
}

// parseDuration reads a duration as the services do: Go syntax or plain
// seconds; 0 when it is neither.
func parseDuration(s string) time.Duration {
	if d, err := time.ParseDuration(s); err == nil {
		return d
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		return time.Duration(f * float64(time.Second))
	}
	return 0
}

// Validate reports settings that cannot work.
func (c Config) Validate() error {
	var errs []error
	if c.Duration < 10*time.Second {
		errs = append(errs, fmt.Errorf("duration %v: at least 10s", c.Duration))
	}
	if c.MaxFault < c.MinFault {
		errs = append(errs, fmt.Errorf("max fault %v below min fault %v", c.MaxFault, c.MinFault))
	}
	if c.MaxGap < c.MinGap {
		errs = append(errs, fmt.Errorf("max gap %v below min gap %v", c.MaxGap, c.MinGap))
	}
	if c.NATSCluster == 2 || c.NATSCluster > 5 || c.NATSCluster < 0 {
		// Two servers lose their quorum with either one; BUFFER_REPLICAS is at most 5.
		errs = append(errs, fmt.Errorf("nats cluster %d: 0 or 1 (one server) or 3 to 5 servers", c.NATSCluster))
	}
	return errors.Join(errs...)
}

// ScheduleOptions derives the schedule generator's options.
func (c Config) ScheduleOptions() ScheduleOptions {
	return ScheduleOptions{Duration: c.Duration, Nodes: c.Nodes, MinFault: c.MinFault, MaxFault: c.MaxFault,
		MinGap: c.MinGap, MaxGap: c.MaxGap, ProcessFaults: c.ProcessFaults, NATSCluster: c.clusterSize()}
}

// clusterSize is the number of NATS servers in cluster mode, 0 for one server.
func (c Config) clusterSize() int {
	if c.NATSCluster > 1 {
		return c.NATSCluster
	}
	return 0
}

// ServiceEnv is the environment of every service: tight detection and
// recovery settings so that a schedule sees many outages, the staleness
// bound the read checkers judge with, and in cluster mode BUFFER_REPLICAS
// (NATS_URL comes from the stack).
func (c Config) ServiceEnv() map[string]string {
	e := map[string]string{
		"LOG_LEVEL": c.LogLevel, "LOG_FORMAT": "json",
		"HEALTH_CHECK_INTERVAL":     c.HealthInterval.String(),
		"HEALTH_CHECK_TIMEOUT":      c.HealthTimeout.String(),
		"HEALTH_FAILURE_THRESHOLD":  strconv.Itoa(c.FailureThreshold),
		"HEALTH_RECOVERY_THRESHOLD": "2",
		"RECOVERY_CHECK_INTERVAL":   "2s",
		"NODE_STATUS_INTERVAL":      "200ms",
		"NODE_TIMEOUT":              "2s",
		"MODE_EVAL_INTERVAL":        "100ms",
		"DB_TIMEOUT":                "1s",
		"BREAKER_OPEN_TIMEOUT":      "500ms",
		"CACHE_MAX_SIZE":            "20000",
	}
	if n := c.clusterSize(); n > 0 {
		// Every stream and the KV bucket on every server: one server's loss
		// leaves a quorum holding every acknowledged write.
		e["BUFFER_REPLICAS"] = strconv.Itoa(n)
	}
	for k, v := range c.Env {
		e[k] = v
	}
	if c.StalenessBound > 0 {
		// The checkers judge reads with this bound: the services must keep it.
		e["STALENESS_BOUND"] = c.StalenessBound.String()
	}
	return e
}

// detectionBound is the longest the health-monitor may take to declare a
// hard outage of kind k unhealthy: threshold checks, each up to the check
// timeout when connections hang (black hole) or fast when they are refused,
// plus a second for scheduling and the event's way to the manager.
func (c Config) detectionBound(k Kind) time.Duration {
	per := c.HealthInterval
	if k == ProxyBlackHole {
		per += c.HealthTimeout
	}
	return time.Duration(c.FailureThreshold)*per + time.Second
}
