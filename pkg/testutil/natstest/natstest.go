// Package natstest starts throw-away embedded NATS servers for tests.
package natstest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/pkg/natsembed"
)

// Start starts an embedded NATS server with JetStream (file storage in
// t.TempDir(), fsync on every write, random port) and shuts it down in
// t.Cleanup. It fails the test if the server cannot start.
func Start(t testing.TB) *natsembed.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := natsembed.Start(ctx, natsembed.Options{
		StoreDir:   t.TempDir(),
		SyncAlways: true,
	})
	if err != nil {
		t.Fatalf("natstest: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	return srv
}

// StartCluster starts a cluster of n embedded servers with JetStream (stores
// in t.TempDir(), fsync on every write) and shuts them down in t.Cleanup.
func StartCluster(t testing.TB, n int) []*natsembed.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	servers, err := natsembed.StartCluster(ctx, n, t.TempDir(), true)
	if err != nil {
		t.Fatalf("natstest: %v", err)
	}
	t.Cleanup(func() {
		for _, s := range servers {
			s.Shutdown()
		}
	})
	return servers
}

// Connect connects to url with opts for the rest of the test (closed in
// t.Cleanup) and returns the connection and its JetStream.
func Connect(t testing.TB, url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("natstest: connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("natstest: jetstream: %v", err)
	}
	return nc, js
}
