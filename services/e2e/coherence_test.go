package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/uptrace/bun"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/faultproxy"
	"github.com/anivault/anivault/pkg/metastore"
	"github.com/anivault/anivault/pkg/procs"
)

// readCheck is one node's answer for a key checked against what it must be.
type readCheck struct {
	checked, stale, unavailable, replica atomic.Int64
}

// checkRead reads id from n and compares the answer with want: a stale answer
// is a version older than want (or a record where want is a tombstone).
func (c *readCheck) checkRead(n *Node, id int64, want metastore.Version) error {
	r, err := n.Get(id)
	if err != nil {
		return err
	}
	c.checked.Add(1)
	if r.Header.Get("X-AniVault-Source") == "replica" {
		c.replica.Add(1)
	}
	switch r.Code {
	case 503:
		c.unavailable.Add(1)
		return fmt.Errorf("tmdb:%d on %s: 503 %s", id, n.ID, r.Body)
	case 404:
		if !want.Deleted {
			c.stale.Add(1)
			return fmt.Errorf("tmdb:%d on %s: 404, want v%d", id, n.ID, want.Version)
		}
		return nil
	case 200:
		var rec events.Record
		if err := json.Unmarshal(r.Body, &rec); err != nil {
			return err
		}
		if want.Deleted || rec.Version < want.Version {
			c.stale.Add(1)
			return fmt.Errorf("tmdb:%d on %s: 200 v%d, want %+v", id, n.ID, rec.Version, want)
		}
		return nil
	}
	return fmt.Errorf("tmdb:%d on %s: %d %s", id, n.ID, r.Code, r.Body)
}

// checkKeys reads every id from n and checks each against the ledger's
// newest acknowledged write, reporting violations as test errors.
func (c *readCheck) checkKeys(t *testing.T, n *Node, l *ledger, ids []int64) {
	t.Helper()
	for _, id := range ids {
		l.mu.Lock()
		want := l.want[id]
		l.mu.Unlock()
		if err := c.checkRead(n, id, want); err != nil {
			t.Error(err)
		}
	}
}

// assertServesTable checks that every node answers exactly the table's row
// for every key: 200 with the row's version, or 404 for a tombstone.
func assertServesTable(t *testing.T, s *System, nodes []*Node, ids []int64) int {
	t.Helper()
	table, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	checked, bad := 0, 0
	for _, n := range nodes {
		for _, id := range ids {
			want, ok := table[id]
			r, err := n.Get(id)
			if err != nil {
				t.Fatal(err)
			}
			checked++
			var rec events.Record
			_ = json.Unmarshal(r.Body, &rec)
			switch {
			case !ok && r.Code == 404, ok && want.Deleted && r.Code == 404, ok && !want.Deleted && r.Code == 200 && rec.Version == want.Version:
				continue
			}
			bad++
			if bad <= 10 {
				t.Errorf("tmdb:%d on %s: %d v%d (source %s), table %+v (row %v)", id, n.ID, r.Code, rec.Version, r.Header.Get("X-AniVault-Source"), want, ok)
			}
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d reads differ from the table", bad, checked)
	}
	return checked
}

// The window: rewrite and delete keys in a maintenance window, start
// a cold node after those writes, read every key from both nodes throughout
// the recovery. No read is older than the acknowledged write, and after
// mode.normal every node serves exactly the table.
func TestColdNodeReadsThroughMaintenanceWindow(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{AutoRecovery: true})
	n1 := s.StartNode("n1", nil)
	s.StartMonitor(nil)
	s.StartManager(nil)
	l := newLedger()
	ids := idRange(1, 400)
	writeAll(t, []*Node{n1}, l, ids, false, "before", 200)
	checkReads(t, n1, l, ids) // n1 caches the pre-window rows

	s.EnterMaintenance("planned maintenance", n1)
	writeAll(t, []*Node{n1}, l, ids[:320], false, "rewritten in the window", 202)
	writeAll(t, []*Node{n1}, l, ids[320:], true, "", 202)

	n2 := s.StartNode("n2", nil) // cold: started after the window's writes
	waitNodeMode(t, n2, events.ModeCacheOnly)
	nodes := []*Node{n1, n2}

	// Readers on both nodes through the exit, the replay and mode.normal.
	var rc readCheck
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for _, n := range nodes {
		for w := range 2 {
			wg.Go(func() {
				for i := w; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					id := ids[(i*7)%len(ids)]
					l.mu.Lock()
					want := l.want[id]
					l.mu.Unlock()
					if err := rc.checkRead(n, id, want); err != nil {
						select {
						case errs <- err:
						default:
						}
					}
				}
			})
		}
	}
	// Every key read from the cold node in cache-only mode: from the change log.
	rc.checkKeys(t, n2, l, ids)
	s.ExitMaintenance()
	for _, n := range nodes {
		waitNodeMode(t, n, events.ModeNormal)
	}
	// Keep reading a while in normal mode: the stale-forever entries of the
	// issue were made by reads during recovering and served ever after.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		rc.checkKeys(t, n2, l, ids)
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	l.check(t, got)
	served := assertServesTable(t, s, nodes, ids)
	t.Logf("window: %d reads checked during the window and recovery (%d from the change log), stale %d, unavailable %d; after mode.normal %d reads equal the table",
		rc.checked.Load(), rc.replica.Load(), rc.stale.Load(), rc.unavailable.Load(), served)
	if rc.stale.Load() != 0 || rc.unavailable.Load() != 0 {
		t.Fatalf("stale %d, unavailable %d", rc.stale.Load(), rc.unavailable.Load())
	}
}

// A node that misses changes (its NATS connection cut while other nodes
// write, or restarted during writes) serves the latest within the staleness
// bound.
func TestMissedChangesReachTheNode(t *testing.T) {
	t.Parallel()
	const bound = 2 * time.Second
	s := NewSystem(t, Options{})
	proxy, err := faultproxy.Start(hostPort(t, s.NATS.URL()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Close)
	env := map[string]string{"STALENESS_BOUND": bound.String()}
	n1 := s.StartNode("n1", env)
	cutEnv := map[string]string{"STALENESS_BOUND": bound.String(), "NATS_URL": "nats://" + proxy.Addr()}
	n2 := s.StartNode("n2", cutEnv)
	n3 := s.StartNode("n3", env)
	nodes := []*Node{n1, n2, n3}
	l := newLedger()
	ids := idRange(1, 300)
	writeAll(t, []*Node{n1}, l, ids, false, "first", 200)
	for _, n := range nodes {
		checkReads(t, n, l, ids) // every node caches every key
	}

	// n2's NATS connection is cut while n1 rewrites every key.
	if err := proxy.BlackHole(); err != nil {
		t.Fatal(err)
	}
	cutAt := time.Now()
	writeAll(t, []*Node{n1}, l, ids, false, "while n2 is cut off", 200)
	// Beyond the bound, n2 may no longer serve what it cached before the cut.
	time.Sleep(time.Until(cutAt.Add(bound + 200*time.Millisecond)))
	var rc readCheck
	rc.checkKeys(t, n2, l, ids)
	if err := proxy.Heal(); err != nil {
		t.Fatal(err)
	}
	// Reconnected, n2 caches again: still the latest.
	writeAll(t, []*Node{n3}, l, ids[:100], true, "", 200)
	time.Sleep(bound)
	rc.checkKeys(t, n2, l, ids)

	// n3 restarted while n1 writes.
	var wg sync.WaitGroup
	wg.Go(func() { writeAll(t, []*Node{n1}, l, ids[100:], false, "during the restart", 200) })
	if err := n3.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := n3.Start(); err != nil {
		t.Fatal(err)
	}
	s.WaitReady(n3)
	wg.Wait()
	time.Sleep(bound)
	assertServesTable(t, s, nodes, ids)
	t.Logf("missed changes: %d reads checked on the cut-off node, stale %d", rc.checked.Load(), rc.stale.Load())
	if rc.stale.Load() != 0 {
		t.Fatalf("%d stale reads", rc.stale.Load())
	}
}

func hostPort(t *testing.T, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// More keys than the cache holds, PostgreSQL killed: every key is readable
// from every node at its latest acknowledged version.
func TestEveryKeyReadableDuringOutage(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{PrivatePG: true, AutoRecovery: true})
	env := map[string]string{"CACHE_MAX_SIZE": "100"}
	n1 := s.StartNode("n1", env)
	n2 := s.StartNode("n2", env)
	s.StartMonitor(nil)
	s.StartManager(nil)
	nodes := []*Node{n1, n2}
	l := newLedger()
	ids := idRange(1, 1338)
	writeAll(t, nodes, l, ids, false, "catalogue", 200)
	writeAll(t, nodes, l, ids[:100], true, "", 200)
	if err := s.PG.Kill(); err != nil {
		t.Fatal(err)
	}
	s.Events.Wait(t, events.SubjectModeCacheOnly, time.Time{}, 30*time.Second, nil)
	for _, n := range nodes {
		waitNodeMode(t, n, events.ModeCacheOnly)
	}
	var rc readCheck
	for _, n := range nodes {
		rc.checkKeys(t, n, l, ids)
	}
	t.Logf("outage reads: %d checked, %d from the change log, stale %d, unavailable %d", rc.checked.Load(), rc.replica.Load(), rc.stale.Load(), rc.unavailable.Load())
	if rc.replica.Load() < int64(len(ids)) {
		t.Errorf("only %d reads came from the change log; the cache holds 100 entries of %d keys", rc.replica.Load(), len(ids))
	}
	if r, _ := n1.Get(999999); r.Code != 503 {
		t.Errorf("a key never written: %d, want 503", r.Code)
	}
}

// A write with a lower version than the stored row, through each write path:
// what the client is told agrees with the table, and the loser is neither
// cached nor served.
func TestLosingWrites(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{AutoRecovery: true})
	n1 := s.StartNode("n1", nil)
	n2 := s.StartNode("n2", nil)
	s.StartMonitor(nil)
	s.StartManager(nil)
	l := newLedger()
	writeAll(t, []*Node{n1}, l, []int64{7, 8, 9}, false, "first", 200)
	for _, n := range []*Node{n1, n2} {
		checkReads(t, n, l, []int64{7, 8, 9})
	}
	// A version ahead of every node's clock: a row written by a host whose
	// clock runs 30 minutes fast.
	ahead := l.want[7].Version + int64(30*time.Minute/time.Millisecond)<<12
	db := s.store.DB()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// HTTP, committed: the stored row is newer than the node's clock.
	committed := commitAboveRowAheadOfClock(t, ctx, db, s, n1, l, ahead)
	// A row more than hlc.MaxDrift (an hour) ahead: no node adopts such a
	// version, so the write cannot win; the client is told the stored version.
	loseToFarFutureRow(t, ctx, db, n2, l, committed)
	// A producer's write, versioned by its stream timestamp, below the row.
	producerWriteLosesToRowAhead(t, ctx, db, s, []*Node{n1, n2}, l, ahead)
	// HTTP, buffered: the change log holds a newer version than the writer's
	// clock (a node whose clock runs fast buffered it).
	table := bufferAboveLoggedVersion(t, s, n1, l, ahead)
	l.check(t, table)
	// Every node serves what the table holds (the producer's loser nowhere).
	waitNodesServeTable(t, []*Node{n1, n2}, []int64{7, 8, 9, 10}, table)
}

// commitAboveRowAheadOfClock sets tmdb:7's row to version ahead, then
// writes it through n over HTTP: the write commits above ahead. It returns
// the committed version.
func commitAboveRowAheadOfClock(t *testing.T, ctx context.Context, db *bun.DB, s *System, n *Node, l *ledger, ahead int64) int64 {
	t.Helper()
	if _, err := db.ExecContext(ctx, `UPDATE anime_metadata SET version = ?, title = 'ahead', updated_at = now() WHERE tmdb_id = 7`, ahead); err != nil {
		t.Fatal(err)
	}
	r, err := n.Put(anime(7, "committed after the skewed write"))
	if err != nil || r.Code != 200 {
		t.Fatalf("put: %v %d %s", err, r.Code, r.Body)
	}
	var wr WriteResult
	r.JSON(t, &wr)
	table, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	if wr.Version <= ahead || table[7].Version != wr.Version {
		t.Fatalf("committed v%d, stored row was v%d, table now %+v", wr.Version, ahead, table[7])
	}
	l.ack(7, wr.Version, false)
	return wr.Version
}

// loseToFarFutureRow inserts tmdb:10 at a version 48 hours ahead of
// committed, then writes it through n: the write is superseded.
func loseToFarFutureRow(t *testing.T, ctx context.Context, db *bun.DB, n *Node, l *ledger, committed int64) {
	t.Helper()
	farAhead := committed + int64(48*time.Hour/time.Millisecond)<<12
	if _, err := db.ExecContext(ctx, `INSERT INTO anime_metadata (tmdb_id, title, version, updated_at) VALUES (10, 'far ahead', ?, now())`, farAhead); err != nil {
		t.Fatal(err)
	}
	r, err := n.Put(anime(10, "loses to a far-future row"))
	if err != nil || r.Code != 200 {
		t.Fatalf("put: %v %d %s", err, r.Code, r.Body)
	}
	var wr WriteResult
	r.JSON(t, &wr)
	if wr.Status != "superseded" || wr.Version != farAhead {
		t.Fatalf("write below a far-future row answered %+v, want superseded at v%d", wr, farAhead)
	}
	l.ack(10, farAhead, false)
}

// producerWriteLosesToRowAhead sets tmdb:9's row to version ahead, then
// publishes a producer write for it: a node counts it superseded and the
// row is unchanged.
func producerWriteLosesToRowAhead(t *testing.T, ctx context.Context, db *bun.DB, s *System, nodes []*Node, l *ledger, ahead int64) {
	t.Helper()
	if _, err := db.ExecContext(ctx, `UPDATE anime_metadata SET version = ?, title = 'ahead', updated_at = now() WHERE tmdb_id = 9`, ahead); err != nil {
		t.Fatal(err)
	}
	publishJS(t, s, events.SubjectMetadataUpsert, anime(9, "producer write that loses"))
	if err := procs.Eventually(20*time.Second, 50*time.Millisecond, func() error {
		if v := metricValue(t, nodes[0], `anivault_writes_total{outcome="superseded"}`) + metricValue(t, nodes[1], `anivault_writes_total{outcome="superseded"}`); v < 1 {
			return fmt.Errorf("superseded writes %v", v)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	table, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	if table[9].Version != ahead {
		t.Fatalf("the producer's losing write changed the row: %+v, want v%d", table[9], ahead)
	}
	l.ack(9, ahead, false)
}

// bufferAboveLoggedVersion logs tmdb:8 above ahead in the change log in
// maintenance, then writes it through n: the buffered write is versioned
// above the logged one and is what the table holds after maintenance. It
// returns the table.
func bufferAboveLoggedVersion(t *testing.T, s *System, n *Node, l *ledger, ahead int64) map[int64]metastore.Version {
	t.Helper()
	s.EnterMaintenance("maintenance", n)
	skewed := ahead + 1<<12
	publishChange(t, s, 8, skewed, anime(8, "buffered by a fast clock"))
	r, err := n.Put(anime(8, "buffered after the skewed write"))
	if err != nil || r.Code != 202 {
		t.Fatalf("put: %v %d %s", err, r.Code, r.Body)
	}
	var wr WriteResult
	r.JSON(t, &wr)
	if wr.Version <= skewed {
		t.Fatalf("buffered v%d below the logged v%d", wr.Version, skewed)
	}
	l.ack(8, wr.Version, false)
	s.ExitMaintenance()
	table, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	if table[8].Version != wr.Version {
		t.Fatalf("table %+v, the client was told v%d", table[8], wr.Version)
	}
	return table
}

// waitNodesServeTable waits until every node serves the table's version of
// every id.
func waitNodesServeTable(t *testing.T, nodes []*Node, ids []int64, table map[int64]metastore.Version) {
	t.Helper()
	if err := procs.Eventually(30*time.Second, 100*time.Millisecond, func() error {
		for _, n := range nodes {
			for _, id := range ids {
				r, err := n.Get(id)
				if err != nil {
					return err
				}
				var rec events.Record
				_ = json.Unmarshal(r.Body, &rec)
				if r.Code != 200 || rec.Version != table[id].Version {
					return fmt.Errorf("tmdb:%d on %s: %d v%d %q, table v%d", id, n.ID, r.Code, rec.Version, rec.Title, table[id].Version)
				}
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// publishChange puts an entry in the change log as a node would.
func publishChange(t *testing.T, s *System, id, version int64, rec map[string]any) {
	t.Helper()
	rec = with(rec, "version", version, "updated_at", time.Now().UTC().Format(time.RFC3339Nano))
	payload, _ := json.Marshal(map[string]any{
		"occurred_at": time.Now().UTC(), "source": "skewed-node", "tmdb_id": id, "version": version,
		"deleted": false, "buffered": true, "record": rec,
	})
	msg := nats.NewMsg(s.subject(events.ChangeSubject(id)))
	msg.Data = payload
	msg.Header.Set(events.HeaderVersion, strconv.FormatInt(version, 10))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.JS.PublishMsg(ctx, msg, jetstream.WithExpectStream(s.streamName(events.StreamChanges))); err != nil {
		t.Fatal(err)
	}
}

// A node killed between committing a write and logging it: the write was
// answered 503 (the node's NATS connection was cut, so the log could not
// take it), and the node's own retry died with it. Another node's reconcile
// pass logs the row, so every node serves it and it stays readable in an
// outage.
func TestCommittedButUnloggedWriteReachesTheLog(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{PrivatePG: true, AutoRecovery: true})
	proxy, err := faultproxy.Start(hostPort(t, s.NATS.URL()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Close)
	n1 := s.StartNode("n1", map[string]string{"NATS_URL": "nats://" + proxy.Addr()})
	n2 := s.StartNode("n2", map[string]string{"LOG_RECONCILE_INTERVAL": "1s"})
	s.StartMonitor(nil)
	s.StartManager(nil)
	l := newLedger()
	writeAll(t, []*Node{n1, n2}, l, []int64{500}, false, "before", 200)
	checkReads(t, n2, l, []int64{500})
	waitBackfill(t, s) // what follows is the reconcile pass's work, not the backfill's

	// n1 loses NATS (connections closed, new ones refused); it still reaches PostgreSQL.
	proxy.Disable()
	r, err := n1.Put(anime(500, "committed, never logged by its node"))
	if err != nil || r.Code != 503 {
		t.Fatalf("write on a node cut off from NATS: %v %d %s, want 503", err, r.Code, r.Body)
	}
	table, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	if table[500].Version <= l.want[500].Version {
		t.Fatalf("the write was not committed: table %+v", table[500])
	}
	if err := n1.Kill(); err != nil {
		t.Fatal(err)
	}
	want := table[500].Version
	if err := procs.Eventually(30*time.Second, 100*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := s.JS.Stream(ctx, s.streamName(events.StreamChanges))
		if err != nil {
			return err
		}
		m, err := st.GetLastMsgForSubject(ctx, s.subject(events.ChangeSubject(500)))
		if err != nil {
			return err
		}
		if got := m.Header.Get(events.HeaderVersion); got != strconv.FormatInt(want, 10) {
			return fmt.Errorf("log holds v%s, table v%d", got, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The reconcile pass counts the row once its publish returned, a moment
	// after the log holds it.
	if err := procs.Eventually(10*time.Second, 20*time.Millisecond, func() error {
		if got := metricValue(t, n2, "anivault_changelog_reconciled_total"); got < 1 {
			return fmt.Errorf("reconciled %v rows, want at least 1", got)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	l.ack(500, want, false)
	checkReads(t, n2, l, []int64{500})
	if err := s.PG.Kill(); err != nil {
		t.Fatal(err)
	}
	waitNodeMode(t, n2, events.ModeCacheOnly)
	n3 := s.StartNode("n3", nil) // cold: reads the log
	var rc readCheck
	for _, n := range []*Node{n2, n3} {
		if err := rc.checkRead(n, 500, l.want[500]); err != nil {
			t.Error(err)
		}
	}
}

// waitBackfill waits until the change log's backfill is complete and returns its progress record.
func waitBackfill(t *testing.T, s *System) events.BackfillProgress {
	t.Helper()
	var done events.BackfillProgress
	if err := procs.Eventually(60*time.Second, 100*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := s.JS.Stream(ctx, s.streamName(events.StreamChanges))
		if err != nil {
			return err
		}
		m, err := st.GetLastMsgForSubject(ctx, s.subject(events.SubjectChangesBackfill))
		if err != nil {
			return err
		}
		if err := json.Unmarshal(m.Data, &done); err != nil || !done.Done {
			return fmt.Errorf("backfill progress %s", m.Data)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return done
}

// A catalogue that predates the change log is seeded into it by the
// backfill, which resumes from its recorded progress and does not hold up
// start; afterwards every row is readable in an outage.
func TestBackfillSeedsTheLog(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{PrivatePG: true, AutoRecovery: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := metastore.Migrate(ctx, s.store.DB()); err != nil {
		t.Fatal(err)
	}
	const rows, resumeAfter = 3000, 1000
	var writes []metastore.Write
	at := time.Now().UTC().Add(-time.Hour)
	for id := int64(1); id <= rows; id++ {
		rec := events.Record{TMDBID: id, Title: fmt.Sprintf("catalogue %d", id), RawData: json.RawMessage(`{"imported":true}`)}
		writes = append(writes, metastore.Write{TMDBID: id, Version: int64(id) << 12, UpdatedAt: at, Record: &rec, Deleted: id%10 == 0})
	}
	if _, err := s.store.ApplyBatch(ctx, writes); err != nil {
		t.Fatal(err)
	}
	// An earlier backfill stopped after the first 1000 rows.
	n0 := s.StartNode("n0", nil) // provisions the streams
	if err := n0.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	// n0 started the backfill: forget what it logged.
	cs, err := s.JS.Stream(ctx, s.streamName(events.StreamChanges))
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	prog, _ := json.Marshal(events.BackfillProgress{Cursor: resumeAfter, UpdatedAt: time.Now().UTC()})
	if _, err := s.JS.Publish(ctx, s.subject(events.SubjectChangesBackfill), prog); err != nil {
		t.Fatal(err)
	}

	n1 := s.StartNode("n1", map[string]string{"CACHE_MAX_SIZE": "50"})
	n2 := s.StartNode("n2", map[string]string{"CACHE_MAX_SIZE": "50"})
	s.StartMonitor(nil)
	s.StartManager(nil)
	done := waitBackfill(t, s)
	// Two nodes backfill at once: each counts the rows it added itself, and
	// the progress record keeps the count of the node that recorded it.
	if done.Published <= 0 || done.Published > rows-resumeAfter || done.Cursor != rows {
		t.Errorf("backfill published %d up to %d, want at most %d (resumed after %d) up to %d", done.Published, done.Cursor, rows-resumeAfter, resumeAfter, rows)
	}
	if err := s.PG.Kill(); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*Node{n1, n2} {
		waitNodeMode(t, n, events.ModeCacheOnly)
	}
	var rc readCheck
	for _, n := range []*Node{n1, n2} {
		for id := int64(resumeAfter + 1); id <= rows; id++ {
			if err := rc.checkRead(n, id, metastore.Version{Version: id << 12, Deleted: id%10 == 0}); err != nil {
				t.Error(err)
			}
		}
	}
	// Rows before the recorded cursor were left to the earlier run: the
	// backfill resumed instead of starting over.
	if r, _ := n1.Get(resumeAfter); r.Code != 503 {
		t.Errorf("a row before the resumed cursor: %d, want 503 (never logged in this test)", r.Code)
	}
	t.Logf("backfill: %d rows published, %d outage reads checked (%d from the change log), stale %d", done.Published, rc.checked.Load(), rc.replica.Load(), rc.stale.Load())
}

// Rows changed in PostgreSQL by something other than the services reach the
// caches: a change that bumps version and updated_at is logged by the
// reconcile pass (LOG_RECONCILE_INTERVAL) and invalidates every node's
// entry; one that does not is corrected when the entry is revalidated
// (CACHE_REVALIDATE_AFTER).
func TestOtherPathChangesReachTheCaches(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{})
	env := map[string]string{"LOG_RECONCILE_INTERVAL": "1s", "CACHE_REVALIDATE_AFTER": "2s"}
	n1 := s.StartNode("n1", env)
	n2 := s.StartNode("n2", env)
	l := newLedger()
	writeAll(t, []*Node{n1}, l, []int64{601, 602}, false, "via the API", 200)
	for _, n := range []*Node{n1, n2} {
		checkReads(t, n, l, []int64{601, 602})
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db := s.store.DB()
	bumped := l.want[601].Version + 1<<12
	if _, err := db.ExecContext(ctx, `UPDATE anime_metadata SET title = 'by a migration script', version = ?, updated_at = now() WHERE tmdb_id = 601`, bumped); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `UPDATE anime_metadata SET title = 'fixed by hand' WHERE tmdb_id = 602`); err != nil {
		t.Fatal(err)
	}
	waitNodesServeTitles(t, []*Node{n1, n2}, map[int64]string{601: "by a migration script", 602: "fixed by hand"})
	if got := metricValue(t, n1, "anivault_cache_corrections_total") + metricValue(t, n2, "anivault_cache_corrections_total"); got < 1 {
		t.Errorf("corrections counted: %v", got)
	}
	// An entry whose row did not change is revalidated without a correction
	// (the table keeps microseconds and reorders raw_data's keys: the same
	// record for all that).
	n3 := s.StartNode("n3", env)
	// Once n3 proves its cache current, its own write is cached as written.
	waitChangeLogCurrent(t, n3)
	checkUnchangedEntryRevalidatesWithoutCorrection(t, n3, l)
	// The bumped row is in the change log too, so it is what an outage serves.
	checkLastLogEntryVersion(t, ctx, s, 601, bumped)
}

// waitNodesServeTitles waits until every node serves every record with its
// title, and logs how long each took.
func waitNodesServeTitles(t *testing.T, nodes []*Node, titles map[int64]string) {
	t.Helper()
	start := time.Now()
	seen := map[string]time.Duration{}
	if err := procs.Eventually(30*time.Second, 50*time.Millisecond, func() error {
		for _, n := range nodes {
			for id, title := range titles {
				r, err := n.Get(id)
				if err != nil {
					return err
				}
				var rec events.Record
				_ = json.Unmarshal(r.Body, &rec)
				if rec.Title != title {
					return fmt.Errorf("tmdb:%d on %s: %q", id, n.ID, rec.Title)
				}
				key := fmt.Sprintf("%s/%d", n.ID, id)
				if _, ok := seen[key]; !ok {
					seen[key] = time.Since(start)
				}
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("other-path changes served after: %v", seen)
}

// waitChangeLogCurrent waits until n's status says its cache is current
// with the change log.
func waitChangeLogCurrent(t *testing.T, n *Node) {
	t.Helper()
	if err := procs.Eventually(10*time.Second, 20*time.Millisecond, func() error {
		r, err := do("GET", n.URL()+"/v1/status", nil)
		if err != nil {
			return err
		}
		var st events.SystemStatus
		if err := json.Unmarshal(r.Body, &st); err != nil || st.ChangeLog == nil || !st.ChangeLog.Current {
			return fmt.Errorf("%s not current yet: %s", n.ID, r.Body)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// checkUnchangedEntryRevalidatesWithoutCorrection writes tmdb:603 through
// n, checks it is cached as written, and still served without a correction
// once CACHE_REVALIDATE_AFTER has passed.
func checkUnchangedEntryRevalidatesWithoutCorrection(t *testing.T, n *Node, l *ledger) {
	t.Helper()
	r, err := n.Put(with(anime(603, "untouched"), "raw_data", map[string]any{"aa": 1, "b": map[string]any{"yy": 2, "z": 3}}))
	if err != nil || r.Code != 200 {
		t.Fatalf("put: %v %d %s", err, r.Code, r.Body)
	}
	var wr WriteResult
	r.JSON(t, &wr)
	l.ack(603, wr.Version, false)
	checkReads(t, n, l, []int64{603})
	if got := metricValue(t, n, "anivault_reads_total"); got != 0 {
		t.Fatalf("%s read %v times from the database or the log: its write was not cached", n.ID, got)
	}
	time.Sleep(2500 * time.Millisecond) // past CACHE_REVALIDATE_AFTER
	checkReads(t, n, l, []int64{603})
	if got := metricValue(t, n, "anivault_cache_corrections_total"); got != 0 {
		t.Errorf("revalidating an unchanged entry counted %v corrections", got)
	}
}

// checkLastLogEntryVersion checks the change log's last entry for id
// carries version.
func checkLastLogEntryVersion(t *testing.T, ctx context.Context, s *System, id, version int64) {
	t.Helper()
	cs, err := s.JS.Stream(ctx, s.streamName(events.StreamChanges))
	if err != nil {
		t.Fatal(err)
	}
	m, err := cs.GetLastMsgForSubject(ctx, s.subject(events.ChangeSubject(id)))
	if err != nil || m.Header.Get(events.HeaderVersion) != strconv.FormatInt(version, 10) {
		t.Fatalf("log entry of %d: %v %v, want v%d", id, m, err, version)
	}
}
