// Package stack starts a whole AniVault on one machine for the demo, the chaos
// runner and the benchmarks: an embedded NATS server with JetStream (fsync
// before every acknowledgement) or a cluster of them, a private PostgreSQL
// instance (or an existing DATABASE_URL), and the three services as separate
// OS processes.
package stack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/anivault/anivault/pkg/natsembed"
	"github.com/anivault/anivault/pkg/pgembed"
	"github.com/anivault/anivault/pkg/procs"
)

// Options configure a Stack.
type Options struct {
	// Dir holds binaries, the NATS store, PostgreSQL data and logs.
	Dir string
	// ModuleDir is the repository root, for go build.
	ModuleDir string
	// DatabaseURL, when set, is used instead of a private PostgreSQL instance.
	DatabaseURL string
	// NATSPort fixes the NATS port (0: a free one). Ignored for a cluster.
	NATSPort int
	// NATSCluster, when above 1, starts that many NATS servers as one
	// cluster (natsembed.StartCluster, fsync on every acknowledgement, stores
	// in <Dir>/nats/s<i>) instead of a single server.
	NATSCluster int
	// Env is added to every service's environment.
	Env map[string]string
}

// Stack is a running system.
type Stack struct {
	opts Options
	Bins map[string]string
	// NATS is the single server, or the first server of a cluster.
	NATS *natsembed.Server
	// Cluster holds every server of a cluster (nil for a single server);
	// server i (0-based) is named "s<i+1>".
	Cluster []*natsembed.Server
	PG      *pgembed.Instance // nil when DatabaseURL was given
	DSN     string
	Nodes   []*Node
	Monitor *procs.Proc
	Manager *procs.Proc
}

// Node is one cache-node process.
type Node struct {
	*procs.Proc
	ID   string
	Addr string
}

// URL is the node's HTTP base URL.
func (n *Node) URL() string { return "http://" + n.Addr }

// Start builds the services and starts NATS and PostgreSQL (not the services).
func Start(ctx context.Context, opts Options) (*Stack, error) {
	if opts.Dir == "" {
		return nil, errors.New("stack: Dir is required")
	}
	if err := os.MkdirAll(filepath.Join(opts.Dir, "logs"), 0o755); err != nil {
		return nil, fmt.Errorf("stack dir: %w", err)
	}
	s := &Stack{opts: opts}
	bins, err := procs.Build(ctx, opts.ModuleDir, filepath.Join(opts.Dir, "bin"),
		"./services/cache-node", "./services/health-monitor", "./services/recovery-manager")
	if err != nil {
		return nil, err
	}
	s.Bins = bins
	natsDir := filepath.Join(opts.Dir, "nats")
	_ = os.RemoveAll(natsDir)
	if opts.NATSCluster > 1 {
		s.Cluster, err = natsembed.StartCluster(ctx, opts.NATSCluster, natsDir, true)
		if err != nil {
			return nil, fmt.Errorf("start nats cluster: %w", err)
		}
		s.NATS = s.Cluster[0]
	} else {
		s.NATS, err = natsembed.Start(ctx, natsembed.Options{Host: "127.0.0.1", Port: opts.NATSPort, StoreDir: natsDir, SyncAlways: true})
		if err != nil {
			return nil, fmt.Errorf("start nats: %w", err)
		}
	}
	if opts.DatabaseURL != "" {
		s.DSN = opts.DatabaseURL
		return s, nil
	}
	s.PG, err = pgembed.Start(ctx, pgembed.Options{})
	if err != nil {
		s.shutdownNATS()
		return nil, err
	}
	s.DSN = s.PG.DSN()
	return s, nil
}

// NATSServers returns every NATS server: the cluster's, or the single one.
func (s *Stack) NATSServers() []*natsembed.Server {
	if len(s.Cluster) > 0 {
		return s.Cluster
	}
	return []*natsembed.Server{s.NATS}
}

// NATSURL is the services' NATS_URL: the single server's URL, or every
// cluster server's URL, comma-separated.
func (s *Stack) NATSURL() string { return natsembed.ClusterURL(s.NATSServers()) }

func (s *Stack) shutdownNATS() {
	for _, srv := range s.NATSServers() {
		if srv != nil {
			srv.Shutdown()
		}
	}
}

// Env returns the environment common to every service.
func (s *Stack) Env(extra map[string]string) map[string]string {
	e := map[string]string{"NATS_URL": s.NATSURL(), "DATABASE_URL": s.DSN, "LOG_FORMAT": "json", "LOG_LEVEL": "info"}
	for k, v := range s.opts.Env {
		e[k] = v
	}
	for k, v := range extra {
		e[k] = v
	}
	return e
}

func (s *Stack) proc(name, bin string, env map[string]string) *procs.Proc {
	return procs.New(name, s.Bins[bin], filepath.Join(s.opts.Dir, "logs", name+".log"), env)
}

// StartMonitor starts the health-monitor, its admin endpoints on a free
// port unless env sets ADMIN_ADDR.
func (s *Stack) StartMonitor(env map[string]string) error {
	admin, err := FreeAddr()
	if err != nil {
		return err
	}
	s.Monitor = s.proc("health-monitor", "health-monitor", s.Env(MergeEnv(map[string]string{"NODE_ID": "health-monitor", "ADMIN_ADDR": admin}, env)))
	return s.Monitor.Start()
}

// StartManager starts the recovery-manager, its admin endpoints on a free
// port unless env sets ADMIN_ADDR.
func (s *Stack) StartManager(env map[string]string) error {
	admin, err := FreeAddr()
	if err != nil {
		return err
	}
	s.Manager = s.proc("recovery-manager", "recovery-manager", s.Env(MergeEnv(map[string]string{"NODE_ID": "recovery-manager", "ADMIN_ADDR": admin}, env)))
	return s.Manager.Start()
}

// StartNode starts a cache-node on addr ("" picks a free port) and waits until it is ready.
func (s *Stack) StartNode(ctx context.Context, id, addr string, env map[string]string) (*Node, error) {
	if addr == "" {
		a, err := FreeAddr()
		if err != nil {
			return nil, err
		}
		addr = a
	}
	n := &Node{ID: id, Addr: addr}
	n.Proc = s.proc("cache-node-"+id, "cache-node", s.Env(MergeEnv(map[string]string{"NODE_ID": id, "HTTP_ADDR": addr}, env)))
	if err := n.Start(); err != nil {
		return nil, err
	}
	s.Nodes = append(s.Nodes, n)
	return n, WaitReady(ctx, n)
}

// WaitReady polls the node's /readyz until 200.
func WaitReady(ctx context.Context, n *Node) error {
	c := &http.Client{Timeout: time.Second}
	for {
		if !n.Running() {
			return fmt.Errorf("cache-node %s exited: %v", n.ID, n.ExitErr())
		}
		if resp, err := c.Get(n.URL() + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cache-node %s not ready: %w", n.ID, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Close stops every process, then NATS and PostgreSQL.
func (s *Stack) Close(ctx context.Context) {
	for _, n := range s.Nodes {
		_ = n.Stop(10 * time.Second)
	}
	for _, p := range []*procs.Proc{s.Monitor, s.Manager} {
		if p != nil {
			_ = p.Stop(10 * time.Second)
		}
	}
	s.shutdownNATS()
	if s.PG != nil {
		_ = s.PG.Close(ctx)
	}
}

// FreeAddr returns a free 127.0.0.1 address.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// MergeEnv returns a copy of a with the entries of b added or replacing.
func MergeEnv(a, b map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}
