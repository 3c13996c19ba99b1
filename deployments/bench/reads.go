package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/anivault/anivault/deployments/local/load"
	"github.com/anivault/anivault/deployments/local/stack"
)

// ReadsResult is phase 1.
type ReadsResult struct {
	Keys              int
	BodyBytesMean     int
	Hits, Ceiling, DB runStats // the best round of each
	Rounds            []runStats
	HitRatioDuringRun float64 // cache hits / requests counted by the node
	DBSourceChecked   bool
	HitsOverCeiling   float64
	HitsOverDB        float64
	NodePerfProfile   string // perf report of the node during a hit run, when the goal was missed
	DBPerfProfile     string // perf report of the machine during a database run, when the goal was missed
}

func (r *runner) phaseReads(ctx context.Context) error {
	res := &ReadsResult{}
	r.rep.Reads = res
	// Seed: every fixture record written once through the node (committed), so
	// it is in PostgreSQL and in the node's cache.
	gen, err := load.New(load.Config{Nodes: []string{r.nodeA.URL()}, Records: r.records})
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	err = gen.WriteAll(wctx, 16)
	cancel()
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	// The exact bytes the node serves, for the ceiling server.
	bodies := map[int64][]byte{}
	ids := make([]int64, 0, len(r.records))
	total := 0
	for _, rec := range r.records {
		code, b, err := doHTTP(r.http, mustReq(http.MethodGet, fmt.Sprintf("%s/v1/anime/%d", r.nodeA.URL(), rec.TMDBID), nil))
		if err != nil || code != 200 {
			return fmt.Errorf("read back %d: %d %v", rec.TMDBID, code, err)
		}
		bodies[rec.TMDBID] = b
		ids = append(ids, rec.TMDBID)
		total += len(b)
	}
	res.Keys, res.BodyBytesMean = len(ids), total/len(ids)
	bodyFile := filepath.Join(r.cfg.dir, "static-bodies.json")
	enc, _ := json.Marshal(bodies)
	if err := os.WriteFile(bodyFile, enc, 0o644); err != nil {
		return err
	}

	client := newLoadClient(r.cfg.conns)
	getOp := func(base string, wantSrc string) opFunc {
		return func(ctx context.Context, rng *rand.Rand) (int, bool) {
			id := ids[rng.IntN(len(ids))]
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/anime/"+strconv.FormatInt(id, 10), nil)
			resp, err := client.Do(req)
			if err != nil {
				return 0, false
			}
			_, _ = drain(resp)
			ok := resp.StatusCode == 200 && (wantSrc == "" || resp.Header.Get("X-AniVault-Source") == wantSrc)
			return resp.StatusCode, ok
		}
	}

	// (a) the ceiling: a bare net/http handler in its own process, same bytes.
	addr, err := stack.FreeAddr()
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, "serve-static", "--addr", addr, "--bodies", bodyFile)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	if err := waitHTTP(ctx, "http://"+addr+"/v1/anime/"+strconv.FormatInt(ids[0], 10)); err != nil {
		return err
	}
	// (b) the same cache-node with its cache disabled: every read from PostgreSQL.
	env := stack.MergeEnv(r.common, map[string]string{"CACHE_DISABLED": "true"})
	nodeDB, err := r.st.StartNode(ctx, "node-nocache", "", env)
	if err != nil {
		return err
	}
	defer r.stopNode(nodeDB)

	// Rounds, interleaved, so that a burst of other work on the machine does
	// not decide a ratio; each figure is the best round.
	for round := 1; round <= r.cfg.readRounds; round++ {
		before, _ := r.nodeStatus(r.nodeA)
		r.say("reads round %d: cache hits, %d clients, %v", round, r.cfg.conns, r.cfg.readDur)
		h := runFixed(ctx, fmt.Sprintf("cache-node GET, cache hits (round %d)", round), r.cfg.conns, time.Second, r.cfg.readDur, newCPUWatch(r.nodeA.Pid()), getOp(r.nodeA.URL(), "cache"))
		after, _ := r.nodeStatus(r.nodeA)
		if dr := after.CacheStatistics.TotalRequests - before.CacheStatistics.TotalRequests; dr > 0 {
			res.HitRatioDuringRun = float64(after.CacheStatistics.Hits-before.CacheStatistics.Hits) / float64(dr)
		}
		r.say("  %.0f req/s p50 %v p99 %v errors %d", h.RPS(), h.P50, h.P99, h.Errors)
		r.say("reads round %d: bare net/http handler (ceiling)", round)
		c := runFixed(ctx, fmt.Sprintf("bare net/http handler, same bytes from memory (round %d)", round), r.cfg.conns, time.Second, r.cfg.readDur, newCPUWatch(cmd.Process.Pid), getOp("http://"+addr, ""))
		r.say("  %.0f req/s p50 %v p99 %v", c.RPS(), c.P50, c.P99)
		r.say("reads round %d: CACHE_DISABLED=true (every read from PostgreSQL)", round)
		d := runFixed(ctx, fmt.Sprintf("cache-node GET, CACHE_DISABLED=true, PostgreSQL (round %d)", round), r.cfg.conns, time.Second, r.cfg.readDur, newCPUWatch(nodeDB.Pid()), getOp(nodeDB.URL(), "database"))
		r.say("  %.0f req/s p50 %v p99 %v errors %d", d.RPS(), d.P50, d.P99, d.Errors)
		res.Rounds = append(res.Rounds, h, c, d)
		if h.RPS() > res.Hits.RPS() {
			res.Hits = h
		}
		if c.RPS() > res.Ceiling.RPS() {
			res.Ceiling = c
		}
		if d.RPS() > res.DB.RPS() {
			res.DB = d
		}
	}
	res.DBSourceChecked = true
	_ = cmd.Process.Kill()

	if res.Ceiling.RPS() > 0 {
		res.HitsOverCeiling = res.Hits.RPS() / res.Ceiling.RPS()
	}
	if res.DB.RPS() > 0 {
		res.HitsOverDB = res.Hits.RPS() / res.DB.RPS()
	}
	if res.HitsOverDB < 5 {
		r.say("reads: hits/database %.1f < 5: profiling the machine with perf during another database run", res.HitsOverDB)
		res.DBPerfProfile = r.perfProfile(ctx, nodeDB.Pid(), 6*time.Second, func(d time.Duration) {
			runFixed(ctx, "profile", r.cfg.conns, 500*time.Millisecond, d, nil, getOp(nodeDB.URL(), "database"))
		})
	}
	if res.HitsOverCeiling < 0.7 {
		r.say("reads: hits/ceiling %.2f < 0.7: profiling the node with perf during another hit run", res.HitsOverCeiling)
		res.NodePerfProfile = r.perfProfile(ctx, r.nodeA.Pid(), 6*time.Second, func(d time.Duration) {
			runFixed(ctx, "profile", r.cfg.conns, 500*time.Millisecond, d, nil, getOp(r.nodeA.URL(), "cache"))
		})
	}
	return nil
}

func drain(resp *http.Response) (int64, error) {
	defer resp.Body.Close()
	var buf [8192]byte
	var n int64
	for {
		m, err := resp.Body.Read(buf[:])
		n += int64(m)
		if err != nil {
			return n, nil
		}
	}
}

func mustReq(method, url string, body []byte) *http.Request {
	var req *http.Request
	if body != nil {
		req, _ = http.NewRequest(method, url, bytes.NewReader(body))
	} else {
		req, _ = http.NewRequest(method, url, nil)
	}
	return req
}

func waitHTTP(ctx context.Context, url string) error {
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := c.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s did not answer 200", url)
}

// serveStatic is the ceiling: a bare net/http handler serving the bytes the
// cache-node serves, from a map in memory, in a process of its own.
func serveStatic(args []string) error {
	fs := flag.NewFlagSet("serve-static", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	file := fs.String("bodies", "", "JSON map of id to body")
	if err := fs.Parse(args); err != nil {
		return err
	}
	raw, err := os.ReadFile(*file)
	if err != nil {
		return err
	}
	var bodies map[int64][]byte
	if err := json.Unmarshal(raw, &bodies); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseInt(strings.TrimPrefix(r.URL.Path, "/v1/anime/"), 10, 64)
		b, ok := bodies[id]
		if err != nil || !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	})
	err = (&http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}).Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
