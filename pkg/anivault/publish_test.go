package anivault_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/anivault"
	"github.com/anivault/anivault/pkg/faultproxy"
)

// An invalid write fails locally with the field named, and nothing reaches
// NATS: not the stream, not even a core subscriber of metadata.>.
func TestInvalidWritesSendNothing(t *testing.T) {
	t.Parallel()
	sys := startSystem(t, "")
	c := newClient(t, sys.srv.URL(), anivault.Options{})
	ctx := testCtx(t, 30*time.Second)

	spy, err := sys.nc.SubscribeSync("metadata.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := sys.nc.Flush(); err != nil {
		t.Fatal(err)
	}

	withRecord := func(f func(r *events.Record)) *events.Record {
		r := record(1429)
		f(r)
		return r
	}
	tests := []struct {
		name      string
		call      func() error
		field     string
		wantLarge bool
	}{
		{name: "NUL in title", field: "title", call: func() error {
			_, err := c.Upsert(ctx, withRecord(func(r *events.Record) { r.Title = "Attack\x00on Titan" }))
			return err
		}},
		{name: "tmdb_id 0", field: "tmdb_id", call: func() error {
			_, err := c.Upsert(ctx, withRecord(func(r *events.Record) { r.TMDBID = 0 }))
			return err
		}},
		{name: "300 KiB overview", field: "overview", wantLarge: true, call: func() error {
			_, err := c.Upsert(ctx, withRecord(func(r *events.Record) { r.Overview = ptr(strings.Repeat("a", 300<<10)) }))
			return err
		}},
		{name: "empty title", field: "title", call: func() error {
			_, err := c.Upsert(ctx, withRecord(func(r *events.Record) { r.Title = "  " }))
			return err
		}},
		{name: "bad date", field: "first_air_date", call: func() error {
			_, err := c.Upsert(ctx, withRecord(func(r *events.Record) { r.FirstAirDate = ptr("2013-13-07") }))
			return err
		}},
		{name: "raw_data not an object", field: "raw_data", call: func() error {
			_, err := c.Upsert(ctx, withRecord(func(r *events.Record) { r.RawData = json.RawMessage(`[1,2]`) }))
			return err
		}},
		{name: "nil record", field: "", call: func() error {
			_, err := c.Upsert(ctx, nil)
			return err
		}},
		{name: "delete id 0", field: "tmdb_id", call: func() error {
			_, err := c.Delete(ctx, 0)
			return err
		}},
		{name: "get id -1", field: "tmdb_id", call: func() error {
			_, err := c.Get(ctx, -1)
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if err == nil {
				t.Fatal("invalid write accepted")
			}
			if got := validationField(t, err); got != tc.field {
				t.Errorf("field = %q, want %q (error %v)", got, tc.field, err)
			}
			if got := errors.Is(err, events.ErrTooLarge); got != tc.wantLarge {
				t.Errorf("errors.Is(ErrTooLarge) = %v, want %v (error %v)", got, tc.wantLarge, err)
			}
		})
	}
	if n := sys.metadataMsgs(t); n != 0 {
		t.Fatalf("metadata stream holds %d messages after invalid writes only, want 0", n)
	}

	// A valid write afterwards must be the first and only message anyone sees.
	valid := record(1429)
	valid.Title = "Tom & Jerry <Special>"
	valid.Version = 99
	valid.UpdatedAt = ptr(time.Now())
	ack, err := c.Upsert(ctx, valid)
	if err != nil {
		t.Fatalf("valid upsert: %v", err)
	}
	if ack.Stream != events.StreamMetadata || ack.Sequence != 1 || ack.Duplicate || ack.Attempts != 1 || ack.MsgID == "" {
		t.Errorf("ack = %+v, want first message of %s in one attempt", ack, events.StreamMetadata)
	}
	if valid.Version != 99 || valid.UpdatedAt == nil {
		t.Error("Upsert modified the caller's record")
	}
	msg, err := spy.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("spy saw nothing of the valid upsert: %v", err)
	}
	if msg.Subject != events.SubjectMetadataUpsert {
		t.Errorf("first message on %s, want %s", msg.Subject, events.SubjectMetadataUpsert)
	}
	if got := msg.Header.Get(jetstream.MsgIDHeader); got != ack.MsgID {
		t.Errorf("Nats-Msg-Id = %q, want the ack's %q", got, ack.MsgID)
	}
	body := string(msg.Data)
	if !strings.Contains(body, `"title":"Tom & Jerry <Special>"`) {
		t.Errorf("payload is HTML-escaped or lost the title: %s", body)
	}
	if strings.Contains(body, `"version"`) || strings.Contains(body, `"updated_at"`) {
		t.Errorf("payload carries system-assigned fields: %s", body)
	}
	if _, err := events.DecodeRecord(msg.Data); err != nil {
		t.Errorf("the server's decoder rejects the payload: %v", err)
	}
	if extra, err := spy.NextMsg(300 * time.Millisecond); !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("spy saw a second message %q (%s), err %v", extra.Data, extra.Subject, err)
	}
	if n := sys.metadataMsgs(t); n != 1 {
		t.Fatalf("metadata stream holds %d messages, want 1", n)
	}

	dack, err := c.Delete(ctx, 1429)
	if err != nil {
		t.Fatalf("delete: %v", err)
	}
	msg, err = spy.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("spy saw nothing of the delete: %v", err)
	}
	if msg.Subject != events.SubjectMetadataDelete || string(msg.Data) != `{"tmdb_id":1429}` || dack.Sequence != 2 {
		t.Errorf("delete sent %s %s (seq %d), want %s {\"tmdb_id\":1429} at seq 2", msg.Subject, msg.Data, dack.Sequence, events.SubjectMetadataDelete)
	}
}

// A prefixed system gets prefixed subjects.
func TestUpsertAppliesPrefix(t *testing.T) {
	t.Parallel()
	sys := startSystem(t, "tenant")
	c := newClient(t, sys.srv.URL(), anivault.Options{Prefix: "tenant"})
	ctx := testCtx(t, 30*time.Second)
	spy, err := sys.nc.SubscribeSync("tenant.metadata.*")
	if err != nil {
		t.Fatal(err)
	}
	if err := sys.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	ack, err := c.Upsert(ctx, record(1))
	if err != nil {
		t.Fatal(err)
	}
	if want := "TENANT_" + events.StreamMetadata; ack.Stream != want {
		t.Errorf("stream = %s, want %s", ack.Stream, want)
	}
	msg, err := spy.NextMsg(5 * time.Second)
	if err != nil || msg.Subject != "tenant."+events.SubjectMetadataUpsert {
		t.Fatalf("got %v, %v; want a message on tenant.%s", msg, err, events.SubjectMetadataUpsert)
	}
}

// Without a stream to take the write, Upsert retries and then reports the
// system unavailable; it does not report success.
func TestUpsertWithoutStreamIsUnavailable(t *testing.T) {
	t.Parallel()
	srv := startSystem(t, "").srv
	c := newClient(t, srv.URL(), anivault.Options{Prefix: "nostream", MaxRetries: 2, RetryBackoff: 10 * time.Millisecond})
	_, err := c.Upsert(testCtx(t, 30*time.Second), record(1))
	if !errors.Is(err, anivault.ErrUnavailable) || !errors.Is(err, jetstream.ErrNoStreamResponse) {
		t.Fatalf("err = %v, want ErrUnavailable wrapping ErrNoStreamResponse", err)
	}
	if !strings.Contains(err.Error(), "3 attempts") {
		t.Errorf("err = %v, want it to count 3 attempts", err)
	}
}

// The client-level version of "a producer publishing 10,000 records while
// something restarts loses none and applies none twice": the NATS server
// restarts in the middle of 10,000 concurrent upserts; every call succeeds
// (retries), and the stream holds each record exactly once (msg ids).
func TestUpsertTenThousandAcrossServerRestart(t *testing.T) {
	const (
		total   = 10_000
		workers = 32
	)
	sys := startSystem(t, "")
	retryLog := newErrorCounter()
	c, err := anivault.Connect(sys.srv.URL(), anivault.Options{
		Logger:         slog.New(retryLog),
		PublishTimeout: 2 * time.Second,
		MaxRetries:     40,
		RetryBackoff:   20 * time.Millisecond,
	}, nats.ReconnectWait(25*time.Millisecond), nats.ReconnectJitter(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	// About 10s on an idle machine (every write is fsynced); the margin is
	// for a loaded CI runner.
	ctx := testCtx(t, 2*time.Minute)

	var (
		done       atomic.Int64
		retried    atomic.Int64
		duplicates atomic.Int64
		mu         sync.Mutex
		seqs       = make(map[uint64]int64, total)
		failures   []error
	)
	restarted := make(chan time.Duration, 1)
	go func() {
		for done.Load() < total*3/10 {
			if ctx.Err() != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
		start := time.Now()
		if err := sys.srv.Restart(ctx); err != nil {
			t.Errorf("restart: %v", err)
		}
		restarted <- time.Since(start)
	}()

	ids := make(chan int64)
	go func() {
		defer close(ids)
		for id := int64(1); id <= total; id++ {
			ids <- id
		}
	}()
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for id := range ids {
				r := record(id)
				r.Title = fmt.Sprintf("Record %d", id)
				ack, err := c.Upsert(ctx, r)
				mu.Lock()
				if err != nil {
					failures = append(failures, fmt.Errorf("upsert %d: %w", id, err))
				} else if prev, dup := seqs[ack.Sequence]; dup {
					failures = append(failures, fmt.Errorf("records %d and %d both acked at sequence %d", prev, id, ack.Sequence))
				} else {
					seqs[ack.Sequence] = id
				}
				mu.Unlock()
				if err == nil && ack.Attempts > 1 {
					retried.Add(1)
				}
				if err == nil && ack.Duplicate {
					duplicates.Add(1)
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	for i, err := range failures {
		if i == 10 {
			t.Errorf("... and %d more failures", len(failures)-10)
			break
		}
		t.Error(err)
	}
	var restartTook time.Duration
	select {
	case restartTook = <-restarted:
	case <-time.After(10 * time.Second):
		t.Fatal("the server was never restarted")
	}
	t.Logf("%d upserts in %s; restart took %s; %d calls retried, %d acked as duplicates; retried failures:%s",
		total, elapsed.Round(time.Millisecond), restartTook.Round(time.Millisecond), retried.Load(), duplicates.Load(), retryLog)
	// Calls in flight when the server stops mostly time out and are retried,
	// but nats.go also retries "no responders" inside one attempt, which can
	// hide a short restart: the reconnect is the proof that it hit.
	if n := c.Conn().Stats().Reconnects; n == 0 {
		t.Error("the client never reconnected: the restart did not hit the publishes")
	}

	if n := sys.metadataMsgs(t); n != total {
		t.Errorf("metadata stream holds %d messages, want %d", n, total)
	}
	// Read the stream back, message by message (acking through a consumer
	// would fsync every delete): every record exactly once.
	stream, err := sys.js.Stream(ctx, events.StreamMetadata)
	if err != nil {
		t.Fatal(err)
	}
	stored := make([]int64, total+1) // by sequence
	seqCh := make(chan uint64)
	var readers sync.WaitGroup
	for range 16 {
		readers.Go(func() {
			for seq := range seqCh {
				m, err := stream.GetMsg(ctx, seq)
				if err != nil {
					t.Errorf("get message %d: %v", seq, err)
					continue
				}
				rec, err := events.DecodeRecord(m.Data)
				if err != nil {
					t.Errorf("message %d: stored payload invalid: %v", seq, err)
					continue
				}
				stored[seq] = rec.TMDBID
			}
		})
	}
	for seq := uint64(1); seq <= total; seq++ {
		seqCh <- seq
	}
	close(seqCh)
	readers.Wait()
	seen := make(map[int64]int, total)
	for _, id := range stored[1:] {
		seen[id]++
	}
	for id := int64(1); id <= total; id++ {
		if seen[id] != 1 {
			t.Fatalf("record %d stored %d times", id, seen[id])
		}
	}
}

// A retry carries the message id of the first attempt, so a write whose ack
// was lost is not stored twice: publishing the same id again is a duplicate.
func TestRetryReusesMsgID(t *testing.T) {
	t.Parallel()
	sys := startSystem(t, "")
	c := newClient(t, sys.srv.URL(), anivault.Options{})
	ctx := testCtx(t, 30*time.Second)
	ack, err := c.Upsert(ctx, record(5))
	if err != nil {
		t.Fatal(err)
	}
	// What a retry after a lost ack sends: the same payload with the same id.
	data, err := events.Marshal(record(5))
	if err != nil {
		t.Fatal(err)
	}
	again, err := sys.js.Publish(ctx, events.SubjectMetadataUpsert, data, jetstream.WithMsgID(ack.MsgID))
	if err != nil {
		t.Fatal(err)
	}
	if !again.Duplicate || again.Sequence != ack.Sequence {
		t.Errorf("republish with the call's msg id = %+v, want a duplicate of sequence %d", again, ack.Sequence)
	}
	// The duplicate window lives in the stream's store: it survives a
	// server restart, so a retry that straddles one is still dropped.
	if err := sys.srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	var afterRestart *jetstream.PubAck
	var errs []error
	for {
		// Per-attempt timeout: a request written to the old socket before the
		// client noticed the restart never gets a reply.
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		afterRestart, err = sys.js.Publish(pctx, events.SubjectMetadataUpsert, data, jetstream.WithMsgID(ack.MsgID))
		cancel()
		if err == nil || ctx.Err() != nil {
			break
		}
		if len(errs) < 5 {
			errs = append(errs, err)
		}
		time.Sleep(25 * time.Millisecond) // the admin connection is reconnecting
	}
	if err != nil {
		t.Fatalf("republish after restart: %v (first errors: %v; status %v)", err, errs, sys.nc.Status())
	}
	if !afterRestart.Duplicate || afterRestart.Sequence != ack.Sequence {
		t.Errorf("republish after a restart = %+v, want a duplicate of sequence %d", afterRestart, ack.Sequence)
	}
	// A second call is a new write, with a new id.
	ack2, err := c.Upsert(ctx, record(5))
	if err != nil {
		t.Fatal(err)
	}
	if ack2.MsgID == ack.MsgID || ack2.Duplicate || ack2.Sequence != ack.Sequence+1 {
		t.Errorf("second call ack = %+v after %+v, want a new id and sequence", ack2, ack)
	}
	if n := sys.metadataMsgs(t); n != 2 {
		t.Errorf("metadata stream holds %d messages, want 2", n)
	}
}

func TestClosedClient(t *testing.T) {
	t.Parallel()
	sys := startSystem(t, "")
	c, err := anivault.Connect(sys.srv.URL(), anivault.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t, 10*time.Second)
	modes, err := c.WatchMode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if !c.Conn().IsClosed() {
		t.Error("Close did not close the connection Connect made")
	}
	for range modes { // drains the initial mode, then must end
	}
	if _, err := c.Upsert(ctx, record(1)); !errors.Is(err, anivault.ErrClosed) {
		t.Errorf("Upsert after Close: %v, want ErrClosed", err)
	}
	if _, err := c.Get(ctx, 1); !errors.Is(err, anivault.ErrClosed) {
		t.Errorf("Get after Close: %v, want ErrClosed", err)
	}
	if _, err := c.WatchMode(ctx); !errors.Is(err, anivault.ErrClosed) {
		t.Errorf("WatchMode after Close: %v, want ErrClosed", err)
	}

	// New does not own its connection.
	nc := dial(t, sys.srv.URL())
	c2, err := anivault.New(nc, anivault.Options{})
	if err != nil {
		t.Fatal(err)
	}
	_ = c2.Close()
	if nc.IsClosed() {
		t.Error("Close closed a connection the caller owns")
	}
}

func TestOptionsValidation(t *testing.T) {
	t.Parallel()
	if _, err := anivault.New(nil, anivault.Options{}); err == nil {
		t.Error("New(nil) succeeded")
	}
	sys := startSystem(t, "")
	nc := dial(t, sys.srv.URL())
	_, err := anivault.New(nc, anivault.Options{PublishTimeout: -1, RequestTimeout: -time.Second})
	if err == nil || !strings.Contains(err.Error(), "PublishTimeout") || !strings.Contains(err.Error(), "RequestTimeout") {
		t.Errorf("negative timeouts: err = %v, want both named", err)
	}
	if _, err := anivault.Connect("nats://127.0.0.1:1", anivault.Options{}, nats.Timeout(100*time.Millisecond)); err == nil {
		t.Error("Connect to a closed port succeeded")
	}
}

// The caller's context bounds the whole call, retries included.
func TestUpsertHonoursContext(t *testing.T) {
	t.Parallel()
	srv := startSystem(t, "").srv
	c := newClient(t, srv.URL(), anivault.Options{Prefix: "nostream", MaxRetries: 1000})
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Upsert(ctx, record(1))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the context's deadline", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Upsert returned %s after its context ended", d)
	}
}

// A write whose acknowledgement is lost (here: delayed past PublishTimeout
// while the stream stores it) is retried with the same message id, and the
// stream reports the retry as a duplicate instead of storing it again.
func TestRetryAfterLostAckIsDuplicate(t *testing.T) {
	t.Parallel()
	sys := startSystem(t, "")
	proxy, err := faultproxy.Start(strings.TrimPrefix(sys.srv.URL(), "nats://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Close)
	c, err := anivault.Connect("nats://"+proxy.Addr(), anivault.Options{
		PublishTimeout: 300 * time.Millisecond,
		MaxRetries:     50,
		RetryBackoff:   50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })

	if err := proxy.Latency(time.Second); err != nil {
		t.Fatal(err)
	}
	healed := time.AfterFunc(1500*time.Millisecond, func() { _ = proxy.Latency(0) })
	defer healed.Stop()

	ack, err := c.Upsert(testCtx(t, 30*time.Second), record(1429))
	if err != nil {
		t.Fatal(err)
	}
	if ack.Attempts < 2 || !ack.Duplicate || ack.Sequence != 1 {
		t.Errorf("ack = %+v, want a retried call acked as a duplicate of sequence 1", ack)
	}
	if n := sys.metadataMsgs(t); n != 1 {
		t.Errorf("metadata stream holds %d messages, want 1", n)
	}
}
