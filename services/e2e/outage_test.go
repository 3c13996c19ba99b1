package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/metastore"
	"github.com/anivault/anivault/pkg/procs"
)

// ledger remembers the newest acknowledged version of every key.
type ledger struct {
	mu   sync.Mutex
	want map[int64]metastore.Version
}

func newLedger() *ledger { return &ledger{want: map[int64]metastore.Version{}} }

func (l *ledger) ack(id, version int64, deleted bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if cur, ok := l.want[id]; !ok || version > cur.Version {
		l.want[id] = metastore.Version{Version: version, Deleted: deleted}
	}
}

// count returns how many keys have an acknowledged write.
func (l *ledger) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.want)
}

// check asserts the table holds exactly the newest acknowledged version of every key.
func (l *ledger) check(t *testing.T, got map[int64]metastore.Version) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	bad := 0
	for id, w := range l.want {
		g, ok := got[id]
		if !ok || g != w {
			bad++
			if bad <= 10 {
				t.Errorf("tmdb:%d: table has %+v (present %v), acknowledged %+v", id, g, ok, w)
			}
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d keys differ from the acknowledged writes", bad, len(l.want))
	}
}

// writeAll sends writes from 16 workers; every write must answer wantCode.
func writeAll(t *testing.T, nodes []*Node, l *ledger, ids []int64, del bool, title string, wantCode int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(ids))
	ch := make(chan int64)
	for w := range 16 {
		wg.Go(func() {
			for id := range ch {
				n := nodes[(int(id)+w)%len(nodes)]
				var r Resp
				var err error
				if del {
					r, err = n.Delete(id)
				} else {
					r, err = n.Put(anime(id, fmt.Sprintf("%s %d", title, id)))
				}
				if err != nil || r.Code != wantCode {
					errs <- fmt.Errorf("write %d on %s: %v %d %s", id, n.ID, err, r.Code, r.Body)
					continue
				}
				var wr WriteResult
				if err := json.Unmarshal(r.Body, &wr); err != nil {
					errs <- err
					continue
				}
				l.ack(id, wr.Version, del)
			}
		})
	}
	for _, id := range ids {
		ch <- id
	}
	close(ch)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func idRange(from, n int) []int64 {
	out := make([]int64, n)
	for i := range out {
		out[i] = int64(from + i)
	}
	return out
}

// (a) The full lifecycle of an outage with two nodes, a monitor and a manager.
func TestOutageLifecycle(t *testing.T) {
	t.Parallel()
	const interval, threshold = 200 * time.Millisecond, 2
	s := NewSystem(t, Options{PrivatePG: true, MonitorInterval: interval, FailureThreshold: threshold, RecoveryThresh: 2, AutoRecovery: true})
	n1 := s.StartNode("n1", nil)
	n2 := s.StartNode("n2", nil)
	s.StartMonitor(nil)
	s.StartManager(nil)
	nodes := []*Node{n1, n2}
	l := newLedger()

	writeAll(t, nodes, l, idRange(1, 1000), false, "original", 200)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stopAt := time.Now()
	if err := s.PG.Stop(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	bound := interval*threshold + time.Second
	unhealthy := s.Events.Wait(t, events.SubjectDBUnhealthy, stopAt, bound+2*time.Second, nil)
	cacheOnly := s.Events.Wait(t, events.SubjectModeCacheOnly, stopAt, bound+2*time.Second, nil)
	t.Logf("timeline: db.unhealthy after %v, mode.cache_only after %v (bound %v)",
		unhealthy.At.Sub(stopAt).Round(time.Millisecond), cacheOnly.At.Sub(stopAt).Round(time.Millisecond), bound)
	if d := cacheOnly.At.Sub(stopAt); d > bound {
		t.Errorf("mode.cache_only after %v, bound %v", d, bound)
	}
	epochCacheOnly := cacheOnly.Mode().Epoch
	// Both nodes know the mode before the outage writes start.
	for _, n := range nodes {
		waitNodeMode(t, n, events.ModeCacheOnly)
	}

	writeAll(t, nodes, l, idRange(1001, 1000), false, "during outage", 202)
	writeAll(t, nodes, l, idRange(1, 200), false, "updated in outage", 202)
	writeAll(t, nodes, l, idRange(501, 50), true, "", 202)

	// Every read from either node returns the latest acknowledged version.
	for _, n := range nodes {
		checkReads(t, n, l, []int64{1, 150, 200, 201, 999, 1001, 1500, 2000, 501, 550})
	}
	if r, _ := n1.Get(777777); r.Code != 503 || r.Header.Get("Retry-After") == "" {
		t.Fatalf("uncached read in cache-only mode: %d %q", r.Code, r.Header.Get("Retry-After"))
	}

	startAt := time.Now()
	if err := s.PG.Start(ctx); err != nil {
		t.Fatal(err)
	}
	recovered := s.Events.Wait(t, events.SubjectDBRecovered, startAt, 20*time.Second, nil)
	recovering := s.Events.Wait(t, events.SubjectModeRecovering, startAt, 20*time.Second, nil)
	epochRec := recovering.Mode().Epoch
	if epochRec != epochCacheOnly+1 {
		t.Errorf("recovering epoch %d, cache-only epoch %d", epochRec, epochCacheOnly)
	}
	replayed, stale := waitReplayCompletedByEachNode(t, s, []string{"n1", "n2"}, startAt, epochRec)
	normal := s.Events.Wait(t, events.SubjectModeNormal, startAt, 60*time.Second, nil)
	t.Logf("timeline: db.recovered after %v, mode.recovering after %v, mode.normal after %v; replayed %d, skipped stale %d",
		recovered.At.Sub(startAt).Round(time.Millisecond), recovering.At.Sub(startAt).Round(time.Millisecond),
		normal.At.Sub(startAt).Round(time.Millisecond), replayed, stale)
	if replayed+stale != 1250 {
		t.Errorf("replayed %d + stale %d, want 1250 buffered writes", replayed, stale)
	}

	got, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	l.check(t, got)
	if len(got) != 2000 {
		t.Errorf("table has %d rows, want 2000", len(got))
	}
	checkStatusAfterOneOutage(t, s, nodes)
	checkOutageLifecycleLogged(t, ctx, s, n1)
}

// waitReplayCompletedByEachNode waits for the replay.completed of each node
// in the recovery of epoch, fails on failed writes, and returns the
// replayed and skipped-stale totals.
func waitReplayCompletedByEachNode(t *testing.T, s *System, nodeIDs []string, startAt time.Time, epoch int64) (replayed, stale int64) {
	t.Helper()
	for _, id := range nodeIDs {
		ev := s.Events.Wait(t, events.SubjectReplayCompleted, startAt, 60*time.Second, func(e Event) bool {
			var rc events.ReplayCompleted
			return json.Unmarshal(e.Data, &rc) == nil && rc.Source == id && rc.Epoch == epoch
		})
		var rc events.ReplayCompleted
		_ = json.Unmarshal(ev.Data, &rc)
		replayed += rc.Replayed
		stale += rc.SkippedStale
		if rc.Failed != 0 {
			t.Errorf("node %s failed %d writes", id, rc.Failed)
		}
	}
	return replayed, stale
}

// checkStatusAfterOneOutage checks the system's and every node's status
// count one failure and one recovery, in normal mode with nothing buffered.
func checkStatusAfterOneOutage(t *testing.T, s *System, nodes []*Node) {
	t.Helper()
	st, err := s.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.TotalFailures != 1 || st.TotalRecoveries != 1 || st.Mode != events.ModeNormal {
		t.Errorf("status: failures %d recoveries %d mode %s", st.TotalFailures, st.TotalRecoveries, st.Mode)
	}
	if st.Buffer.Pending != 0 {
		t.Errorf("buffer pending %d after recovery", st.Buffer.Pending)
	}
	for _, n := range nodes {
		waitNodeMode(t, n, events.ModeNormal)
		// A node's own status shows the manager's counters, as the old guide's keys promise.
		r, err := do("GET", n.URL()+"/v1/status", nil)
		if err != nil {
			t.Fatal(err)
		}
		var ns events.SystemStatus
		r.JSON(t, &ns)
		if ns.TotalFailures != 1 || ns.TotalRecoveries != 1 || ns.LastFailureTime == nil || ns.LastRecoveryTime == nil ||
			!ns.IsOperational || ns.CacheOnlyReason != "" || !ns.AutoRecoveryEnabled {
			t.Errorf("node %s status: failures %d recoveries %d last failure %v last recovery %v operational %v reason %q auto recovery %v",
				n.ID, ns.TotalFailures, ns.TotalRecoveries, ns.LastFailureTime, ns.LastRecoveryTime, ns.IsOperational, ns.CacheOnlyReason, ns.AutoRecoveryEnabled)
		}
	}
}

// checkOutageLifecycleLogged checks the manager logged every step of the
// outage and n1 its replay.
func checkOutageLifecycleLogged(t *testing.T, ctx context.Context, s *System, n1 *Node) {
	t.Helper()
	for _, phrase := range []string{"Cache-only mode enabled", "Recovery started", "Recovery completed", "Cache-only mode disabled"} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := s.Manager.WaitOutput(ctx, phrase); err != nil {
			t.Error(err)
		}
		cancel()
	}
	if err := n1.WaitOutput(ctx, "Replay completed"); err != nil {
		t.Error(err)
	}
}

func waitNodeMode(t *testing.T, n *Node, mode events.Mode) {
	t.Helper()
	err := procs.Eventually(15*time.Second, 20*time.Millisecond, func() error {
		r, err := do("GET", n.URL()+"/v1/status", nil)
		if err != nil {
			return err
		}
		var st events.SystemStatus
		if err := json.Unmarshal(r.Body, &st); err != nil {
			return err
		}
		if st.Mode != mode {
			return fmt.Errorf("node %s in %s", n.ID, st.Mode)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func checkReads(t *testing.T, n *Node, l *ledger, ids []int64) {
	t.Helper()
	for _, id := range ids {
		l.mu.Lock()
		want, ok := l.want[id]
		l.mu.Unlock()
		if !ok {
			continue
		}
		// Another node's write reaches this node through metadata.changed: poll briefly.
		err := procs.Eventually(5*time.Second, 10*time.Millisecond, func() error {
			r, err := n.Get(id)
			if err != nil {
				return err
			}
			if want.Deleted {
				if r.Code != 404 {
					return fmt.Errorf("tmdb:%d on %s: %d, want 404 (deleted)", id, n.ID, r.Code)
				}
				return nil
			}
			var rec events.Record
			if r.Code != 200 || json.Unmarshal(r.Body, &rec) != nil || rec.Version != want.Version {
				return fmt.Errorf("tmdb:%d on %s: %d v%d, want v%d", id, n.ID, r.Code, rec.Version, want.Version)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}
