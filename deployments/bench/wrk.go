package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/anivault/anivault/deployments/launch"
)

// The read runs are driven by wrk (Debian package wrk): a C load generator
// with an event loop per thread, far cheaper per request than a Go client,
// so that on a small machine the figures follow the server's cost rather
// than the load generator's. A Lua script picks a random fixture id for
// every request and prints wrk's summary and latency percentiles as JSON.

// wrkLua is the script: args[1] is a file with one tmdb_id a line.
const wrkLua = `-- AniVault bench: GET /v1/anime/{id} for a random fixture id per request.
local paths = {}
local next_seed = 1

function setup(thread)
  thread:set("seed", next_seed)
  next_seed = next_seed + 1
end

function init(args)
  for line in io.lines(args[1]) do
    paths[#paths + 1] = "/v1/anime/" .. line
  end
  math.randomseed(42 + (seed or 0) * 7919)
end

function request()
  return wrk.format("GET", paths[math.random(#paths)])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
`

// wrkSummary is what the script's done() prints.
type wrkSummary struct {
	Requests   int64   `json:"requests"`
	DurationUS int64   `json:"duration_us"`
	Bytes      int64   `json:"bytes"`
	Connect    int64   `json:"connect"`
	Read       int64   `json:"read"`
	Write      int64   `json:"write"`
	Status     int64   `json:"status"` // responses that were not 2xx or 3xx
	Timeout    int64   `json:"timeout"`
	P50US      int64   `json:"p50_us"`
	P90US      int64   `json:"p90_us"`
	P99US      int64   `json:"p99_us"`
	MaxUS      int64   `json:"max_us"`
	MeanUS     float64 `json:"mean_us"`
}

// wrkLoad holds the script and the id file of one read phase.
type wrkLoad struct {
	bin, script, ids string
	threads          int
	conns            int
	dir              string
}

// wrkThreads is the number of wrk threads: a quarter of the cores, at least
// one and at most four (wrk's event loop per thread drives tens of thousands
// of requests per second; the rest of the cores are the system's).
func wrkThreads(conns int) int {
	return max(1, min(4, runtime.NumCPU()/4, conns))
}

// newWrkLoad writes the read script and the id file to dir.
func newWrkLoad(dir string, ids []int64, conns int) (*wrkLoad, error) {
	var b strings.Builder
	for _, id := range ids {
		b.WriteString(strconv.FormatInt(id, 10) + "\n")
	}
	return writeWrkLoad(dir, "wrk-reads.lua", wrkLua, "wrk-ids.txt", b.String(), conns)
}

// writeWrkLoad writes a wrk script and its data file (the script's
// argument) to dir.
func writeWrkLoad(dir, scriptName, script, dataName, data string, conns int) (*wrkLoad, error) {
	bin, err := exec.LookPath("wrk")
	if err != nil {
		return nil, errors.New("wrk not found in PATH: the read and write runs are driven by wrk (Debian package wrk: apt-get install wrk)")
	}
	w := &wrkLoad{bin: bin, script: filepath.Join(dir, scriptName), ids: filepath.Join(dir, dataName), threads: wrkThreads(conns), conns: conns, dir: dir}
	if err := os.WriteFile(w.script, []byte(script), 0o644); err != nil {
		return nil, err
	}
	return w, os.WriteFile(w.ids, []byte(data), 0o644)
}

// args are wrk's arguments for a run of d against base.
func (w *wrkLoad) args(base string, d time.Duration) []string {
	secs := max(1, int(math.Ceil(d.Seconds())))
	return []string{"-t", strconv.Itoa(w.threads), "-c", strconv.Itoa(w.conns), "-d", strconv.Itoa(secs) + "s",
		"--timeout", "10s", "-s", w.script, base, "--", w.ids}
}

// CommandLine is the measured run's command, for the report (file names without their directory).
func (w *wrkLoad) CommandLine(base string, d time.Duration) string {
	args := w.args(base, d)
	for i, a := range args {
		if a == w.script || a == w.ids {
			args[i] = filepath.Base(a)
		}
	}
	return "wrk " + strings.Join(args, " ")
}

// exec runs wrk once and returns its summary and CPU seconds (user + system).
func (w *wrkLoad) exec(ctx context.Context, base string, d time.Duration) (wrkSummary, float64, string, error) {
	var s wrkSummary
	cmd := exec.CommandContext(ctx, w.bin, w.args(base, d)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err := cmd.Run()
	cpu := 0.0
	if cmd.ProcessState != nil {
		cpu = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	}
	text := out.String()
	if err != nil {
		return s, cpu, text, fmt.Errorf("wrk: %w: %s", err, firstLine(text))
	}
	_, line, ok := strings.Cut(text, "WRK_RESULT ")
	if !ok {
		return s, cpu, text, fmt.Errorf("wrk printed no result: %s", firstLine(text))
	}
	line, _, _ = strings.Cut(line, "\n")
	if err := json.Unmarshal([]byte(line), &s); err != nil {
		return s, cpu, text, fmt.Errorf("wrk result %q: %w", line, err)
	}
	return s, cpu, text, nil
}

// probeGets is the number of counted GET requests of one sourceCounts: only
// GETs of the record route are counted (the node counts /v1/status under its
// own route and leaves /metrics out), so a snapshot's own requests add none.
const probeGets = 0

// sourceCounts are a node's read counters: cache hits (cache_statistics)
// and anivault_reads_total by source, plus anivault_http_requests_total of GETs of records by code.
type sourceCounts struct {
	Cache, Database, Replica int64
	GetCodes                 map[int]int64
	seq                      int64 // the runner's count of snapshots so far
}

func (r *runner) sourceCounts(n *launch.Node) sourceCounts {
	r.snapshots++
	c := sourceCounts{GetCodes: map[int]int64{}, seq: r.snapshots}
	if st, err := r.nodeStatus(n); err == nil {
		c.Cache = st.CacheStatistics.Hits
	}
	resp, err := r.http.Get(n.URL() + "/metrics")
	if err != nil {
		return c
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		name, rest, ok := strings.Cut(line, "{")
		if !ok {
			continue
		}
		labels, val, ok := strings.Cut(rest, "} ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil {
			continue
		}
		switch name {
		case "anivault_reads_total":
			switch labels {
			case `source="database"`:
				c.Database = int64(v)
			case `source="replica"`:
				c.Replica = int64(v)
			}
		case "anivault_http_requests_total":
			code, isGet, isRecord := "", false, false
			for _, kv := range strings.Split(labels, ",") {
				k, v, _ := strings.Cut(kv, "=")
				v = strings.Trim(v, `"`)
				switch k {
				case "code":
					code = v
				case "method":
					isGet = v == "GET"
				case "route":
					isRecord = v == "/v1/anime/{tmdb_id}"
				}
			}
			if n, err := strconv.Atoi(code); err == nil && isGet && isRecord {
				c.GetCodes[n] += int64(v)
			}
		}
	}
	return c
}

// quietCounts returns the node's counters once no request other than its own
// probes is being answered (two snapshots apart by exactly probeGets GETs),
// or after two seconds.
func (r *runner) quietCounts(n *launch.Node) sourceCounts {
	total := func(c sourceCounts) int64 {
		var t int64
		for _, v := range c.GetCodes {
			t += v
		}
		return t
	}
	prev := r.sourceCounts(n)
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		cur := r.sourceCounts(n)
		if total(cur)-total(prev) == probeGets {
			return cur
		}
		prev = cur
	}
	return prev
}

// wrkRun is one read run: a warm-up of warm (not counted, skipped when 0),
// then dur measured. node, when set, is the cache-node under test: its
// counters tell where the reads were served from (want: "cache",
// "database" or "replica") and which status codes it answered.
type wrkRun struct {
	name      string
	base      string
	pid       int // process whose CPU is the "server" column
	node      *launch.Node
	want      string
	warm, dur time.Duration
}

// measure runs wrk for dur against base and fills s's CPU (pid's as the
// server's), duration, errors and latencies from its summary.
func (w *wrkLoad) measure(ctx context.Context, s *runStats, base string, pid int, dur time.Duration) (wrkSummary, error) {
	watch := newCPUWatch(pid)
	watch.begin()
	t0 := time.Now()
	sum, wrkCPU, _, err := w.exec(ctx, base, dur)
	watch.end(time.Since(t0).Seconds())
	if err != nil {
		return sum, err
	}
	u := watch.Result
	u.Bench += wrkCPU
	u.Other = max(0, u.Machine-u.Bench-u.Server-u.Postgres)
	s.CPU = &u
	s.Duration = time.Duration(sum.DurationUS) * time.Microsecond
	s.Errors = sum.Status + sum.Connect + sum.Read + sum.Write + sum.Timeout
	us := func(v int64) time.Duration { return time.Duration(v) * time.Microsecond }
	s.P50, s.P90, s.P99, s.Max = us(sum.P50US), us(sum.P90US), us(sum.P99US), us(sum.MaxUS)
	s.Load = "wrk"
	return sum, nil
}

// run measures one wrk run. The load generator's CPU (wrk's user + system
// time) is counted in the bench column with this process's (the embedded
// NATS server), so that "other processes" stays other jobs on the machine.
func (w *wrkLoad) run(ctx context.Context, r *runner, run wrkRun) (runStats, error) {
	s := runStats{Name: run.name, Clients: w.conns, Codes: map[int]int64{}}
	if run.warm > 0 {
		if _, _, _, err := w.exec(ctx, run.base, run.warm); err != nil {
			return s, fmt.Errorf("warm-up: %w", err)
		}
	}
	var before sourceCounts
	if run.node != nil {
		// The warm-up's requests in flight when wrk stopped finish (or are
		// cancelled) first, so that they are not counted in the run.
		before = r.quietCounts(run.node)
	}
	sum, err := w.measure(ctx, &s, run.base, run.pid, run.dur)
	if err != nil {
		return s, err
	}
	s.Ops = max(0, sum.Requests-sum.Status)
	if run.node == nil {
		s.Note = fmt.Sprintf("wrk: %s responses, %s not 2xx/3xx", commas(sum.Requests), commas(sum.Status))
		return s, nil
	}
	after := r.quietCounts(run.node)
	served := int64(0)
	for code, n := range after.GetCodes {
		d := n - before.GetCodes[code]
		if code == 200 {
			d -= probeGets * (after.seq - before.seq)
		}
		if d > 0 {
			s.Codes[code] = d
			served += d
		}
	}
	s.Abandoned = max(0, served-sum.Requests)
	src := map[string]int64{
		"cache":    after.Cache - before.Cache,
		"database": after.Database - before.Database,
		"replica":  after.Replica - before.Replica,
	}
	s.Sources = src
	others := int64(0)
	for k, v := range src {
		if k != run.want {
			others += v
		}
	}
	// The node finishes the requests in flight when wrk stops, so it may count
	// up to one per connection more than wrk did.
	s.SourceVerified = others == 0 && src[run.want] >= s.Ops
	s.Note = fmt.Sprintf("the node counted %s %s reads, %s from elsewhere (cache %s, database %s, replica %s) for wrk's %s successful responses; it answered %s requests more than wrk counted (in flight when wrk stopped and closed its connections)",
		commas(src[run.want]), run.want, commas(others), commas(src["cache"]), commas(src["database"]), commas(src["replica"]), commas(s.Ops), commas(s.Abandoned))
	return s, nil
}
