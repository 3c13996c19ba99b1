// Command chaos runs seeded, randomized fault schedules against a whole
// AniVault on this machine and checks that no acknowledged write was lost.
//
//	go run ./deployments/chaos --seed 42 --schedules 10 --duration 60s --nodes 3
//	go run ./deployments/chaos --seed 7 --schedules 3 --duration 30s --nats-cluster 3
//	go tool task chaos -- --schedules 50
//
// Schedule i runs with seed+i; its fault list is printed before it runs and
// replays exactly with --seed <its seed> --schedules 1 (and the same
// --nats-cluster). The run ends with a report and exits 1 when any checker
// failed. A JSON report (--report, by default <dir>/report.json) is
// rewritten atomically after every schedule, so that an interrupted run
// still leaves one.
//
// --nats-cluster 3 runs NATS as a cluster of three servers (streams and the
// KV bucket replicated three ways, BUFFER_REPLICAS=3) and adds the
// nats_server_kill fault: one server (the buffer stream's leader) stopped and
// started again, which must cost no acknowledged write. nats_restart then
// restarts the whole cluster.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/anivault/anivault/deployments/chaos/chaos"
)

func main() {
	var cfg chaos.Config
	var seed int64
	fs := flag.NewFlagSet("chaos", flag.ExitOnError)
	fs.Int64Var(&seed, "seed", -1, "seed of the first schedule (default: from the clock); schedule i uses seed+i")
	fs.IntVar(&cfg.Schedules, "schedules", 1, "number of schedules")
	fs.DurationVar(&cfg.Duration, "duration", 60*time.Second, "load (and fault schedule) duration of one schedule")
	fs.IntVar(&cfg.Nodes, "nodes", 3, "cache-nodes")
	fs.IntVar(&cfg.NATSCluster, "nats-cluster", 0, "NATS servers: 0 or 1 for one server; 3 to 5 for a cluster (BUFFER_REPLICAS=N, adds the nats_server_kill fault)")
	fs.IntVar(&cfg.HTTPWriters, "http-writers", 4, "concurrent HTTP writers")
	fs.IntVar(&cfg.Producers, "producers", 2, "concurrent JetStream producers (metadata.upsert/delete)")
	fs.IntVar(&cfg.Readers, "readers", 2, "concurrent HTTP readers")
	fs.DurationVar(&cfg.StalenessBound, "staleness-bound", 5*time.Second, "STALENESS_BOUND of the cache-nodes, and the bound the read checkers judge with")
	fs.DurationVar(&cfg.Pause, "pause", 5*time.Millisecond, "pause between two requests of one client")
	fs.DurationVar(&cfg.MinFault, "min-fault", time.Second, "shortest database fault")
	fs.DurationVar(&cfg.MaxFault, "max-fault", 8*time.Second, "longest database fault")
	fs.DurationVar(&cfg.MinGap, "min-gap", time.Second, "shortest quiet time between database faults")
	fs.DurationVar(&cfg.MaxGap, "max-gap", 5*time.Second, "longest quiet time between database faults")
	fs.IntVar(&cfg.ProcessFaults, "process-faults", 0, "process faults per schedule (0: one per 10s, at least 2)")
	fs.StringVar(&cfg.Dir, "dir", ".anivault/chaos", "working directory; a failed schedule's logs stay in <dir>/seed-N/logs")
	fs.BoolVar(&cfg.KeepDirs, "keep", false, "keep the working directories of passing schedules too")
	fs.StringVar(&cfg.Report, "report", "", "JSON report (parameters, every schedule's faults, verdict, checkers and figures, totals), rewritten after every schedule (default <dir>/report.json)")
	fs.BoolVar(&cfg.Quiet, "quiet", false, "print only schedules and verdicts, not every event")
	fs.IntVar(&cfg.PGMaxConnections, "pg-max-connections", 0, "raise PostgreSQL's max_connections (0: pgembed's 200); a workaround for a service connection leak")
	fs.BoolVar(&cfg.Strict, "strict", false, "advisory checkers fail the run too")
	fs.StringVar(&cfg.LogLevel, "log-level", "info", "LOG_LEVEL of the services")
	fs.Func("env", "KEY=VALUE added to every service's environment (repeatable), e.g. --env DB_GROUP_COMMIT_MAX=256", func(kv string) error {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return fmt.Errorf("want KEY=VALUE, got %q", kv)
		}
		if cfg.Env == nil {
			cfg.Env = map[string]string{}
		}
		cfg.Env[k] = v
		return nil
	})
	printOnly := fs.Bool("print-schedule", false, "print the schedules and exit without running them")
	_ = fs.Parse(os.Args[1:])
	if seed < 0 {
		seed = time.Now().UnixNano() % 1_000_000_000
	}
	cfg.Seed = uint64(seed)
	if *printOnly {
		cfg.Defaults()
		if err := cfg.Validate(); err != nil {
			fmt.Fprintln(os.Stderr, "error:", err)
			os.Exit(2)
		}
		for i := range cfg.Schedules {
			fmt.Print(chaos.Generate(cfg.Seed+uint64(i), cfg.ScheduleOptions()))
		}
		return
	}
	cfg.Out = os.Stdout
	nats := "one NATS server"
	if cfg.NATSCluster > 1 {
		nats = fmt.Sprintf("a NATS cluster of %d servers", cfg.NATSCluster)
	}
	fmt.Printf("chaos: seed %d, %d schedules of %v, %d cache-nodes, %s\n", cfg.Seed, cfg.Schedules, cfg.Duration, cfg.Nodes, nats)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := chaos.Run(ctx, cfg)
	rep.Print(os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	if !rep.Passed() {
		fmt.Fprintf(os.Stderr, "FAILED: a checker failed (seed %d); see the replay lines above\n", cfg.Seed)
		os.Exit(1)
	}
}
