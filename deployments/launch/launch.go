// Package launch starts a whole AniVault on one machine, for the demo, the
// chaos runner, the benchmarks, the end-to-end tests and the deployments'
// system test: an embedded NATS server with JetStream (fsync before every
// acknowledgement) or a cluster of them, or a NATS given by URL; a private
// PostgreSQL instance, or a given DATABASE_URL; a fault proxy in front of
// PostgreSQL on request; and the three services (and any other main package
// asked for) as separate OS processes.
//
// Start brings up the infrastructure; the services are started one by one
// (NewNode, NewMonitor, NewManager prepare a process, the Start variants
// also start it), each with the common environment (Env) and its own.
// Close stops everything Start and the System started.
package launch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/anivault/anivault/pkg/faultproxy"
	"github.com/anivault/anivault/pkg/natsembed"
	"github.com/anivault/anivault/pkg/pgembed"
	"github.com/anivault/anivault/pkg/procs"
)

// servicePackages are the main packages every system builds.
func servicePackages() []string {
	return []string{"./services/cache-node", "./services/health-monitor", "./services/recovery-manager"}
}

// Options configure a System.
type Options struct {
	// Dir holds binaries (unless Bins is set), the NATS store and logs
	// (<Dir>/logs/<process>.log). Required.
	Dir string
	// ModuleDir is the repository root, for go build.
	ModuleDir string
	// Bins, when set, are binaries built beforehand, keyed by the last
	// element of their package path; nothing is built.
	Bins map[string]string
	// Packages are main packages built beside the three services (for
	// example "./services/provision").
	Packages []string
	// DatabaseURL, when set, is used instead of a private PostgreSQL instance.
	DatabaseURL string
	// NATSURL, when set, is a NATS the caller runs; no server is started.
	NATSURL string
	// NATSPort fixes the NATS port (0: a free one). Ignored for a cluster.
	NATSPort int
	// NATSCluster, when above 1, starts that many NATS servers as one
	// cluster (natsembed.StartCluster, fsync on every acknowledgement, stores
	// in <Dir>/nats/s<i>) instead of a single server.
	NATSCluster int
	// Env is added to every service's environment.
	Env map[string]string
	// NodeReadyTimeout bounds StartNode's wait for a node's readiness (0:
	// as long as its context allows).
	NodeReadyTimeout time.Duration
	// OnProc, when set, is called with every process the System makes,
	// before it starts (tests register their clean-up with it).
	OnProc func(*procs.Proc)
}

// System is a running system.
type System struct {
	opts Options
	Bins map[string]string
	// NATS is the single server, or the first server of a cluster (nil
	// when Options.NATSURL was given).
	NATS *natsembed.Server
	// Cluster holds every server of a cluster (nil for a single server);
	// server i (0-based) is named "s<i+1>".
	Cluster []*natsembed.Server
	PG      *pgembed.Instance // nil when DatabaseURL was given
	DSN     string
	Nodes   []*Node
	// Monitor and Manager are the last health-monitor and recovery-manager
	// made.
	Monitor *procs.Proc
	Manager *procs.Proc
	// others are every process but the cache-nodes, in the order made.
	others []*procs.Proc
}

// Node is one cache-node process.
type Node struct {
	*procs.Proc
	ID   string
	Addr string
}

// URL is the node's HTTP base URL.
func (n *Node) URL() string { return "http://" + n.Addr }

// Start builds the services (unless Options.Bins is set) and starts NATS
// and PostgreSQL (not the services).
func Start(ctx context.Context, opts Options) (*System, error) {
	if opts.Dir == "" {
		return nil, errors.New("launch: Dir is required")
	}
	if err := os.MkdirAll(filepath.Join(opts.Dir, "logs"), 0o755); err != nil {
		return nil, fmt.Errorf("launch dir: %w", err)
	}
	s := &System{opts: opts, Bins: opts.Bins}
	if s.Bins == nil {
		bins, err := procs.Build(ctx, opts.ModuleDir, filepath.Join(opts.Dir, "bin"), append(servicePackages(), opts.Packages...)...)
		if err != nil {
			return nil, fmt.Errorf("launch: %w", err)
		}
		s.Bins = bins
	}
	if err := s.startNATS(ctx); err != nil {
		return nil, err
	}
	if opts.DatabaseURL != "" {
		s.DSN = opts.DatabaseURL
		return s, nil
	}
	pg, err := pgembed.Start(ctx, pgembed.Options{})
	if err != nil {
		s.shutdownNATS()
		return nil, fmt.Errorf("launch: %w", err)
	}
	s.PG, s.DSN = pg, pg.DSN()
	return s, nil
}

func (s *System) startNATS(ctx context.Context) error {
	if s.opts.NATSURL != "" {
		return nil
	}
	natsDir := filepath.Join(s.opts.Dir, "nats")
	_ = os.RemoveAll(natsDir)
	var err error
	if s.opts.NATSCluster > 1 {
		s.Cluster, err = natsembed.StartCluster(ctx, s.opts.NATSCluster, natsDir, true)
		if err != nil {
			return fmt.Errorf("start nats cluster: %w", err)
		}
		s.NATS = s.Cluster[0]
		return nil
	}
	s.NATS, err = natsembed.Start(ctx, natsembed.Options{Host: "127.0.0.1", Port: s.opts.NATSPort, StoreDir: natsDir, SyncAlways: true})
	if err != nil {
		return fmt.Errorf("start nats: %w", err)
	}
	return nil
}

// NATSServers returns every NATS server started: the cluster's, or the
// single one (none when Options.NATSURL was given).
func (s *System) NATSServers() []*natsembed.Server {
	switch {
	case len(s.Cluster) > 0:
		return s.Cluster
	case s.NATS != nil:
		return []*natsembed.Server{s.NATS}
	default:
		return nil
	}
}

// NATSURL is the services' NATS_URL: Options.NATSURL, the single server's
// URL, or every cluster server's URL, comma-separated.
func (s *System) NATSURL() string {
	if s.opts.NATSURL != "" {
		return s.opts.NATSURL
	}
	return natsembed.ClusterURL(s.NATSServers())
}

func (s *System) shutdownNATS() {
	for _, srv := range s.NATSServers() {
		srv.Shutdown()
	}
}

// Env returns the environment common to every service (NATS_URL,
// DATABASE_URL, JSON logs at info, then Options.Env) with extra added.
func (s *System) Env(extra map[string]string) map[string]string {
	e := map[string]string{"NATS_URL": s.NATSURL(), "DATABASE_URL": s.DSN, "LOG_FORMAT": "json", "LOG_LEVEL": "info"}
	return MergeEnv(MergeEnv(e, s.opts.Env), extra)
}

// LogPath is where the process named name logs.
func (s *System) LogPath(name string) string {
	return filepath.Join(s.opts.Dir, "logs", name+".log")
}

// Command prepares the process name running binary bin (a key of Bins)
// with exactly env, not the common environment. Close stops it.
func (s *System) Command(name, bin string, env map[string]string) *procs.Proc {
	p := procs.New(name, s.Bins[bin], s.LogPath(name), env)
	s.others = append(s.others, p)
	s.made(p)
	return p
}

func (s *System) made(p *procs.Proc) {
	if s.opts.OnProc != nil {
		s.opts.OnProc(p)
	}
}

// NewProc prepares the process name running binary bin with the common
// environment and env. Close stops it.
func (s *System) NewProc(name, bin string, env map[string]string) *procs.Proc {
	return s.Command(name, bin, s.Env(env))
}

// NewMonitor prepares a health-monitor named name, its admin endpoints on a
// free port and NODE_ID "health-monitor" unless env sets them.
func (s *System) NewMonitor(name string, env map[string]string) (*procs.Proc, error) {
	return s.newAdmin(name, "health-monitor", env, &s.Monitor)
}

// StartMonitor starts the health-monitor, its admin endpoints on a free
// port unless env sets ADMIN_ADDR.
func (s *System) StartMonitor(env map[string]string) error {
	return start(s.NewMonitor("health-monitor", env))
}

// NewManager prepares a recovery-manager named name, its admin endpoints on
// a free port and NODE_ID "recovery-manager" unless env sets them.
func (s *System) NewManager(name string, env map[string]string) (*procs.Proc, error) {
	return s.newAdmin(name, "recovery-manager", env, &s.Manager)
}

// StartManager starts the recovery-manager, its admin endpoints on a free
// port unless env sets ADMIN_ADDR.
func (s *System) StartManager(env map[string]string) error {
	return start(s.NewManager("recovery-manager", env))
}

// newAdmin prepares a service bin with admin endpoints (ADMIN_ADDR) on a
// free port and NODE_ID bin, unless env sets them, and keeps it in *last.
func (s *System) newAdmin(name, bin string, env map[string]string, last **procs.Proc) (*procs.Proc, error) {
	admin, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	*last = s.NewProc(name, bin, MergeEnv(map[string]string{"NODE_ID": bin, "ADMIN_ADDR": admin}, env))
	return *last, nil
}

func start(p *procs.Proc, err error) error {
	if err != nil {
		return err
	}
	return p.Start()
}

// NewNode prepares the cache-node id (process "cache-node-<id>") on addr
// ("" picks a free port) without starting it.
func (s *System) NewNode(id, addr string, env map[string]string) (*Node, error) {
	if addr == "" {
		a, err := FreeAddr()
		if err != nil {
			return nil, err
		}
		addr = a
	}
	n := &Node{ID: id, Addr: addr}
	name := "cache-node-" + id
	n.Proc = procs.New(name, s.Bins["cache-node"], s.LogPath(name), s.Env(MergeEnv(map[string]string{"NODE_ID": id, "HTTP_ADDR": addr}, env)))
	s.Nodes = append(s.Nodes, n)
	s.made(n.Proc)
	return n, nil
}

// StartNode starts a cache-node on addr ("" picks a free port) and waits until it is ready.
func (s *System) StartNode(ctx context.Context, id, addr string, env map[string]string) (*Node, error) {
	n, err := s.NewNode(id, addr, env)
	if err != nil {
		return nil, err
	}
	if err := n.Start(); err != nil {
		return nil, err
	}
	if s.opts.NodeReadyTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.opts.NodeReadyTimeout)
		defer cancel()
	}
	return n, WaitReady(ctx, n)
}

// StartServices starts the health-monitor, the recovery-manager and a
// cache-node for every id, one after the other (each node ready before the
// next starts), all with env, and returns the nodes.
func (s *System) StartServices(ctx context.Context, env map[string]string, ids ...string) ([]*Node, error) {
	if err := s.StartMonitor(env); err != nil {
		return nil, err
	}
	if err := s.StartManager(env); err != nil {
		return nil, err
	}
	nodes := make([]*Node, 0, len(ids))
	for _, id := range ids {
		n, err := s.StartNode(ctx, id, "", env)
		if err != nil {
			return nil, err
		}
		nodes = append(nodes, n)
	}
	return nodes, nil
}

// URLs returns the nodes' base URLs.
func URLs(nodes []*Node) []string {
	urls := make([]string, len(nodes))
	for i, n := range nodes {
		urls[i] = n.URL()
	}
	return urls
}

// WaitReady polls the node's /readyz until 200.
func WaitReady(ctx context.Context, n *Node) error {
	c := &http.Client{Timeout: time.Second}
	for {
		if !n.Running() {
			return fmt.Errorf("cache-node %s exited: %v", n.ID, n.ExitErr())
		}
		if code, _, err := Get(ctx, c, n.URL()+"/readyz"); err == nil && code == http.StatusOK {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cache-node %s not ready: %w", n.ID, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ProxyDatabase starts a fault proxy in front of the database and returns
// it with the DSN through it. The caller closes the proxy; the System's own
// DSN stays direct.
func (s *System) ProxyDatabase() (*faultproxy.Proxy, string, error) {
	u, err := url.Parse(s.DSN)
	if err != nil {
		return nil, "", fmt.Errorf("proxy database: %w", err)
	}
	if u.Port() == "" {
		return nil, "", fmt.Errorf("proxy database: %s names no port", u.Redacted())
	}
	proxy, err := faultproxy.Start(u.Host)
	if err != nil {
		return nil, "", fmt.Errorf("proxy database: %w", err)
	}
	u.Host = proxy.Addr()
	return proxy, u.String(), nil
}

// Close stops every process (the cache-nodes first), then NATS and
// PostgreSQL, and returns what failed.
func (s *System) Close(ctx context.Context) error {
	var errs []error
	for _, n := range s.Nodes {
		errs = append(errs, n.Stop(10*time.Second))
	}
	for _, p := range s.others {
		errs = append(errs, p.Stop(10*time.Second))
	}
	s.shutdownNATS()
	if s.PG != nil {
		errs = append(errs, s.PG.Close(ctx))
	}
	return errors.Join(errs...)
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
	out := make(map[string]string, len(a)+len(b))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}
