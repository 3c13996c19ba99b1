package natsconn_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

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

func TestMaskURLs(t *testing.T) {
	for _, c := range []struct{ in, secret string }{
		{"nats://alice:s3cret@a:4222", "s3cret"},
		{"nats://alice:s3cret@a:4222,nats://alice:s3cret@b:4222,nats://alice:s3cret@c:4222", "s3cret"},
		{"nats://tok3n-abc@a:4222", "tok3n-abc"},
		{"tls://bob:p%40ss@a:4222", "p%40ss"},
		{"nats://a:4222, nats://carol:hunter2@b:4222", "hunter2"},
		{"nats://weird:pa ss word@a:4222", "pa ss word"},
		{"nats://%zz:leak3d@a:4222", "leak3d"},
	} {
		got := envconfig.MaskURLs(c.in)
		if strings.Contains(got, c.secret) || !strings.Contains(got, "****") {
			t.Errorf("MaskURLs(%q) = %q: the secret shows or nothing is masked", c.in, got)
		}
		cfg := natsconn.Config{URL: c.in}
		if strings.Contains(cfg.String(), c.secret) {
			t.Errorf("Config.String with %q shows the secret: %s", c.in, cfg.String())
		}
	}
	if got := envconfig.MaskURLs("nats://a:4222,nats://b:4222"); got != "nats://a:4222,nats://b:4222" {
		t.Errorf("URLs without credentials changed: %q", got)
	}
}

// NATS_INBOX_PREFIX: replies arrive under the role's own prefix, which the
// server's permissions give it alone; a prefix that cannot head a subject is
// refused at start, naming the variable.
func TestInboxPrefix(t *testing.T) {
	t.Parallel()
	def := natsconn.FromEnv(envconfig.FromMap(nil))
	if def.InboxPrefix != natsconn.DefaultInboxPrefix {
		t.Fatalf("default inbox prefix %q, want %q", def.InboxPrefix, natsconn.DefaultInboxPrefix)
	}
	r := envconfig.FromMap(map[string]string{"NATS_INBOX_PREFIX": "_INBOX.cache-node"})
	c := natsconn.FromEnv(r)
	if r.Err() != nil || c.InboxPrefix != "_INBOX.cache-node" || !strings.Contains(c.String(), "inbox_prefix=_INBOX.cache-node") {
		t.Fatalf("NATS_INBOX_PREFIX=_INBOX.cache-node: %+v (%q), %v", c, c.String(), r.Err())
	}
	for _, bad := range []string{"_INBOX.>", "_INBOX.*", "_INBOX.", ".x", "a..b", "_INBOX.cache node"} {
		r := envconfig.FromMap(map[string]string{"NATS_INBOX_PREFIX": bad})
		natsconn.FromEnv(r)
		if r.Err() == nil || !strings.Contains(r.Err().Error(), "NATS_INBOX_PREFIX") {
			t.Errorf("NATS_INBOX_PREFIX=%q: %v, want an error naming the variable", bad, r.Err())
		}
	}

	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, err := natsconn.Connect(ctx, natsconn.Config{URL: srv.URL(), InboxPrefix: "_INBOX.producer"}, "inbox-test", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if in := nc.NewInbox(); !strings.HasPrefix(in, "_INBOX.producer.") {
		t.Fatalf("inbox %q, want it under _INBOX.producer", in)
	}
	// A request's reply subject, as a responder sees it.
	sub, err := nc.Subscribe("echo", func(m *nats.Msg) { _ = m.Respond([]byte(m.Reply)) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	m, err := nc.Request("echo", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(m.Data), "_INBOX.producer.") {
		t.Fatalf("request reply subject %q, want it under _INBOX.producer", m.Data)
	}
}
