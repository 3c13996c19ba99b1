package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/anivault/anivault/deployments/launch"
)

// The write runs are driven by wrk too: a PUT of one fixture-shaped record,
// a random key per request. The data file holds one "path<TAB>body" a line
// (compact JSON has no newline).
const wrkPutLua = `-- AniVault bench: PUT /v1/anime/{id} of a random record per request.
local paths, bodies = {}, {}
local next_seed = 1
local headers = {["Content-Type"] = "application/json"}

function setup(thread)
  thread:set("seed", next_seed)
  next_seed = next_seed + 1
end

function init(args)
  for line in io.lines(args[1]) do
    local tab = string.find(line, "\t", 1, true)
    paths[#paths + 1] = string.sub(line, 1, tab - 1)
    bodies[#bodies + 1] = string.sub(line, tab + 1)
  end
  math.randomseed(4242 + (seed or 0) * 7919)
end

function request()
  local i = math.random(#paths)
  return wrk.format("PUT", paths[i], headers, bodies[i])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
`

// newWrkPutLoad writes the PUT script and its data file (ids[i] with bodies[i]) to dir.
func newWrkPutLoad(dir string, ids []int64, bodies [][]byte, conns int) (*wrkLoad, error) {
	var b strings.Builder
	for i, id := range ids {
		if strings.ContainsAny(string(bodies[i]), "\t\n") {
			return nil, fmt.Errorf("record %d: its JSON holds a tab or a newline", id)
		}
		b.WriteString("/v1/anime/" + strconv.FormatInt(id, 10) + "\t")
		b.Write(bodies[i])
		b.WriteByte('\n')
	}
	return writeWrkLoad(dir, "wrk-puts.lua", wrkPutLua, "wrk-puts.txt", b.String(), conns)
}

// writeOutcomes reads a node's anivault_writes_total by outcome.
func (r *runner) writeOutcomes(n *launch.Node) (map[string]int64, error) {
	resp, err := r.http.Get(n.URL() + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, `anivault_writes_total{outcome="`)
		if !ok {
			continue
		}
		outcome, val, ok := strings.Cut(rest, `"} `)
		if !ok {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			out[outcome] = int64(v)
		}
	}
	return out, nil
}

// runPuts measures one wrk PUT run against node: a warm-up of warm (not
// counted), then dur. Ops are the writes the node counted with outcome want
// (committed or buffered) during the measured run; every other outcome is
// reported in the note, and the run is marked unverified if any appeared.
func (w *wrkLoad) runPuts(ctx context.Context, r *runner, name string, node *launch.Node, want string, warm, dur time.Duration) (runStats, error) {
	s := runStats{Name: name, Clients: w.conns, Codes: map[int]int64{}, Load: "wrk"}
	if warm > 0 {
		if _, _, _, err := w.exec(ctx, node.URL(), warm); err != nil {
			return s, fmt.Errorf("warm-up: %w", err)
		}
	}
	before, err := r.writeOutcomes(node)
	if err != nil {
		return s, err
	}
	sum, err := w.measure(ctx, &s, node.URL(), node.Pid(), dur)
	if err != nil {
		return s, err
	}
	after, err := r.writeOutcomes(node)
	if err != nil {
		return s, err
	}
	var parts []string
	others := int64(0)
	for _, k := range []string{"committed", "buffered", "failed", "superseded", "reversioned", "refused_busy"} {
		d := after[k] - before[k]
		if d == 0 {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %s", k, commas(d)))
		if k != want && k != "reversioned" {
			others += d
		}
	}
	s.Ops = min(sum.Requests-sum.Status, after[want]-before[want])
	s.SourceVerified = others == 0 && s.Errors == 0
	s.Note = fmt.Sprintf("wrk: %s responses, %s not 2xx; the node counted %s (the requests in flight when wrk stopped are counted too)",
		commas(sum.Requests), commas(sum.Status), strings.Join(parts, ", "))
	return s, nil
}
