package main

import (
	"context"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// runStats is the outcome of one fixed-duration run.
type runStats struct {
	Name     string
	Clients  int
	Duration time.Duration
	Ops      int64 // successful operations
	Errors   int64
	Codes    map[int]int64 // HTTP status codes (HTTP runs)
	P50, P90 time.Duration
	P99, Max time.Duration
	Note     string
	CPU      *cpuUsage // CPU seconds during the measured time, when watched
	// Load is the load generator: "" for the in-process Go clients, "wrk".
	Load string `json:",omitempty"`
	// Sources are the node's own counts of where it served the run's reads
	// from (cache, database, replica), when it was asked.
	Sources map[string]int64 `json:",omitempty"`
	// SourceVerified: every read the node served during the run came from
	// the path the run measures.
	SourceVerified bool `json:",omitempty"`
	// Abandoned: requests the node answered beyond those wrk counted, the
	// ones in flight when wrk stopped and closed its connections (the node
	// cancels their context, so those that were waiting on the database or
	// the change log are counted as 500 or 503 that no client received).
	Abandoned int64 `json:",omitempty"`
}

// CPUPerOp returns server-side CPU microseconds per successful operation
// (the process under test plus PostgreSQL), and the load generator's.
func (s runStats) CPUPerOp() (server, pg, bench float64) {
	if s.CPU == nil || s.Ops == 0 {
		return 0, 0, 0
	}
	n := float64(s.Ops)
	return s.CPU.Server / n * 1e6, s.CPU.Postgres / n * 1e6, s.CPU.Bench / n * 1e6
}

// RPS is successful operations per second.
func (s runStats) RPS() float64 {
	if s.Duration <= 0 {
		return 0
	}
	return float64(s.Ops) / s.Duration.Seconds()
}

// opFunc performs one operation; ok=false counts an error. code is an HTTP status (0 otherwise).
type opFunc func(ctx context.Context, rng *rand.Rand) (code int, ok bool)

// runFixed runs op from clients goroutines: warm for warm (not counted), then
// measure for dur. Every goroutine keeps its own latency samples.
func runFixed(ctx context.Context, name string, clients int, warm, dur time.Duration, watch *cpuWatch, op opFunc) runStats {
	var measuring atomic.Bool
	stop := make(chan struct{})
	type local struct {
		lat   []time.Duration
		ops   int64
		errs  int64
		codes map[int]int64
	}
	locals := make([]*local, clients)
	var wg sync.WaitGroup
	for g := range clients {
		l := &local{lat: make([]time.Duration, 0, 1<<15), codes: map[int]int64{}}
		locals[g] = l
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g)+1, 42))
			for {
				select {
				case <-stop:
					return
				default:
				}
				t0 := time.Now()
				code, ok := op(ctx, rng)
				d := time.Since(t0)
				if !measuring.Load() {
					continue
				}
				if code != 0 {
					l.codes[code]++
				}
				if ok {
					l.ops++
					l.lat = append(l.lat, d)
				} else {
					l.errs++
				}
			}
		})
	}
	time.Sleep(warm)
	if watch != nil {
		watch.begin()
	}
	measuring.Store(true)
	start := time.Now()
	select {
	case <-time.After(dur):
	case <-ctx.Done():
	}
	measuring.Store(false)
	elapsed := time.Since(start)
	if watch != nil {
		watch.end(elapsed.Seconds())
	}
	close(stop)
	wg.Wait()
	s := runStats{Name: name, Clients: clients, Duration: elapsed, Codes: map[int]int64{}}
	if watch != nil {
		u := watch.Result
		s.CPU = &u
	}
	var all []time.Duration
	for _, l := range locals {
		s.Ops += l.ops
		s.Errors += l.errs
		for c, n := range l.codes {
			s.Codes[c] += n
		}
		all = append(all, l.lat...)
	}
	s.P50, s.P90, s.P99, s.Max = percentiles(all)
	return s
}

func percentiles(d []time.Duration) (p50, p90, p99, max time.Duration) {
	if len(d) == 0 {
		return
	}
	slices.Sort(d)
	at := func(q float64) time.Duration { return d[int(q*float64(len(d)-1))] }
	return at(0.50), at(0.90), at(0.99), d[len(d)-1]
}

// newLoadClient is one transport with a keep-alive connection per client.
func newLoadClient(conns int) *http.Client {
	return &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
		MaxIdleConns: conns * 2, MaxIdleConnsPerHost: conns, IdleConnTimeout: time.Minute, DisableCompression: true,
	}}
}
