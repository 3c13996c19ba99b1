package e2e_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/procs"
	"github.com/anivault/anivault/pkg/testutil/natstest"
)

// Regression (chaos seeds 3003 and 4009): a NATS restart can leave messages
// in a work-queue stream after their consumer saw them acknowledged. The
// consumer never delivers them again, so the buffer never emptied and the
// recovery-manager kept the system in recovering for ever. The test makes such
// orphans deterministically in both work queues (the buffer and the
// producers' write stream), then checks that the nodes apply and remove them
// and that a recovery still ends in normal with the table unchanged.
func TestOrphansAfterNATSRestart(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{AutoRecovery: true})
	n1 := s.StartNode("n1", nil)
	s.StartMonitor(nil)
	s.StartManager(nil)
	s.WaitManager()
	l := newLedger()
	buffer := s.streamName(events.StreamBuffer)
	writes := s.streamName(events.StreamMetadata)

	var mr events.ModeReply
	if err := s.Request(events.SubjectCacheOnlyEnter, events.CacheOnlyEnterRequest{Reason: "orphans"}, &mr); err != nil {
		t.Fatal(err)
	}
	waitNodeMode(t, n1, events.ModeCacheOnly)
	writeAll(t, []*Node{n1}, l, idRange(1, 50), false, "buffered", 202)
	// Producers' writes wait in their stream while no node runs.
	if err := n1.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	for id := int64(1001); id <= 1010; id++ {
		publishJS(t, s, events.SubjectMetadataUpsert, anime(id, "producer"))
	}
	restore := natstest.KeepStreamMessages(t, s.NATS, buffer, writes)
	if err := n1.Start(); err != nil {
		t.Fatal(err)
	}
	s.WaitReady(n1)
	at := time.Now()
	var exit events.ModeReply
	// The manager may still be reconnecting after the NATS restart.
	if err := procs.Eventually(30*time.Second, 100*time.Millisecond, func() error {
		return s.Request(events.SubjectCacheOnlyExit, struct{}{}, &exit)
	}); err != nil || exit.Mode != events.ModeRecovering {
		t.Fatalf("exit: %+v %v", exit, err)
	}
	s.Events.Wait(t, events.SubjectModeNormal, at, 30*time.Second, nil)
	want, err := s.Versions()
	if err != nil || len(want) != 60 {
		t.Fatalf("after the first recovery the table holds %d rows (%v), want 60", len(want), err)
	}
	l.check(t, want)

	restore() // the 60 writes are back in their streams, below the ack floors
	if err := procs.Eventually(30*time.Second, 100*time.Millisecond, func() error {
		for _, name := range []string{buffer, writes} {
			if _, err := s.streamEmpty(name); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// A recovery ends in normal again (it used to wait for ever for an empty buffer).
	if err := procs.Eventually(30*time.Second, 100*time.Millisecond, func() error {
		return s.Request(events.SubjectCacheOnlyEnter, events.CacheOnlyEnterRequest{Reason: "after orphans"}, &mr)
	}); err != nil {
		t.Fatal(err)
	}
	waitNodeMode(t, n1, events.ModeCacheOnly)
	at = time.Now()
	if err := s.Request(events.SubjectCacheOnlyExit, struct{}{}, &exit); err != nil || exit.Mode != events.ModeRecovering {
		t.Fatalf("exit: %+v %v", exit, err)
	}
	s.Events.Wait(t, events.SubjectModeNormal, at, 30*time.Second, nil)
	got, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("the orphans changed the table:\n got %v\nwant %v", got, want)
	}
}
