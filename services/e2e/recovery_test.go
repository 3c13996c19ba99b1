package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/procs"
)

func startOutage(t *testing.T, s *System) events.ModeChanged {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	at := time.Now()
	if err := s.PG.Stop(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	ev := s.Events.Wait(t, events.SubjectModeCacheOnly, at, 15*time.Second, nil)
	for _, n := range s.Nodes {
		if n.Running() {
			waitNodeMode(t, n, events.ModeCacheOnly)
		}
	}
	return ev.Mode()
}

func endOutage(t *testing.T, s *System) events.ModeChanged {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	at := time.Now()
	if err := s.PG.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return s.Events.Wait(t, events.SubjectModeNormal, at, 60*time.Second, nil).Mode()
}

// replayTotals sums replay.completed counts of every node since `after`.
func replayTotals(s *System, after time.Time) (replayed, stale, failed int64) {
	for _, e := range s.Events.All() {
		if e.Subject != events.SubjectReplayCompleted || e.At.Before(after) {
			continue
		}
		var rc events.ReplayCompleted
		if json.Unmarshal(e.Data, &rc) == nil {
			replayed += rc.Replayed
			stale += rc.SkippedStale
			failed += rc.Failed
		}
	}
	return
}

// assertEpochsIncrease checks that mode events never go back in epoch.
func assertEpochsIncrease(t *testing.T, s *System) {
	t.Helper()
	var last int64 = -1
	for _, e := range s.Events.All() {
		if len(e.Subject) < 5 || e.Subject[:5] != "mode." {
			continue
		}
		mc := e.Mode()
		if mc.Epoch <= last {
			t.Errorf("mode event %s epoch %d after epoch %d", e.Subject, mc.Epoch, last)
		}
		last = mc.Epoch
	}
}

// (b) A cache-node killed with SIGKILL after acknowledging buffered writes
// loses nothing: one is restarted, the other stays dead and recovery does
// not wait for it.
func TestKilledNodeLosesNothing(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{PrivatePG: true, AutoRecovery: true})
	n1 := s.StartNode("n1", nil)
	n2 := s.StartNode("n2", nil)
	n3 := s.StartNode("n3", nil)
	s.StartMonitor(nil)
	s.StartManager(nil)
	l := newLedger()
	writeAll(t, []*Node{n1, n2, n3}, l, idRange(1, 300), false, "before", 200)
	startOutage(t, s)
	writeAll(t, []*Node{n1}, l, idRange(1, 400), false, "n1 buffered", 202)
	writeAll(t, []*Node{n2}, l, idRange(1000, 300), false, "n2 buffered", 202)
	writeAll(t, []*Node{n2}, l, idRange(1, 30), true, "", 202)
	if err := n1.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := n2.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := n1.Start(); err != nil {
		t.Fatal(err)
	}
	s.WaitReady(n1)
	waitNodeMode(t, n1, events.ModeCacheOnly)
	endOutage(t, s)
	got, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	l.check(t, got)
	st, err := s.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Buffer.Pending != 0 || st.TotalFailures != 1 || st.TotalRecoveries != 1 {
		t.Fatalf("status after recovery: pending %d failures %d recoveries %d", st.Buffer.Pending, st.TotalFailures, st.TotalRecoveries)
	}
	for _, nd := range st.Nodes {
		if nd.ID == "n2" {
			t.Fatalf("dead node n2 still listed as live: %+v", nd)
		}
	}
	_ = n3
}

// (d) Operator control: planned maintenance, forced recovery during an outage.
func TestManualCacheOnlyAndForce(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{PrivatePG: true, AutoRecovery: true, RecoveryCheck: 300 * time.Millisecond})
	n1 := s.StartNode("n1", nil)
	n2 := s.StartNode("n2", nil)
	s.StartMonitor(nil)
	s.StartManager(nil)
	l := newLedger()

	var mr events.ModeReply
	at := time.Now()
	if err := s.Request(events.SubjectCacheOnlyEnter, events.CacheOnlyEnterRequest{Reason: "planned maintenance"}, &mr); err != nil {
		t.Fatal(err)
	}
	if mr.Mode != events.ModeCacheOnly || mr.Epoch < 1 {
		t.Fatalf("enter: %+v", mr)
	}
	ev := s.Events.Wait(t, events.SubjectModeCacheOnly, at, 10*time.Second, nil)
	if ev.Mode().Reason != "planned maintenance" {
		t.Fatalf("reason %q", ev.Mode().Reason)
	}
	waitNodeMode(t, n1, events.ModeCacheOnly)
	waitNodeMode(t, n2, events.ModeCacheOnly)
	writeAll(t, []*Node{n1, n2}, l, idRange(1, 200), false, "maintenance", 202)
	// The database is healthy, and the manager checks it every 300ms: automatic
	// recovery must still not end a planned maintenance. Watch for 2 seconds.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		mc, err := s.ModeKV()
		if err != nil || mc.Mode != events.ModeCacheOnly || mc.Epoch != mr.Epoch {
			t.Fatalf("maintenance mode left by itself: %+v %v", mc, err)
		}
		time.Sleep(100 * time.Millisecond) // observation window for an absence
	}
	v, _ := s.Versions()
	if len(v) != 0 {
		t.Fatalf("buffered writes reached the table during maintenance: %d rows", len(v))
	}
	at = time.Now()
	var exit events.ModeReply
	if err := s.Request(events.SubjectCacheOnlyExit, struct{}{}, &exit); err != nil || exit.Mode != events.ModeRecovering {
		t.Fatalf("exit: %+v %v", exit, err)
	}
	s.Events.Wait(t, events.SubjectModeNormal, at, 30*time.Second, nil)
	got, _ := s.Versions()
	l.check(t, got)

	// recovery.force during an outage: attempted, unhealthy, the mode stays.
	co := startOutage(t, s)
	var fr events.ForceRecoveryReply
	if err := s.Request(events.SubjectRecoveryForce, struct{}{}, &fr); err != nil {
		t.Fatal(err)
	}
	if !fr.Attempted || fr.HealthStatus != events.HealthUnhealthy || fr.Mode != events.ModeCacheOnly || fr.Epoch != co.Epoch {
		t.Fatalf("force during outage: %+v (cache-only epoch %d)", fr, co.Epoch)
	}
	// Every forced check logs the old guide's phrase with its outcome.
	wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
	if err := s.Manager.WaitOutput(wctx, "Recovery attempt (forced by operator)"); err != nil {
		t.Errorf("recovery.force was not logged as a \"Recovery attempt\": %v", err)
	}
	wcancel()
	endOutage(t, s)
	st, _ := s.Status()
	if st.TotalFailures != 1 || st.TotalRecoveries != 1 || st.RecoveryAttempts < 2 {
		t.Fatalf("counters: %+v", st)
	}
	assertEpochsIncrease(t, s)
}

// (d) With AUTO_RECOVERY_ENABLED=false only recovery.force recovers.
func TestAutoRecoveryDisabled(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{PrivatePG: true, AutoRecovery: false, RecoveryCheck: 300 * time.Millisecond})
	n1 := s.StartNode("n1", nil)
	s.StartMonitor(nil)
	s.StartManager(nil)
	l := newLedger()
	co := startOutage(t, s)
	writeAll(t, []*Node{n1}, l, idRange(1, 100), false, "x", 202)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	at := time.Now()
	if err := s.PG.Start(ctx); err != nil {
		t.Fatal(err)
	}
	rec := s.Events.Wait(t, events.SubjectDBRecovered, at, 15*time.Second, nil)
	deadline := rec.At.Add(2 * time.Second)
	for time.Now().Before(deadline) {
		mc, err := s.ModeKV()
		if err != nil || mc.Mode != events.ModeCacheOnly || mc.Epoch != co.Epoch {
			t.Fatalf("recovered without an operator: %+v %v", mc, err)
		}
		time.Sleep(100 * time.Millisecond) // observation window for an absence
	}
	// Nodes report the manager's AUTO_RECOVERY_ENABLED, as the old guide's key promises.
	r, err := do("GET", n1.URL()+"/v1/status", nil)
	if err != nil {
		t.Fatal(err)
	}
	var ns events.SystemStatus
	r.JSON(t, &ns)
	if raw := string(r.Body); !strings.Contains(raw, `"auto_recovery_enabled":false`) || ns.AutoRecoveryEnabled {
		t.Errorf("node status auto_recovery_enabled: %s", raw)
	}
	var fr events.ForceRecoveryReply
	if err := s.Request(events.SubjectRecoveryForce, struct{}{}, &fr); err != nil {
		t.Fatal(err)
	}
	if !fr.Attempted || fr.HealthStatus != events.HealthHealthy || fr.Mode != events.ModeRecovering || fr.Epoch != co.Epoch+1 {
		t.Fatalf("force: %+v", fr)
	}
	s.Events.Wait(t, events.SubjectModeNormal, at, 30*time.Second, nil)
	got, _ := s.Versions()
	l.check(t, got)
}

// (e) A second outage during replay stops the replay without loss; the system
// goes back to cache-only, then recovers with nothing applied twice.
func TestOutageDuringReplay(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{PrivatePG: true, AutoRecovery: true})
	slow := map[string]string{"REPLAY_BATCH_SIZE": "2", "REPLAY_BATCH_INTERVAL": "100ms", "BUFFER_GROUP_COMMIT_MAX": "8"}
	n1 := s.StartNode("n1", slow)
	n2 := s.StartNode("n2", slow)
	s.StartMonitor(nil)
	s.StartManager(nil)
	l := newLedger()
	outage := time.Now()
	startOutage(t, s)
	writeAll(t, []*Node{n1, n2}, l, idRange(1, 1500), false, "buffered", 202)
	writeAll(t, []*Node{n1, n2}, l, idRange(1, 100), true, "", 202)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	at := time.Now()
	if err := s.PG.Start(ctx); err != nil {
		t.Fatal(err)
	}
	s.Events.Wait(t, events.SubjectModeRecovering, at, 15*time.Second, nil)
	// Wait until replay made progress, then cut the database again.
	if err := procs.Eventually(20*time.Second, 20*time.Millisecond, func() error {
		v, err := s.Versions()
		if err != nil || len(v) == 0 {
			return fmt.Errorf("no rows replayed yet (%v)", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	at = time.Now()
	if err := s.PG.Kill(); err != nil {
		t.Fatal(err)
	}
	back := s.Events.Wait(t, events.SubjectModeCacheOnly, at, 15*time.Second, nil)
	t.Logf("back to cache-only (epoch %d) %v after the second failure", back.Mode().Epoch, back.At.Sub(at).Round(time.Millisecond))
	// Writes keep being accepted in the second outage.
	writeAll(t, []*Node{n1, n2}, l, idRange(1400, 200), false, "second outage", 202)
	endOutage(t, s)
	got, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	l.check(t, got)
	replayed, stale, failed := replayTotals(s, outage)
	var accepted int64
	for _, n := range []*Node{n1, n2} {
		r, _ := do("GET", n.URL()+"/v1/status", nil)
		var st events.SystemStatus
		_ = json.Unmarshal(r.Body, &st)
		accepted += st.Buffer.AcceptedTotal
	}
	t.Logf("accepted %d buffered writes; replay.completed reports replayed %d, skipped stale %d, failed %d", accepted, replayed, stale, failed)
	if accepted != 1800 || failed != 0 {
		t.Fatalf("accepted %d (want 1800), failed %d", accepted, failed)
	}
	// Each buffered write is applied or skipped exactly once over all replays:
	// the ones applied before the second failure are reported by nobody's
	// replay.completed (that replay never completed), so the sum is at most accepted.
	if replayed+stale > accepted {
		t.Fatalf("replayed %d + stale %d exceeds accepted %d: something was applied twice", replayed, stale, accepted)
	}
	st, _ := s.Status()
	if st.TotalFailures != 1 || st.TotalRecoveries != 1 || st.Buffer.Pending != 0 {
		t.Fatalf("status: failures %d recoveries %d pending %d", st.TotalFailures, st.TotalRecoveries, st.Buffer.Pending)
	}
	assertEpochsIncrease(t, s)
}

// (f) The NATS server restarts during cache-only mode (same port, same
// store): buffered writes survive and every node learns the mode again.
func TestNATSRestartInCacheOnly(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{PrivatePG: true, AutoRecovery: true})
	n1 := s.StartNode("n1", nil)
	n2 := s.StartNode("n2", nil)
	s.StartMonitor(nil)
	s.StartManager(nil)
	l := newLedger()
	startOutage(t, s)
	writeAll(t, []*Node{n1, n2}, l, idRange(1, 500), false, "before nats restart", 202)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.NATS.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	// Once each node reconnected, writes are buffered again (503 while NATS is
	// away is allowed, never a false 202).
	for i, n := range []*Node{n1, n2} {
		id := int64(9998 + i)
		if err := procs.Eventually(30*time.Second, 50*time.Millisecond, func() error {
			r, err := n.Put(anime(id, "after restart"))
			if err != nil {
				return err
			}
			if r.Code != 202 {
				return fmt.Errorf("put on %s after restart: %d %s", n.ID, r.Code, r.Body)
			}
			var wr WriteResult
			_ = json.Unmarshal(r.Body, &wr)
			l.ack(id, wr.Version, false)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	writeAll(t, []*Node{n1, n2}, l, idRange(600, 100), false, "after nats restart", 202)
	for _, n := range []*Node{n1, n2} {
		waitNodeMode(t, n, events.ModeCacheOnly)
	}
	endOutage(t, s)
	for _, n := range []*Node{n1, n2} {
		waitNodeMode(t, n, events.ModeNormal)
	}
	got, _ := s.Versions()
	l.check(t, got)
}

// (g) The recovery-manager restarted mid-outage resumes from KV: no epoch goes
// backwards and no second failure is counted.
func TestManagerRestartMidOutage(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{PrivatePG: true, AutoRecovery: true})
	n1 := s.StartNode("n1", nil)
	s.StartMonitor(nil)
	s.StartManager(nil)
	l := newLedger()
	co := startOutage(t, s)
	writeAll(t, []*Node{n1}, l, idRange(1, 100), false, "x", 202)
	if err := s.Manager.Kill(); err != nil {
		t.Fatal(err)
	}
	s.StartManager(nil)
	st, err := s.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode != events.ModeCacheOnly || st.Epoch != co.Epoch || st.TotalFailures != 1 {
		t.Fatalf("restarted manager: mode %s epoch %d failures %d; want cache_only %d 1", st.Mode, st.Epoch, st.TotalFailures, co.Epoch)
	}
	normal := endOutage(t, s)
	if normal.Epoch != co.Epoch+2 {
		t.Fatalf("normal epoch %d, want %d", normal.Epoch, co.Epoch+2)
	}
	st, _ = s.Status()
	if st.TotalFailures != 1 || st.TotalRecoveries != 1 {
		t.Fatalf("counters: failures %d recoveries %d", st.TotalFailures, st.TotalRecoveries)
	}
	got, _ := s.Versions()
	l.check(t, got)
	assertEpochsIncrease(t, s)
}
