// Command bench measures AniVault against the machine's own ceilings, side by
// side in one run, and writes a report:
//
//	go run ./deployments/bench --out bench-results     (go tool task bench)
//
// It builds the services, starts the embedded NATS server (JetStream, fsync
// before every acknowledgement) and a private PostgreSQL, runs the services as
// OS processes and measures reads (driven by wrk, Debian package wrk), the
// change log's cost, writes, replay, detection and recovery, memory, an
// outage timeline and the Go micro-benchmarks. Results go to
// <out>/REPORT.md, <out>/outage-timeline.svg and <out>/results.json.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

type config struct {
	out         string
	dir         string
	moduleDir   string
	conns       int
	readDur     time.Duration
	readRounds  int
	writeDur    time.Duration
	writeRounds int
	replayN     int
	naiveN      int
	bigReplay   int
	memN        int
	changeLogN  int
	ingestN     int
	only        map[string]bool
	skipMicro   bool
	benchtime   string
}

func (c config) want(phase string) bool { return len(c.only) == 0 || c.only[phase] }

func main() {
	if len(os.Args) > 1 && os.Args[1] == "serve-static" {
		if err := serveStatic(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "serve-static:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 2 && os.Args[1] == "render" {
		// Render REPORT.md again from a results.json (to the same directory).
		if err := rerender(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "render:", err)
			os.Exit(1)
		}
		return
	}
	var c config
	var only string
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	fs.StringVar(&c.out, "out", "bench-results", "directory for REPORT.md, outage-timeline.svg, results.json and raw outputs")
	fs.StringVar(&c.dir, "dir", ".anivault/bench", "working directory (binaries, NATS store, logs)")
	fs.StringVar(&c.moduleDir, "module", ".", "repository root (for go build and go test)")
	fs.IntVar(&c.conns, "conns", 64, "concurrent clients (keep-alive connections) for reads and writes")
	fs.DurationVar(&c.readDur, "read-duration", 6*time.Second, "measured time of each read run")
	fs.IntVar(&c.readRounds, "read-rounds", 2, "interleaved rounds of the four read runs: cache hits, ceiling, database, replica (the best of each is compared)")
	fs.DurationVar(&c.writeDur, "write-duration", 6*time.Second, "measured time of each write run")
	fs.IntVar(&c.writeRounds, "write-rounds", 2, "interleaved rounds of the write runs (the best of each is compared)")
	fs.IntVar(&c.replayN, "replay-writes", 100_000, "buffered writes replayed")
	fs.IntVar(&c.naiveN, "naive-writes", 5_000, "one-row-at-a-time upserts timed (extrapolated to --replay-writes)")
	fs.IntVar(&c.bigReplay, "big-replay-writes", 20_000, "writes replayed from full 256-write buffer messages (0: skip that experiment)")
	fs.IntVar(&c.memN, "memory-records", 100_000, "records of about 2 KiB offered to the memory-bounded node")
	fs.IntVar(&c.changeLogN, "changelog-records", 20_000, "fixture-shaped records written to measure the change log's disk bytes and the NATS server's memory (scaled to 100,000)")
	fs.IntVar(&c.ingestN, "ingest-records", 40_000, "metadata.upsert messages preloaded for the ingest phase (a quarter of that many keys, each written four times in order)")
	fs.StringVar(&only, "only", "", "comma-separated phases to run: reads,changelog,writes,ingest,replay,memory,detect,timeline,micro (default all)")
	fs.BoolVar(&c.skipMicro, "skip-micro", false, "skip the go test micro-benchmarks")
	fs.StringVar(&c.benchtime, "benchtime", "", "go test -benchtime for the micro-benchmarks (default go test's 1s)")
	_ = fs.Parse(os.Args[1:])
	if only != "" {
		c.only = map[string]bool{}
		for _, p := range strings.Split(only, ",") {
			c.only[strings.TrimSpace(p)] = true
		}
	}
	var err error
	if c.out, err = filepath.Abs(c.out); err == nil {
		if c.dir, err = filepath.Abs(c.dir); err == nil {
			c.moduleDir, err = filepath.Abs(c.moduleDir)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := run(ctx, c)
	if rep != nil {
		if werr := writeReport(c.out, rep); werr != nil {
			fmt.Fprintln(os.Stderr, "write report:", werr)
			os.Exit(1)
		}
		fmt.Printf("\nreport: %s\n", filepath.Join(c.out, "REPORT.md"))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
