package topology_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/pkg/procs"
	"github.com/anivault/anivault/pkg/testutil/natstest"
	"github.com/anivault/anivault/pkg/topology"
)

// Orphans are made the way a NATS restart leaves them (chaos seeds 3003 and
// 4009): messages of a work-queue stream at or below the consumer's ack
// floor, which the consumer will never deliver again.
func TestSweepOrphans(t *testing.T) {
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nc, err := nats.Connect(srv.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "WQ", Subjects: []string{"wq.>"}, Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	c, err := js.CreateConsumer(ctx, "WQ", jetstream.ConsumerConfig{Durable: "c", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	publish := func(from, to int) {
		for i := from; i <= to; i++ {
			// Right after a restart a publish can go unanswered while the
			// client reconnects: retry it (the message id makes it once).
			for {
				pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				_, err := js.Publish(pctx, fmt.Sprintf("wq.%d", i), fmt.Appendf(nil, "m%d", i), jetstream.WithMsgID(fmt.Sprint(i)))
				cancel()
				if err == nil {
					break
				}
				if ctx.Err() != nil {
					t.Fatalf("publish m%d: %v", i, err)
				}
			}
		}
	}
	consume := func(want int) {
		t.Helper()
		got := 0
		for got < want {
			b, err := c.Fetch(want-got, jetstream.FetchMaxWait(2*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			for m := range b.Messages() {
				if err := m.DoubleAck(ctx); err != nil {
					t.Fatal(err)
				}
				got++
			}
			if b.Error() != nil {
				t.Fatalf("fetch: %v (got %d of %d)", b.Error(), got, want)
			}
		}
	}
	publish(1, 3)
	restore := natstest.KeepStreamMessages(t, srv, "WQ")
	consume(3)
	restore() // m1..m3 are back, below the ack floor
	publish(4, 4)

	var applied []string
	apply := func(_ context.Context, msgs []*jetstream.RawStreamMsg) error {
		for _, m := range msgs {
			applied = append(applied, string(m.Data))
		}
		return nil
	}
	// m4 is pending: the sweep leaves the stream alone while the consumer has
	// work. The consumer's count of pending messages may lag the publish's
	// acknowledgement: wait until it shows m4 (CI once swept before it did).
	if err := procs.Eventually(10*time.Second, 10*time.Millisecond, func() error {
		info, err := js.Consumer(ctx, "WQ", "c")
		if err != nil {
			return err
		}
		if ci := info.CachedInfo(); ci.NumPending == 0 {
			return errors.New("the consumer does not count m4 as pending yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n, err := topology.SweepOrphans(ctx, js, "WQ", "c", 100, apply); err != nil || n != 0 || len(applied) != 0 {
		t.Fatalf("sweep with work pending: removed %d, applied %v, err %v", n, applied, err)
	}
	consume(1)
	if msgs := streamMsgs(ctx, t, js); msgs != 3 {
		t.Fatalf("the stream holds %d messages, want the 3 orphans (the test did not make any)", msgs)
	}
	// An apply that fails removes nothing.
	failing := func(context.Context, []*jetstream.RawStreamMsg) error { return errors.New("database down") }
	if n, err := topology.SweepOrphans(ctx, js, "WQ", "c", 100, failing); err == nil || n != 0 {
		t.Fatalf("sweep with a failing apply: removed %d, err %v", n, err)
	}
	if msgs := streamMsgs(ctx, t, js); msgs != 3 {
		t.Fatalf("after a failed sweep the stream holds %d messages, want the 3 orphans", msgs)
	}
	// At most max per call.
	if n, err := topology.SweepOrphans(ctx, js, "WQ", "c", 2, apply); err != nil || n != 2 {
		t.Fatalf("sweep: removed %d, err %v", n, err)
	}
	if n, err := topology.SweepOrphans(ctx, js, "WQ", "c", 2, apply); err != nil || n != 1 {
		t.Fatalf("sweep: removed %d, err %v", n, err)
	}
	if fmt.Sprint(applied) != "[m1 m2 m3]" {
		t.Fatalf("applied %v, want [m1 m2 m3]", applied)
	}
	if msgs := streamMsgs(ctx, t, js); msgs != 0 {
		t.Fatalf("after the sweep the stream holds %d messages", msgs)
	}
	if n, err := topology.SweepOrphans(ctx, js, "WQ", "c", 100, apply); err != nil || n != 0 {
		t.Fatalf("sweep of an empty stream: removed %d, err %v", n, err)
	}
}

func streamMsgs(ctx context.Context, t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	s, err := js.Stream(ctx, "WQ")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}
