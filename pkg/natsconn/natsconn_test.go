package natsconn_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anivault/anivault/pkg/envconfig"
	"github.com/anivault/anivault/pkg/natsconn"
	"github.com/anivault/anivault/pkg/testutil/natstest"
)

func TestConfigFromEnvAndMasking(t *testing.T) {
	t.Parallel()
	r := envconfig.FromMap(map[string]string{
		"NATS_URL": "nats://svc:hunter2@nats:4222", "NATS_USER": "svc", "NATS_PASSWORD": "hunter2", "NATS_TOKEN": "t0k3n",
	})
	c := natsconn.FromEnv(r)
	if r.Err() != nil {
		t.Fatal(r.Err())
	}
	s := c.String()
	for _, secret := range []string{"hunter2", "t0k3n"} {
		if strings.Contains(s, secret) {
			t.Fatalf("secret %q visible in %q", secret, s)
		}
	}
	bad := envconfig.FromMap(map[string]string{"NATS_CERT": "/c.pem", "NATS_PASSWORD": "x"})
	natsconn.FromEnv(bad)
	if bad.Err() == nil || !strings.Contains(bad.Err().Error(), "NATS_KEY") || !strings.Contains(bad.Err().Error(), "NATS_USER") {
		t.Fatalf("want errors naming NATS_KEY and NATS_USER, got %v", bad.Err())
	}
}

// The connection reconnects after a server restart and logs both events.
func TestConnectReconnectsAndLogs(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	var buf syncBuffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, err := natsconn.Connect(ctx, natsconn.Config{URL: srv.URL()}, "test", log)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(buf.String(), "NATS reconnected") {
		if ctx.Err() != nil {
			t.Fatalf("no reconnect logged: %s", buf.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(buf.String(), "NATS disconnected") {
		t.Fatalf("disconnect not logged: %s", buf.String())
	}
	if err := nc.Publish("x", []byte("y")); err != nil {
		t.Fatalf("publish after reconnect: %v", err)
	}
	// A server that never comes up: Connect gives up when ctx ends.
	short, cancel2 := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel2()
	if _, err := natsconn.Connect(short, natsconn.Config{URL: "nats://127.0.0.1:1"}, "x", nil); err == nil {
		t.Fatal("connect to a closed port succeeded")
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
