package anivault_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/anivault"
	"github.com/anivault/anivault/pkg/natsembed"
	"github.com/anivault/anivault/pkg/topology"
)

// A producer service publishes a record and learns where the stream stored
// it. An invalid record never leaves the process.
func Example_producer() {
	natsURL, stop := startExampleSystem()
	defer stop()
	ctx := context.Background()

	c, err := anivault.Connect(natsURL, anivault.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	ack, err := c.Upsert(ctx, &events.Record{TMDBID: 1429, Title: "Attack on Titan"})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("stored in", ack.Stream, "at", ack.Sequence, "duplicate:", ack.Duplicate)

	_, err = c.Upsert(ctx, &events.Record{TMDBID: 1429, Title: ""})
	fmt.Println(err)
	// Output:
	// stored in ANIVAULT_METADATA at 1 duplicate: false
	// title: is required and must not be empty
}

// A mode subscriber (a crawler that pauses while the database is down)
// follows the system's mode: the current one first, then every change.
func Example_modeSubscriber() {
	natsURL, stop := startExampleSystem()
	defer stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	c, err := anivault.Connect(natsURL, anivault.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	modes, err := c.WatchMode(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	outage := newExampleOutage(natsURL) // stands in for the recovery-manager
	for m := range modes {
		paused := m.Mode != events.ModeNormal // crawl only while writes reach the database
		fmt.Println("epoch", m.Epoch, m.Mode, "paused:", paused)
		if !outage.next() {
			break
		}
	}
	// Output:
	// epoch 0 normal paused: false
	// epoch 1 cache_only paused: true
	// epoch 2 recovering paused: true
	// epoch 3 normal paused: false
}

// startExampleSystem starts an in-process NATS server with AniVault's
// streams and mode bucket, as the services create them at start.
func startExampleSystem() (natsURL string, stop func()) {
	dir, err := os.MkdirTemp("", "anivault-example-")
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := natsembed.Start(ctx, natsembed.Options{StoreDir: dir})
	if err != nil {
		panic(err)
	}
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		panic(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		panic(err)
	}
	top, err := topology.New(js, events.NewSubjects(""))
	if err != nil {
		panic(err)
	}
	if _, err := top.EnsureEvents(ctx); err != nil {
		panic(err)
	}
	if err := top.EnsureWrites(ctx, topology.BufferLimits{}); err != nil {
		panic(err)
	}
	return srv.URL(), func() {
		srv.Shutdown()
		_ = os.RemoveAll(dir)
	}
}

// exampleOutage writes the modes of one outage into the KV bucket, one step
// at a time, as the recovery-manager would.
type exampleOutage struct {
	natsURL string
	steps   []events.ModeChanged
}

func newExampleOutage(natsURL string) *exampleOutage {
	return &exampleOutage{natsURL: natsURL, steps: []events.ModeChanged{
		{Mode: events.ModeCacheOnly, Epoch: 1, Reason: "database unreachable"},
		{Mode: events.ModeRecovering, Epoch: 2},
		{Mode: events.ModeNormal, Epoch: 3},
	}}
}

// next writes the next mode; it reports false when the outage is over.
func (o *exampleOutage) next() bool {
	if len(o.steps) == 0 {
		return false
	}
	m := o.steps[0]
	o.steps = o.steps[1:]
	m.Since = time.Now().UTC()
	nc, err := nats.Connect(o.natsURL)
	if err != nil {
		panic(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, events.BucketName)
	if err != nil {
		panic(err)
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	if _, err := kv.Put(ctx, events.KeyMode, b); err != nil {
		panic(err)
	}
	return true
}
