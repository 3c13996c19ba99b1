package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
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

// fakeReport is a run of two schedules as Run would return it: seed 41
// passed, seed 42 failed a checker (and an advisory one) and lost a write.
func fakeReport(t *testing.T) Report {
	t.Helper()
	cfg := Config{Seed: 41, Schedules: 3, Duration: 20 * time.Second, Nodes: 2, NATSCluster: 3, Dir: t.TempDir()}
	cfg.Defaults()
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	var results []ScheduleResult
	for i, seed := range []uint64{41, 42} {
		s := Generate(seed, cfg.ScheduleOptions())
		f := s.Database()[0]
		res := ScheduleResult{Seed: seed, Schedule: s, Dir: filepath.Join(cfg.Dir, fmt.Sprintf("seed-%d", seed)), Elapsed: 75 * time.Second,
			Counters:      Counters{HTTPCommitted: 1000 + int64(i), HTTPBuffered: 200, ProducerAcked: 300, HTTPIndeterminate: 4, Reads: 5000, ReadsUnavailable: 7},
			Ledger:        LedgerResult{Lost: i},
			Reads:         ReadResult{Bound: cfg.StalenessBound, Checked: 4900, Stale: 0, Replica: 12, ProducerLag: 3},
			Final:         FinalReads{Compared: 480, Differing: 0},
			Outages:       []Outage{{Start: t0, End: t0.Add(9 * time.Second), StartEpoch: 1, Reason: "database unhealthy"}, {Start: t0.Add(20 * time.Second), StartEpoch: 3, Reason: "database unhealthy"}},
			TotalFailures: 2, TotalRecoveries: 1,
			Detections: []Timing{{D: 900 * time.Millisecond, Seed: seed, Fault: f}}, Recoveries: []Timing{{D: time.Duration(2+i) * time.Second, Seed: seed, Fault: f}},
			LongestDetection: Timing{D: 900 * time.Millisecond, Seed: seed, Fault: f}, LongestRecovery: Timing{D: time.Duration(2+i) * time.Second, Seed: seed, Fault: f},
			DrainTime: 1500 * time.Millisecond, Accepted: 200, Replayed: 150, Stale: 50, ReplayEventsSum: 200,
			Executed:      []Executed{{Fault: f, Start: t0, End: t0.Add(f.Duration)}},
			UnknownCauses: map[string]int{"timeout": 4},
		}
		loss := newCheck(CheckNoLoss)
		loss.Detail = "every acknowledged write in the table"
		adv := newCheck("no connection leaked")
		adv.Warn = true
		adv.Detail = "connections per application"
		if i == 1 {
			loss.fail("tmdb:7 put v1 lost")
			adv.fail("cache-node-1 holds 40 connections")
		}
		res.Checks = []*Check{loss, adv}
		results = append(results, res)
	}
	return Report{Config: cfg, Results: results}
}

// TestJSONReportHoldsWhatWasPrinted: the JSON report of a run decodes and
// carries what the text report printed: the parameters, every schedule's
// seed, faults, verdict, checkers and figures, and the totals.
func TestJSONReportHoldsWhatWasPrinted(t *testing.T) {
	rep := fakeReport(t)
	var printed strings.Builder
	for _, s := range rep.Results {
		PrintResult(&printed, s)
	}
	rep.Print(&printed)
	text := printed.String()
	started := time.Now().Add(-3 * time.Minute)
	if err := WriteJSON(rep.Config.Report, rep.JSON(started, true, "")); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text, "json report:         "+rep.Config.Report+"\n") {
		t.Fatalf("the text report does not name the JSON report:\n%s", text)
	}
	j, err := ReadJSON(rep.Config.Report)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(rep.Config.Report)
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`"[a-z_]+_seconds": -?[0-9]+\.[0-9]{4,}`).Find(raw); m != nil {
		t.Errorf("durations are in seconds to the millisecond: %s", m)
	}
	if j.Format != JSONReportFormat || !j.Finished || j.Interrupted != "" || j.Passed || !j.Started.Equal(started) {
		t.Fatalf("header %+v", j)
	}
	p := j.Parameters
	if p.FirstSeed != 41 || p.Schedules != 3 || p.DurationSeconds != 20 || p.Nodes != 2 || p.NATSCluster != 3 || p.StalenessBoundSec != 5 ||
		len(p.FaultKinds) != len(Kinds(true)) || p.Dir != rep.Config.Dir {
		t.Fatalf("parameters %+v", p)
	}
	if len(j.Schedules) != 2 {
		t.Fatalf("%d schedules", len(j.Schedules))
	}
	for i, s := range j.Schedules {
		r := rep.Results[i]
		if !strings.Contains(text, fmt.Sprintf("---- seed %d: %s in ", s.Seed, s.Verdict)) {
			t.Errorf("seed %d: verdict %s is not the printed one", s.Seed, s.Verdict)
		}
		if len(s.Faults) != len(r.Schedule.Faults) {
			t.Fatalf("seed %d: %d faults, want %d", s.Seed, len(s.Faults), len(r.Schedule.Faults))
		}
		for k, f := range s.Faults {
			back := Fault{Kind: f.Kind, Target: f.Target, Param: f.Param,
				At: time.Duration(f.AtSeconds * float64(time.Second)), Duration: time.Duration(f.DurationSeconds * float64(time.Second))}
			if back.String() != r.Schedule.Faults[k].String() {
				t.Errorf("seed %d fault %d: %q, printed %q", s.Seed, k, back, r.Schedule.Faults[k])
			}
		}
		for _, c := range s.Checks {
			mark := "ok  "
			switch {
			case !c.OK && c.Advisory:
				mark = "WARN"
			case !c.OK:
				mark = "FAIL"
			}
			if !strings.Contains(text, fmt.Sprintf("  [%s] %s: %s\n", mark, c.Name, c.Detail)) {
				t.Errorf("seed %d: checker %q (ok %v) is not printed so", s.Seed, c.Name, c.OK)
			}
			for _, v := range c.Violations {
				if !strings.Contains(text, "         "+v+"\n") {
					t.Errorf("seed %d: violation %q not printed", s.Seed, v)
				}
			}
		}
		f := s.Figures
		if !strings.Contains(text, fmt.Sprintf("  writes acknowledged %d (http committed %d, http buffered %d, producer %d); unknown outcome %d;",
			f.WritesAcknowledged, f.HTTPCommitted, f.HTTPBuffered, f.ProducerAcked, f.UnknownOutcome)) ||
			!strings.Contains(text, fmt.Sprintf("  lost %d; outages %d; total_failures %d total_recoveries %d;", f.Lost, f.Outages, f.TotalFailures, f.TotalRecoveries)) {
			t.Errorf("seed %d: figures %+v are not the printed ones", s.Seed, f)
		}
		if s.LongestRecovery == nil || s.LongestRecovery.Seconds != r.LongestRecovery.D.Seconds() || len(s.Detections) != 1 || s.DrainSeconds != 1.5 {
			t.Errorf("seed %d: timings %+v %+v drain %v", s.Seed, s.LongestRecovery, s.Detections, s.DrainSeconds)
		}
		if len(s.Outages) != 2 || s.Outages[1].End != nil || s.Outages[0].End == nil {
			t.Errorf("seed %d: outages %+v (the second never ended)", s.Seed, s.Outages)
		}
		if len(s.Executed) != 1 || s.Executed[0].Kind != r.Executed[0].Kind {
			t.Errorf("seed %d: executed %+v", s.Seed, s.Executed)
		}
	}
	if j.Schedules[1].Checks[0].ViolationCount != 1 || j.Schedules[1].Verdict != "FAIL" || !strings.Contains(text, "replay with: "+j.Schedules[1].Replay+"\n") {
		t.Errorf("the failed schedule: %+v", j.Schedules[1])
	}
	tot := j.Totals
	if !strings.Contains(text, fmt.Sprintf("schedules run:       %d (passed %d, failed %d)", tot.SchedulesRun, tot.Passed, tot.Failed)) ||
		!strings.Contains(text, fmt.Sprintf("lost:                %d\n", tot.Figures.Lost)) ||
		!strings.Contains(text, fmt.Sprintf("faults by kind:      %d: ", tot.Faults)) ||
		!strings.Contains(text, fmt.Sprintf("writes acknowledged: %d (", tot.Figures.WritesAcknowledged)) ||
		!strings.Contains(text, fmt.Sprintf("final reads:         %d compared with the table, %d differing", tot.Figures.FinalCompared, tot.Figures.FinalDiffering)) ||
		!strings.Contains(text, fmt.Sprintf("outages:             %d (total_failures %d, total_recoveries %d)", tot.Figures.Outages, tot.Figures.TotalFailures, tot.Figures.TotalRecoveries)) {
		t.Errorf("totals %+v are not the printed ones:\n%s", tot, text)
	}
	if tot.SchedulesRun != 2 || tot.Failed != 1 || !reflect.DeepEqual(tot.FailedSeeds, []uint64{42}) || tot.Figures.Lost != 1 ||
		tot.Figures.WritesAcknowledged != rep.Acked() || tot.LongestRecovery.Seconds != 3 {
		t.Errorf("totals %+v", tot)
	}
	for k, n := range rep.FaultsByKind() {
		if tot.FaultsByKind[k] != n || !strings.Contains(text, fmt.Sprintf("%s %d", k, n)) {
			t.Errorf("faults of kind %s: %d in JSON, %d run", k, tot.FaultsByKind[k], n)
		}
	}
	for _, c := range tot.Checkers {
		if c.Name == CheckNoLoss && !reflect.DeepEqual(c.FailedSeeds, []uint64{42}) || !strings.Contains(text, c.Name) {
			t.Errorf("checker %+v", c)
		}
	}
	// Nothing is left beside the report: the temporary file was renamed.
	entries, _ := os.ReadDir(filepath.Dir(rep.Config.Report))
	if len(entries) != 1 || entries[0].Name() != "report.json" {
		t.Errorf("report directory holds %v", entries)
	}
}

// Run writes the report before the first schedule: a path that cannot be
// written stops the run before anything started, and a run interrupted
// before its first schedule leaves a report that says so.
func TestRunReportEarly(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	rep, err := Run(context.Background(), Config{Dir: t.TempDir(), Report: filepath.Join(file, "report.json")})
	if err == nil || len(rep.Results) != 0 || !strings.Contains(err.Error(), "chaos report") {
		t.Fatalf("unwritable report: %v, %d schedules run", err, len(rep.Results))
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dir := t.TempDir()
	rep, err = Run(ctx, Config{Seed: 5, Schedules: 4, Dir: dir})
	if !errors.Is(err, context.Canceled) || len(rep.Results) != 0 {
		t.Fatalf("cancelled run: %v, %d schedules", err, len(rep.Results))
	}
	j, err := ReadJSON(filepath.Join(dir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	if j.Finished || !strings.Contains(j.Interrupted, "with 0 of 4 schedules run") || j.Parameters.FirstSeed != 5 || len(j.Schedules) != 0 || j.Totals.SchedulesRun != 0 {
		t.Fatalf("report of an interrupted run: %+v", j)
	}
}

// WriteJSON replaces the report whole, and leaves no temporary file.
func TestWriteJSONReplaces(t *testing.T) {
	rep := fakeReport(t)
	path := rep.Config.Report
	one := Report{Config: rep.Config, Results: rep.Results[:1]}
	if err := WriteJSON(path, one.JSON(time.Now(), false, "")); err != nil {
		t.Fatal(err)
	}
	if j, err := ReadJSON(path); err != nil || len(j.Schedules) != 1 || j.Finished || !j.Passed {
		t.Fatalf("after one schedule: %v %+v", err, j)
	}
	if err := WriteJSON(path, rep.JSON(time.Now(), true, "")); err != nil {
		t.Fatal(err)
	}
	if j, err := ReadJSON(path); err != nil || len(j.Schedules) != 2 || !j.Finished || j.Passed {
		t.Fatalf("after two schedules: %v %+v", err, j)
	}
	if err := os.WriteFile(path, []byte(`{"format":1,"schedules":[`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadJSON(path); err == nil {
		t.Fatal("a truncated report decodes")
	}
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*tmp")); len(m) != 0 {
		t.Fatalf("temporary files left: %v", m)
	}
}
