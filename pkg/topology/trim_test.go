package topology_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/procs"
	"github.com/anivault/anivault/pkg/testutil/natstest"
	"github.com/anivault/anivault/pkg/topology"
)

// TrimAcknowledged removes exactly the messages at or below the consumer's
// ack floor: a message acknowledged above a gap stays until the gap is
// acknowledged, and unacknowledged ones are delivered afterwards as before.
func TestTrimAcknowledged(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, js := natstest.Connect(t, srv.URL())
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "W", Subjects: []string{"w.>"}, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	c, err := st.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: "c", AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 10; i++ {
		if _, err := js.Publish(ctx, fmt.Sprintf("w.%d", i), fmt.Appendf(nil, "m%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	trim := func(wantRemoved uint64, wantFirst uint64, wantMsgs uint64) {
		t.Helper()
		removed, err := topology.TrimAcknowledged(ctx, js, "W", "c")
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if removed != wantRemoved || info.State.FirstSeq != wantFirst || info.State.Msgs != wantMsgs {
			t.Fatalf("trim removed %d, stream first seq %d, %d messages; want %d, %d, %d",
				removed, info.State.FirstSeq, info.State.Msgs, wantRemoved, wantFirst, wantMsgs)
		}
	}
	trim(0, 1, 10) // nothing acknowledged yet

	batch, err := c.Fetch(6, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	if len(msgs) != 6 {
		t.Fatalf("fetched %d messages, want 6", len(msgs))
	}
	// 1, 2, 4 and 6 acknowledged, 3 and 5 not: the floor is 2.
	for _, i := range []int{0, 1, 3, 5} {
		if err := msgs[i].DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	trim(2, 3, 8)
	trim(0, 3, 8) // again: nothing more to remove
	if err := msgs[2].DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
	trim(2, 5, 6) // 3 and 4 below the floor now
	// 5 terminated (a poison message) counts as acknowledged: the floor is 6.
	if err := msgs[4].TermWithReason("poison"); err != nil {
		t.Fatal(err)
	}
	if err := procs.Eventually(10*time.Second, 20*time.Millisecond, func() error {
		ci, err := c.Info(ctx)
		if err != nil || ci.AckFloor.Stream != 6 {
			return fmt.Errorf("ack floor %v (%v)", ci, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	trim(2, 7, 4)

	// What was not trimmed is delivered as before.
	batch, err = c.Fetch(10, jetstream.FetchMaxWait(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var rest []string
	for m := range batch.Messages() {
		rest = append(rest, string(m.Data()))
		_ = m.DoubleAck(ctx)
	}
	if fmt.Sprint(rest) != "[m7 m8 m9 m10]" {
		t.Fatalf("delivered after the trims: %v, want [m7 m8 m9 m10]", rest)
	}
	trim(4, 11, 0)
}

// A producers' write stream made by an earlier version as a work queue is
// kept (the server cannot change a work queue's retention), and the trim
// tells that it does not apply there.
func TestWorkQueueWriteStreamIsKept(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, js := natstest.Connect(t, srv.URL())
	s := events.NewSubjects("")
	name := s.Name(events.StreamMetadata)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage,
		Subjects: []string{s.Of(events.SubjectMetadataUpsert), s.Of(events.SubjectMetadataDelete)}}); err != nil {
		t.Fatal(err)
	}
	if err := provision(ctx, js, 1); err != nil {
		t.Fatalf("provisioning over the earlier work queue: %v", err)
	}
	st, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if r := st.CachedInfo().Config.Retention; r != jetstream.WorkQueuePolicy {
		t.Fatalf("retention %v, want the work queue kept", r)
	}
	if _, err := topology.TrimAcknowledged(ctx, js, name, s.Name(events.ConsumerMetadataWriter)); !errors.Is(err, topology.ErrWorkQueue) {
		t.Fatalf("trim of a work queue: %v, want ErrWorkQueue", err)
	}

	// A new stream is made with limits retention.
	if err := js.DeleteStream(ctx, name); err != nil {
		t.Fatal(err)
	}
	if err := provision(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	if st, err = js.Stream(ctx, name); err != nil || st.CachedInfo().Config.Retention != jetstream.LimitsPolicy {
		t.Fatalf("new stream: %v, want limits retention", err)
	}
}
