package e2e_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/uptrace/bun/driver/pgdriver"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/faultproxy"
	"github.com/anivault/anivault/pkg/metastore"
	"github.com/anivault/anivault/pkg/natsembed"
	"github.com/anivault/anivault/pkg/pgdb"
	"github.com/anivault/anivault/pkg/pgembed"
	"github.com/anivault/anivault/pkg/procs"
)

// writeLoad runs writers HTTP writers over ids on nodes until stop is
// closed, acknowledging 200 and 202 in the ledger and counting the rest.
type writeLoad struct {
	committed, buffered, failed atomic.Int64
	mu                          sync.Mutex
	failures                    []string
	codes                       map[int]int // answers other than 200 and 202, by code (0: no answer)
	acks                        []time.Time // when each acknowledged write was answered
	wg                          sync.WaitGroup
	stop                        chan struct{}
}

// longestGap is the longest time between two acknowledged writes (or from
// from to the first) within [from, to].
func (w *writeLoad) longestGap(from, to time.Time) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	acks := slices.Clone(w.acks)
	slices.SortFunc(acks, func(a, b time.Time) int { return a.Compare(b) })
	var gap time.Duration
	prev := from
	for _, a := range acks {
		if a.Before(from) || a.After(to) {
			continue
		}
		gap = max(gap, a.Sub(prev))
		prev = a
	}
	return max(gap, to.Sub(prev))
}

func startWrites(nodes []*Node, l *ledger, ids []int64, writers int) *writeLoad {
	w := &writeLoad{stop: make(chan struct{}), codes: map[int]int{}}
	for i := range writers {
		w.wg.Go(func() {
			for j := i; ; j++ {
				select {
				case <-w.stop:
					return
				default:
				}
				id := ids[(j*writers+i)%len(ids)]
				n := nodes[j%len(nodes)]
				r, err := n.Put(anime(id, fmt.Sprintf("writer %d round %d", i, j)))
				var wr WriteResult
				switch {
				case err == nil && (r.Code == 200 || r.Code == 202) && json.Unmarshal(r.Body, &wr) == nil:
					l.ack(id, wr.Version, false)
					w.mu.Lock()
					w.acks = append(w.acks, time.Now())
					w.mu.Unlock()
					if r.Code == 200 {
						w.committed.Add(1)
					} else {
						w.buffered.Add(1)
					}
				default:
					w.failed.Add(1)
					w.mu.Lock()
					w.codes[r.Code]++
					if len(w.failures) < 10 {
						w.failures = append(w.failures, fmt.Sprintf("tmdb:%d on %s: %v %d %s", id, n.ID, err, r.Code, r.Body))
					}
					w.mu.Unlock()
				}
			}
		})
	}
	return w
}

func (w *writeLoad) finish() {
	close(w.stop)
	w.wg.Wait()
}

// superuserExec runs statements on one connection to dsn, in order.
func superuserExec(t *testing.T, dsn string, stmts ...string) {
	t.Helper()
	db := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(dsn)))
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, s := range stmts {
		if _, err := conn.ExecContext(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// A failover manager demotes the primary to read only for 3 s under load:
// writes are buffered (202), none fails, the monitor (which checks that the
// database takes writes) declares it unhealthy and recovered, and every node
// serves the latest afterwards.
func TestDemotedPrimaryBuffersWrites(t *testing.T) {
	t.Parallel()
	const interval, threshold = 200 * time.Millisecond, 2
	s := NewSystem(t, Options{PrivatePG: true, MonitorInterval: interval, FailureThreshold: threshold, AutoRecovery: true})
	n1 := s.StartNode("n1", nil)
	n2 := s.StartNode("n2", nil)
	s.StartMonitor(nil)
	s.StartManager(nil)
	waitSchema(t, s)
	nodes := []*Node{n1, n2}
	l := newLedger()
	ids := idRange(1, 200)
	w := startWrites(nodes, l, ids, 4)
	time.Sleep(time.Second) // writes commit before the fault

	at := time.Now()
	superuserExec(t, s.PG.DSN(), "ALTER SYSTEM SET default_transaction_read_only = on", "SELECT pg_reload_conf()")
	cacheOnly := s.Events.Wait(t, events.SubjectModeCacheOnly, at, interval*threshold+3*time.Second, nil)
	time.Sleep(3 * time.Second) // the primary stays read only for 3 s
	writable := time.Now()
	superuserExec(t, s.PG.DSN(), "SET default_transaction_read_only = off", "ALTER SYSTEM RESET default_transaction_read_only", "SELECT pg_reload_conf()")
	normal := s.Events.Wait(t, events.SubjectModeNormal, writable, 60*time.Second, nil)
	w.finish()

	t.Logf("demoted primary: mode.cache_only %v after the demotion, mode.normal %v after it was writable again; writes committed %d, buffered %d, failed %d",
		cacheOnly.At.Sub(at).Round(time.Millisecond), normal.At.Sub(writable).Round(time.Millisecond), w.committed.Load(), w.buffered.Load(), w.failed.Load())
	if w.failed.Load() != 0 {
		t.Fatalf("%d writes failed: %v", w.failed.Load(), w.failures)
	}
	if w.buffered.Load() == 0 {
		t.Fatal("no write was buffered while the primary refused writes")
	}
	got, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	l.check(t, got)
	assertServesTable(t, s, nodes, ids)
}

// A switchover: the primary is stopped, its streaming replica promoted, and
// the address the services use (a fault proxy, as a Kubernetes Service or a
// DNS name) moved to it, while writers keep going. No write fails, none is
// lost, and every node serves the latest from the new primary.
func TestSwitchoverToPromotedReplica(t *testing.T) {
	t.Parallel()
	const interval, threshold = 200 * time.Millisecond, 2
	s := NewSystem(t, Options{PrivatePG: true, MonitorInterval: interval, FailureThreshold: threshold, AutoRecovery: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	replica := startReplica(t, ctx, s)
	proxy, dsn := s.ProxyDatabase()
	s.opts.DatabaseURL = dsn

	n1 := s.StartNode("n1", nil)
	n2 := s.StartNode("n2", nil)
	s.StartMonitor(nil)
	s.StartManager(nil)
	waitSchema(t, s)
	nodes := []*Node{n1, n2}
	l := newLedger()
	ids := idRange(1, 200)
	w := startWrites(nodes, l, ids, 4)
	time.Sleep(time.Second)

	// The failover manager's switchover: stop the old primary (a fast
	// shutdown streams the last WAL to the replica), promote the replica,
	// move the address.
	at := time.Now()
	switchOver(t, ctx, s, replica, proxy)
	moved := time.Now()
	// Back to normal: either the switchover was shorter than the monitor's
	// detection (the mode never left normal; the fast path buffered what
	// met the gap and the background drain replays it), or it went through
	// cache_only and recovering. Either way every node commits again.
	normalAfter := waitNormalAndCommitting(t, s, w, moved)
	w.finish()
	cacheOnly := 0
	for _, e := range s.Events.All() {
		if e.Subject == events.SubjectModeCacheOnly && !e.At.Before(at) {
			cacheOnly++
		}
	}
	t.Logf("switchover: stop+promote+move took %v; normal and committing with an empty buffer %v after the move (cache-only periods %d); writes committed %d, buffered %d, failed %d",
		moved.Sub(at).Round(time.Millisecond), normalAfter.Round(time.Millisecond), cacheOnly, w.committed.Load(), w.buffered.Load(), w.failed.Load())
	if w.failed.Load() != 0 {
		t.Fatalf("%d writes failed: %v", w.failed.Load(), w.failures)
	}

	// The table is now the promoted replica's.
	readTableFrom(t, s, replica)
	got, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	l.check(t, got)
	assertServesTable(t, s, nodes, ids)
}

// startReplica starts a streaming replica of s's private PostgreSQL,
// closed when the test ends.
func startReplica(t *testing.T, ctx context.Context, s *System) *pgembed.Instance {
	t.Helper()
	replica, err := s.PG.StartReplica(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		_ = replica.Close(cctx)
	})
	return replica
}

// switchOver stops the primary (fast), promotes the replica and retargets
// the proxy to it.
func switchOver(t *testing.T, ctx context.Context, s *System, replica *pgembed.Instance, proxy *faultproxy.Proxy) {
	t.Helper()
	if err := s.PG.Stop(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	if err := replica.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	if err := proxy.Retarget(fmt.Sprintf("127.0.0.1:%d", replica.Port())); err != nil {
		t.Fatal(err)
	}
}

// waitNormalAndCommitting waits until the mode is normal (or was never
// set), 20 more writes of w committed and nothing is buffered; it returns
// how long after moved that was.
func waitNormalAndCommitting(t *testing.T, s *System, w *writeLoad, moved time.Time) time.Duration {
	t.Helper()
	committedBefore := w.committed.Load()
	var normalAfter time.Duration
	if err := procs.Eventually(60*time.Second, 50*time.Millisecond, func() error {
		mc, err := s.ModeKV()
		if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return err
		}
		if err == nil && mc.Mode != events.ModeNormal {
			return fmt.Errorf("mode %s", mc.Mode)
		}
		if w.committed.Load() < committedBefore+20 {
			return fmt.Errorf("no commits on the new primary yet")
		}
		st, err := s.Status()
		if err != nil {
			return err
		}
		if st.Buffer.Pending != 0 {
			return fmt.Errorf("buffer pending %d", st.Buffer.Pending)
		}
		normalAfter = time.Since(moved)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return normalAfter
}

// readTableFrom points the test's own store (s.Versions) at replica.
func readTableFrom(t *testing.T, s *System, replica *pgembed.Instance) {
	t.Helper()
	u, err := url.Parse(s.DSN)
	if err != nil {
		t.Fatal(err)
	}
	db, err := pgdb.Open(pgdb.Config{DSN: replica.DSNFor(u.Path[1:]), DialTimeout: 2 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	if s.store, err = metastore.New(db); err != nil {
		t.Fatal(err)
	}
}

// Three health-monitors. One is cut off from PostgreSQL alone (its
// connection black-holed): it declares the database unhealthy, but the
// fleet stays in normal mode. Then one of the others dies and PostgreSQL
// really stops: the two that remain agree, and detection is not delayed.
func TestMonitorsAreOutvoted(t *testing.T) {
	t.Parallel()
	const interval, threshold = 200 * time.Millisecond, 2
	s := NewSystem(t, Options{PrivatePG: true, MonitorInterval: interval, MonitorTimeout: time.Second, FailureThreshold: threshold, AutoRecovery: true})
	proxy, proxied := s.ProxyDatabase()
	n1 := s.StartNode("n1", nil)
	s.StartManager(nil)
	m1 := s.StartMonitor(map[string]string{"NODE_ID": "monitor-1"})
	s.StartMonitor(map[string]string{"NODE_ID": "monitor-2"})
	cut := s.StartMonitor(map[string]string{"NODE_ID": "monitor-3", "DATABASE_URL": proxied})
	waitSchema(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	at := time.Now()
	if err := proxy.BlackHole(); err != nil {
		t.Fatal(err)
	}
	if err := cut.WaitOutput(ctx, "database declared unhealthy"); err != nil {
		t.Fatal(err)
	}
	if err := s.Manager.WaitOutput(ctx, "db.unhealthy from a minority of the health-monitors"); err != nil {
		t.Fatal(err)
	}
	for _, e := range s.Events.All() {
		if e.Subject == events.SubjectModeCacheOnly && e.At.After(at) {
			t.Fatalf("one monitor of three cut off from the database put the fleet in cache-only mode: %s", e.Data)
		}
	}
	if mc, err := s.ModeKV(); err != nil || mc.Mode != events.ModeNormal {
		t.Fatalf("mode %+v, %v; want normal", mc, err)
	}
	l := newLedger()
	writeAll(t, []*Node{n1}, l, idRange(1, 20), false, "while one monitor is cut off", 200)

	// A monitor dies, then PostgreSQL stops: monitor-2 and the cut-off
	// monitor-3 are a majority; the dead one does not hold detection up.
	if err := m1.Kill(); err != nil {
		t.Fatal(err)
	}
	stop := time.Now()
	if err := s.PG.Stop(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	bound := interval*threshold + 2*time.Second
	cacheOnly := s.Events.Wait(t, events.SubjectModeCacheOnly, stop, bound+3*time.Second, nil)
	t.Logf("monitors: one of three cut off alone kept the fleet in normal mode; with one dead, a real outage was declared %v after PostgreSQL stopped (bound %v): %s",
		cacheOnly.At.Sub(stop).Round(time.Millisecond), bound, cacheOnly.Mode().Reason)
	if d := cacheOnly.At.Sub(stop); d > bound {
		t.Errorf("detection took %v, bound %v", d, bound)
	}
	// PostgreSQL back, the proxy healed: recovery.
	if err := proxy.Heal(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	if err := s.PG.Start(ctx); err != nil {
		t.Fatal(err)
	}
	s.Events.Wait(t, events.SubjectModeNormal, back, 60*time.Second, nil)
	got, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	l.check(t, got)
}

// NATS as a three-server JetStream cluster with every stream and the bucket
// replicated 3 ways: the server leading the buffer stream is stopped while
// the system is in cache-only mode under write load, then started again.
// No acknowledged write is lost; writes refused during the leader election
// are 503, never a false 202.
func TestBufferLeaderLoss(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{NATSCluster: 3, AutoRecovery: true, Env: map[string]string{"BUFFER_REPLICAS": "3"}})
	n1 := s.StartNode("n1", nil)
	n2 := s.StartNode("n2", nil)
	s.StartMonitor(nil)
	s.StartManager(nil)
	nodes := []*Node{n1, n2}
	var mr events.ModeReply
	if err := s.Request(events.SubjectCacheOnlyEnter, events.CacheOnlyEnterRequest{Reason: "maintenance during a NATS server loss"}, &mr); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		waitNodeMode(t, n, events.ModeCacheOnly)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	leader, leaderName := bufferStreamLeader(t, ctx, s)
	l := newLedger()
	ids := idRange(1, 300)
	w := startWrites(nodes, l, ids, 4)
	for w.buffered.Load() < 200 { // load before the fault
		if ctx.Err() != nil {
			t.Fatal("no buffered writes")
		}
		time.Sleep(10 * time.Millisecond)
	}
	killed := time.Now()
	leader.Shutdown()
	for w.buffered.Load() < 1000 { // the system takes writes again without that server
		if ctx.Err() != nil {
			t.Fatalf("writes did not resume after the leader was lost: %d buffered, %v", w.buffered.Load(), w.codes)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := leader.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	for n := w.buffered.Load(); w.buffered.Load() < n+500; {
		if ctx.Err() != nil {
			t.Fatal("writes stopped after the server came back")
		}
		time.Sleep(10 * time.Millisecond)
	}
	w.finish()
	gap := w.longestGap(killed, restarted)
	s.ExitMaintenance()
	w.mu.Lock()
	codes := maps.Clone(w.codes)
	w.mu.Unlock()
	t.Logf("buffer leader (%s) lost under load in cache-only mode: longest time without an acknowledged write %v; buffered %d, refused %d %v",
		leaderName, gap.Round(time.Millisecond), w.buffered.Load(), w.failed.Load(), codes)
	for code, n := range codes {
		if code != 503 {
			t.Errorf("%d writes answered %d; a write refused during the election must be 503", n, code)
		}
	}
	got, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	l.check(t, got)
	assertServesTable(t, s, nodes, ids)
}

// bufferStreamLeader returns the server leading the buffer stream and its name.
func bufferStreamLeader(t *testing.T, ctx context.Context, s *System) (*natsembed.Server, string) {
	t.Helper()
	st, err := s.JS.Stream(ctx, s.streamName(events.StreamBuffer))
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil || info.Cluster == nil {
		t.Fatalf("buffer stream info: %+v %v", info, err)
	}
	var leader *natsembed.Server
	for i, srv := range s.Cluster {
		if info.Cluster.Leader == fmt.Sprintf("s%d", i+1) {
			leader = srv
		}
	}
	if leader == nil {
		t.Fatalf("buffer leader %q is none of the servers", info.Cluster.Leader)
	}
	return leader, info.Cluster.Leader
}
