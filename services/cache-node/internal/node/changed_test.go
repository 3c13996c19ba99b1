package node

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/envconfig"
	"github.com/anivault/anivault/pkg/testutil/natstest"
	"github.com/anivault/anivault/pkg/wmnats"
)

// testNode returns a node named id that publishes on nc, without running it.
func testNode(t *testing.T, id string, nc *nats.Conn) *Node {
	t.Helper()
	cfg, err := LoadConfig(envconfig.FromMap(map[string]string{"NODE_ID": id}))
	if err != nil {
		t.Fatal(err)
	}
	n, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	n.changes.assumeCurrent()
	if n.changedPub, err = wmnats.NewCorePublisher(nc, watermill.NopLogger{}); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestChangedEventsOfItsOwnAreSkippedUndecoded: metadata.changed carries its
// source as a header through watermill and NATS; the publishing node skips
// the event on it without reading the payload, and another node caches the
// record byte for byte.
func TestChangedEventsOfItsOwnAreSkippedUndecoded(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pubConn, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer pubConn.Close()
	subConn, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	sub, err := wmnats.NewCoreSubscriber(subConn, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	msgs, err := sub.Subscribe(ctx, events.SubjectMetadataChanged)
	if err != nil {
		t.Fatal(err)
	}
	if err := subConn.Flush(); err != nil {
		t.Fatal(err)
	}
	receive := func() *message.Message {
		t.Helper()
		select {
		case m := <-msgs:
			m.Ack()
			return m
		case <-ctx.Done():
			t.Fatal("no metadata.changed received")
			return nil
		}
	}

	self, other := testNode(t, "node-a", pubConn), testNode(t, "node-b", pubConn)
	body := []byte(`{"tmdb_id":1429,"title":"A","version":5,"updated_at":"2026-05-01T12:00:00Z"}`)
	self.publishChanged(1429, 5, true, body)
	m := receive()
	if got := m.Metadata.Get(events.HeaderSource); got != "node-a" {
		t.Fatalf("header %s = %q, want node-a (metadata %v)", events.HeaderSource, got, m.Metadata)
	}

	// The header decides before the payload is decoded: a payload that names
	// another source (it is not read) does not make node-a apply its own event.
	payload, err := encodeChanged("node-b", time.Now(), 1429, 5, false, true, body)
	if err != nil {
		t.Fatal(err)
	}
	own := message.NewMessage(watermill.NewUUID(), payload)
	own.Metadata = m.Metadata
	if err := self.nats.handleChanged(own); err != nil {
		t.Fatal(err)
	}
	if self.cache.Len() != 0 {
		t.Fatalf("node-a applied its own event: %d cached", self.cache.Len())
	}
	// The same event at another node: cached as published.
	if err := other.nats.handleChanged(m); err != nil {
		t.Fatal(err)
	}
	e, ok := other.cache.Peek(1429)
	if !ok || e.version != 5 || string(e.body) != string(body) {
		t.Fatalf("node-b cached %+v, %v; want version 5 and body %s", e, ok, body)
	}
	// Without the header (an older node), the payload's source still tells.
	noHeader := message.NewMessage(watermill.NewUUID(), m.Payload)
	if err := self.nats.handleChanged(noHeader); err != nil {
		t.Fatal(err)
	}
	if self.cache.Len() != 0 {
		t.Fatal("node-a applied its own event that had no header")
	}
}
