package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/procs"
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

// Losing the mode key, or the whole bucket, never freezes nodes on an old
// epoch: the manager continues from the newest epoch it knows (its own, or
// the newest announced in the events stream), writes the key again, and the
// next mode change reaches every node.
func TestLostModeKeyOrBucket(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{AutoRecovery: true})
	n1 := s.StartNode("n1", nil)
	s.StartMonitor(nil)
	s.StartManager(nil)
	var mr events.ModeReply
	if err := s.Request(events.SubjectCacheOnlyEnter, events.CacheOnlyEnterRequest{Reason: "first"}, &mr); err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	if err := s.Request(events.SubjectCacheOnlyExit, map[string]any{}, &mr); err != nil {
		t.Fatal(err)
	}
	last := s.Events.Wait(t, events.SubjectModeNormal, at, 30*time.Second, nil).Mode().Epoch
	waitNodeMode(t, n1, events.ModeNormal)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// The key purged (history and all).
	kv, err := s.JS.KeyValue(ctx, events.BucketName)
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Purge(ctx, events.KeyMode); err != nil {
		t.Fatal(err)
	}
	if err := s.Request(events.SubjectCacheOnlyEnter, events.CacheOnlyEnterRequest{Reason: "after the key was lost"}, &mr); err != nil {
		t.Fatal(err)
	}
	if mr.Epoch <= last {
		t.Fatalf("cache_only.enter after the key was lost answered epoch %d, the fleet was at %d", mr.Epoch, last)
	}
	waitNodeMode(t, n1, events.ModeCacheOnly)

	// The bucket deleted, then a restarted manager (nothing in memory).
	if err := s.Manager.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := s.JS.DeleteKeyValue(ctx, events.BucketName); err != nil {
		t.Fatal(err)
	}
	s.StartManager(nil)
	before := mr.Epoch
	at = time.Now()
	if err := s.Request(events.SubjectCacheOnlyExit, map[string]any{}, &mr); err != nil {
		t.Fatal(err)
	}
	normal := s.Events.Wait(t, events.SubjectModeNormal, at, 30*time.Second, nil).Mode()
	if normal.Epoch <= before {
		t.Fatalf("mode.normal at epoch %d after the bucket was lost at epoch %d", normal.Epoch, before)
	}
	waitNodeMode(t, n1, events.ModeNormal)
	mc, err := s.ModeKV()
	if err != nil || mc.Epoch != normal.Epoch {
		t.Fatalf("KV holds %+v (%v), want epoch %d", mc, err, normal.Epoch)
	}
}

// A live node whose replay cannot finish holds the system in recovering;
// the operator's way out is recovery.complete: the mode moves to normal,
// and every acknowledged write reaches the table.
func TestOperatorCompletesAStuckRecovery(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{AutoRecovery: true})
	n1 := s.StartNode("n1", nil)
	s.StartMonitor(nil)
	s.StartManager(nil)
	mr := s.EnterMaintenance("maintenance", n1)
	l := newLedger()
	writeAll(t, []*Node{n1}, l, idRange(1, 100), false, "buffered", 202)

	// A node that reports itself live and never replays (stuck on a
	// database it cannot reach, say).
	stop := make(chan struct{})
	defer close(stop)
	report := func() {
		b, _ := json.Marshal(events.NodeStatus{Envelope: events.Envelope{OccurredAt: time.Now().UTC(), Source: "stuck"},
			ID: "stuck", Mode: events.ModeRecovering, LastSeen: time.Now().UTC()})
		_ = s.NC.Publish(s.subject(events.SubjectNodeStatus), b)
	}
	report()
	go func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				report()
			}
		}
	}()
	at := time.Now()
	if err := s.Request(events.SubjectCacheOnlyExit, map[string]any{}, &mr); err != nil {
		t.Fatal(err)
	}
	epoch := mr.Epoch
	s.Events.Wait(t, events.SubjectReplayCompleted, at, 30*time.Second, nil)
	// n1 has replayed, the buffer is empty, and the manager still waits for "stuck".
	if err := procs.Eventually(10*time.Second, 50*time.Millisecond, func() error {
		st, err := s.Status()
		if err != nil {
			return err
		}
		if st.Mode != events.ModeRecovering || st.Buffer.Pending != 0 {
			return fmt.Errorf("mode %s, pending %d", st.Mode, st.Buffer.Pending)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Request(events.SubjectRecoveryComplete, map[string]any{}, &mr); err != nil {
		t.Fatal(err)
	}
	if mr.Mode != events.ModeNormal || mr.Epoch != epoch+1 {
		t.Fatalf("recovery.complete answered %+v, want normal at epoch %d", mr, epoch+1)
	}
	waitNodeMode(t, n1, events.ModeNormal)
	got, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	l.check(t, got)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Manager.WaitOutput(ctx, "Recovery completed by the operator"); err != nil {
		t.Error(err)
	}
}
