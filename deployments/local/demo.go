package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/deployments/launch"
	"github.com/anivault/anivault/deployments/load"
	"github.com/anivault/anivault/deployments/local/fixtures"
	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/faultproxy"
	"github.com/anivault/anivault/pkg/pgembed"
)

// lostError ends the demo with a non-zero status.
type lostError struct{ lost int }

func (e *lostError) Error() string { return fmt.Sprintf("%d acknowledged writes were lost", e.lost) }

type demoFlags struct {
	duration, outageAt, outage time.Duration
	nodes, writers, readers    int
	keepRunning                bool
	dir                        string
}

func runDemo(ctx context.Context, args []string, out io.Writer) error {
	var f demoFlags
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.DurationVar(&f.duration, "duration", 40*time.Second, "how long the load runs")
	fs.DurationVar(&f.outageAt, "outage-at", 8*time.Second, "when PostgreSQL is killed, after the load starts")
	fs.DurationVar(&f.outage, "outage", 12*time.Second, "how long PostgreSQL stays down")
	fs.IntVar(&f.nodes, "nodes", 2, "number of cache-nodes")
	fs.IntVar(&f.writers, "writers", 8, "concurrent writers")
	fs.IntVar(&f.readers, "readers", 8, "concurrent readers")
	fs.BoolVar(&f.keepRunning, "keep-running", false, "leave the system up afterwards and print how to poke it")
	fs.StringVar(&f.dir, "dir", ".anivault/demo", "working directory (binaries, NATS store, PostgreSQL data, logs)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if f.outageAt+f.outage >= f.duration {
		return fmt.Errorf("--outage-at (%v) + --outage (%v) must end before --duration (%v)", f.outageAt, f.outage, f.duration)
	}
	records, err := fixtures.Records()
	if err != nil {
		return err
	}
	dir, err := filepath.Abs(f.dir)
	if err != nil {
		return err
	}
	_ = os.RemoveAll(dir)
	begin := time.Now()
	say := func(format string, a ...any) { launch.Say(out, begin, format, a...) }
	say("building the services and starting NATS (JetStream, fsync on every ack) and PostgreSQL ...")
	sctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	st, err := launch.Start(sctx, launch.Options{Dir: dir, ModuleDir: ".", DatabaseURL: os.Getenv("DATABASE_URL")})
	cancel()
	if errors.Is(err, pgembed.ErrNoBinaries) {
		return fmt.Errorf("%w\nThe demo needs the PostgreSQL server binaries (initdb, pg_ctl, postgres): on Debian or Ubuntu run `apt-get install postgresql`, on macOS `brew install postgresql@15`; or set DATABASE_URL to a PostgreSQL you may use", err)
	}
	if err != nil {
		return err
	}
	defer st.Close(context.Background())

	// The outage: with a private PostgreSQL the demo kills it; with DATABASE_URL
	// it cuts the connections with a fault proxy instead (it will not kill your server).
	dsn := st.DSN
	var proxy *faultproxy.Proxy
	if st.PG == nil {
		if proxy, dsn, err = st.ProxyDatabase(); err != nil {
			return err
		}
		defer proxy.Close()
		say("using DATABASE_URL through a fault proxy at %s (the outage cuts connections)", proxy.Addr())
	} else {
		say("private PostgreSQL on port %d (data in %s)", st.PG.Port(), st.PG.DataDir())
	}
	common := map[string]string{
		"DATABASE_URL":          dsn,
		"HEALTH_CHECK_INTERVAL": "500ms", "HEALTH_CHECK_TIMEOUT": "1s",
		"HEALTH_FAILURE_THRESHOLD": "2", "HEALTH_RECOVERY_THRESHOLD": "2",
		"RECOVERY_CHECK_INTERVAL": "5s", "NODE_STATUS_INTERVAL": "500ms", "NODE_TIMEOUT": "3s",
		"DB_TIMEOUT": "1s", "BREAKER_OPEN_TIMEOUT": "1s", "CACHE_MAX_SIZE": "10000",
	}
	ids := make([]string, f.nodes)
	for i := range ids {
		ids[i] = fmt.Sprintf("node-%d", i+1)
	}
	nodes, err := st.StartServices(ctx, common, ids...)
	if err != nil {
		return err
	}
	urls := launch.URLs(nodes)
	say("NATS %s, %d cache-nodes: %s", st.NATS.URL(), f.nodes, strings.Join(urls, " "))

	nc, err := nats.Connect(st.NATS.URL(), nats.MaxReconnects(-1))
	if err != nil {
		return err
	}
	defer nc.Close()
	fi, _ := os.Stdout.Stat()
	tl := &timeline{begin: begin, out: out, tty: out == io.Writer(os.Stdout) && fi != nil && fi.Mode()&os.ModeCharDevice != 0}
	if err := tl.follow(nc); err != nil {
		return err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}

	gen, err := load.New(load.Config{Nodes: urls, Records: records, Writers: f.writers, Readers: f.readers,
		DeleteEvery: 25, Pause: 5 * time.Millisecond, Seed: 1429})
	if err != nil {
		return err
	}
	say("warming the cache: every fixture record written once (%d records)", len(records))
	warm, wcancel := context.WithTimeout(ctx, 60*time.Second)
	if err := gen.WriteAll(warm, 8); err != nil {
		wcancel()
		return err
	}
	wcancel()

	say("load: %d writers and %d readers for %v; PostgreSQL goes down at +%v for %v", f.writers, f.readers, f.duration, f.outageAt, f.outage)
	loadCtx, stopLoad := context.WithTimeout(ctx, f.duration)
	defer stopLoad()
	// The sampler records the picture's series until the system has healed,
	// past the end of the load; it prints the live line while the load runs.
	sampleCtx, stopSampling := context.WithCancel(ctx)
	defer stopSampling()
	var wg, sampler sync.WaitGroup
	wg.Go(func() { gen.Run(loadCtx) })
	sampler.Go(func() { tl.live(sampleCtx, loadCtx.Done(), gen, js) })
	svgPath := filepath.Join(dir, "timeline.svg")
	pic := picture{Nodes: f.nodes, Writers: f.writers, Readers: f.readers}
	// draw writes the picture of what was recorded so far.
	draw := func() error {
		stopSampling()
		sampler.Wait()
		pic.Counters = gen.Counters()
		return tl.writeSVG(svgPath, pic)
	}

	loadStart := time.Now()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(f.outageAt):
	}
	if proxy != nil {
		proxy.Disable()
		tl.outage(time.Now(), time.Time{}, "PostgreSQL unreachable")
		tl.mark("OUTAGE: connections to PostgreSQL cut by the fault proxy", "connections cut")
	} else {
		if err := st.PG.Kill(); err != nil {
			return err
		}
		tl.outage(time.Now(), time.Time{}, "PostgreSQL down")
		tl.mark("OUTAGE: PostgreSQL killed with SIGKILL", "PostgreSQL SIGKILL")
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(f.outage):
	}
	if proxy != nil {
		if err := proxy.Enable(); err != nil {
			return err
		}
		tl.outage(time.Time{}, time.Now(), "")
		tl.mark("PostgreSQL reachable again", "PostgreSQL reachable")
	} else {
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := st.PG.Start(rctx)
		cancel()
		if err != nil {
			return err
		}
		tl.outage(time.Time{}, time.Now(), "")
		tl.mark("PostgreSQL started again (crash recovery done)", "PostgreSQL up")
	}
	wg.Wait()
	tl.mark(fmt.Sprintf("load stopped after %v", time.Since(loadStart).Round(time.Second)), "load stopped")

	// Let the system finish healing on its own, then count.
	if err := waitHealed(ctx, js, 90*time.Second); err != nil {
		where := svgPath
		if derr := draw(); derr != nil {
			where = derr.Error()
		}
		return fmt.Errorf("system did not heal: %w (timeline: %s; service logs: %s)", err, where, filepath.Join(dir, "logs"))
	}
	tl.mark("healed: mode normal, write buffer empty", "healed")
	pic.Healed = true
	table, err := st.ReadTable(ctx)
	if err != nil {
		return err
	}
	t := gen.Check(table)
	pic.Tally = &t
	svgErr := draw()
	picPath := svgPath
	if svgErr != nil {
		picPath = "NOT WRITTEN: " + svgErr.Error()
	}
	c := gen.Counters()
	fmt.Fprintf(out, "\n==== tally ====\n")
	fmt.Fprintf(out, "writes acknowledged:   %d (committed %d, buffered during the outage %d)\n", t.Acknowledged, c.Committed, c.Buffered)
	fmt.Fprintf(out, "write errors:          %d (answered 503: %d)\n", c.WriteErrors, c.WriteUnavailable)
	fmt.Fprintf(out, "reads served:          %d (uncached reads answered 503 during the outage: %d, errors: %d)\n", c.Reads, c.ReadUnavailable, c.ReadErrors)
	fmt.Fprintf(out, "keys written:          %d\n", t.Keys)
	fmt.Fprintf(out, "rows matching:         %d\n", t.Matching)
	if t.Newer > 0 {
		fmt.Fprintf(out, "rows newer than acked: %d (writes still in flight when the load stopped: committed, never answered)\n", t.Newer)
	}
	fmt.Fprintf(out, "lost:                  %d\n", t.Lost)
	fmt.Fprintf(out, "total time:            %v\n", time.Since(begin).Round(100*time.Millisecond))
	fmt.Fprintf(out, "timeline:              %s\n", picPath)
	fmt.Fprintf(out, "service logs:          %s\n", filepath.Join(dir, "logs"))
	if t.Lost > 0 {
		return &lostError{lost: t.Lost}
	}
	if svgErr != nil {
		return svgErr
	}
	if f.keepRunning {
		printPoke(out, st, urls)
		<-ctx.Done()
	}
	return nil
}

// waitHealed waits for mode normal in KV and an empty write buffer.
func waitHealed(ctx context.Context, js jetstream.JetStream, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		mode, pending, err := modeAndPending(ctx, js)
		if err == nil && mode.Mode == events.ModeNormal && pending == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("mode %s, %d buffer messages pending (%v)", mode.Mode, pending, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func modeAndPending(ctx context.Context, js jetstream.JetStream) (events.ModeChanged, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var mc events.ModeChanged
	kv, err := js.KeyValue(ctx, events.BucketName)
	if err != nil {
		return mc, 0, err
	}
	e, err := kv.Get(ctx, events.KeyMode)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		mc.Mode = events.ModeNormal
	case err != nil:
		return mc, 0, err
	default:
		if err := json.Unmarshal(e.Value(), &mc); err != nil {
			return mc, 0, err
		}
	}
	s, err := js.Stream(ctx, events.StreamBuffer)
	if err != nil {
		return mc, 0, err
	}
	return mc, s.CachedInfo().State.Msgs, nil
}

func printPoke(out io.Writer, st *launch.System, urls []string) {
	s := "--server " + st.NATS.URL()
	fmt.Fprintf(out, "\n==== the system stays up (Ctrl-C stops it) ====\n")
	for _, u := range urls {
		fmt.Fprintf(out, "  curl -s %s/v1/status | jq .mode\n", u)
	}
	fmt.Fprintf(out, "  curl -s %s/v1/anime/200254\n", urls[0])
	fmt.Fprintf(out, "  curl -s %s/metrics | grep anivault_\n", urls[0])
	fmt.Fprintf(out, "  go tool nats %s sub 'mode.>'\n", s)
	fmt.Fprintf(out, "  go tool nats %s kv get anivault mode\n", s)
	fmt.Fprintf(out, "  go tool nats %s req status.get '{}'\n", s)
	fmt.Fprintf(out, "  go tool nats %s req recovery.cache_only.enter '{\"reason\":\"planned maintenance\"}'\n", s)
	fmt.Fprintf(out, "  go tool nats %s req recovery.cache_only.exit '{}'\n", s)
	fmt.Fprintf(out, "  go tool nats %s req recovery.force '{}'\n", s)
	fmt.Fprintf(out, "  go tool nats %s micro ls\n", s)
	fmt.Fprintf(out, "  go tool nats %s stream info %s\n", s, events.StreamBuffer)
	if st.PG != nil {
		fmt.Fprintf(out, "  psql %s -c 'select count(*) from anime_metadata'\n", st.DSN)
	}
}
