package node

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/metastore"
	"github.com/anivault/anivault/pkg/testutil/natstest"
	"github.com/anivault/anivault/pkg/topology"
)

// A batch whose writes committed is acknowledged even when another
// applier's failure stops the drain meanwhile: its acknowledgement used the
// drain's context, which that failure cancels, so the message stayed in the
// buffer, came back and was counted a second time (chaos seed 27: buffer
// accounting off by 4). Here the buffer holds two one-write messages; the
// write of tmdb:2 fails once both are in flight, and tmdb:1's commits only
// after that failure stopped the drain.
func TestReplayAcksCommittedBatchWhenAnotherFails(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	_, js := natstest.Connect(t, srv.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	subj := events.NewSubjects("")
	top, err := topology.New(js, subj)
	if err != nil {
		t.Fatal(err)
	}
	if err := top.EnsureWrites(ctx, topology.DefaultBufferLimits()); err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for id := int64(1); id <= 2; id++ {
		enc, err := encodeBufferedWrite(events.BufferedWrite{TMDBID: id, Version: 10, AcceptedAt: time.Now().UTC(), Node: "test"}, body(id, 10))
		if err != nil {
			t.Fatal(err)
		}
		ack, err := js.Publish(ctx, subj.Of(events.SubjectBufferWrites), encodeBatch([][]byte{enc}))
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, ack.Sequence)
	}

	firstApplying := make(chan struct{})
	r, err := newReplayerOf(replayConfig{NodeID: "test", BatchSize: 1, MaxBytes: topology.MaxBufferMsgBytes + 64<<10}, replayDeps{
		Log: slog.New(slog.DiscardHandler), JS: js, Subjects: subj,
		Apply: func(ctx context.Context, chunk []metastore.Write) (metastore.Result, error) {
			if chunk[0].TMDBID == 2 {
				<-firstApplying
				return metastore.Result{}, errors.New("the database failed")
			}
			close(firstApplying)
			<-ctx.Done() // the other applier's failure stopped the drain
			return metastore.Result{Applied: 1, AppliedKeys: map[int64]int64{1: 10}}, nil
		},
		Logged:   func(context.Context, []metastore.Write, map[int64]int64) {},
		Announce: func(context.Context, events.ReplayCompleted) error { return nil },
		Metrics: replayMetrics{Applied: prometheus.NewCounter(prometheus.CounterOpts{Name: "a"}),
			Stale: prometheus.NewCounter(prometheus.CounterOpts{Name: "s"}), Duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "d"})},
	})
	if err != nil {
		t.Fatal(err)
	}
	var total replayCounts
	if done, err := r.drain(ctx, &total); done || err == nil {
		t.Fatalf("drain: done %v, %v; want the database's failure", done, err)
	}
	if total.replayed != 1 {
		t.Fatalf("replayed %d, want tmdb:1's write", total.replayed)
	}
	stream, err := js.Stream(ctx, subj.Name(events.StreamBuffer))
	if err != nil {
		t.Fatal(err)
	}
	// The buffer is a work queue: an acknowledged message is gone.
	waitFor(t, func() error {
		if _, err := stream.GetMsg(ctx, seqs[0]); !errors.Is(err, jetstream.ErrMsgNotFound) {
			return errors.New("tmdb:1's message, whose write committed, is still in the buffer: not acknowledged")
		}
		return nil
	})
	if _, err := stream.GetMsg(ctx, seqs[1]); err != nil {
		t.Fatalf("tmdb:2's message, whose write failed, left the buffer: %v", err)
	}
}
