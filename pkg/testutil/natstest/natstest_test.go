package natstest_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/pkg/testutil/natstest"
)

func TestStart(t *testing.T) {
	var url string
	t.Run("server", func(t *testing.T) {
		srv := natstest.Start(t)
		url = srv.URL()
		if !srv.Running() {
			t.Fatal("server not running")
		}
		nc, err := nats.Connect(url)
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatalf("jetstream: %v", err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
			Name: "T", Subjects: []string{"t.>"}, Storage: jetstream.FileStorage,
		}); err != nil {
			t.Fatalf("create stream: %v", err)
		}
		ack, err := js.Publish(ctx, "t.x", []byte("hi"))
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		if ack.Sequence != 1 {
			t.Fatalf("ack sequence %d, want 1", ack.Sequence)
		}
	})
	// The cleanup of the subtest has shut the server down.
	if _, err := nats.Connect(url, nats.Timeout(time.Second)); err == nil {
		t.Fatal("connect succeeded after cleanup")
	}
}
