package e2e_test

import (
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/faultproxy"
	"github.com/anivault/anivault/pkg/procs"
)

// latencyLog records the duration and outcome of every request of one kind.
type latencyLog struct {
	mu     sync.Mutex
	kind   string
	durs   []time.Duration
	starts []time.Time
	codes  map[int]int
	max    time.Duration
	maxAt  time.Time
}

func newLatencyLog(kind string) *latencyLog { return &latencyLog{kind: kind, codes: map[int]int{}} }

func (l *latencyLog) add(d time.Duration, code int, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.durs = append(l.durs, d)
	l.starts = append(l.starts, at)
	l.codes[code]++
	if d > l.max {
		l.max, l.maxAt = d, at
	}
}

// before counts the requests that started before t.
func (l *latencyLog) before(t time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.starts {
		if s.Before(t) {
			n++
		}
	}
	return n
}

func (l *latencyLog) summary(origin time.Time) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	ds := append([]time.Duration(nil), l.durs...)
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	p50 := time.Duration(0)
	if len(ds) > 0 {
		p50 = ds[len(ds)/2]
	}
	return fmt.Sprintf("%-12s n=%-4d codes=%v p50=%v max=%v (request started %v after the black hole)",
		l.kind, len(ds), l.codes, p50.Round(time.Millisecond), l.max.Round(time.Millisecond), l.maxAt.Sub(origin).Round(time.Millisecond))
}

// Bounds of the black-hole test.
const (
	bhInterval  = 200 * time.Millisecond
	bhTimeout   = time.Second // HEALTH_CHECK_TIMEOUT of every process
	bhThreshold = 2
	bhDBTimeout = time.Second // DB_TIMEOUT of the cache-nodes
	// A request waits on the database at most DB_TIMEOUT (the node's whole
	// budget, retries included), then appends to the JetStream buffer
	// (milliseconds on a local server). 1.5 s of margin covers the buffer
	// append, HTTP, process scheduling on a loaded CI machine and the
	// pool handing a fresh connection to the request: a request that
	// waits for a second database timeout (2 s) still fails the bound.
	bhMaxRequest = bhDBTimeout + 1500*time.Millisecond
	// bhProducerID is the key a producer publishes at the start of the fault.
	bhProducerID = 77_777
)

// (c) A database that accepts connections and never answers: detection is
// bounded, no request hangs, every write is acknowledged and survives.
func TestBlackHoledDatabase(t *testing.T) {
	t.Parallel()
	s, proxy, nodes := startBlackHoleSystem(t)
	l := newLedger()
	writeOriginalsBeforeTheFault(t, nodes, l)
	// Both nodes cache the 100 records (the writer directly, the other through metadata.changed).
	for _, n := range nodes {
		checkReads(t, n, l, idRange(1, 100))
	}
	waitCleanStartBeforeTheFault(t, s)

	blackAt := time.Now()
	if err := proxy.BlackHole(); err != nil {
		t.Fatal(err)
	}
	// A producer's write published at the start of the fault is not lost either.
	publishJS(t, s, events.SubjectMetadataUpsert, anime(bhProducerID, "published into the black hole"))

	// Load from the first moment of the fault, through the detection, into cache-only mode.
	load := startBlackHoleLoad(t, s, nodes, l, blackAt)
	cacheOnly := checkBlackHoleDetection(t, s, blackAt)
	// Keep the load on for at least 3 s in all, and 1 s into cache-only mode on both nodes.
	for _, n := range nodes {
		waitNodeMode(t, n, events.ModeCacheOnly)
	}
	load.runOnAndStop()
	load.check(t, cacheOnly.At)

	healAt := time.Now()
	if err := proxy.Heal(); err != nil {
		t.Fatal(err)
	}
	checkRecoveryFromBlackHole(t, s, nodes, l, healAt, load.newKey.Load())
}

// startBlackHoleSystem starts two nodes, a monitor and a manager that reach
// PostgreSQL only through the fault proxy, and waits until the monitor has
// seen the database healthy.
func startBlackHoleSystem(t *testing.T) (*System, *faultproxy.Proxy, []*Node) {
	t.Helper()
	s := NewSystem(t, Options{PrivatePG: true, MonitorInterval: bhInterval, MonitorTimeout: bhTimeout,
		FailureThreshold: bhThreshold, RecoveryThresh: 2, AutoRecovery: true})
	// The services reach PostgreSQL only through the fault proxy; the test's
	// own store (s.Versions) keeps the direct DSN.
	proxy, dsn := s.ProxyDatabase()
	s.opts.DatabaseURL = dsn

	nodeEnv := map[string]string{"HEALTH_CHECK_TIMEOUT": bhTimeout.String(), "DB_TIMEOUT": bhDBTimeout.String()}
	n1 := s.StartNode("n1", nodeEnv)
	n2 := s.StartNode("n2", nodeEnv)
	s.StartMonitor(nil)
	s.StartManager(nil)
	waitSchema(t, s)
	// The monitor has seen the database healthy before the fault.
	if err := procs.Eventually(20*time.Second, 50*time.Millisecond, func() error {
		st, err := s.Status()
		if err != nil {
			return err
		}
		if st.HealthStatus != events.HealthHealthy {
			return fmt.Errorf("health %s", st.HealthStatus)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return s, proxy, []*Node{n1, n2}
}

// writeOriginalsBeforeTheFault writes keys 1..100 from 8 workers over the
// nodes and acknowledges them in l.
func writeOriginalsBeforeTheFault(t *testing.T, nodes []*Node, l *ledger) {
	t.Helper()
	// 200 is the expected answer. DB_TIMEOUT is only 1 s, so on a loaded machine a
	// healthy-but-slow commit may time out and be buffered instead (202, as the
	// contract allows); that is counted and logged, not failed.
	var setupBuffered atomic.Int64
	var setupWG sync.WaitGroup
	setupErrs := make(chan error, 100)
	for w := range 8 {
		setupWG.Go(func() {
			for id := int64(1 + w); id <= 100; id += 8 {
				n := nodes[int(id)%len(nodes)]
				r, err := n.Put(anime(id, fmt.Sprintf("original %d", id)))
				if err != nil || (r.Code != 200 && r.Code != 202) {
					setupErrs <- fmt.Errorf("write %d on %s: %v %d %s", id, n.ID, err, r.Code, r.Body)
					continue
				}
				if r.Code == 202 {
					setupBuffered.Add(1)
				}
				var wr WriteResult
				if err := json.Unmarshal(r.Body, &wr); err != nil {
					setupErrs <- err
					continue
				}
				l.ack(id, wr.Version, false)
			}
		})
	}
	setupWG.Wait()
	close(setupErrs)
	for err := range setupErrs {
		t.Fatal(err)
	}
	if b := setupBuffered.Load(); b > 0 {
		t.Logf("note: %d of the 100 writes before the fault were buffered (202): a commit exceeded DB_TIMEOUT on this machine", b)
	}
}

// waitCleanStartBeforeTheFault waits for a clean start: normal mode,
// nothing buffered, no outage declared yet.
func waitCleanStartBeforeTheFault(t *testing.T, s *System) {
	t.Helper()
	if err := procs.Eventually(20*time.Second, 50*time.Millisecond, func() error {
		st, err := s.Status()
		if err != nil {
			return err
		}
		if st.Mode != events.ModeNormal || st.HealthStatus != events.HealthHealthy || st.Buffer.Pending != 0 {
			return fmt.Errorf("mode %s, health %s, buffer pending %d", st.Mode, st.HealthStatus, st.Buffer.Pending)
		}
		return nil
	}); err != nil {
		t.Fatalf("system not settled before the fault: %v", err)
	}
	for _, e := range s.Events.All() {
		if e.Subject == events.SubjectDBUnhealthy {
			t.Fatalf("database declared unhealthy before the fault (health checks over 1 s on an overloaded machine?): %s", e.Data)
		}
	}
}

// blackHoleLoad is the request load kept on the nodes while the database
// is black-holed: cached and uncached GETs, PUTs, and metadata.get over
// NATS, each request timed against bhMaxRequest.
type blackHoleLoad struct {
	s          *System
	nodes      []*Node
	l          *ledger
	blackAt    time.Time
	stop       atomic.Bool
	wg         sync.WaitGroup
	errMu      sync.Mutex
	loadErrs   []string
	natsGet    *latencyLog
	cachedGet  *latencyLog
	uncached   *latencyLog
	puts       *latencyLog
	newKey     atomic.Int64
	maxOverall atomic.Int64
}

// startBlackHoleLoad starts two workers of each HTTP kind and one
// metadata.get requester; they run until runOnAndStop.
func startBlackHoleLoad(t *testing.T, s *System, nodes []*Node, l *ledger, blackAt time.Time) *blackHoleLoad {
	b := &blackHoleLoad{s: s, nodes: nodes, l: l, blackAt: blackAt,
		natsGet: newLatencyLog("metadata.get"), cachedGet: newLatencyLog("cached GET"),
		uncached: newLatencyLog("uncached GET"), puts: newLatencyLog("PUT")}
	b.newKey.Store(10_000)
	for w := range 2 {
		b.worker(w, b.cachedRead)
		b.worker(w, b.uncachedRead)
		b.worker(w, b.write)
	}
	// metadata.get over NATS: a cached key answers the record, an uncached one 503, within the same bound.
	b.wg.Go(func() {
		for i := 0; !b.stop.Load(); i++ {
			b.natsRead(t, i)
		}
	})
	return b
}

func (b *blackHoleLoad) fail(format string, args ...any) {
	b.errMu.Lock()
	defer b.errMu.Unlock()
	if len(b.loadErrs) < 20 {
		b.loadErrs = append(b.loadErrs, fmt.Sprintf(format, args...))
	}
}

// worker runs fn for i = 0, 1, ... on the nodes in turn until the load stops.
func (b *blackHoleLoad) worker(w int, fn func(w, i int, n *Node)) {
	b.wg.Go(func() {
		for i := 0; !b.stop.Load(); i++ {
			fn(w, i, b.nodes[(i+w)%len(b.nodes)])
		}
	})
}

// timed sends one request, records its latency in ll and fails a request
// over bhMaxRequest.
func (b *blackHoleLoad) timed(ll *latencyLog, n *Node, method, path string, body []byte) (Resp, bool) {
	start := time.Now()
	r, err := do(method, n.URL()+path, body)
	d := time.Since(start)
	if err != nil {
		b.fail("%s %s on %s: %v after %v", method, path, n.ID, err, d)
		return r, false
	}
	ll.add(d, r.Code, start)
	for {
		cur := b.maxOverall.Load()
		if int64(d) <= cur || b.maxOverall.CompareAndSwap(cur, int64(d)) {
			break
		}
	}
	if d > bhMaxRequest {
		b.fail("%s %s on %s took %v (started %v after the black hole), bound %v: %d %s",
			method, path, n.ID, d.Round(time.Millisecond), start.Sub(b.blackAt).Round(time.Millisecond), bhMaxRequest, r.Code, r.Body)
	}
	return r, true
}

// cachedRead reads one of the 100 cached keys: it must answer 200.
func (b *blackHoleLoad) cachedRead(w, i int, n *Node) {
	id := int64(1 + (i*7+w*13)%100)
	r, ok := b.timed(b.cachedGet, n, "GET", fmt.Sprintf("/v1/anime/%d", id), nil)
	if ok && r.Code != 200 {
		b.fail("cached GET tmdb:%d on %s: %d %s", id, n.ID, r.Code, r.Body)
	}
}

// uncachedRead reads a key no node caches: it must answer 503 with Retry-After.
func (b *blackHoleLoad) uncachedRead(w, i int, n *Node) {
	id := int64(900_000 + w*100_000 + i)
	r, ok := b.timed(b.uncached, n, "GET", fmt.Sprintf("/v1/anime/%d", id), nil)
	if ok && (r.Code != 503 || r.Header.Get("Retry-After") == "") {
		b.fail("uncached GET tmdb:%d on %s: %d %q %s, want 503 with Retry-After", id, n.ID, r.Code, r.Header.Get("Retry-After"), r.Body)
	}
}

// write puts a new key, or every third write an existing one, and
// acknowledges it in the ledger.
func (b *blackHoleLoad) write(w, i int, n *Node) {
	// New keys, and updates of existing ones every third write.
	id := b.newKey.Add(1)
	if i%3 == 2 {
		id = int64(1 + (i*11+w*17)%100)
	}
	body, _ := json.Marshal(anime(id, fmt.Sprintf("black hole %d/%d", w, i)))
	r, ok := b.timed(b.puts, n, "PUT", fmt.Sprintf("/v1/anime/%d", id), body)
	if !ok {
		return
	}
	if r.Code != 200 && r.Code != 202 {
		b.fail("PUT tmdb:%d on %s: %d %s, want 200 or 202", id, n.ID, r.Code, r.Body)
		return
	}
	var wr WriteResult
	if err := json.Unmarshal(r.Body, &wr); err != nil || wr.Version <= 0 {
		b.fail("PUT tmdb:%d on %s: body %s: %v", id, n.ID, r.Body, err)
		return
	}
	b.l.ack(id, wr.Version, false)
}

// natsRead asks metadata.get for a cached key (even i) or an uncached one (odd i).
func (b *blackHoleLoad) natsRead(t *testing.T, i int) {
	id := int64(1 + i%100)
	if i%2 == 1 {
		id = int64(800_000 + i)
	}
	start := time.Now()
	msg, err := b.s.NC.Request(b.s.subject(events.SubjectMetadataGet), jsonBody(t, events.GetRequest{TMDBID: id}), 10*time.Second)
	d := time.Since(start)
	if err != nil {
		b.fail("metadata.get tmdb:%d: %v after %v", id, err, d)
		return
	}
	var e events.ErrorReply
	_ = json.Unmarshal(msg.Data, &e)
	code := 200
	if e.Error != "" {
		code = e.Code
	}
	b.natsGet.add(d, code, start)
	if d > bhMaxRequest {
		b.fail("metadata.get tmdb:%d took %v (started %v after the black hole), bound %v", id, d.Round(time.Millisecond), start.Sub(b.blackAt).Round(time.Millisecond), bhMaxRequest)
	}
	if want := map[bool]int{true: 200, false: 503}[id <= 100]; code != want {
		b.fail("metadata.get tmdb:%d: %d %s, want %d", id, code, msg.Data, want)
	}
}

// runOnAndStop keeps the load on until 3 s after the black hole and at
// least 1 s more from now, then stops it and waits for the workers.
func (b *blackHoleLoad) runOnAndStop() {
	// (This is the load's duration, not a synchronisation: the workers run until it ends.)
	loadEnd := b.blackAt.Add(3 * time.Second)
	if later := time.Now().Add(time.Second); later.After(loadEnd) {
		loadEnd = later
	}
	<-time.After(time.Until(loadEnd))
	b.stop.Store(true)
	b.wg.Wait()
}

// check reports the load's latencies and fails on any request error,
// on a kind with no request, and on a kind with no request started
// before cache-only mode was declared.
func (b *blackHoleLoad) check(t *testing.T, cacheOnlyAt time.Time) {
	t.Helper()
	loadFor := time.Since(b.blackAt)
	t.Logf("requests while black-holed (%v of load, cache-only declared at %v):\n  %s\n  %s\n  %s\n  %s",
		loadFor.Round(time.Millisecond), cacheOnlyAt.Sub(b.blackAt).Round(time.Millisecond),
		b.cachedGet.summary(b.blackAt), b.uncached.summary(b.blackAt), b.puts.summary(b.blackAt), b.natsGet.summary(b.blackAt))
	t.Logf("max request latency while black-holed: %v (bound %v)", time.Duration(b.maxOverall.Load()).Round(time.Millisecond), bhMaxRequest)
	for _, e := range b.loadErrs {
		t.Error(e)
	}
	if t.Failed() {
		t.FailNow()
	}
	kinds := []*latencyLog{b.cachedGet, b.uncached, b.puts, b.natsGet}
	for _, ll := range kinds {
		if len(ll.durs) == 0 {
			t.Fatalf("no %s completed", ll.kind)
		}
	}
	// Every kind of request ran in the window the test is about: black-holed,
	// but cache-only mode not declared yet.
	for _, ll := range kinds {
		if n := ll.before(cacheOnlyAt); n == 0 {
			t.Errorf("no %s started before mode.cache_only", ll.kind)
		} else {
			t.Logf("%s: %d requests started before mode.cache_only", ll.kind, n)
		}
	}
}

// checkBlackHoleDetection waits for db.unhealthy and mode.cache_only,
// checks the detection bound and the db.unhealthy payload, and returns the
// mode.cache_only event.
func checkBlackHoleDetection(t *testing.T, s *System, blackAt time.Time) Event {
	t.Helper()
	bound := bhInterval*bhThreshold + bhTimeout*bhThreshold + time.Second
	unhealthy := s.Events.Wait(t, events.SubjectDBUnhealthy, blackAt, bound+5*time.Second, nil)
	cacheOnly := s.Events.Wait(t, events.SubjectModeCacheOnly, blackAt, bound+5*time.Second, nil)
	detect := unhealthy.At.Sub(blackAt)
	t.Logf("detection: db.unhealthy %v after the black hole (bound interval×threshold + timeout×threshold + 1s = %v), mode.cache_only after %v",
		detect.Round(time.Millisecond), bound, cacheOnly.At.Sub(blackAt).Round(time.Millisecond))
	if detect > bound {
		t.Errorf("db.unhealthy after %v, bound %v", detect, bound)
	}
	var du events.DBUnhealthy
	if err := json.Unmarshal(unhealthy.Data, &du); err != nil || du.ConsecutiveFailures < bhThreshold || du.LastError == "" {
		t.Errorf("db.unhealthy payload %s: %v", unhealthy.Data, err)
	}
	return cacheOnly
}

// checkRecoveryFromBlackHole waits for the recovery after healing and
// checks every acknowledged write (and the producer's) is in the table and
// served, and uncached keys answer from the database again.
func checkRecoveryFromBlackHole(t *testing.T, s *System, nodes []*Node, l *ledger, healAt time.Time, lastNewKey int64) {
	t.Helper()
	recovered := s.Events.Wait(t, events.SubjectDBRecovered, healAt, 30*time.Second, nil)
	normal := s.Events.Wait(t, events.SubjectModeNormal, healAt, 60*time.Second, nil)
	t.Logf("recovery: db.recovered %v after healing, mode.normal after %v",
		recovered.At.Sub(healAt).Round(time.Millisecond), normal.At.Sub(healAt).Round(time.Millisecond))
	for _, n := range nodes {
		waitNodeMode(t, n, events.ModeNormal)
	}
	got, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	l.check(t, got)
	if v, ok := got[bhProducerID]; !ok || v.Deleted {
		t.Errorf("producer's write published into the black hole: table has %+v (present %v)", v, ok)
	}
	t.Logf("%d keys acknowledged, all in the table with their acknowledged versions (table has %d rows)", l.count(), len(got))
	// Reads after recovery serve the acknowledged versions, and uncached keys answer from the database again.
	for _, n := range nodes {
		checkReads(t, n, l, []int64{1, 50, 100, 10_001, lastNewKey})
		if r, err := n.Get(999_999_999); err != nil || r.Code != 404 {
			t.Errorf("unknown key on %s after recovery: %v %d", n.ID, err, r.Code)
		}
	}
}
