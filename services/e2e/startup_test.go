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
	mr := s.EnterMaintenance("maintenance", n1)
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

// A fleet started all at once on a fresh three-server JetStream cluster, as a
// Kubernetes rollout does, with every stream and the bucket replicated 3
// ways: every process is ready within the bound, none exits and restarts.
func TestFleetStartsAtOnceOnAFreshCluster(t *testing.T) {
	t.Parallel()
	const bound = 30 * time.Second
	s := NewSystem(t, Options{NATSCluster: 3, AutoRecovery: true, Env: map[string]string{"BUFFER_REPLICAS": "3"}})
	procs3 := []*procs.Proc{s.NewMonitor(nil), s.NewManager(nil)}
	nodes := []*Node{s.NewNode("n1", nil), s.NewNode("n2", nil)}
	for _, n := range nodes {
		procs3 = append(procs3, n.Proc)
	}
	start := time.Now()
	for _, p := range procs3 {
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
	}
	ready := map[string]time.Duration{}
	if err := procs.Eventually(bound, 20*time.Millisecond, func() error {
		for _, p := range procs3 {
			if !p.Running() {
				return fmt.Errorf("a process exited: %v", p.ExitErr())
			}
		}
		for _, n := range nodes {
			if _, ok := ready[n.ID]; ok {
				continue
			}
			r, err := do("GET", n.URL()+"/readyz", nil)
			if err != nil || r.Code != 200 {
				return fmt.Errorf("%s not ready", n.ID)
			}
			ready[n.ID] = time.Since(start)
		}
		st, err := s.Status()
		if err != nil {
			return err
		}
		if st.HealthStatus != events.HealthHealthy || len(st.Nodes) != len(nodes) {
			return fmt.Errorf("manager: health %s, %d nodes", st.HealthStatus, len(st.Nodes))
		}
		ready["manager and monitor"] = time.Since(start)
		return nil
	}); err != nil {
		for _, p := range procs3 {
			t.Logf("%s", tail(p.Output(), 15))
		}
		t.Fatal(err)
	}
	t.Logf("cold start of the whole system on a fresh three-server cluster: %v (bound %v)", ready, bound)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, name := range []string{events.StreamEvents, events.StreamMetadata, events.StreamBuffer, events.StreamChanges, "KV_" + events.BucketName} {
		st, err := s.JS.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if got := st.CachedInfo().Config.Replicas; got != 3 {
			t.Errorf("%s: %d replicas, want 3", name, got)
		}
	}
	l := newLedger()
	writeAll(t, nodes, l, idRange(1, 100), false, "after a cold start", 200)
	checkReads(t, nodes[1], l, idRange(1, 100))
}
