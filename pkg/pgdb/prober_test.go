package pgdb_test

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/anivault/anivault/pkg/faultproxy"
	"github.com/anivault/anivault/pkg/pgdb"
	"github.com/anivault/anivault/pkg/procs"
	"github.com/anivault/anivault/pkg/testutil/pgtest"
)

// Regression (chaos runner, session 1): the health probe opened a server
// connection per probe and left it behind whenever the network misbehaved,
// until the monitor had filled PostgreSQL's max_connections and caused false
// outages. The prober must hold at most one server connection whatever the
// fault, enforce its deadline itself, and see the database again once the
// fault is gone.
func TestProberHoldsOneConnectionThroughFaults(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := faultproxy.Start(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	pu := *u
	pu.Host = proxy.Addr()
	const app, timeout = "anivault-prober-test", 300 * time.Millisecond
	p, err := pgdb.NewProber(pu.String(), app, timeout)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	direct, err := pgdb.Open(pgdb.Config{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	conns := func() (n int) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := direct.QueryRowContext(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = ? AND datname = current_database()`, app).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	ctx := context.Background()
	for range 20 {
		if _, err := p.Probe(ctx); err != nil {
			t.Fatalf("probe of a healthy database: %v", err)
		}
	}
	if n := conns(); n != 1 {
		t.Fatalf("after 20 healthy probes the prober holds %d server connections, want 1", n)
	}
	faults := []struct {
		name        string
		inject, end func() error
	}{
		{"latency above the timeout", func() error { return proxy.Latency(time.Second) }, func() error { return proxy.Latency(0) }},
		{"black hole", proxy.BlackHole, proxy.Heal},
		{"connections reset", proxy.ResetPeer, proxy.Heal},
		{"refused", func() error { proxy.Disable(); return nil }, proxy.Heal},
	}
	for _, f := range faults {
		if err := f.inject(); err != nil {
			t.Fatal(err)
		}
		for i := range 8 {
			d, err := p.Probe(ctx)
			if err == nil {
				t.Fatalf("%s: probe %d succeeded", f.name, i)
			}
			if open := p.Stats().OpenConnections; open > 1 {
				t.Fatalf("%s: the prober's pool holds %d connections", f.name, open)
			}
			if d > 3*timeout {
				t.Fatalf("%s: a probe took %v with a %v timeout", f.name, d, timeout)
			}
		}
		if err := f.end(); err != nil {
			t.Fatal(err)
		}
		if err := procs.Eventually(10*time.Second, 50*time.Millisecond, func() error {
			_, err := p.Probe(ctx)
			return err
		}); err != nil {
			t.Fatalf("after %s ended the probe still fails: %v", f.name, err)
		}
		// The fault proxy closes the server side of connections the client
		// abandoned during a fault only when it next moves data on them, which
		// may take seconds; none may stay.
		if err := procs.Eventually(30*time.Second, 50*time.Millisecond, func() error {
			if n := conns(); n > 1 {
				return fmt.Errorf("after %s the prober's role holds %d server connections, want at most 1", f.name, n)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}
