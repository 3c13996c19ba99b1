package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/procs"
)

// rssKiB reads a process's resident set size.
func rssKiB(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			v, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// Thousands of requests with huge random method tokens: the metrics keep a
// fixed set of method labels, so /metrics and the node's memory stay flat.
func TestHostileMethodsDoNotGrowMetrics(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{})
	n := s.StartNode("n1", nil)
	metricsSize := func() int {
		r, err := do("GET", n.URL()+"/metrics", nil)
		if err != nil || r.Code != 200 {
			t.Fatalf("metrics: %v %d", err, r.Code)
		}
		return len(r.Body)
	}
	// Warm up every normal path first, so that only the hostile requests differ.
	for range 50 {
		if _, err := n.Get(1); err != nil {
			t.Fatal(err)
		}
	}
	before, rssBefore := metricsSize(), rssKiB(t, n.Pid())
	const requests, methodBytes = 3000, 8 << 10
	alphabet := "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	raw := make([]byte, methodBytes)
	conn, err := net.Dial("tcp", n.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rd := bufio.NewReader(conn)
	for i := range requests {
		_, _ = rand.Read(raw)
		for j := range raw {
			raw[j] = alphabet[int(raw[j])%len(alphabet)]
		}
		if _, err := fmt.Fprintf(conn, "%s /v1/anime/1 HTTP/1.1\r\nHost: x\r\n\r\n", raw); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		status, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		if !strings.Contains(status, " 405 ") && !strings.Contains(status, " 400 ") && !strings.Contains(status, " 501 ") {
			t.Fatalf("a request with a random method answered %q", status)
		}
		// Skip headers and body (Content-Length).
		length := 0
		for {
			h, err := rd.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			if h == "\r\n" {
				break
			}
			if v, ok := strings.CutPrefix(strings.ToLower(h), "content-length:"); ok {
				length, _ = strconv.Atoi(strings.TrimSpace(v))
			}
			if strings.HasPrefix(strings.ToLower(h), "connection: close") {
				conn.Close()
				if conn, err = net.Dial("tcp", n.Addr); err != nil {
					t.Fatal(err)
				}
				rd.Reset(conn)
			}
		}
		if _, err := rd.Discard(length); err != nil {
			t.Fatal(err)
		}
	}
	after, rssAfter := metricsSize(), rssKiB(t, n.Pid())
	t.Logf("%d requests with random %d-byte methods: /metrics %d -> %d bytes, RSS %d -> %d KiB", requests, methodBytes, before, after, rssBefore, rssAfter)
	if after-before > 4<<10 {
		t.Errorf("/metrics grew by %d bytes", after-before)
	}
	if rssAfter-rssBefore > 32<<10 {
		t.Errorf("RSS grew by %d KiB", rssAfter-rssBefore)
	}
}

// A forged metadata.changed (an invalid record, or a version far beyond the
// clock) is not cached: every node keeps serving the real record.
func TestForgedChangeEventsAreNotCached(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{})
	n1 := s.StartNode("n1", nil)
	n2 := s.StartNode("n2", nil)
	l := newLedger()
	writeAll(t, []*Node{n1}, l, []int64{900}, false, "real", 200)
	checkReads(t, n2, l, []int64{900})
	real := l.want[900].Version
	forge := func(version int64, rec map[string]any) {
		t.Helper()
		payload, _ := json.Marshal(map[string]any{"occurred_at": time.Now().UTC(), "source": "forger", "tmdb_id": 900,
			"version": version, "deleted": false, "buffered": false, "record": rec})
		if err := s.NC.Publish(s.subject(events.SubjectMetadataChanged), payload); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now().UTC().Format(time.RFC3339Nano)
	// An empty title, one version above the real one.
	forge(real+1<<12, with(anime(900, ""), "version", real+1<<12, "updated_at", now))
	// A valid record two days ahead of every clock.
	far := real + int64(48*time.Hour/time.Millisecond)<<12
	forge(far, with(anime(900, "from the future"), "version", far, "updated_at", now))
	if err := s.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := procs.Eventually(10*time.Second, 20*time.Millisecond, func() error {
		if got := metricValue(t, n2, `anivault_invalid_requests_total{transport="event"}`); got < 2 {
			return fmt.Errorf("%v forged events refused", got)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	checkReads(t, n2, l, []int64{900})
	checkReads(t, n1, l, []int64{900})
}

// A slow client cannot hold a write slot or a connection for ever: past
// MAX_CONCURRENT_WRITES writes in flight the node answers 503 with
// Retry-After, and past HTTP_READ_TIMEOUT it closes a request whose body
// never ends, which frees its slot.
func TestSlowClientsAreBounded(t *testing.T) {
	t.Parallel()
	const readTimeout = 4 * time.Second
	s := NewSystem(t, Options{})
	n := s.StartNode("n1", map[string]string{"HTTP_READ_TIMEOUT": readTimeout.String(), "MAX_CONCURRENT_WRITES": "1"})
	waitSchema(t, s)
	body, _ := json.Marshal(anime(42, "slow"))
	// Two writes whose bodies stop half-way: one holds the only slot, the
	// other is refused at once.
	var conns [2]net.Conn
	sentAt := time.Now()
	for i := range conns {
		c, err := net.Dial("tcp", n.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := fmt.Fprintf(c, "PUT /v1/anime/42 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(body), body[:len(body)/2]); err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	type answer struct {
		code       int
		retryAfter string
		err        error
	}
	answers := make(chan answer, 2)
	for _, c := range conns {
		go func() {
			_ = c.SetReadDeadline(time.Now().Add(readTimeout + 10*time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				answers <- answer{err: err}
				return
			}
			answers <- answer{code: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After")}
		}()
	}
	first := <-answers
	if first.code != 503 || first.retryAfter == "" || time.Since(sentAt) > readTimeout-time.Second {
		t.Fatalf("with one write slot, the second slow write got %+v after %v; want 503 with Retry-After at once", first, time.Since(sentAt))
	}
	// The slot holder is cut at the read timeout (plus slack), never later.
	second := <-answers
	if d := time.Since(sentAt); d < readTimeout-time.Second || d > readTimeout+5*time.Second {
		t.Fatalf("the slow write was cut after %v (HTTP_READ_TIMEOUT %v): %+v", d, readTimeout, second)
	}
	if err := procs.Eventually(5*time.Second, 20*time.Millisecond, func() error {
		r, err := n.Put(anime(43, "after the slow client was cut"))
		if err != nil {
			return err
		}
		if r.Code != 200 {
			return fmt.Errorf("write: %d %s", r.Code, r.Body)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// An undecodable buffer message is copied to the poison stream with its
// reason before it leaves the buffer: an operator can still recover what it
// held.
func TestUndecodableBufferMessageIsKeptInPoison(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{AutoRecovery: true})
	n1 := s.StartNode("n1", nil)
	s.StartMonitor(nil)
	s.StartManager(nil)
	s.EnterMaintenance("maintenance", n1)
	l := newLedger()
	writeAll(t, []*Node{n1}, l, idRange(1, 20), false, "good", 202)
	garbage := []byte(`{"writes":[{"tmdb_id":7,"version":-3}]}`)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := s.JS.Publish(ctx, s.subject(events.SubjectBufferWrites), garbage); err != nil {
		t.Fatal(err)
	}
	s.ExitMaintenance()
	got, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	l.check(t, got)
	st, err := s.JS.Stream(ctx, s.streamName(events.StreamPoison))
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(ctx, s.subject(events.SubjectPoisonBuffer))
	if err != nil {
		t.Fatalf("no copy of the undecodable buffer message in the poison stream: %v", err)
	}
	if string(m.Data) != string(garbage) || m.Header.Get("AniVault-Poison-Reason") == "" || m.Header.Get("AniVault-Buffer-Sequence") == "" {
		t.Fatalf("poison copy %s with headers %v", m.Data, m.Header)
	}
}

// SIGTERM under write load in cache-only mode, behind a client that polls
// /readyz every 50 ms as a load balancer does and sends to the node only
// while it is ready: readiness fails first, the node keeps serving for
// SHUTDOWN_DELAY, drains, and only then stops its buffer. No request sent
// while the node said ready is answered 503 or reset (a refused connection,
// once the listener closed, is fine), and nothing is lost.
func TestGracefulShutdownUnderWriteLoad(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{AutoRecovery: true})
	victim := s.StartNode("victim", map[string]string{"SHUTDOWN_DELAY": "1s"})
	other := s.StartNode("other", nil)
	s.StartMonitor(nil)
	s.StartManager(nil)
	s.EnterMaintenance("maintenance", victim, other)

	l := newLedger()
	load := startReadinessGatedWrites(victim, other, l)
	if err := procs.Eventually(30*time.Second, 10*time.Millisecond, func() error {
		if load.acked.Load() < 300 {
			return fmt.Errorf("%d writes acknowledged", load.acked.Load())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	termAt := time.Now()
	if err := victim.Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	stopped := time.Since(termAt)
	n0 := l.count() // the other node keeps taking writes
	if err := procs.Eventually(30*time.Second, 10*time.Millisecond, func() error {
		if l.count() < n0+300 {
			return fmt.Errorf("%d keys acknowledged", l.count())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	load.stop()
	s.ExitMaintenance()
	got, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	l.check(t, got)
	t.Logf("SIGTERM under write load: the node stopped %v after the signal; %d writes sent to it while it said ready, %d acknowledged, %d refused by a closed listener, %d answered 503 or reset",
		stopped.Round(time.Millisecond), load.sent.Load(), load.acked.Load(), load.refused.Load(), len(load.bad))
	if len(load.bad) > 0 {
		t.Fatalf("writes sent while the node said ready were answered 503 or reset: %v", load.bad[:min(len(load.bad), 10)])
	}
}

// readinessGatedWrites is a load balancer polling the victim's /readyz
// every 50 ms and four writers that send to the victim while it is ready,
// to the other node otherwise. It counts the writes sent to the victim,
// acknowledged by it, refused by its closed listener, and answered
// otherwise (bad).
type readinessGatedWrites struct {
	victim, other        *Node
	l                    *ledger
	ready                atomic.Bool
	done                 chan struct{}
	wg                   sync.WaitGroup
	sent, acked, refused atomic.Int64
	badMu                sync.Mutex
	bad                  []string
}

func startReadinessGatedWrites(victim, other *Node, l *ledger) *readinessGatedWrites {
	g := &readinessGatedWrites{victim: victim, other: other, l: l, done: make(chan struct{})}
	g.ready.Store(true)
	g.wg.Go(g.pollReadiness)
	for w := range 4 {
		g.wg.Go(func() { g.write(w) })
	}
	return g
}

// pollReadiness is the load balancer.
func (g *readinessGatedWrites) pollReadiness() {
	for {
		select {
		case <-g.done:
			return
		case <-time.After(50 * time.Millisecond):
		}
		r, err := do("GET", g.victim.URL()+"/readyz", nil)
		g.ready.Store(err == nil && r.Code == 200)
	}
}

// write is writer w: it writes until the load stops.
func (g *readinessGatedWrites) write(w int) {
	for i := 0; ; i++ {
		select {
		case <-g.done:
			return
		default:
		}
		id := int64(w*100000 + i%500 + 1)
		n := g.other
		toVictim := g.ready.Load()
		if toVictim {
			n = g.victim
			g.sent.Add(1)
		}
		r, err := n.Put(anime(id, "during shutdown"))
		var wr WriteResult
		switch {
		case err == nil && r.Code == 202 && json.Unmarshal(r.Body, &wr) == nil:
			g.l.ack(id, wr.Version, false)
			if toVictim {
				g.acked.Add(1)
			}
		case toVictim && err != nil && errors.Is(err, syscall.ECONNREFUSED):
			g.refused.Add(1)
		case toVictim:
			g.badMu.Lock()
			g.bad = append(g.bad, fmt.Sprintf("tmdb:%d: %v %d %s", id, err, r.Code, r.Body))
			g.badMu.Unlock()
		}
	}
}

// stop ends the load and waits for it.
func (g *readinessGatedWrites) stop() {
	close(g.done)
	g.wg.Wait()
}

// With HTTP_AUTH_TOKENS_FILE, reads need a read or write token and writes a
// write token: a request without one changes nothing. Probes and metrics
// stay open.
func TestWritesNeedAToken(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{})
	file := t.TempDir() + "/tokens"
	const reader, writer = "read-token-0123456789abcdef", "write-token-0123456789abcdef"
	if err := os.WriteFile(file, []byte("# tokens\nread "+reader+"\nwrite "+writer+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n := s.StartNode("n1", map[string]string{"HTTP_AUTH_TOKENS_FILE": file})
	waitSchema(t, s)
	req := func(method, path, token string, body []byte) Resp {
		t.Helper()
		r, err := http.NewRequest(method, n.URL()+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			r.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return Resp{Code: resp.StatusCode, Body: b, Header: resp.Header}
	}
	rec, _ := json.Marshal(anime(77, "authenticated"))
	for _, c := range []struct {
		name, method, path, token string
		body                      []byte
		want                      int
	}{
		{"put without a token", "PUT", "/v1/anime/77", "", rec, 401},
		{"put with a wrong token", "PUT", "/v1/anime/77", "not-a-token-0123456789", rec, 401},
		{"put with a read token", "PUT", "/v1/anime/77", reader, rec, 403},
		{"delete with a read token", "DELETE", "/v1/anime/77", reader, nil, 403},
		{"get without a token", "GET", "/v1/anime/77", "", nil, 401},
		{"status without a token", "GET", "/v1/status", "", nil, 401},
		{"get with a read token before any write", "GET", "/v1/anime/77", reader, nil, 404},
		{"healthz is open", "GET", "/healthz", "", nil, 200},
		{"readyz is open", "GET", "/readyz", "", nil, 200},
		{"metrics are open", "GET", "/metrics", "", nil, 200},
	} {
		if r := req(c.method, c.path, c.token, c.body); r.Code != c.want {
			t.Errorf("%s: %d %s, want %d", c.name, r.Code, r.Body, c.want)
		} else if c.want == 401 && r.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s: 401 without WWW-Authenticate", c.name)
		}
	}
	if v, err := s.Versions(); err != nil || len(v) != 0 {
		t.Fatalf("refused writes changed the table: %v %v", v, err)
	}
	if r := req("PUT", "/v1/anime/77", writer, rec); r.Code != 200 {
		t.Fatalf("put with a write token: %d %s", r.Code, r.Body)
	}
	if r := req("GET", "/v1/anime/77", reader, nil); r.Code != 200 || !strings.Contains(string(r.Body), "authenticated") {
		t.Fatalf("get with a read token: %d %s", r.Code, r.Body)
	}
}

// Deletes of ids never written cannot grow the table and the change log for
// ever: tombstones older than TOMBSTONE_RETENTION are removed from both,
// while records stay.
func TestTombstonesExpire(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{})
	n := s.StartNode("n1", map[string]string{"TOMBSTONE_RETENTION": "1s"})
	waitSchema(t, s)
	l := newLedger()
	writeAll(t, []*Node{n}, l, idRange(1, 5), false, "kept", 200)
	writeAll(t, []*Node{n}, l, idRange(5000, 50), true, "", 200)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := s.JS.Stream(ctx, s.streamName(events.StreamChanges))
	if err != nil {
		t.Fatal(err)
	}
	if err := procs.Eventually(30*time.Second, 100*time.Millisecond, func() error {
		v, err := s.Versions()
		if err != nil {
			return err
		}
		if len(v) != 5 {
			return fmt.Errorf("table holds %d rows", len(v))
		}
		for id := int64(5000); id < 5050; id++ {
			if _, err := st.GetLastMsgForSubject(ctx, s.subject(events.ChangeSubject(id))); err == nil {
				return fmt.Errorf("the change log still holds tmdb:%d", id)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	delete(l.want, 5000) // expired: no longer in the table
	for id := int64(5000); id < 5050; id++ {
		delete(l.want, id)
	}
	got, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	l.check(t, got)
	if r, _ := n.Get(5001); r.Code != 404 {
		t.Fatalf("an expired tombstone's id: %d, want 404", r.Code)
	}
}
