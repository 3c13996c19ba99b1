package chaos

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"time"
)

// Kind is one kind of fault.
type Kind string

// The faults a schedule is made of. The first eight act on the database (the
// PostgreSQL server or the fault proxy every service reaches it through) and
// never overlap each other; the others act on processes and may overlap
// anything except a fault on the same resource (see Fault.Resource: the NATS
// faults never overlap each other).
const (
	PGKill          Kind = "pg_kill"           // SIGKILL the postmaster and its children, start again after the duration
	PGStopFast      Kind = "pg_stop_fast"      // pg_ctl stop -m fast, start again
	PGStopImmediate Kind = "pg_stop_immediate" // pg_ctl stop -m immediate, start again
	ProxyRefuse     Kind = "proxy_refuse"      // the proxy closes its listener and every connection
	ProxyBlackHole  Kind = "proxy_blackhole"   // connections open, data never arrives (timeout toxic)
	ProxyLatency    Kind = "proxy_latency"     // every round trip takes Param ms (2000..5000)
	ProxyReset      Kind = "proxy_reset"       // every connection is reset on its first data (while writes flow)
	ProxyFlap       Kind = "proxy_flap"        // a share (Param/100) of connections is reset
	NodeKill        Kind = "node_kill"         // SIGKILL a cache-node, start it again after the duration
	NATSRestart     Kind = "nats_restart"      // shut the NATS server (in cluster mode: every server) down, start it again after the duration
	ManagerKill     Kind = "manager_kill"      // SIGKILL the recovery-manager, start it again
	MonitorKill     Kind = "monitor_kill"      // SIGKILL the health-monitor, start it again
	// NATSServerKill exists in cluster mode only: shut ONE server of the NATS
	// cluster down (the ANIVAULT_BUFFER stream's leader when it is known,
	// else server Param), start it again after the duration. A quorum stays
	// up, so the system must go on as if nothing happened.
	NATSServerKill Kind = "nats_server_kill"
)

// DatabaseKinds are the faults on PostgreSQL and the proxy, one at a time.
var DatabaseKinds = []Kind{PGKill, PGStopFast, PGStopImmediate, ProxyRefuse, ProxyBlackHole, ProxyLatency, ProxyReset, ProxyFlap}

// ProcessKinds are the faults on processes.
var ProcessKinds = []Kind{NodeKill, NATSRestart, ManagerKill, MonitorKill}

// ClusterKinds are the faults generated only in cluster mode (NATSCluster > 1).
var ClusterKinds = []Kind{NATSServerKill}

// AllKinds lists every kind of a single-server schedule in report order;
// Kinds(true) adds the cluster-only kinds.
var AllKinds = append(append([]Kind{}, DatabaseKinds...), ProcessKinds...)

// Kinds lists the kinds a schedule may hold, in report order: AllKinds, and
// in cluster mode ClusterKinds too.
func Kinds(cluster bool) []Kind {
	if !cluster {
		return AllKinds
	}
	return append(append([]Kind{}, AllKinds...), ClusterKinds...)
}

// IsDatabase reports whether k acts on the database.
func (k Kind) IsDatabase() bool {
	for _, d := range DatabaseKinds {
		if d == k {
			return true
		}
	}
	return false
}

// HardOutage reports whether k makes the database plainly unreachable for its
// whole duration, so that the health-monitor must detect it when it lasts
// long enough (latency, resets and flapping may or may not be detected).
func (k Kind) HardOutage() bool {
	switch k {
	case PGKill, PGStopFast, PGStopImmediate, ProxyRefuse, ProxyBlackHole:
		return true
	}
	return false
}

// Fault is one planned fault.
type Fault struct {
	// At is the offset from the start of the load.
	At time.Duration
	// Duration is how long the fault lasts before it is reverted (the
	// database restarted, the proxy healed, the process started again).
	Duration time.Duration
	Kind     Kind
	// Target names what the fault acts on: "postgres", "proxy", a node id,
	// "nats", "nats-server" (one server of the cluster, chosen when the fault
	// is injected), "recovery-manager" or "health-monitor".
	Target string
	// Param is the latency in milliseconds (proxy_latency), the toxicity in
	// percent (proxy_flap), or the server (1-based, "s<Param>") that
	// nats_server_kill stops when the buffer stream's leader is unknown; 0
	// otherwise.
	Param int
}

// End is At + Duration.
func (f Fault) End() time.Duration { return f.At + f.Duration }

// Resource is what two process faults must not share at the same time: the
// target, except that every NATS fault (a whole restart or one server's
// loss) holds "nats", so that at most one NATS server is down at a time.
func (f Fault) Resource() string {
	switch f.Kind {
	case NATSRestart, NATSServerKill:
		return "nats"
	}
	return f.Target
}

func (f Fault) String() string {
	s := fmt.Sprintf("+%6.2fs  %-18s %6.2fs  %s", f.At.Seconds(), f.Kind, f.Duration.Seconds(), f.Target)
	switch f.Kind {
	case ProxyLatency:
		s += fmt.Sprintf(" latency=%dms", f.Param)
	case ProxyFlap:
		s += fmt.Sprintf(" toxicity=%.2f", float64(f.Param)/100)
	case NATSServerKill:
		s += fmt.Sprintf(" (the buffer leader, else s%d)", f.Param)
	}
	return s
}

// Schedule is the list of faults of one run, generated up front from its seed.
type Schedule struct {
	Seed     uint64
	Duration time.Duration
	Nodes    int
	// NATSCluster is the number of NATS servers in cluster mode; 0 for one server.
	NATSCluster int
	Faults      []Fault
}

// String prints the schedule, one fault a line, in time order.
func (s Schedule) String() string {
	var b strings.Builder
	cluster := ""
	if s.NATSCluster > 1 {
		cluster = fmt.Sprintf(" nats-cluster=%d", s.NATSCluster)
	}
	fmt.Fprintf(&b, "schedule seed=%d duration=%v nodes=%d%s faults=%d\n", s.Seed, s.Duration, s.Nodes, cluster, len(s.Faults))
	for _, f := range s.Faults {
		b.WriteString("  " + f.String() + "\n")
	}
	return b.String()
}

// clusterFlag is the CLI flag that replays the schedule's NATS setup ("" for one server).
func (s Schedule) clusterFlag() string {
	if s.NATSCluster > 1 {
		return fmt.Sprintf(" --nats-cluster %d", s.NATSCluster)
	}
	return ""
}

// Database returns the database faults in time order.
func (s Schedule) Database() []Fault {
	var out []Fault
	for _, f := range s.Faults {
		if f.Kind.IsDatabase() {
			out = append(out, f)
		}
	}
	return out
}

// CountByKind counts the faults of each kind.
func (s Schedule) CountByKind() map[Kind]int {
	m := map[Kind]int{}
	for _, f := range s.Faults {
		m[f.Kind]++
	}
	return m
}

// Has reports whether the schedule holds a fault of kind k.
func (s Schedule) Has(k Kind) bool { return s.CountByKind()[k] > 0 }

// ScheduleOptions shape the generated faults.
type ScheduleOptions struct {
	Duration time.Duration
	Nodes    int
	// MinFault and MaxFault bound the duration of a database fault.
	MinFault, MaxFault time.Duration
	// MinGap and MaxGap bound the quiet time between two database faults.
	MinGap, MaxGap time.Duration
	// ProcessFaults is the number of process faults (0: one per 10 s of Duration, at least 2).
	ProcessFaults int
	// NATSCluster above 1 is cluster mode: NATS runs as that many servers.
	// The first process fault is then a nats_server_kill, and each other one
	// may be too; nats_restart (the whole cluster) stays, rarer. With one
	// server (0 or 1) schedules are exactly those of before cluster mode.
	NATSCluster int
	// Warmup is the quiet time at the start; Cooldown the quiet time at the end.
	Warmup, Cooldown time.Duration
}

func (o *ScheduleOptions) defaults() {
	if o.Nodes < 1 {
		o.Nodes = 1
	}
	if o.MinFault <= 0 {
		o.MinFault = time.Second
	}
	if o.MaxFault < o.MinFault {
		o.MaxFault = o.MinFault
	}
	if o.MinGap <= 0 {
		o.MinGap = 500 * time.Millisecond
	}
	if o.MaxGap < o.MinGap {
		o.MaxGap = o.MinGap
	}
	if o.ProcessFaults <= 0 {
		o.ProcessFaults = max(2, int(o.Duration/(10*time.Second)))
	}
	if o.Warmup <= 0 {
		o.Warmup = 2 * time.Second
	}
	if o.Cooldown <= 0 {
		o.Cooldown = time.Second
	}
	if o.NATSCluster < 2 {
		o.NATSCluster = 0
	}
}

// NodeID names cache-node i (0-based).
func NodeID(i int) string { return fmt.Sprintf("node-%d", i+1) }

// Generate makes the schedule of seed. The same seed and options always give
// the same schedule: every random choice comes from one PCG stream seeded by
// seed, in a fixed order.
func Generate(seed uint64, o ScheduleOptions) Schedule {
	o.defaults()
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	between := func(a, b time.Duration) time.Duration {
		if b <= a {
			return a
		}
		// Whole milliseconds keep the printed schedule exact.
		return a + time.Duration(rng.Int64N(int64((b-a)/time.Millisecond)+1))*time.Millisecond
	}
	s := Schedule{Seed: seed, Duration: o.Duration, Nodes: o.Nodes, NATSCluster: o.NATSCluster}
	end := o.Duration - o.Cooldown

	// Database faults: one after another, each followed by a quiet gap.
	t := o.Warmup + between(0, o.MaxGap)
	for t+o.MinFault <= end {
		k := DatabaseKinds[rng.IntN(len(DatabaseKinds))]
		d := between(o.MinFault, o.MaxFault)
		if t+d > end {
			d = end - t
		}
		f := Fault{At: t, Duration: d, Kind: k, Target: "proxy"}
		switch k {
		case PGKill, PGStopFast, PGStopImmediate:
			f.Target = "postgres"
		case ProxyLatency:
			f.Param = 2000 + rng.IntN(3001)
		case ProxyFlap:
			f.Param = 30 + rng.IntN(41)
		}
		s.Faults = append(s.Faults, f)
		t += d + between(o.MinGap, o.MaxGap)
	}

	// Process faults: anywhere, never two at once on the same resource.
	busy := map[string][][2]time.Duration{}
	free := func(resource string, a, b time.Duration) bool {
		for _, iv := range busy[resource] {
			if a < iv[1]+time.Second && iv[0] < b+time.Second {
				return false
			}
		}
		return true
	}
	for i := range o.ProcessFaults {
		for attempt := 0; attempt < 20; attempt++ {
			var k Kind
			switch {
			case o.NATSCluster == 0:
				// One server: the draws of before cluster mode, unchanged, so
				// that every seed keeps its schedule.
				switch r := rng.IntN(10); {
				case r < 5:
					k = NodeKill
				case r < 7:
					k = NATSRestart
				case r < 9:
					k = ManagerKill
				default:
					k = MonitorKill
				}
			case i == 0:
				// Cluster mode: every schedule loses a server at least once.
				k = NATSServerKill
			default:
				switch r := rng.IntN(20); {
				case r < 8:
					k = NodeKill
				case r < 13:
					k = NATSServerKill
				case r < 14:
					k = NATSRestart
				case r < 18:
					k = ManagerKill
				default:
					k = MonitorKill
				}
			}
			var target string
			var d time.Duration
			param := 0
			switch k {
			case NodeKill:
				target = NodeID(rng.IntN(o.Nodes))
				d = between(300*time.Millisecond, 3*time.Second)
			case NATSRestart:
				target = "nats"
				d = between(0, 2*time.Second)
			case NATSServerKill:
				target = "nats-server"
				param = 1 + rng.IntN(o.NATSCluster)
				d = between(500*time.Millisecond, 6*time.Second)
			case ManagerKill:
				target = "recovery-manager"
				d = between(200*time.Millisecond, 3*time.Second)
			case MonitorKill:
				target = "health-monitor"
				d = between(200*time.Millisecond, 3*time.Second)
			}
			if end-d <= o.Warmup {
				continue
			}
			at := between(o.Warmup, end-d)
			f := Fault{At: at, Duration: d, Kind: k, Target: target, Param: param}
			if !free(f.Resource(), at, at+d) {
				continue
			}
			busy[f.Resource()] = append(busy[f.Resource()], [2]time.Duration{at, at + d})
			s.Faults = append(s.Faults, f)
			break
		}
	}
	sort.SliceStable(s.Faults, func(i, j int) bool { return s.Faults[i].At < s.Faults[j].At })
	return s
}
