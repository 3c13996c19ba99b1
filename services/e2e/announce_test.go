package e2e_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/anivault/anivault/events"
)

// A manager that moved the mode in KV and died before JetStream took its
// announcement leaves a mode no event announces (chaos seed 42: a NATS
// restart, then the manager killed, right after epoch 7). A manager that
// starts on that KV announces it.
func TestUnannouncedModeIsAnnouncedOnRestart(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{AutoRecovery: true})
	s.StartNode("n1", nil) // provisions the streams and the bucket
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kv, err := s.JS.KeyValue(ctx, events.BucketName)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	mc := events.ModeChanged{Envelope: events.Envelope{OccurredAt: now, Source: "a-manager-that-died"},
		Mode: events.ModeCacheOnly, Epoch: 7, Reason: "planned maintenance", Since: now, Manual: true, Counters: &events.ManagerCounters{}}
	b, _ := json.Marshal(mc)
	if _, err := kv.Put(ctx, events.KeyMode, b); err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	s.StartManager(nil)
	ev := s.Events.Wait(t, events.SubjectModeCacheOnly, at, 20*time.Second, nil)
	if got := ev.Mode(); got.Epoch != 7 || got.Mode != events.ModeCacheOnly {
		t.Fatalf("announced %+v, want cache_only at epoch 7", got)
	}
	// Once announced, a restart announces nothing more (the stream has it).
	if err := s.Manager.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	again := time.Now()
	s.StartManager(nil)
	wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer wcancel()
	if err := s.Manager.WaitOutput(wctx, "the mode in KV is announced"); err != nil {
		t.Fatal(err)
	}
	for _, e := range s.Events.All() {
		if e.Subject == events.SubjectModeCacheOnly && e.At.After(again) {
			t.Fatalf("announced again after a restart: %s", e.Data)
		}
	}
}
