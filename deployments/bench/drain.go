package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
)

// drainCeiling is how fast the bench's NATS server alone lets a consumer
// drain a stream of producers' writes: fetches of 500, every message
// acknowledged (pipelined, the last one confirmed), nothing else done with
// them. It is the ceiling of producer ingest that the stream's retention sets.
type drainCeiling struct {
	Retention string
	Messages  int
	Took      time.Duration
	PerSec    float64
}

const (
	drainStream   = "BENCH_DRAIN"
	drainMessages = 20_000
)

// measureDrainCeilings measures the drain of a work-queue stream (each
// acknowledgement deletes its message) and of a limits stream (the
// acknowledgement moves the consumer's floor), with the fixture's records.
func (r *runner) measureDrainCeilings(ctx context.Context) ([]drainCeiling, error) {
	var out []drainCeiling
	for _, ret := range []jetstream.RetentionPolicy{jetstream.WorkQueuePolicy, jetstream.LimitsPolicy} {
		d, err := r.drainOnce(ctx, ret)
		if err != nil {
			return out, err
		}
		r.say("  drain ceiling, %s stream: %s messages in %v: %.0f messages/s", d.Retention, commas(int64(d.Messages)), d.Took.Round(time.Millisecond), d.PerSec)
		out = append(out, d)
	}
	return out, nil
}

func (r *runner) drainOnce(ctx context.Context, ret jetstream.RetentionPolicy) (drainCeiling, error) {
	d := drainCeiling{Retention: map[jetstream.RetentionPolicy]string{jetstream.WorkQueuePolicy: "work-queue", jetstream.LimitsPolicy: "limits"}[ret], Messages: drainMessages}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	st, err := r.js.CreateStream(ctx, jetstream.StreamConfig{Name: drainStream, Subjects: []string{"benchdrain.>"},
		Retention: ret, Storage: jetstream.FileStorage, Discard: jetstream.DiscardNew})
	if err != nil {
		return d, fmt.Errorf("drain ceiling: %w", err)
	}
	defer func() {
		dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = r.js.DeleteStream(dctx, drainStream)
		dcancel()
	}()
	err = r.publishAll(ctx, drainMessages, func(i int) (string, []byte, error) {
		rec := r.record(i, int64(ingestKeyBase+i))
		b, err := events.Marshal(&rec)
		return fmt.Sprintf("benchdrain.%d", i%1000), b, err
	})
	if err != nil {
		return d, fmt.Errorf("drain ceiling: %w", err)
	}
	cons, err := st.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: "drain", AckPolicy: jetstream.AckExplicitPolicy,
		AckWait: time.Minute, MaxAckPending: 4096})
	if err != nil {
		return d, fmt.Errorf("drain ceiling: %w", err)
	}
	start := time.Now()
	for got := 0; got < drainMessages; {
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return d, fmt.Errorf("drain ceiling: %w", err)
		}
		var last jetstream.Msg
		for m := range batch.Messages() {
			if last != nil {
				_ = last.Ack()
			}
			last = m
			got++
		}
		if last == nil {
			return d, errors.New("drain ceiling: a fetch returned nothing before the stream was drained")
		}
		if err := last.DoubleAck(ctx); err != nil {
			return d, fmt.Errorf("drain ceiling: %w", err)
		}
	}
	d.Took = time.Since(start)
	d.PerSec = float64(drainMessages) / d.Took.Seconds()
	return d, nil
}
