package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/anivault/anivault/pkg/procs"
)

// runUp runs the three services against NATS_URL and DATABASE_URL (the
// contract's defaults when unset), passing the environment through, until
// interrupted: a real single-machine deployment.
func runUp(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	nodes := fs.Int("nodes", 2, "number of cache-nodes")
	basePort := fs.Int("http-port", 8080, "HTTP port of the first cache-node; the others follow")
	dir := fs.String("dir", ".anivault/up", "directory for binaries and logs")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(*dir, "logs"), 0o755); err != nil {
		return err
	}
	bctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	bins, err := procs.Build(bctx, ".", filepath.Join(*dir, "bin"), "./services/cache-node", "./services/health-monitor", "./services/recovery-manager")
	cancel()
	if err != nil {
		return err
	}
	env := map[string]string{}
	for _, kv := range os.Environ() {
		for i := range len(kv) {
			if kv[i] == '=' {
				env[kv[:i]] = kv[i+1:]
				break
			}
		}
	}
	var all []*procs.Proc
	start := func(name, bin string, extra map[string]string) error {
		e := map[string]string{}
		for k, v := range env {
			e[k] = v
		}
		for k, v := range extra {
			e[k] = v
		}
		p := procs.New(name, bins[bin], filepath.Join(*dir, "logs", name+".log"), e)
		p.OnLine(func(line string) { fmt.Fprintf(out, "%-18s %s\n", name, line) })
		all = append(all, p)
		return p.Start()
	}
	if err := start("health-monitor", "health-monitor", nil); err != nil {
		return err
	}
	if err := start("recovery-manager", "recovery-manager", nil); err != nil {
		return err
	}
	for i := range *nodes {
		id := fmt.Sprintf("cache-node-%d", i+1)
		if err := start(id, "cache-node", map[string]string{"NODE_ID": id, "HTTP_ADDR": fmt.Sprintf(":%d", *basePort+i)}); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "AniVault is up: %d cache-nodes on ports %d..%d; logs in %s; Ctrl-C stops it.\n", *nodes, *basePort, *basePort+*nodes-1, *dir)
	<-ctx.Done()
	for i := len(all) - 1; i >= 0; i-- {
		_ = all[i].Stop(10 * time.Second)
	}
	return nil
}
