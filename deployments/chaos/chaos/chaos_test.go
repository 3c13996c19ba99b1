package chaos

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/anivault/anivault/pkg/hlc"
	"github.com/anivault/anivault/pkg/metastore"
)

func TestGenerateReplaysFromSeed(t *testing.T) {
	for _, cluster := range []int{0, 3, 5} {
		o := ScheduleOptions{Duration: 60 * time.Second, Nodes: 3, MinFault: time.Second, MaxFault: 8 * time.Second, MinGap: time.Second, MaxGap: 5 * time.Second, NATSCluster: cluster}
		for seed := uint64(0); seed < 200; seed++ {
			a, b := Generate(seed, o), Generate(seed, o)
			if !reflect.DeepEqual(a, b) || a.String() != b.String() {
				t.Fatalf("cluster %d seed %d: two generations differ:\n%s\n%s", cluster, seed, a, b)
			}
			if seed > 0 && reflect.DeepEqual(a.Faults, Generate(seed-1, o).Faults) {
				t.Fatalf("cluster %d: seeds %d and %d give the same schedule", cluster, seed, seed-1)
			}
			checkSchedule(t, a, o)
		}
	}
}

// TestGenerateClusterMode: a cluster schedule says so, loses a server at
// least once, never two NATS faults at once, and keeps the database faults of
// the same seed with one server (they are drawn first).
func TestGenerateClusterMode(t *testing.T) {
	o := ScheduleOptions{Duration: 30 * time.Second, Nodes: 3, MaxFault: 8 * time.Second, MaxGap: 5 * time.Second}
	c := o
	c.NATSCluster = 3
	for seed := uint64(0); seed < 200; seed++ {
		single, cluster := Generate(seed, o), Generate(seed, c)
		if single.NATSCluster != 0 || single.Has(NATSServerKill) || strings.Contains(single.String(), "nats-cluster") {
			t.Fatalf("seed %d: a single-server schedule with cluster traits:\n%s", seed, single)
		}
		if cluster.NATSCluster != 3 || !strings.Contains(cluster.String(), " nats-cluster=3 ") || cluster.clusterFlag() != " --nats-cluster 3" {
			t.Fatalf("seed %d: the cluster schedule does not say so:\n%s", seed, cluster)
		}
		if !cluster.Has(NATSServerKill) {
			t.Fatalf("seed %d: no nats_server_kill in a cluster schedule:\n%s", seed, cluster)
		}
		if !reflect.DeepEqual(single.Database(), cluster.Database()) {
			t.Fatalf("seed %d: the database faults depend on the NATS mode:\n%s\n%s", seed, single, cluster)
		}
		var nats []Fault
		for _, f := range cluster.Faults {
			if f.Kind == NATSServerKill && (f.Param < 1 || f.Param > 3 || f.Target != "nats-server" || !strings.Contains(f.String(), "else s")) {
				t.Fatalf("seed %d: bad server kill %s (param %d)", seed, f, f.Param)
			}
			if f.Resource() == "nats" {
				for _, g := range nats {
					if f.At < g.End()+time.Second && g.At < f.End()+time.Second {
						t.Fatalf("seed %d: two NATS faults within a second of each other: %s and %s", seed, g, f)
					}
				}
				nats = append(nats, f)
			}
		}
	}
}

func checkSchedule(t *testing.T, s Schedule, o ScheduleOptions) {
	t.Helper()
	var lastDBEnd time.Duration
	byTarget := map[string][]Fault{}
	for _, f := range s.Faults {
		if f.At < 0 || f.End() > o.Duration || f.Duration < 0 {
			t.Fatalf("seed %d: fault outside the schedule: %s", s.Seed, f)
		}
		switch f.Kind {
		case ProxyLatency:
			if f.Param < 2000 || f.Param > 5000 {
				t.Fatalf("seed %d: latency %d ms out of 2..5 s", s.Seed, f.Param)
			}
		case ProxyFlap:
			if f.Param < 30 || f.Param > 70 {
				t.Fatalf("seed %d: toxicity %d%% out of 30..70", s.Seed, f.Param)
			}
		}
		if f.Kind.IsDatabase() {
			if f.At < lastDBEnd {
				t.Fatalf("seed %d: database faults overlap at %s", s.Seed, f)
			}
			if f.Duration < o.MinFault && f.End() != o.Duration-time.Second {
				t.Fatalf("seed %d: database fault shorter than %v: %s", s.Seed, o.MinFault, f)
			}
			lastDBEnd = f.End()
			continue
		}
		if f.Kind == NATSServerKill && o.NATSCluster < 2 {
			t.Fatalf("seed %d: nats_server_kill without a cluster: %s", s.Seed, f)
		}
		for _, g := range byTarget[f.Resource()] {
			if f.At < g.End() && g.At < f.End() {
				t.Fatalf("seed %d: two faults on %s overlap: %s and %s", s.Seed, f.Resource(), g, f)
			}
		}
		byTarget[f.Resource()] = append(byTarget[f.Resource()], f)
	}
	if len(s.Database()) == 0 {
		t.Fatalf("seed %d: no database fault in %v", s.Seed, o.Duration)
	}
}

func TestGenerateCoversEveryKind(t *testing.T) {
	for _, cluster := range []int{0, 3} {
		seen := map[Kind]bool{}
		for seed := uint64(0); seed < 50; seed++ {
			for k := range Generate(seed, ScheduleOptions{Duration: 60 * time.Second, Nodes: 3, MaxFault: 8 * time.Second, MaxGap: 5 * time.Second, NATSCluster: cluster}).CountByKind() {
				seen[k] = true
			}
		}
		for _, k := range Kinds(cluster > 1) {
			if !seen[k] {
				t.Errorf("cluster %d: 50 schedules never inject %s", cluster, k)
			}
		}
		if cluster == 0 && seen[NATSServerKill] {
			t.Errorf("single-server schedules inject %s", NATSServerKill)
		}
	}
	if len(Kinds(true)) != len(AllKinds)+1 || Kinds(true)[len(AllKinds)] != NATSServerKill || len(Kinds(false)) != len(AllKinds) {
		t.Fatalf("Kinds(true) = %v", Kinds(true))
	}
}

// at returns a time and the HTTP version a node would mint then.
func versionAt(t time.Time, logical int64) int64 {
	return hlc.FromStream(t)&^(1<<hlc.LogicalBits-1) | logical
}

func TestCheckLedger(t *testing.T) {
	t0 := time.Now().Add(-time.Minute)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	put := func(key int64, start int, v int64) Op {
		return Op{Key: key, Start: ms(start), End: ms(start + 5), Acked: true, Version: v, Status: 200}
	}
	del := func(key int64, start int, v int64) Op {
		op := put(key, start, v)
		op.Delete = true
		return op
	}
	v := func(n int) int64 { return versionAt(ms(n), 7) }
	prod := func(key int64, start int, seq uint64, delete bool) Op {
		return Op{Key: key, Producer: true, Delete: delete, Start: ms(start), End: ms(start + 3), Acked: true, Seq: seq}
	}
	failed := func(r LedgerResult) map[string]bool {
		m := map[string]bool{}
		for _, c := range r.Checks {
			if !c.OK {
				m[c.Name] = true
			}
		}
		return m
	}
	cases := []struct {
		name  string
		ops   []Op
		table map[int64]metastore.Version
		lost  int
		fail  []string
	}{
		{"exact", []Op{put(1, 0, v(0)), del(1, 100, v(100))}, map[int64]metastore.Version{1: {Version: v(100), Deleted: true}}, 0, nil},
		{"older row loses the newest write", []Op{put(1, 0, v(0)), put(1, 100, v(100))}, map[int64]metastore.Version{1: {Version: v(0)}}, 1, []string{CheckNoLoss}},
		{"missing row", []Op{put(1, 0, v(0))}, map[int64]metastore.Version{}, 1, []string{CheckNoLoss}},
		{"delete undone", []Op{put(1, 0, v(0)), del(1, 100, v(100))}, map[int64]metastore.Version{1: {Version: v(100)}}, 0, []string{CheckNoUndelete}},
		{"phantom newer version", []Op{put(1, 0, v(0))}, map[int64]metastore.Version{1: {Version: v(30000)}}, 0, []string{CheckFinalState}},
		{"newer version of a write with an unknown outcome", []Op{put(1, 0, v(0)), {Key: 1, Start: ms(200), End: ms(900), Indeterminate: true, Delete: true}},
			map[int64]metastore.Version{1: {Version: v(500), Deleted: true}}, 0, nil},
		{"unknown-outcome write of the wrong kind", []Op{put(1, 0, v(0)), {Key: 1, Start: ms(200), End: ms(900), Indeterminate: true}},
			map[int64]metastore.Version{1: {Version: v(500), Deleted: true}}, 0, []string{CheckFinalState}},
		{"producer last write wins", []Op{prod(2, 0, 1, false), prod(2, 100, 2, true)},
			map[int64]metastore.Version{2: {Version: hlc.FromStream(ms(101)), Deleted: true}}, 0, nil},
		{"producer delete undone", []Op{prod(2, 0, 1, false), prod(2, 100, 2, true)},
			map[int64]metastore.Version{2: {Version: hlc.FromStream(ms(101))}}, 0, []string{CheckNoUndelete}},
		{"producer write lost", []Op{prod(2, 0, 1, false), prod(2, 100, 2, true)},
			map[int64]metastore.Version{2: {Version: hlc.FromStream(ms(1))}}, 1, []string{CheckNoLoss}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := CheckLedger(c.ops, c.table)
			if r.Lost != c.lost {
				t.Errorf("lost %d, want %d", r.Lost, c.lost)
			}
			got := failed(r)
			want := map[string]bool{}
			for _, n := range c.fail {
				want[n] = true
			}
			if !reflect.DeepEqual(got, want) {
				for _, ch := range r.Checks {
					t.Logf("%s ok=%v %v", ch.Name, ch.OK, ch.Errors)
				}
				t.Errorf("failed checks %v, want %v", got, want)
			}
		})
	}
}

func TestCheckReads(t *testing.T) {
	const bound = 5 * time.Second
	const bms = int(bound / time.Millisecond)
	t0 := time.Now().Add(-time.Minute)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	v := func(n int) int64 { return versionAt(ms(n), 7) }
	put := func(key int64, start int, ver int64) Op {
		return Op{Key: key, Node: "http://n1", Start: ms(start), End: ms(start + 5), Acked: true, Version: ver, Status: 200}
	}
	del := func(key int64, start int, ver int64) Op {
		op := put(key, start, ver)
		op.Delete = true
		return op
	}
	unknown := func(key int64, start, end int, delete bool) Op {
		return Op{Key: key, Node: "http://n1", Start: ms(start), End: ms(end), Indeterminate: true, Delete: delete, Err: "timeout"}
	}
	prod := func(key int64, start int, seq uint64, delete bool) Op {
		return Op{Key: key, Producer: true, Delete: delete, Start: ms(start), End: ms(start + 3), Acked: true, Seq: seq}
	}
	// read answers at ms(start) + bound + after, for 20 ms.
	read := func(key int64, after int, status int, ver int64) Read {
		start := ms(after).Add(bound)
		return Read{Key: key, Node: "http://n2", Start: start, End: start.Add(20 * time.Millisecond), Status: status, Version: ver, Source: "cache", Mode: "normal"}
	}
	cases := []struct {
		name        string
		ops         []Op
		reads       []Read
		stale       int
		unavailable int
	}{
		{"current 200", []Op{put(1, 0, v(0)), put(1, 100, v(100))}, []Read{read(1, 200, 200, v(100))}, 0, 0},
		{"stale 200: an older version after the bound", []Op{put(1, 0, v(0)), put(1, 100, v(100))}, []Read{read(1, 200, 200, v(0))}, 1, 0},
		{"stale 404: an upsert acknowledged before the bound", []Op{put(1, 0, v(0))}, []Read{read(1, 100, 404, 0)}, 1, 0},
		{"older version within the bound is not stale", []Op{put(1, 0, v(0)), put(1, 100, v(100))},
			[]Read{read(1, 50, 200, v(0)), read(1, 104, 200, v(0))}, 0, 0},
		{"404 within the bound of the first write", []Op{put(1, 0, v(0))}, []Read{read(1, 4, 404, 0)}, 0, 0},
		{"no write yet", []Op{put(1, 0, v(0))}, []Read{read(2, 100, 404, 0), read(1, -1000, 404, 0)}, 0, 0},
		{"404 explained by a delete with an unknown outcome", []Op{put(1, 0, v(0)), unknown(1, 200, 900, true)},
			[]Read{read(1, 100, 404, 0)}, 0, 0},
		{"404 explained by a delete in flight", []Op{put(1, 0, v(0)), del(1, bms+100, v(bms+100))},
			[]Read{read(1, 100, 404, 0)}, 0, 0},
		{"404 not explained by a delete that started after the read", []Op{put(1, 0, v(0)), unknown(1, bms+500, bms+900, true)},
			[]Read{read(1, 100, 404, 0)}, 1, 0},
		{"404 not explained by an unknown-outcome upsert", []Op{put(1, 0, v(0)), unknown(1, 200, 900, false)},
			[]Read{read(1, 100, 404, 0)}, 1, 0},
		{"404 after an acknowledged delete", []Op{put(1, 0, v(0)), del(1, 100, v(100))}, []Read{read(1, 200, 404, 0)}, 0, 0},
		{"stale 200 after an acknowledged delete", []Op{put(1, 0, v(0)), del(1, 100, v(100))}, []Read{read(1, 200, 200, v(0))}, 1, 0},
		{"200 of the delete's version", []Op{put(1, 0, v(0)), del(1, 100, v(100))}, []Read{read(1, 200, 200, v(100))}, 1, 0},
		{"200 after a delete explained by an upsert with an unknown outcome", []Op{put(1, 0, v(0)), del(1, 100, v(100)), unknown(1, 300, 900, false)},
			[]Read{read(1, 200, 200, v(500))}, 0, 0},
		{"200 after a delete, outside the unknown upsert's window", []Op{put(1, 0, v(0)), del(1, 100, v(100)), unknown(1, 300, 900, false)},
			[]Read{read(1, 200, 200, v(5000))}, 1, 0},
		{"503 is unavailable, not stale", []Op{put(1, 0, v(0))}, []Read{read(1, 100, 503, 0)}, 0, 1},
		// A producer's write is visible once a node applied it, which the
		// client cannot see: reads behind one are counted, not failed (see
		// TestCheckReadsProducerLag).
		{"producer: version below the window", []Op{prod(2, 0, 1, false), prod(2, 100, 2, false)},
			[]Read{read(2, 200, 200, hlc.FromStream(ms(1)))}, 0, 0},
		{"producer: version in the window", []Op{prod(2, 0, 1, false), prod(2, 100, 2, false)},
			[]Read{read(2, 200, 200, hlc.FromStream(ms(101)))}, 0, 0},
		{"producer: 404 after an upsert", []Op{prod(2, 0, 1, false)}, []Read{read(2, 100, 404, 0)}, 0, 0},
		{"producer: 404 after a delete", []Op{prod(2, 0, 1, false), prod(2, 100, 2, true)}, []Read{read(2, 200, 404, 0)}, 0, 0},
		{"superseded http write sets the floor but not the kind", []Op{put(1, 0, v(0)), {Key: 1, Node: "http://n1", Start: ms(100), End: ms(105), Acked: true, Superseded: true, Version: v(50), Status: 200}},
			[]Read{read(1, 200, 404, 0), read(1, 200, 200, v(0))}, 1, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := CheckReads(c.ops, c.reads, bound, nil)
			if r.Stale != c.stale || r.Unavailable != c.unavailable || r.Check.OK != (c.stale == 0) {
				t.Errorf("stale %d unavailable %d ok %v, want stale %d unavailable %d; %s %v", r.Stale, r.Unavailable, r.Check.OK, c.stale, c.unavailable, r.Check.Detail, r.Check.Errors)
			}
			if r.Check.Warn {
				t.Errorf("%s is advisory", r.Check.Name)
			}
			if r.StaleHTTP != r.Stale {
				t.Errorf("stale %d, of which missed an HTTP write %d", r.Stale, r.StaleHTTP)
			}
		})
	}
}

func TestCheckReadsBlamesTheMissedWrite(t *testing.T) {
	t0 := time.Now().Add(-time.Minute)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	ops := []Op{
		{Key: 1, Start: ms(0), End: ms(5), Acked: true, Version: versionAt(ms(0), 7)},
		{Key: 1, Producer: true, Start: ms(100), End: ms(103), Acked: true, Seq: 1},
		{Key: 2, Producer: true, Start: ms(0), End: ms(3), Acked: true, Seq: 2},
		{Key: 2, Start: ms(100), End: ms(105), Acked: true, Version: versionAt(ms(100), 7)},
		{Key: 3, Start: ms(0), End: ms(5), Acked: true, Version: versionAt(ms(0), 7)},
		{Key: 3, Start: ms(200), End: ms(205), Acked: true, Version: versionAt(ms(200), 7)},
	}
	start := ms(2000)
	reads := []Read{
		// Misses only the producer write of key 1: counted, not stale.
		{Key: 1, Start: start, End: start.Add(time.Millisecond), Status: 200, Version: versionAt(ms(0), 7)},
		// Misses the HTTP write of key 2, 1895 ms after its ack.
		{Key: 2, Start: start, End: start.Add(time.Millisecond), Status: 200, Version: hlc.FromStream(ms(1))},
		// Misses both HTTP writes of key 3: the lag counts from the first.
		{Key: 3, Start: start, End: start.Add(time.Millisecond), Status: 200, Version: hlc.FromStream(ms(-10))},
	}
	r := CheckReads(ops, reads, time.Second, nil)
	if r.Stale != 2 || r.StaleHTTP != 2 || r.ProducerLag != 1 || r.MaxLagHTTP != 1995*time.Millisecond {
		t.Fatalf("%+v", r)
	}
	if len(r.Check.Errors) != 2 || !strings.HasPrefix(r.Check.Errors[0], "tmdb:2 ") {
		t.Fatalf("violations %v", r.Check.Errors)
	}
}

// A read behind a producer write that the stream acknowledged more than the
// bound earlier is counted, never failed: the write becomes visible when a
// node applies it, which the client does not see.
func TestCheckReadsProducerLag(t *testing.T) {
	t0 := time.Now().Add(-time.Minute)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	ops := []Op{{Key: 4, Producer: true, Start: ms(0), End: ms(3), Acked: true, Seq: 9}}
	reads := []Read{
		{Key: 4, Start: ms(5000), End: ms(5001), Status: 404},
		{Key: 4, Start: ms(500), End: ms(501), Status: 404}, // within the bound: nothing had to be visible
	}
	r := CheckReads(ops, reads, time.Second, nil)
	if r.Stale != 0 || r.ProducerLag != 1 || !r.Check.OK {
		t.Fatalf("%+v", r)
	}
}

func TestCheckFinalReads(t *testing.T) {
	table := map[int64]metastore.Version{1: {Version: 10}, 2: {Version: 20, Deleted: true}}
	ok := []FinalAnswer{{Node: "a", Key: 1, Status: 200, Version: 10}, {Node: "a", Key: 2, Status: 404}, {Node: "a", Key: 3, Status: 404}}
	if r := CheckFinalReads(ok, table, time.Second); !r.Check.OK || r.Compared != 3 || r.Differing != 0 {
		t.Fatalf("exact answers: %+v %v", r, r.Check.Errors)
	}
	bad := []FinalAnswer{{Node: "a", Key: 1, Status: 200, Version: 9}, {Node: "a", Key: 1, Status: 404}, {Node: "b", Key: 2, Status: 200, Version: 20},
		{Node: "b", Key: 3, Status: 200, Version: 1}, {Node: "b", Key: 1, Status: 503, Err: "unavailable"}, {Node: "b", Key: 1, Err: "connection reset"},
		{Node: "b", Key: 1, Status: 200, Version: 10, Err: "body: garbage"}}
	if r := CheckFinalReads(bad, table, time.Second); r.Check.OK || r.Compared != len(bad) || r.Differing != len(bad) {
		t.Fatalf("every answer differs: %+v %v", r, r.Check.Errors)
	}
}

func TestStalenessBoundReachesTheServices(t *testing.T) {
	var c Config
	c.Defaults()
	if c.StalenessBound != 5*time.Second || c.ServiceEnv()["STALENESS_BOUND"] != "5s" {
		t.Fatalf("default bound %v, env %q", c.StalenessBound, c.ServiceEnv()["STALENESS_BOUND"])
	}
	c = Config{Env: map[string]string{"STALENESS_BOUND": "1.5"}}
	c.Defaults()
	if c.StalenessBound != 1500*time.Millisecond || c.ServiceEnv()["STALENESS_BOUND"] != "1.5s" {
		t.Fatalf("bound from Env: %v, env %q", c.StalenessBound, c.ServiceEnv()["STALENESS_BOUND"])
	}
	c = Config{StalenessBound: 2 * time.Second, Env: map[string]string{"STALENESS_BOUND": "9s"}}
	c.Defaults()
	if c.ServiceEnv()["STALENESS_BOUND"] != "2s" {
		t.Fatalf("the field must win over Env: %q", c.ServiceEnv()["STALENESS_BOUND"])
	}
}

func TestClusterConfig(t *testing.T) {
	c := Config{Duration: 30 * time.Second}
	c.Defaults()
	if _, ok := c.ServiceEnv()["BUFFER_REPLICAS"]; ok || c.ScheduleOptions().NATSCluster != 0 {
		t.Fatalf("one server: BUFFER_REPLICAS %q, schedule cluster %d", c.ServiceEnv()["BUFFER_REPLICAS"], c.ScheduleOptions().NATSCluster)
	}
	c.NATSCluster = 1 // the same as 0
	if _, ok := c.ServiceEnv()["BUFFER_REPLICAS"]; ok || c.ScheduleOptions().NATSCluster != 0 || c.Validate() != nil {
		t.Fatalf("--nats-cluster 1 is one server")
	}
	c.NATSCluster = 3
	if c.ServiceEnv()["BUFFER_REPLICAS"] != "3" || c.ScheduleOptions().NATSCluster != 3 || c.Validate() != nil {
		t.Fatalf("cluster of 3: BUFFER_REPLICAS %q, schedule cluster %d, %v", c.ServiceEnv()["BUFFER_REPLICAS"], c.ScheduleOptions().NATSCluster, c.Validate())
	}
	for _, n := range []int{-1, 2, 6} {
		c.NATSCluster = n
		if c.Validate() == nil {
			t.Errorf("a cluster of %d servers is accepted", n)
		}
	}
}

func TestLongestFree(t *testing.T) {
	t0 := time.Now()
	s := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Second) }
	if d := longestFree(s(0), s(10), nil); d != 10*time.Second {
		t.Fatalf("no block: %v", d)
	}
	if d := longestFree(s(0), s(10), [][2]time.Time{{s(2), s(4)}, {s(3), s(5)}}); d != 5*time.Second {
		t.Fatalf("overlapping blocks: %v", d)
	}
	if d := longestFree(s(0), s(10), [][2]time.Time{{s(-5), s(11)}}); d != 0 {
		t.Fatalf("covered: %v", d)
	}
}
