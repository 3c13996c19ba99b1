package natsembed_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/pkg/natsembed"
)

func TestStartRequiresStoreDir(t *testing.T) {
	_, err := natsembed.Start(t.Context(), natsembed.Options{})
	if !errors.Is(err, natsembed.ErrNoStoreDir) {
		t.Fatalf("Start without store dir: got %v, want ErrNoStoreDir", err)
	}
}

func TestRestartKeepsJetStreamState(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	srv, err := natsembed.Start(ctx, natsembed.Options{StoreDir: t.TempDir(), SyncAlways: true})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	if !srv.Running() {
		t.Fatal("Running() = false after Start")
	}
	port := srv.Port()
	if port == 0 {
		t.Fatal("Port() = 0")
	}

	nc, err := nats.Connect(srv.URL(),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(50*time.Millisecond),
		nats.Timeout(2*time.Second),
	)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:     "EMBED",
		Subjects: []string{"embed.>"},
		Storage:  jetstream.FileStorage,
	})
	if err != nil {
		t.Fatalf("create stream: %v", err)
	}
	for i := range 10 {
		if _, err := js.Publish(ctx, "embed.msg", []byte{byte(i)}); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	if info.State.Msgs != 10 {
		t.Fatalf("before restart: %d msgs, want 10", info.State.Msgs)
	}

	if err := srv.Restart(ctx); err != nil {
		t.Fatalf("restart: %v", err)
	}
	if srv.Port() != port {
		t.Fatalf("port changed across restart: %d -> %d", port, srv.Port())
	}
	if !srv.Running() {
		t.Fatal("Running() = false after Restart")
	}

	// A fresh connection sees the recovered stream.
	nc2, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatalf("connect after restart: %v", err)
	}
	t.Cleanup(nc2.Close)
	js2, err := jetstream.New(nc2)
	if err != nil {
		t.Fatalf("jetstream after restart: %v", err)
	}
	s2, err := js2.Stream(ctx, "EMBED")
	if err != nil {
		t.Fatalf("stream after restart: %v", err)
	}
	info, err = s2.Info(ctx)
	if err != nil {
		t.Fatalf("stream info after restart: %v", err)
	}
	if info.State.Msgs != 10 {
		t.Fatalf("after restart: %d msgs, want 10", info.State.Msgs)
	}

	// The original client reconnects and can publish again; poll with a
	// deadline because reconnection is asynchronous.
	var lastErr error
	for {
		pctx, pcancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, lastErr = js.Publish(pctx, "embed.msg", []byte("after"))
		pcancel()
		if lastErr == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("publish after restart never succeeded: %v", lastErr)
		case <-time.After(20 * time.Millisecond): // poll interval
		}
	}
	info, err = s2.Info(ctx)
	if err != nil {
		t.Fatalf("stream info after publish: %v", err)
	}
	if info.State.Msgs != 11 {
		t.Fatalf("after re-publish: %d msgs, want 11", info.State.Msgs)
	}

	srv.Shutdown()
	if srv.Running() {
		t.Fatal("Running() = true after Shutdown")
	}
}
