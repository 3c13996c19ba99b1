package topology_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/natsembed"
	"github.com/anivault/anivault/pkg/testutil/natstest"
	"github.com/anivault/anivault/pkg/topology"
)

func provision(ctx context.Context, js jetstream.JetStream, replicas int) error {
	top, err := topology.New(js, events.NewSubjects(""))
	if err != nil {
		return err
	}
	top.Replicas = replicas
	if _, err := top.EnsureEvents(ctx); err != nil {
		return err
	}
	if err := top.EnsureManagerConsumers(ctx); err != nil {
		return err
	}
	return top.EnsureWrites(ctx, topology.BufferLimits{Replicas: replicas})
}

// Provisioning what already exists as configured sends no create or update
// request; a changed setting sends exactly what it needs.
func TestProvisioningSendsNoUpdateWhenNothingDiffers(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	nc, js := natstest.Connect(t, srv.URL())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := provision(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	var writes atomic.Int64
	for _, subj := range []string{"$JS.API.STREAM.UPDATE.>", "$JS.API.STREAM.CREATE.>", "$JS.API.CONSUMER.CREATE.>", "$JS.API.CONSUMER.DURABLE.CREATE.>"} {
		sub, err := nc.Subscribe(subj, func(m *nats.Msg) { writes.Add(1); t.Log("sent", m.Subject) })
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := provision(ctx, js, 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := writes.Load(); n != 0 {
		t.Fatalf("provisioning an unchanged topology sent %d create or update requests", n)
	}
	top, _ := topology.New(js, events.NewSubjects(""))
	if err := top.EnsureWrites(ctx, topology.BufferLimits{MaxMsgs: 5000}); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, events.StreamBuffer)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.CachedInfo().Config.MaxMsgs; got != 5000 {
		t.Fatalf("buffer MaxMsgs %d after a change, want 5000", got)
	}
}

// On a three-server cluster, many processes provisioning at once all
// succeed, and a process with the default BUFFER_REPLICAS=1 never lowers
// the replicas of streams and the bucket that another made with 3.
func TestProvisioningOnAClusterNeverLowersReplicas(t *testing.T) {
	t.Parallel()
	servers := natstest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for i := range 6 {
		_, js := natstest.Connect(t, natsembed.ClusterURL(servers[i%3:i%3+1]))
		wg.Go(func() {
			for ctx.Err() == nil {
				if err := provision(ctx, js, 3); err == nil {
					return
				}
			}
			errs <- ctx.Err()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent provisioning: %v", err)
	}
	_, js := natstest.Connect(t, natsembed.ClusterURL(servers))
	if err := provision(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{events.StreamEvents, events.StreamMetadata, events.StreamBuffer, events.StreamChanges, events.StreamPoison, "KV_" + events.BucketName} {
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if got := st.CachedInfo().Config.Replicas; got != 3 {
			t.Errorf("%s has %d replicas after a process with BUFFER_REPLICAS=1 started, want 3", name, got)
		}
	}
}

// CheckOnly (NATS_PROVISION=false) creates nothing: every Ensure method
// reports what is missing as ErrNotProvisioned, and passes once it exists.
func TestCheckOnlyCreatesNothing(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	_, js := natstest.Connect(t, srv.URL())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	top, _ := topology.New(js, events.NewSubjects(""))
	top.CheckOnly = true
	checks := map[string]func() error{
		"EnsureEvents":           func() error { _, err := top.EnsureEvents(ctx); return err },
		"EnsureEventsIfMissing":  func() error { return top.EnsureEventsIfMissing(ctx) },
		"EnsureWrites":           func() error { return top.EnsureWrites(ctx, topology.BufferLimits{}) },
		"EnsureWritesIfMissing":  func() error { return top.EnsureWritesIfMissing(ctx, topology.BufferLimits{}) },
		"EnsureManagerConsumers": func() error { return top.EnsureManagerConsumers(ctx) },
		"EnsureAll":              func() error { return top.EnsureAll(ctx, topology.BufferLimits{}) },
	}
	for name, check := range checks {
		if err := check(); !errors.Is(err, topology.ErrNotProvisioned) {
			t.Errorf("%s before provisioning: %v, want ErrNotProvisioned", name, err)
		}
	}
	for n := range js.StreamNames(ctx).Name() {
		t.Errorf("a CheckOnly topology created stream %s", n)
	}
	if err := provision(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	for name, check := range checks {
		if err := check(); err != nil {
			t.Errorf("%s after provisioning: %v", name, err)
		}
	}
	// A durable deleted afterwards is missed by name.
	if err := js.DeleteConsumer(ctx, events.StreamBuffer, events.ConsumerReplay); err != nil {
		t.Fatal(err)
	}
	err := top.EnsureWrites(ctx, topology.BufferLimits{})
	if !errors.Is(err, topology.ErrNotProvisioned) || !strings.Contains(err.Error(), events.ConsumerReplay) {
		t.Fatalf("EnsureWrites without the replay consumer: %v, want ErrNotProvisioned naming %s", err, events.ConsumerReplay)
	}
	if _, err := js.Consumer(ctx, events.StreamBuffer, events.ConsumerReplay); !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Fatalf("a CheckOnly topology made the replay consumer again: %v", err)
	}
}
