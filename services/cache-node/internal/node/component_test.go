package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/envconfig"
	"github.com/anivault/anivault/pkg/faultproxy"
	"github.com/anivault/anivault/pkg/procs"
	"github.com/anivault/anivault/pkg/testutil/natstest"
	"github.com/anivault/anivault/pkg/testutil/pgtest"
)

// Component tests: one whole node in this process, on a real NATS server
// with JetStream (in process) and a real PostgreSQL database (pgtest), the
// database reached through a fault proxy so that a test can cut it. They
// drive the node's core logic (group commit, the fallback to the buffer,
// the replay's decisions, how a mode is applied) directly, in seconds,
// where the end-to-end suite needs whole processes.

// compNode is a node under test with what the test needs around it.
type compNode struct {
	*Node
	natsURL string
	js      jetstream.JetStream
	kv      jetstream.KeyValue
	db      *faultproxy.Proxy // between the node and its database
	logs    *logLines
}

// startCompNode runs a node in this process against a throw-away NATS
// server and database until the test ends, with env over the defaults, and
// waits until it serves in normal mode with its schema migrated.
func startCompNode(t testing.TB, env map[string]string) *compNode {
	t.Helper()
	srv := natstest.Start(t)
	u, err := url.Parse(pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := faultproxy.Start(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Close)
	u.Host = proxy.Addr()
	vars := map[string]string{
		"NATS_URL": srv.URL(), "DATABASE_URL": u.String(), "HTTP_ADDR": "127.0.0.1:0", "ADMIN_ADDR": "",
		"NODE_ID": "component", "GOMEMLIMIT": "8GiB", "SHUTDOWN_DELAY": "0s",
		"HEALTH_CHECK_TIMEOUT": "2s", "BREAKER_OPEN_TIMEOUT": "500ms", "REPLAY_BATCH_INTERVAL": "0s",
	}
	maps.Copy(vars, env)
	cfg, err := LoadConfig(envconfig.FromMap(vars))
	if err != nil {
		t.Fatal(err)
	}
	logs := &logLines{t: t}
	n, err := New(cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err != nil {
		t.Fatal(err)
	}
	runNode(t, n)
	c := &compNode{Node: n, natsURL: srv.URL(), db: proxy, logs: logs}
	c.connect(t)
	return c
}

// runNode runs n until the test ends and waits until it serves.
func runNode(t testing.TB, n *Node) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("the node stopped with %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("the node did not stop within 15 s")
		}
	})
	var runErr error
	if err := procs.Eventually(30*time.Second, 20*time.Millisecond, func() error {
		select {
		case runErr = <-done:
			return nil
		default:
		}
		if !n.ready.Load() || !n.migrated.Load() || n.currentMode() != events.ModeNormal {
			return errors.New("node not ready")
		}
		return nil
	}); err != nil || runErr != nil {
		t.Fatalf("node not serving: %v %v", err, runErr)
	}
}

// connect gives the test its own NATS connection, JetStream and mode bucket.
func (c *compNode) connect(t testing.TB) {
	t.Helper()
	_, c.js = natstest.Connect(t, c.natsURL)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var err error
	if c.kv, err = c.js.KeyValue(ctx, c.subj.Name(events.BucketName)); err != nil {
		t.Fatal(err)
	}
}

// table returns the version the table holds for id.
func (c *compNode) table(ctx context.Context, id int64) (version int64, found bool) {
	err := c.store.DB().NewRaw("SELECT version FROM anime_metadata WHERE tmdb_id = ?", id).Scan(ctx, &version)
	return version, err == nil
}

// logLines sends the node's log to the test's and keeps its lines.
type logLines struct {
	t     testing.TB
	mu    sync.Mutex
	lines []string
}

func (w *logLines) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	w.mu.Lock()
	w.lines = append(w.lines, string(p))
	w.mu.Unlock()
	return len(p), nil
}

// with returns the lines holding every one of parts.
func (w *logLines) with(parts ...string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
next:
	for _, l := range w.lines {
		for _, p := range parts {
			if !strings.Contains(l, p) {
				continue next
			}
		}
		out = append(out, l)
	}
	return out
}

// setMode writes mc as the manager would, and waits until the node applied it.
func (c *compNode) setMode(t *testing.T, mc events.ModeChanged) {
	t.Helper()
	mc.Envelope = events.Envelope{OccurredAt: time.Now().UTC(), Source: "test"}
	b, err := json.Marshal(mc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.kv.Put(ctx, events.KeyMode, b); err != nil {
		t.Fatal(err)
	}
}

// writeAll sends n writes of distinct records from base at once and returns their results.
func (c *compNode) writeAll(t *testing.T, base int64, count int) []WriteResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res := make([]WriteResult, count)
	var wg sync.WaitGroup
	for i := range count {
		wg.Go(func() {
			id := base + int64(i)
			r, err := c.write(ctx, Write{TMDBID: id, Record: &events.Record{TMDBID: id, Title: fmt.Sprintf("title %d", id)}})
			if err != nil {
				t.Errorf("write tmdb:%d: %v", id, err)
			}
			res[i] = r
		})
	}
	wg.Wait()
	return res
}

// Concurrent committed writes share statements and change-log batches, and
// each is answered with its own outcome once its statement committed: the
// table and the log hold every one at the version it was answered with.
func TestComponentGroupCommit(t *testing.T) {
	t.Parallel()
	c := startCompNode(t, map[string]string{"DB_GROUP_COMMIT_MAX": "256"})
	res := c.writeAll(t, 1000, 200)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i, r := range res {
		id := int64(1000 + i)
		if r.Status != StatusCommitted {
			t.Fatalf("tmdb:%d answered %q, want committed (the database is up)", id, r.Status)
		}
		if v, found := c.table(ctx, id); !found || v != r.Version {
			t.Fatalf("the table holds tmdb:%d at v%d (found %v), answered v%d", id, v, found, r.Version)
		}
		if v := c.changes.latest(id); v != r.Version {
			t.Fatalf("the change log holds tmdb:%d at v%d, answered v%d", id, v, r.Version)
		}
	}
	batches, grouped := c.committer.batches.Load(), c.committer.grouped.Load()
	if grouped != 200 || batches >= 200 {
		t.Fatalf("%d writes in %d statements, want all 200 in fewer statements than writes", grouped, batches)
	}
	t.Logf("200 concurrent writes in %d statements", batches)
}

// With the database unreachable a write falls back to the durable buffer
// (202 buffered), and is in the change log; the replay the manager starts
// with recovering applies it, and the node reports the epoch replayed.
func TestComponentFallbackAndReplay(t *testing.T) {
	t.Parallel()
	c := startCompNode(t, nil)
	c.db.Disable()
	res := c.writeAll(t, 2000, 50)
	for i, r := range res {
		if r.Status != StatusBuffered {
			t.Fatalf("tmdb:%d answered %q with the database down, want buffered", 2000+i, r.Status)
		}
		if v := c.changes.latest(int64(2000 + i)); v != r.Version {
			t.Fatalf("the change log holds tmdb:%d at v%d, answered v%d", 2000+i, v, r.Version)
		}
	}
	if err := c.db.Heal(); err != nil {
		t.Fatal(err)
	}
	c.setMode(t, events.ModeChanged{Mode: events.ModeRecovering, Epoch: 1})
	c.waitReplayed(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i, r := range res {
		if v, found := c.table(ctx, int64(2000+i)); !found || v != r.Version {
			t.Fatalf("after the replay the table holds tmdb:%d at v%d (found %v), want v%d", 2000+i, v, found, r.Version)
		}
	}
	assertBufferEmpty(t, c)
}

// waitReplayed waits until the node reported the replay of epoch done.
func (c *compNode) waitReplayed(t *testing.T, epoch int64) {
	t.Helper()
	waitFor(t, func() error {
		if e := c.replayer.completedEpoch(); e < epoch {
			return fmt.Errorf("replayed epoch %d, want %d", e, epoch)
		}
		return nil
	})
}

func assertBufferEmpty(t *testing.T, c *compNode) {
	t.Helper()
	waitFor(t, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := c.js.Stream(ctx, c.subj.Name(events.StreamBuffer))
		if err != nil {
			return err
		}
		if m := s.CachedInfo().State.Msgs; m != 0 {
			return fmt.Errorf("the buffer holds %d messages", m)
		}
		return nil
	})
}

// The replay's decisions, message by message: a write newer than the
// table's row is applied, an older one is counted stale and changes
// nothing, and a message that cannot be decoded is copied to the poison
// stream with its reason and removed, never retried for ever nor lost.
func TestComponentReplayDecisions(t *testing.T) {
	t.Parallel()
	c := startCompNode(t, nil)
	res := c.writeAll(t, 3000, 2) // tmdb:3000 and 3001, committed
	c.setMode(t, events.ModeChanged{Mode: events.ModeCacheOnly, Epoch: 1})
	waitFor(t, func() error {
		if m := c.currentMode(); m != events.ModeCacheOnly {
			return fmt.Errorf("mode %s", m)
		}
		return nil
	})
	newer, older := res[0].Version+10, res[1].Version-10
	publishBuffered(t, c, encodeBatchOf(t, c,
		events.BufferedWrite{TMDBID: 3000, Version: newer, Record: &events.Record{TMDBID: 3000, Title: "newer"}},
		events.BufferedWrite{TMDBID: 3001, Version: older, Record: &events.Record{TMDBID: 3001, Title: "older"}}))
	garbage := []byte(`{"writes":[{"tmdb_id":"not a number"}]}`)
	publishBuffered(t, c, garbage)

	staleBefore := c.replayer.stale.Load()
	c.setMode(t, events.ModeChanged{Mode: events.ModeRecovering, Epoch: 2})
	c.waitReplayed(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if v, _ := c.table(ctx, 3000); v != newer {
		t.Fatalf("tmdb:3000 at v%d after the replay, want the buffered newer v%d", v, newer)
	}
	if v, _ := c.table(ctx, 3001); v != res[1].Version {
		t.Fatalf("tmdb:3001 at v%d after the replay, want its committed v%d (the buffered write is older)", v, res[1].Version)
	}
	if got := c.replayer.stale.Load() - staleBefore; got != 1 {
		t.Fatalf("%d writes counted stale, want 1", got)
	}
	assertBufferEmpty(t, c)
	poison, err := c.js.Stream(ctx, c.subj.Name(events.StreamPoison))
	if err != nil {
		t.Fatal(err)
	}
	msg, err := poison.GetLastMsgForSubject(ctx, c.subj.Of(events.SubjectPoisonBuffer))
	if err != nil {
		t.Fatalf("the undecodable message is not in the poison stream: %v", err)
	}
	if string(msg.Data) != string(garbage) || msg.Header.Get(HeaderPoisonReason) == "" {
		t.Fatalf("poison copy %q with reason %q, want the message itself with a reason", msg.Data, msg.Header.Get(HeaderPoisonReason))
	}
}

func encodeBatchOf(t *testing.T, c *compNode, ws ...events.BufferedWrite) []byte {
	t.Helper()
	encs := make([][]byte, len(ws))
	for i, w := range ws {
		w.AcceptedAt, w.Node = time.Now().UTC(), "test"
		var body []byte
		if w.Record != nil {
			rec := *w.Record
			rec.Version = w.Version
			b, err := events.Marshal(&rec)
			if err != nil {
				t.Fatal(err)
			}
			body = b
		}
		w.Record = nil // passed as its encoding
		enc, err := encodeBufferedWrite(w, body)
		if err != nil {
			t.Fatal(err)
		}
		encs[i] = enc
	}
	return encodeBatch(encs)
}

func publishBuffered(t *testing.T, c *compNode, data []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.js.Publish(ctx, c.subj.Of(events.SubjectBufferWrites), data); err != nil {
		t.Fatal(err)
	}
}

// A mode is applied only when its epoch is newer than the node's: an older
// epoch read late (a stale watcher, a lagging replica) never sends the node
// back; cache-only sends writes straight to the buffer, and recovering
// starts the replay of that epoch.
func TestComponentModeApplication(t *testing.T) {
	t.Parallel()
	c := startCompNode(t, nil)
	c.setMode(t, events.ModeChanged{Mode: events.ModeCacheOnly, Epoch: 5})
	waitFor(t, func() error {
		if mc, _ := c.mode.get(); mc.Mode != events.ModeCacheOnly || mc.Epoch != 5 {
			return fmt.Errorf("mode %s epoch %d, want cache_only 5", mc.Mode, mc.Epoch)
		}
		return nil
	})
	if r := c.writeAll(t, 4000, 1); r[0].Status != StatusBuffered {
		t.Fatalf("a write in cache-only mode answered %q, want buffered", r[0].Status)
	}
	c.setMode(t, events.ModeChanged{Mode: events.ModeNormal, Epoch: 4})
	c.setMode(t, events.ModeChanged{Mode: events.ModeRecovering, Epoch: 6})
	c.waitReplayed(t, 6)
	// The older epoch 4 came between (the watcher delivers in order, so it
	// was seen before 6) and was ignored: the node went from 5 to 6 and
	// never to normal at 4.
	if got := c.logs.with("mode changed", "epoch=4"); len(got) > 0 {
		t.Fatalf("the node applied the older epoch 4: %q", got)
	}
	if got := c.logs.with("mode changed", "to=recovering", "epoch=6"); len(got) != 1 {
		t.Fatalf("the node logged %q for epoch 6, want one change to recovering", got)
	}
	c.setMode(t, events.ModeChanged{Mode: events.ModeNormal, Epoch: 7})
	waitFor(t, func() error {
		if m := c.currentMode(); m != events.ModeNormal {
			return fmt.Errorf("mode %s, want normal", m)
		}
		return nil
	})
	if r := c.writeAll(t, 4001, 1); r[0].Status != StatusCommitted {
		t.Fatalf("a write in normal mode answered %q, want committed", r[0].Status)
	}
}
