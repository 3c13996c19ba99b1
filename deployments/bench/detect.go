package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anivault/anivault/deployments/launch"
	"github.com/anivault/anivault/deployments/load"
	"github.com/anivault/anivault/events"
)

// DetectResult is phase 4.
type DetectResult struct {
	Bound           time.Duration // HEALTH_CHECK_INTERVAL × HEALTH_FAILURE_THRESHOLD
	Nodes           []string
	KillToUnhealthy time.Duration // db.unhealthy event
	KillToEvent     time.Duration // mode.cache_only event
	KillToNode      map[string]time.Duration
	KillToAll       time.Duration
	BufferedN       int
	Buffered202     int64
	BufferedErrors  int64
	BufferTime      time.Duration
	PGStart         time.Duration // pgembed Start: crash recovery until SELECT 1 works
	UpToRecovered   time.Duration // PostgreSQL answering → db.recovered
	UpToRecovering  time.Duration // → mode.recovering
	UpToNormalEvent time.Duration // → mode.normal
	UpToNormalNode  map[string]time.Duration
	UpToAll         time.Duration
	NodeReplayMS    []int64
	Replayed, Stale int64
	RowsFound       int
}

const detectBase = 50_000_000

func (r *runner) phaseDetect(ctx context.Context) error {
	if err := r.ensureNodeB(ctx); err != nil {
		return err
	}
	nodes := []*launch.Node{r.nodeA, r.nodeB}
	res := &DetectResult{Bound: healthInterval * healthThreshold, KillToNode: map[string]time.Duration{}, UpToNormalNode: map[string]time.Duration{}, BufferedN: 10_000}
	r.rep.Detect = res
	for _, n := range nodes {
		res.Nodes = append(res.Nodes, n.ID)
	}
	if err := r.waitNormalEmpty(ctx, time.Minute); err != nil {
		return err
	}
	time.Sleep(time.Second) // nodes known to the manager, a quiet start

	// Kill PostgreSQL and watch every node's /v1/status.
	mark := r.ev.mark()
	done := make(chan struct{})
	var seen map[string]time.Time
	var werr error
	go func() {
		defer close(done)
		seen, werr = r.waitModes(ctx, nodes, events.ModeCacheOnly, 30*time.Second)
	}()
	time.Sleep(50 * time.Millisecond) // pollers running
	r.checkpoint(ctx)
	r.say("detect: SIGKILL PostgreSQL")
	tKill := time.Now()
	if err := r.st.PG.Kill(); err != nil {
		return err
	}
	<-done
	if werr != nil {
		return werr
	}
	for id, t := range seen {
		d := t.Sub(tKill)
		res.KillToNode[id] = d
		res.KillToAll = max(res.KillToAll, d)
	}
	if e, err := r.ev.wait(ctx, mark, 5*time.Second, isSubject(events.SubjectDBUnhealthy)); err == nil {
		res.KillToUnhealthy = e.At.Sub(tKill)
	}
	if e, err := r.ev.wait(ctx, mark, 5*time.Second, isSubject(events.SubjectModeCacheOnly)); err == nil {
		res.KillToEvent = e.At.Sub(tKill)
	}
	r.say("  cache_only on every node after %v (bound %v): %v", res.KillToAll, res.Bound, res.KillToNode)

	// 10,000 buffered writes through both nodes.
	client := newLoadClient(r.cfg.conns)
	var next, ok202, bad atomic.Int64
	t0 := time.Now()
	var wg sync.WaitGroup
	var lastErr atomic.Value
	for g := range r.cfg.conns {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(res.BufferedN) {
					return
				}
				rec := r.record(int(i), detectBase+i)
				body, _ := events.Marshal(&rec)
				node := nodes[g%len(nodes)]
				req, _ := http.NewRequestWithContext(ctx, http.MethodPut, node.URL()+"/v1/anime/"+strconv.FormatInt(rec.TMDBID, 10), bytes.NewReader(body))
				code, b, err := load.Do(client, req)
				if err == nil && code == 202 {
					ok202.Add(1)
				} else {
					bad.Add(1)
					lastErr.Store(fmt.Sprintf("%d %s %v", code, b, err))
				}
			}
		})
	}
	wg.Wait()
	res.BufferTime = time.Since(t0)
	res.Buffered202, res.BufferedErrors = ok202.Load(), bad.Load()
	r.say("  %d writes answered 202 in %v, %d not (%v)", res.Buffered202, res.BufferTime.Round(time.Millisecond), res.BufferedErrors, lastErr.Load())

	// PostgreSQL back: crash recovery, then the system heals itself.
	mark = r.ev.mark()
	r.say("detect: starting PostgreSQL again")
	t1 := time.Now()
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	err := r.st.PG.Start(sctx)
	cancel()
	if err != nil {
		return err
	}
	tUp := time.Now()
	res.PGStart = tUp.Sub(t1)
	rec, err := r.ev.wait(ctx, mark, time.Minute, isSubject(events.SubjectModeRecovering))
	if err != nil {
		return fmt.Errorf("mode.recovering: %w", err)
	}
	epoch := rec.num("epoch")
	res.UpToRecovering = rec.At.Sub(tUp)
	seen, err = r.waitModes(ctx, nodes, events.ModeNormal, 2*time.Minute)
	if err != nil {
		return err
	}
	for id, t := range seen {
		d := t.Sub(tUp)
		res.UpToNormalNode[id] = d
		res.UpToAll = max(res.UpToAll, d)
	}
	for _, e := range r.ev.since(mark) {
		switch {
		case e.Subject == events.SubjectDBRecovered && res.UpToRecovered == 0:
			res.UpToRecovered = e.At.Sub(tUp)
		case e.Subject == events.SubjectModeNormal && e.num("epoch") > epoch && res.UpToNormalEvent == 0:
			res.UpToNormalEvent = e.At.Sub(tUp)
		case e.Subject == events.SubjectReplayCompleted && e.num("epoch") == epoch:
			res.NodeReplayMS = append(res.NodeReplayMS, int64(e.num("duration_ms")))
			res.Replayed += int64(e.num("replayed"))
			res.Stale += int64(e.num("skipped_stale"))
		}
	}
	cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
	res.RowsFound, _ = countRange(cctx, r.mainStore, detectBase, res.BufferedN)
	ccancel()
	r.say("  PostgreSQL start %v; then db.recovered %v, recovering %v, normal on every node %v; rows %d/%d",
		res.PGStart.Round(time.Millisecond), res.UpToRecovered, res.UpToRecovering, res.UpToAll, res.RowsFound, res.BufferedN)
	return r.waitNormalEmpty(ctx, time.Minute)
}
