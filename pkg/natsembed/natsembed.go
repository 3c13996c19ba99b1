// Package natsembed runs an in-process NATS server with JetStream enabled.
//
// It is meant for tests and for local demo runners: the server keeps its
// port and store directory across Restart, so JetStream streams, consumers
// and KV buckets survive a restart exactly as they would with a real
// nats-server process.
package natsembed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// defaultReadyTimeout bounds the wait for the server to accept clients when
// the caller's context carries no deadline.
const defaultReadyTimeout = 15 * time.Second

// Options configures an embedded server.
type Options struct {
	// Host is the interface to listen on; "" means 127.0.0.1.
	Host string
	// Port is the client port; 0 picks a random free port once, which is
	// then kept across restarts.
	Port int
	// StoreDir is the JetStream storage directory. Required.
	StoreDir string
	// SyncAlways makes JetStream fsync every write before acknowledging it.
	SyncAlways bool
	// ConfigFile optionally names a nats-server configuration file that is
	// loaded first; StoreDir, JetStream and the fields above then override
	// it (Host and Port only when set).
	ConfigFile string
}

// Server is a running (or stopped) embedded NATS server. It is safe for
// concurrent use.
type Server struct {
	opts Options
	host string
	port int

	mu  sync.Mutex
	srv *server.Server
}

// ErrNoStoreDir is returned by Start when Options.StoreDir is empty.
var ErrNoStoreDir = errors.New("natsembed: store dir is required")

// Start starts a NATS server with JetStream enabled and waits until it
// accepts client connections or ctx ends.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.StoreDir == "" {
		return nil, ErrNoStoreDir
	}
	s := &Server{opts: opts, host: opts.Host, port: opts.Port}

	// Resolve host and port once so that Restart reuses them.
	base, err := s.serverOptions()
	if err != nil {
		return nil, err
	}
	if s.host == "" {
		s.host = base.Host
	}
	if s.host == "" {
		s.host = "127.0.0.1"
	}
	if s.port == 0 && base.Port > 0 {
		s.port = base.Port
	}
	if s.port <= 0 {
		p, err := freePort(ctx)
		if err != nil {
			return nil, fmt.Errorf("natsembed start: %w", err)
		}
		s.port = p
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.startLocked(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// serverOptions builds a fresh server.Options value. A fresh value is needed
// for every start because server.NewServer takes ownership of it.
func (s *Server) serverOptions() (*server.Options, error) {
	o := &server.Options{}
	if s.opts.ConfigFile != "" {
		loaded, err := server.ProcessConfigFile(s.opts.ConfigFile)
		if err != nil {
			return nil, fmt.Errorf("natsembed load config: %w", err)
		}
		o = loaded
	}
	o.JetStream = true
	o.StoreDir = s.opts.StoreDir
	o.SyncAlways = s.opts.SyncAlways
	o.NoSigs = true
	if s.host != "" {
		o.Host = s.host
	}
	if s.port != 0 {
		o.Port = s.port
	}
	return o, nil
}

// startLocked creates and starts a server; s.mu must be held.
func (s *Server) startLocked(ctx context.Context) error {
	o, err := s.serverOptions()
	if err != nil {
		return err
	}
	srv, err := server.NewServer(o)
	if err != nil {
		return fmt.Errorf("natsembed new server: %w", err)
	}
	srv.Start()
	if err := waitReady(ctx, srv); err != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
		return err
	}
	if !srv.JetStreamEnabled() {
		srv.Shutdown()
		srv.WaitForShutdown()
		return fmt.Errorf("natsembed start: jetstream failed to start in %s", s.opts.StoreDir)
	}
	s.srv = srv
	return nil
}

// waitReady polls ReadyForConnections in short slices until success, the
// context ends, or the default timeout elapses.
func waitReady(ctx context.Context, srv *server.Server) error {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(defaultReadyTimeout)
	}
	for {
		if srv.ReadyForConnections(100 * time.Millisecond) {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("natsembed wait ready: %w", err)
		}
		if time.Now().After(deadline) {
			return errors.New("natsembed wait ready: server not ready before deadline")
		}
	}
}

// freePort asks the kernel for a free TCP port on 127.0.0.1.
func freePort(ctx context.Context) (int, error) {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	return port, nil
}

// URL returns the client URL, e.g. nats://127.0.0.1:4222.
func (s *Server) URL() string {
	host := s.host
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "nats://" + net.JoinHostPort(host, strconv.Itoa(s.port))
}

// Port returns the client port, stable across restarts.
func (s *Server) Port() int { return s.port }

// StoreDir returns the JetStream store directory.
func (s *Server) StoreDir() string { return s.opts.StoreDir }

// Running reports whether the server is currently running.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.srv != nil && s.srv.Running()
}

// Shutdown stops the server and waits until it has fully shut down. It is a
// no-op when the server is not running.
func (s *Server) Shutdown() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.shutdownLocked()
}

func (s *Server) shutdownLocked() {
	if s.srv == nil {
		return
	}
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
	s.srv = nil
}

// Restart shuts the server down (if running) and starts it again on the same
// port and store directory; JetStream state is recovered from disk.
func (s *Server) Restart(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.shutdownLocked()
	if err := s.startLocked(ctx); err != nil {
		return fmt.Errorf("natsembed restart: %w", err)
	}
	return nil
}

// StartCluster starts n servers with JetStream as one cluster (named
// "anivault", routes on free ports of 127.0.0.1), each with its store in
// baseDir/s<i>, and waits until the cluster has a JetStream meta leader. The
// servers are returned in order; ClusterURL joins their client URLs.
func StartCluster(ctx context.Context, n int, baseDir string, syncAlways bool) (_ []*Server, err error) {
	if n < 1 {
		return nil, errors.New("natsembed cluster: n must be at least 1")
	}
	ports := make([]int, 2*n)
	for i := range ports {
		if ports[i], err = freePort(ctx); err != nil {
			return nil, fmt.Errorf("natsembed cluster: %w", err)
		}
	}
	var routes []string
	for i := range n {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", ports[n+i]))
	}
	var servers []*Server
	defer func() {
		if err != nil {
			for _, s := range servers {
				s.Shutdown()
			}
		}
	}()
	for i := range n {
		dir := filepath.Join(baseDir, fmt.Sprintf("s%d", i+1))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("natsembed cluster: %w", err)
		}
		conf := filepath.Join(dir, "server.conf")
		body := fmt.Sprintf("server_name: s%d\ncluster {\n  name: anivault\n  listen: 127.0.0.1:%d\n  routes: [%s]\n}\n",
			i+1, ports[n+i], strings.Join(routes, ", "))
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			return nil, fmt.Errorf("natsembed cluster: %w", err)
		}
		s, err := Start(ctx, Options{Port: ports[i], StoreDir: filepath.Join(dir, "store"), SyncAlways: syncAlways, ConfigFile: conf})
		if err != nil {
			return nil, fmt.Errorf("natsembed cluster: server %d: %w", i+1, err)
		}
		servers = append(servers, s)
	}
	for {
		leader := false
		for _, s := range servers {
			s.mu.Lock()
			if s.srv != nil && s.srv.JetStreamIsLeader() {
				leader = true
			}
			s.mu.Unlock()
		}
		if leader {
			return servers, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("natsembed cluster: no JetStream meta leader: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ClusterURL joins the client URLs of servers, for NATS_URL.
func ClusterURL(servers []*Server) string {
	urls := make([]string, len(servers))
	for i, s := range servers {
		urls[i] = s.URL()
	}
	return strings.Join(urls, ",")
}
