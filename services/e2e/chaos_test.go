package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/anivault/anivault/deployments/chaos/chaos"
)

// TestChaosShort runs three short seeded fault schedules through the chaos
// runner (deployments/chaos): two cache-nodes, the health-monitor, the
// recovery-manager, NATS and a private PostgreSQL behind a fault proxy, with
// HTTP writers and JetStream producers on overlapping keys. The seeds are
// fixed and chosen so that together they inject every kind of fault. Two
// readers read the written keys from every node throughout; a read older
// than a write acknowledged more than the staleness bound (5s) before it
// fails the test, and so does a node that, after the drain, serves anything
// but the table's row. Any
// schedule replays with `go run ./deployments/chaos --seed N --schedules 1
// --duration 20s --nodes 2 --max-fault 4s --max-gap 3s`.
func TestChaosShort(t *testing.T) {
	t.Parallel()
	// Three single-server schedules, and one on a three-server JetStream
	// cluster (every stream replicated 3 ways) whose first process fault
	// stops the buffer stream's leader.
	runs := []struct {
		seed    uint64
		cluster int
	}{{11, 0}, {13, 0}, {27, 0}, {7, 3}}
	covered := map[chaos.Kind]bool{}
	for _, run := range runs {
		seed := run.seed
		name := fmt.Sprintf("seed-%d", seed)
		if run.cluster > 0 {
			name = fmt.Sprintf("cluster-%d-seed-%d", run.cluster, seed)
		}
		t.Run(name, func(t *testing.T) { runChaosSchedule(t, seed, run.cluster, covered) })
	}
	if !t.Failed() {
		for _, k := range append(slices.Clone(chaos.AllKinds), chaos.ClusterKinds...) {
			if !covered[k] {
				t.Errorf("no schedule injected %s: choose seeds that cover every fault", k)
			}
		}
	}
}

// runChaosSchedule runs one 20 s schedule of seed (on a JetStream cluster
// of that many servers when cluster > 0), marks the kinds of fault it
// injected in covered, and checks its JSON report and its figures.
func runChaosSchedule(t *testing.T, seed uint64, cluster int, covered map[chaos.Kind]bool) {
	t.Helper()
	var out bytes.Buffer
	dir, err := os.MkdirTemp("", "anivault-chaos-")
	if err != nil {
		t.Fatal(err)
	}
	cfg := chaos.Config{
		Seed: seed, Schedules: 1, Duration: 20 * time.Second, Nodes: 2,
		ModuleDir: "../..", Dir: dir, Out: &out,
		HTTPWriters: 3, Producers: 2, Readers: 2,
		MinFault: time.Second, MaxFault: 4 * time.Second, MinGap: time.Second, MaxGap: 3 * time.Second,
		DrainTimeout: 90 * time.Second, NATSCluster: cluster,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	rep, err := chaos.Run(ctx, cfg)
	if err != nil {
		t.Fatalf("chaos run: %v\n%s", err, out.String())
	}
	for k := range rep.FaultsByKind() {
		covered[k] = true
	}
	res := rep.Results[0]
	// The JSON report (--report, <dir>/report.json) holds what the run printed.
	checkChaosJSONReport(t, dir, out.String(), rep, res, seed)
	if !checkChaosResult(t, out.String(), rep, res, seed) {
		return
	}
	_ = os.RemoveAll(dir)
}

// checkChaosJSONReport checks the JSON report in dir holds what the run
// printed (out).
func checkChaosJSONReport(t *testing.T, dir, out string, rep chaos.Report, res chaos.ScheduleResult, seed uint64) {
	t.Helper()
	j, err := chaos.ReadJSON(filepath.Join(dir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(j.Schedules) != 1 || !j.Finished || j.Schedules[0].Seed != seed || j.Totals.Figures.Lost != rep.Lost() ||
		j.Schedules[0].Figures.WritesAcknowledged != res.Counters.Acked() || len(j.Schedules[0].Faults) != len(res.Schedule.Faults) ||
		len(j.Schedules[0].Checks) != len(res.Checks) || !strings.Contains(out, fmt.Sprintf("---- seed %d: %s in ", seed, j.Schedules[0].Verdict)) {
		t.Errorf("the JSON report does not hold the run: %+v", j)
	}
	for _, c := range j.Schedules[0].Checks {
		if !strings.Contains(out, fmt.Sprintf("] %s: %s\n", c.Name, c.Detail)) {
			t.Errorf("checker %q in the JSON report is not the printed one", c.Name)
		}
	}
}

// checkChaosResult logs the schedule's figures and checks no read was
// stale, no final read differs, nothing was lost and every checker passed;
// it returns false (keeping the logs) when a checker failed.
func checkChaosResult(t *testing.T, out string, rep chaos.Report, res chaos.ScheduleResult, seed uint64) bool {
	t.Helper()
	t.Logf("seed %d: %d faults, %d writes acknowledged, lost %d, outages %d, longest detection %s, longest recovery %s, %v",
		seed, len(res.Schedule.Faults), res.Counters.Acked(), res.Ledger.Lost, len(res.Outages), res.LongestDetection, res.LongestRecovery, res.Elapsed.Round(time.Second))
	rd, fin := res.Reads, res.Final
	t.Logf("seed %d: reads checked %d (bound %v): stale %d, unavailable %d, replica %d, explained %d, errors %d, behind a producer write (not a violation) %d; final reads compared %d, differing %d",
		seed, rd.Checked, rd.Bound, rd.Stale, rd.Unavailable, rd.Replica, rd.Explained, rd.Errors, rd.ProducerLag, fin.Compared, fin.Differing)
	if rd.Stale != 0 {
		t.Errorf("%d stale reads: %s\n  %s", rd.Stale, rd.Check.Detail, strings.Join(rd.Check.Errors, "\n  "))
	}
	if rd.Checked == 0 {
		t.Errorf("no read was checked: the readers did not run")
	}
	if fin.Differing != 0 {
		t.Errorf("%d of %d final reads differ from the table:\n  %s", fin.Differing, fin.Compared, strings.Join(fin.Check.Errors, "\n  "))
	}
	if rep.Lost() != 0 {
		t.Errorf("%d acknowledged writes lost", rep.Lost())
	}
	if res.Counters.Acked() == 0 {
		t.Errorf("no write was acknowledged: the load did not run")
	}
	if !rep.Passed() {
		t.Errorf("a checker failed:\n%s", out)
		keepLogs(t, res.Dir)
		return false
	}
	return true
}

// keepLogs copies a failed schedule's service logs to ANIVAULT_E2E_LOGS, or
// prints their tails.
func keepLogs(t *testing.T, dir string) {
	logs := filepath.Join(dir, "logs")
	if dst := os.Getenv("ANIVAULT_E2E_LOGS"); dst != "" {
		d := filepath.Join(dst, strings.ReplaceAll(t.Name(), "/", "_"))
		_ = os.MkdirAll(filepath.Dir(d), 0o755)
		if err := os.CopyFS(d, os.DirFS(logs)); err != nil {
			t.Logf("copy logs: %v", err)
		} else {
			t.Logf("service logs kept in %s", d)
		}
		return
	}
	entries, _ := os.ReadDir(logs)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(logs, e.Name()))
		if err == nil {
			t.Logf("---- %s (tail) ----\n%s", e.Name(), tail(string(b), 40))
		}
	}
	t.Logf("service logs stay in %s", logs)
}
