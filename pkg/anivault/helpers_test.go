package anivault_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/anivault"
	"github.com/anivault/anivault/pkg/natsembed"
	"github.com/anivault/anivault/pkg/testutil/natstest"
	"github.com/anivault/anivault/pkg/topology"
)

// testCtx returns a context that ends with the test or after d.
func testCtx(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// dial connects to url the way a producer should: reconnecting forever, and
// quickly, so that a server restart costs little test time.
func dial(t *testing.T, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	all := append([]nats.Option{
		nats.MaxReconnects(-1),
		nats.ReconnectWait(25 * time.Millisecond),
		nats.ReconnectJitter(0, 0),
		nats.ReconnectBufSize(-1),
	}, opts...)
	nc, err := nats.Connect(url, all...)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// system is an in-process NATS server with AniVault's streams and bucket,
// and an admin connection for the test's own checks.
type system struct {
	srv  *natsembed.Server
	nc   *nats.Conn
	js   jetstream.JetStream
	kv   jetstream.KeyValue
	subj events.Subjects
}

// startSystem starts a JetStream server and provisions the topology with
// prefix, as the services would at start.
func startSystem(t *testing.T, prefix string) *system {
	t.Helper()
	srv := natstest.Start(t)
	nc := dial(t, srv.URL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	subj := events.NewSubjects(prefix)
	top, err := topology.New(js, subj)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t, 30*time.Second)
	kv, err := top.EnsureEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := top.EnsureWrites(ctx, topology.BufferLimits{}); err != nil {
		t.Fatal(err)
	}
	return &system{srv: srv, nc: nc, js: js, kv: kv, subj: subj}
}

// metadataMsgs returns the number of messages in the metadata stream.
func (s *system) metadataMsgs(t *testing.T) uint64 {
	t.Helper()
	ctx := testCtx(t, 10*time.Second)
	for {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := s.js.Stream(sctx, s.subj.Name(events.StreamMetadata))
		cancel()
		if err == nil {
			return st.CachedInfo().State.Msgs
		}
		// The admin connection may still be reconnecting after a restart.
		if ctx.Err() != nil {
			t.Fatalf("metadata stream info: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// putMode writes a mode into the KV bucket as the recovery-manager would,
// retrying while the admin connection reconnects.
func (s *system) putMode(t *testing.T, mode events.Mode, epoch int64, reason string) {
	t.Helper()
	b, err := json.Marshal(events.ModeChanged{
		Envelope: events.Envelope{OccurredAt: time.Now().UTC(), Source: "test"},
		Mode:     mode, Epoch: epoch, Reason: reason, Since: time.Now().UTC(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t, 15*time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := s.kv.Put(pctx, events.KeyMode, b)
		cancel()
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("put mode %s/%d: %v", mode, epoch, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// newClient returns a Client over a fresh connection to url.
func newClient(t *testing.T, url string, opts anivault.Options) *anivault.Client {
	t.Helper()
	c, err := anivault.New(dial(t, url), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ptr[T any](v T) *T { return &v }

// record returns a small valid record.
func record(id int64) *events.Record {
	return &events.Record{
		TMDBID:        id,
		Title:         "Attack on Titan",
		OriginalTitle: ptr("進撃の巨人"),
		FirstAirDate:  ptr("2013-04-07"),
		Genres:        []string{"Animation", "Action & Adventure"},
		RawData:       json.RawMessage(`{"id":1429,"nested":{"a":[1,2,3]}}`),
	}
}

// validationField returns the field named by err's *events.ValidationError,
// failing the test when err is not one.
func validationField(t *testing.T, err error) string {
	t.Helper()
	ve, ok := errors.AsType[*events.ValidationError](err)
	if !ok {
		t.Fatalf("error %v (%T) is not an *events.ValidationError", err, err)
	}
	if !errors.Is(err, events.ErrInvalid) {
		t.Errorf("error %v does not match events.ErrInvalid", err)
	}
	return ve.Field
}

// errorCounter is a slog handler that counts the "error" attribute of log
// records, to report which failures the client retried.
type errorCounter struct {
	mu     *sync.Mutex
	counts map[string]int
}

func newErrorCounter() *errorCounter {
	return &errorCounter{mu: &sync.Mutex{}, counts: map[string]int{}}
}

func (h *errorCounter) Enabled(context.Context, slog.Level) bool { return true }

func (h *errorCounter) Handle(_ context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "error" {
			h.mu.Lock()
			h.counts[r.Message+": "+a.Value.String()]++
			h.mu.Unlock()
		}
		return true
	})
	return nil
}

func (h *errorCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *errorCounter) WithGroup(string) slog.Handler      { return h }

// String lists the counted errors, most frequent first.
func (h *errorCounter) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	keys := make([]string, 0, len(h.counts))
	for k := range h.counts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return h.counts[keys[i]] > h.counts[keys[j]] })
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "\n  %5d × %s", h.counts[k], k)
	}
	return b.String()
}
