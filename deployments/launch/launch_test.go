package launch_test

import (
	"net/url"
	"testing"

	"github.com/anivault/anivault/deployments/launch"
)

// A System on a given NATS and database starts nothing: its environment
// layers the common variables, Options.Env and the caller's, and its fault
// proxy stands in front of the given database.
func TestGivenNATSAndDatabase(t *testing.T) {
	s, err := launch.Start(t.Context(), launch.Options{
		Dir: t.TempDir(), Bins: map[string]string{"cache-node": "/bin/true"},
		NATSURL: "nats://127.0.0.1:1", DatabaseURL: "postgres://u@127.0.0.1:2/db?sslmode=disable",
		Env: map[string]string{"LOG_LEVEL": "debug", "A": "opts"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := s.Close(t.Context()); err != nil {
			t.Error(err)
		}
	}()
	if s.NATS != nil || s.PG != nil || len(s.NATSServers()) != 0 {
		t.Fatalf("started a server: %+v", s)
	}
	env := s.Env(map[string]string{"A": "extra"})
	want := map[string]string{"NATS_URL": "nats://127.0.0.1:1", "DATABASE_URL": "postgres://u@127.0.0.1:2/db?sslmode=disable",
		"LOG_FORMAT": "json", "LOG_LEVEL": "debug", "A": "extra"}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("%s=%q, want %q", k, env[k], v)
		}
	}
	n, err := s.NewNode("a", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if n.Name != "cache-node-a" || n.Addr == "" || n.URL() != "http://"+n.Addr {
		t.Errorf("node %s at %s", n.Name, n.Addr)
	}
	proxy, dsn, err := s.ProxyDatabase()
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	u, err := url.Parse(dsn)
	if err != nil || u.Host != proxy.Addr() || u.Path != "/db" || u.RawQuery != "sslmode=disable" {
		t.Errorf("proxied DSN %s (proxy %s): %v", dsn, proxy.Addr(), err)
	}
}

func TestTail(t *testing.T) {
	if got := launch.Tail("a\nb\nc\n", 2); got != "b\nc" {
		t.Errorf("Tail = %q", got)
	}
	if got := launch.Tail("a", 5); got != "a" {
		t.Errorf("Tail = %q", got)
	}
}
