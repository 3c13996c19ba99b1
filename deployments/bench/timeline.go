package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/anivault/anivault/deployments/launch"
	"github.com/anivault/anivault/deployments/load"
	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/metastore"
	"github.com/anivault/anivault/pkg/pgdb"
)

// TimelineResult is phase 6.
type TimelineResult struct {
	Writers, Readers int
	Pause            time.Duration
	Step             time.Duration
	Samples          []sample
	Modes            []modeSpan
	KillAt, UpAt     time.Duration // offsets from the load start
	StartCalledAt    time.Duration
	NormalAt         time.Duration
	End              time.Duration
	Counters         load.Counters
	Tally            load.Tally
	PeakRPS          float64
	MeanRPSNormal    float64
	MeanRPSOutage    float64
	SVG              string
}

// sample is one 100 ms step: counts in that step.
type sample struct {
	T                                time.Duration
	Reads, Unavailable, ReadErrors   int64
	Committed, Buffered, WriteErrors int64
}

type modeSpan struct {
	Mode     events.Mode
	From, To time.Duration
}

func (r *runner) phaseTimeline(ctx context.Context) error {
	if err := r.ensureNodeB(ctx); err != nil {
		return err
	}
	nodes := []*launch.Node{r.nodeA, r.nodeB}
	res := &TimelineResult{Writers: 16, Readers: 16, Pause: 2 * time.Millisecond, Step: 100 * time.Millisecond}
	r.rep.Timeline = res
	if err := r.waitNormalEmpty(ctx, time.Minute); err != nil {
		return err
	}
	urls := []string{r.nodeA.URL(), r.nodeB.URL()}
	gen, err := load.New(load.Config{Nodes: urls, Records: r.records, Writers: res.Writers, Readers: res.Readers,
		DeleteEvery: 25, Pause: res.Pause, Seed: 1429})
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	err = gen.WriteAll(wctx, 8)
	cancel()
	if err != nil {
		return fmt.Errorf("warm: %w", err)
	}
	time.Sleep(500 * time.Millisecond)

	r.checkpoint(ctx)
	mark := r.ev.mark()
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	start := time.Now()
	var wg sync.WaitGroup
	wg.Go(func() { gen.Run(loadCtx) })
	var mu sync.Mutex
	wg.Go(func() {
		tick := time.NewTicker(res.Step)
		defer tick.Stop()
		prev := gen.Counters()
		for {
			select {
			case <-loadCtx.Done():
				return
			case <-tick.C:
			}
			c := gen.Counters()
			s := sample{T: time.Since(start), Reads: c.Reads - prev.Reads, Unavailable: c.ReadUnavailable - prev.ReadUnavailable,
				ReadErrors: c.ReadErrors - prev.ReadErrors, Committed: c.Committed - prev.Committed, Buffered: c.Buffered - prev.Buffered,
				WriteErrors: c.WriteErrors - prev.WriteErrors}
			prev = c
			mu.Lock()
			res.Samples = append(res.Samples, s)
			mu.Unlock()
		}
	})
	sleep := func(d time.Duration) bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(d):
			return true
		}
	}
	if !sleep(5 * time.Second) {
		return ctx.Err()
	}
	r.say("timeline: SIGKILL PostgreSQL under load (%d writers, %d readers)", res.Writers, res.Readers)
	res.KillAt = time.Since(start)
	if err := r.st.PG.Kill(); err != nil {
		return err
	}
	if !sleep(8 * time.Second) {
		return ctx.Err()
	}
	res.StartCalledAt = time.Since(start)
	sctx, scancel := context.WithTimeout(ctx, 2*time.Minute)
	err = r.st.PG.Start(sctx)
	scancel()
	if err != nil {
		return err
	}
	res.UpAt = time.Since(start)
	r.say("timeline: PostgreSQL back after crash recovery")
	if _, err := r.waitModes(ctx, nodes, events.ModeNormal, 2*time.Minute); err != nil {
		return err
	}
	res.NormalAt = time.Since(start)
	r.say("timeline: normal on every node at +%v", res.NormalAt.Round(100*time.Millisecond))
	sleep(4 * time.Second)
	stopLoad()
	wg.Wait()
	res.End = time.Since(start)

	// Mode bands from the mode events.
	cur, curFrom := events.ModeNormal, time.Duration(0)
	for _, e := range r.ev.since(mark) {
		var m events.Mode
		switch e.Subject {
		case events.SubjectModeCacheOnly:
			m = events.ModeCacheOnly
		case events.SubjectModeRecovering:
			m = events.ModeRecovering
		case events.SubjectModeNormal:
			m = events.ModeNormal
		default:
			continue
		}
		at := e.At.Sub(start)
		res.Modes = append(res.Modes, modeSpan{cur, curFrom, at})
		cur, curFrom = m, at
	}
	res.Modes = append(res.Modes, modeSpan{cur, curFrom, res.End})

	if err := r.waitNormalEmpty(ctx, 2*time.Minute); err != nil {
		return err
	}
	var table map[int64]metastore.Version
	for range 20 {
		tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		table, err = r.mainStore.Versions(tctx)
		cancel()
		if err == nil {
			break
		}
		pgdb.DropIdle(r.mainStore.DB(), 64)
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	res.Counters = gen.Counters()
	res.Tally = gen.Check(table)

	var nN, nO int
	var sumN, sumO float64
	for _, s := range res.Samples {
		rps := float64(s.Reads+s.Unavailable+s.ReadErrors+s.Committed+s.Buffered+s.WriteErrors) / res.Step.Seconds()
		res.PeakRPS = max(res.PeakRPS, rps)
		switch {
		case s.T < res.KillAt:
			nN++
			sumN += rps
		case s.T >= res.KillAt && s.T < res.UpAt:
			nO++
			sumO += rps
		}
	}
	if nN > 0 {
		res.MeanRPSNormal = sumN / float64(nN)
	}
	if nO > 0 {
		res.MeanRPSOutage = sumO / float64(nO)
	}
	res.SVG = timelineSVG(res)
	r.say("timeline: acknowledged %d (committed %d, buffered %d), write errors %d, lost %d",
		res.Tally.Acknowledged, res.Counters.Committed, res.Counters.Buffered, res.Counters.WriteErrors, res.Tally.Lost)
	return nil
}
