package chaos

import (
	"reflect"
	"testing"
	"time"

	"github.com/anivault/anivault/pkg/hlc"
	"github.com/anivault/anivault/pkg/metastore"
)

func TestGenerateReplaysFromSeed(t *testing.T) {
	o := ScheduleOptions{Duration: 60 * time.Second, Nodes: 3, MinFault: time.Second, MaxFault: 8 * time.Second, MinGap: time.Second, MaxGap: 5 * time.Second}
	for seed := uint64(0); seed < 200; seed++ {
		a, b := Generate(seed, o), Generate(seed, o)
		if !reflect.DeepEqual(a, b) || a.String() != b.String() {
			t.Fatalf("seed %d: two generations differ:\n%s\n%s", seed, a, b)
		}
		if seed > 0 && reflect.DeepEqual(a.Faults, Generate(seed-1, o).Faults) {
			t.Fatalf("seeds %d and %d give the same schedule", seed, seed-1)
		}
		checkSchedule(t, a, o)
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
		for _, g := range byTarget[f.Target] {
			if f.At < g.End() && g.At < f.End() {
				t.Fatalf("seed %d: two faults on %s overlap: %s and %s", s.Seed, f.Target, g, f)
			}
		}
		byTarget[f.Target] = append(byTarget[f.Target], f)
	}
	if len(s.Database()) == 0 {
		t.Fatalf("seed %d: no database fault in %v", s.Seed, o.Duration)
	}
}

func TestGenerateCoversEveryKind(t *testing.T) {
	seen := map[Kind]bool{}
	for seed := uint64(0); seed < 50; seed++ {
		for k := range Generate(seed, ScheduleOptions{Duration: 60 * time.Second, Nodes: 3, MaxFault: 8 * time.Second, MaxGap: 5 * time.Second}).CountByKind() {
			seen[k] = true
		}
	}
	for _, k := range AllKinds {
		if !seen[k] {
			t.Errorf("50 schedules never inject %s", k)
		}
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
