package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/anivault/anivault/deployments/launch"
	"github.com/anivault/anivault/deployments/load"
	"github.com/anivault/anivault/events"
)

// ReadsResult is phase 1.
type ReadsResult struct {
	Keys              int
	BodyBytesMean     int
	Hits, Ceiling, DB runStats // the best round of each
	// Replica is the best round of reads in cache-only mode on a node with
	// its cache disabled: every read a direct get from the change log
	// (ANIVAULT_CHANGES), answered with X-AniVault-Source: replica.
	Replica           runStats
	Rounds            []runStats
	HitRatioDuringRun float64 // cache hits / reads counted by the node during the best hit run
	DBSourceChecked   bool    // the node counted every read of every database round as a database read
	ReplicaChecked    bool    // … and of every replica round as a replica read
	Samples           []string
	HitsOverCeiling   float64
	HitsOverDB        float64
	HitsOverReplica   float64
	ReplicaOverDB     float64
	WrkThreads        int
	WrkCommand        string
	// Time from the recovery.cache_only.enter request to every node in
	// cache_only, and from the exit request to every node normal, per round.
	EnterCacheOnly, ExitCacheOnly []time.Duration
	NodePerfProfile               string // perf report of the node during a hit run, when the goal was missed
	DBPerfProfile                 string // perf report of the machine during a database run, when the goal was missed
}

func (r *runner) phaseReads(ctx context.Context) error {
	res := &ReadsResult{}
	r.rep.Reads = res
	// Seed: every fixture record written once through the node (committed), so
	// it is in PostgreSQL, in the node's cache and in the change log.
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
		code, b, err := load.Do(r.http, mustReq(http.MethodGet, fmt.Sprintf("%s/v1/anime/%d", r.nodeA.URL(), rec.TMDBID), nil))
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
	wrk, err := newWrkLoad(r.cfg.dir, ids, r.cfg.conns)
	if err != nil {
		return err
	}
	res.WrkThreads = wrk.threads
	res.WrkCommand = wrk.CommandLine("http://<node>", r.cfg.readDur)

	// (a) the ceiling: a bare net/http handler in its own process, same bytes.
	addr, err := launch.FreeAddr()
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
	// (b) the same cache-node with its cache disabled: every read from
	// PostgreSQL in normal mode, and (c) every read from the change log in
	// cache-only mode (the cache is never usable, so every read is a miss).
	env := launch.MergeEnv(r.common, map[string]string{"CACHE_DISABLED": "true"})
	nodeDB, err := r.st.StartNode(ctx, "node-nocache", "", env)
	if err != nil {
		return err
	}
	defer r.stopNode(nodeDB)

	// Before any load: a few responses of each path, checked one by one.
	sampleIDs := ids[:min(5, len(ids))]
	if err := r.sampleReads(res, r.nodeA, "cache", sampleIDs, bodies); err != nil {
		return err
	}
	if err := r.sampleReads(res, nodeDB, "database", sampleIDs, bodies); err != nil {
		return err
	}

	keep := func(best *runStats, s runStats, err error) error {
		if err != nil {
			r.say("  %s: %v", s.Name, err)
			return fmt.Errorf("%s: %w", s.Name, err)
		}
		r.say("  %.0f req/s p50 %v p99 %v errors %d codes %v", s.RPS(), s.P50, s.P99, s.Errors, s.Codes)
		if s.Note != "" {
			r.say("  %s", s.Note)
		}
		res.Rounds = append(res.Rounds, s)
		if s.RPS() > best.RPS() {
			*best = s
		}
		return nil
	}
	d := r.cfg.readDur
	dbChecked, replicaChecked := true, true
	// Rounds, interleaved, so that a burst of other work on the machine does
	// not decide a ratio; each figure is the best round. Each round: cache
	// hits, the ceiling and database reads in normal mode, then the system
	// is put in cache-only mode (recovery.cache_only.enter) for the replica
	// reads and taken out of it again.
	for round := 1; round <= r.cfg.readRounds && ctx.Err() == nil; round++ {
		r.say("reads round %d: cache hits, wrk %d threads %d connections, %v", round, wrk.threads, r.cfg.conns, d)
		h, err := wrk.run(ctx, r, wrkRun{name: fmt.Sprintf("cache-node GET, cache hits (round %d)", round), base: r.nodeA.URL(), pid: r.nodeA.Pid(), node: r.nodeA, want: "cache", warm: time.Second, dur: d})
		if err := keep(&res.Hits, h, err); err != nil {
			return err
		}
		if res.Hits.Name == h.Name {
			if total := h.Sources["cache"] + h.Sources["database"] + h.Sources["replica"]; total > 0 {
				res.HitRatioDuringRun = float64(h.Sources["cache"]) / float64(total)
			}
		}
		r.say("reads round %d: bare net/http handler (ceiling)", round)
		c, err := wrk.run(ctx, r, wrkRun{name: fmt.Sprintf("bare net/http handler, same bytes from memory (round %d)", round), base: "http://" + addr, pid: cmd.Process.Pid, warm: time.Second, dur: d})
		if err := keep(&res.Ceiling, c, err); err != nil {
			return err
		}
		r.say("reads round %d: CACHE_DISABLED=true, normal mode (every read from PostgreSQL)", round)
		db, err := wrk.run(ctx, r, wrkRun{name: fmt.Sprintf("cache-node GET, CACHE_DISABLED=true, normal mode: PostgreSQL (round %d)", round), base: nodeDB.URL(), pid: nodeDB.Pid(), node: nodeDB, want: "database", warm: time.Second, dur: d})
		if err := keep(&res.DB, db, err); err != nil {
			return err
		}
		dbChecked = dbChecked && db.SourceVerified
		if !db.SourceVerified {
			r.rep.Errors = append(r.rep.Errors, "reads: database run not served from the database only: "+db.Note)
		}

		r.say("reads round %d: recovery.cache_only.enter, then CACHE_DISABLED=true in cache-only mode (every read from the change log)", round)
		rp, err := r.replicaRound(ctx, res, wrk, nodeDB, round, sampleIDs, bodies)
		if err := keep(&res.Replica, rp, err); err != nil {
			return err
		}
		replicaChecked = replicaChecked && rp.SourceVerified
		if !rp.SourceVerified {
			r.rep.Errors = append(r.rep.Errors, "reads: replica run not served from the change log only: "+rp.Note)
		}
	}
	res.DBSourceChecked, res.ReplicaChecked = dbChecked, replicaChecked
	_ = cmd.Process.Kill()

	if res.Ceiling.RPS() > 0 {
		res.HitsOverCeiling = res.Hits.RPS() / res.Ceiling.RPS()
	}
	if res.DB.RPS() > 0 {
		res.HitsOverDB = res.Hits.RPS() / res.DB.RPS()
		res.ReplicaOverDB = res.Replica.RPS() / res.DB.RPS()
	}
	if res.Replica.RPS() > 0 {
		res.HitsOverReplica = res.Hits.RPS() / res.Replica.RPS()
	}
	if res.HitsOverDB < 5 {
		r.say("reads: hits/database %.1f < 5: profiling the machine with perf during another database run", res.HitsOverDB)
		res.DBPerfProfile = r.perfProfile(ctx, nodeDB.Pid(), 6*time.Second, func(d time.Duration) {
			_, _, _, _ = wrk.exec(ctx, nodeDB.URL(), d)
		})
	}
	if res.HitsOverCeiling < 0.7 {
		r.say("reads: hits/ceiling %.2f < 0.7: profiling the node with perf during another hit run", res.HitsOverCeiling)
		res.NodePerfProfile = r.perfProfile(ctx, r.nodeA.Pid(), 6*time.Second, func(d time.Duration) {
			_, _, _, _ = wrk.exec(ctx, r.nodeA.URL(), d)
		})
	}
	return nil
}

// replicaRound puts the system in cache-only mode, checks a few replica reads
// of node one by one, measures replica reads with wrk and takes the system
// back to normal mode, whatever happened in between.
func (r *runner) replicaRound(ctx context.Context, res *ReadsResult, wrk *wrkLoad, node *launch.Node, round int, sampleIDs []int64, bodies map[int64][]byte) (s runStats, err error) {
	s.Name = fmt.Sprintf("cache-node GET, CACHE_DISABLED=true, cache-only mode: change log direct get (round %d)", round)
	t0 := time.Now()
	if _, err := r.request(events.SubjectCacheOnlyEnter, fmt.Sprintf(`{"reason":"benchmark: replica reads, round %d"}`, round)); err != nil {
		return s, err
	}
	defer func() {
		t1 := time.Now()
		_, xerr := r.request(events.SubjectCacheOnlyExit, `{}`)
		if xerr == nil {
			_, xerr = r.waitModes(ctx, r.st.Nodes, events.ModeNormal, time.Minute)
		}
		if xerr == nil {
			xerr = r.waitNormalEmpty(ctx, time.Minute)
		}
		if xerr != nil && err == nil {
			err = fmt.Errorf("leaving cache-only mode: %w", xerr)
		}
		res.ExitCacheOnly = append(res.ExitCacheOnly, time.Since(t1))
	}()
	if _, err := r.waitModes(ctx, r.st.Nodes, events.ModeCacheOnly, 10*time.Second); err != nil {
		return s, err
	}
	res.EnterCacheOnly = append(res.EnterCacheOnly, time.Since(t0))
	if round == 1 {
		if err := r.sampleReads(res, node, "replica", sampleIDs, bodies); err != nil {
			return s, err
		}
	}
	return wrk.run(ctx, r, wrkRun{name: s.Name, base: node.URL(), pid: node.Pid(), node: node, want: "replica", warm: time.Second, dur: r.cfg.readDur})
}

// sampleReads reads ids from node one by one and checks that each is a 200
// from the source want holding the version the cache-hit path served.
func (r *runner) sampleReads(res *ReadsResult, node *launch.Node, want string, ids []int64, bodies map[int64][]byte) error {
	var got []string
	lastMode := ""
	for _, id := range ids {
		resp, err := r.http.Get(fmt.Sprintf("%s/v1/anime/%d", node.URL(), id))
		if err != nil {
			return fmt.Errorf("sample %s read of %d: %w", want, id, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		src, mode := resp.Header.Get("X-AniVault-Source"), resp.Header.Get("X-AniVault-Mode")
		var rec, ref struct {
			TMDBID  int64 `json:"tmdb_id"`
			Version int64 `json:"version"`
		}
		_ = json.Unmarshal(b, &rec)
		_ = json.Unmarshal(bodies[id], &ref)
		if resp.StatusCode != 200 || src != want || rec.TMDBID != id || rec.Version != ref.Version {
			return fmt.Errorf("sample %s read of %d from %s: status %d, X-AniVault-Source %q, mode %q, tmdb_id %d version %d (want 200, %q, version %d): %s",
				want, id, node.ID, resp.StatusCode, src, mode, rec.TMDBID, rec.Version, want, ref.Version, firstLine(string(b)))
		}
		got = append(got, fmt.Sprintf("%d: %d %s v%d", id, resp.StatusCode, src, rec.Version))
		lastMode = mode
	}
	line := fmt.Sprintf("%s path, %s (X-AniVault-Mode: %s): %s", want, node.ID, lastMode, strings.Join(got, ", "))
	r.say("  sampled %s", line)
	res.Samples = append(res.Samples, line)
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
