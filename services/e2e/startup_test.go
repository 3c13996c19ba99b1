package e2e_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/procs"
)

// A node started just before a recovery, which the manager has not heard a
// periodic report from yet (NODE_STATUS_INTERVAL is long), buffers writes
// and is part of the recovery: its replay.completed for the recovering epoch
// comes before mode.normal, and nothing it buffered is lost.
func TestNodeStartedJustBeforeRecovery(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{AutoRecovery: true})
	n1 := s.StartNode("n1", nil)
	s.StartMonitor(nil)
	s.StartManager(nil)
	var mr events.ModeReply
	if err := s.Request(events.SubjectCacheOnlyEnter, events.CacheOnlyEnterRequest{Reason: "maintenance"}, &mr); err != nil {
		t.Fatal(err)
	}
	waitNodeMode(t, n1, events.ModeCacheOnly)
	n2 := s.StartNode("late", map[string]string{"NODE_STATUS_INTERVAL": "30s"})
	// The node reports itself as soon as it is ready and on every mode
	// change, not only every NODE_STATUS_INTERVAL: the manager lists it in
	// its current mode at once.
	if err := procs.Eventually(2*time.Second, 20*time.Millisecond, func() error {
		st, err := s.Status()
		if err != nil {
			return err
		}
		for _, nd := range st.Nodes {
			if nd.ID == "late" && nd.Mode == events.ModeCacheOnly && nd.Epoch == mr.Epoch {
				return nil
			}
		}
		return fmt.Errorf("the manager lists %+v", st.Nodes)
	}); err != nil {
		t.Fatal(err)
	}
	l := newLedger()
	writeAll(t, []*Node{n2}, l, idRange(1, 50), false, "buffered by a new node", 202)
	at := time.Now()
	if err := s.Request(events.SubjectCacheOnlyExit, map[string]any{}, &mr); err != nil {
		t.Fatal(err)
	}
	rec := s.Events.Wait(t, events.SubjectModeRecovering, at, 30*time.Second, nil).Mode()
	normal := s.Events.Wait(t, events.SubjectModeNormal, at, 60*time.Second, nil)
	var replayed *Event
	for _, e := range s.Events.All() {
		var rc events.ReplayCompleted
		if e.Subject == events.SubjectReplayCompleted && json.Unmarshal(e.Data, &rc) == nil && rc.Source == "late" && rc.Epoch == rec.Epoch {
			replayed = &e
			break
		}
	}
	if replayed == nil || replayed.At.After(normal.At) {
		t.Fatalf("the new node's replay.completed for epoch %d: %v; mode.normal at %s:%s", rec.Epoch, replayed, normal.At.Format("15:04:05.000"), s.Events.summary())
	}
	got, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	l.check(t, got)
}
