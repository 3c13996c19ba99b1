package wmnats_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/pkg/procs"
	"github.com/anivault/anivault/pkg/testutil/natstest"
	"github.com/anivault/anivault/pkg/wmnats"
)

// Regression (chaos seed 13): a core subscriber of events that are published
// through JetStream (db.health) acknowledged each message into the
// publisher's PubAck inbox and waited 5 s for an answer, so it handled one
// message per 5 s and the publisher could read the subscriber's ack as its
// PubAck. Now every message arrives at once and every publish succeeds.
func TestCoreSubscriberOfJetStreamEventsDoesNotAck(t *testing.T) {
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "EV", Subjects: []string{"ev.>"}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	pub, err := wmnats.NewJetStreamPublisher(nc, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	subnc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	sub, err := wmnats.NewCoreSubscriber(subnc, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	ch, err := sub.Subscribe(ctx, "ev.health")
	if err != nil {
		t.Fatal(err)
	}
	var got atomic.Int64
	go func() {
		for m := range ch {
			got.Add(1)
			m.Ack()
		}
	}()
	if err := subnc.Flush(); err != nil {
		t.Fatal(err)
	}
	const n = 20
	for i := range n {
		if err := pub.Publish("ev.health", message.NewMessage(watermill.NewUUID(), []byte(fmt.Sprint(i)))); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	// Before the fix the 20th message arrived after 19 × 5 s.
	if err := procs.Eventually(4*time.Second, 20*time.Millisecond, func() error {
		if g := got.Load(); g != n {
			return fmt.Errorf("handled %d of %d", g, n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
