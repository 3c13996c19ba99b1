package anivault_test

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/anivault"
)

// fakeCacheNode answers metadata.get as the cache-nodes do, through NATS
// micro: 404 for id 404, 503 for id 503, 400 for id 400, no answer for id 777,
// and a record for any other id.
func fakeCacheNode(t *testing.T, nc *nats.Conn, subj events.Subjects) {
	t.Helper()
	svc, err := micro.AddService(nc, micro.Config{Name: "fake-cache-node", Version: "0.0.1", QueueGroup: events.QueueMetadataGet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	fail := func(req micro.Request, code int, msg, field string) {
		b, _ := json.Marshal(events.ErrorReply{Error: msg, Code: code, Field: field})
		_ = req.Error(strconv.Itoa(code), msg, b)
	}
	err = svc.AddEndpoint("get", micro.HandlerFunc(func(req micro.Request) {
		g, err := events.DecodeGet(req.Data())
		if err != nil {
			fail(req, 400, err.Error(), "")
			return
		}
		switch g.TMDBID {
		case 404:
			fail(req, 404, "record not found", "")
		case 503:
			fail(req, 503, "database unavailable and record not cached", "")
		case 400:
			fail(req, 400, "must be an integer greater than 0", "tmdb_id")
		case 777: // never answers
		default:
			rec := record(g.TMDBID)
			rec.Version = 1 << 40
			rec.UpdatedAt = ptr(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
			b, _ := events.Marshal(rec)
			_ = req.Respond(b)
		}
	}), micro.WithEndpointSubject(subj.Of(events.SubjectMetadataGet)), micro.WithEndpointQueueGroup(events.QueueMetadataGet))
	if err != nil {
		t.Fatal(err)
	}
	// The endpoint's subscription must reach the server before another
	// connection sends to it.
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

func TestGet(t *testing.T) {
	t.Parallel()
	sys := startSystem(t, "")
	ctx := testCtx(t, 30*time.Second)
	opts := anivault.Options{Prefix: "acme", RequestTimeout: 500 * time.Millisecond}
	c := newClient(t, sys.srv.URL(), opts)

	t.Run("no responders", func(t *testing.T) {
		start := time.Now()
		_, err := c.Get(ctx, 1429)
		if !errors.Is(err, anivault.ErrUnavailable) || !errors.Is(err, nats.ErrNoResponders) {
			t.Fatalf("err = %v, want ErrUnavailable wrapping no responders", err)
		}
		if d := time.Since(start); d > 400*time.Millisecond {
			t.Errorf("no responders took %s, want a fast failure", d)
		}
	})

	fakeCacheNode(t, sys.nc, events.NewSubjects("acme"))
	tests := []struct {
		name     string
		id       int64
		want     error
		wantCode int
	}{
		{name: "not found", id: 404, want: anivault.ErrNotFound, wantCode: 404},
		{name: "unavailable", id: 503, want: anivault.ErrUnavailable, wantCode: 503},
		{name: "invalid", id: 400, want: anivault.ErrInvalid, wantCode: 400},
		{name: "timeout", id: 777, want: anivault.ErrUnavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec, err := c.Get(ctx, tc.id)
			if !errors.Is(err, tc.want) || rec != nil {
				t.Fatalf("Get(%d) = %v, %v; want %v", tc.id, rec, err, tc.want)
			}
			se, isService := errors.AsType[*anivault.ServiceError](err)
			if isService != (tc.wantCode != 0) {
				t.Fatalf("err %v: *ServiceError %v, want %v", err, isService, tc.wantCode != 0)
			}
			if isService && (se.Code != tc.wantCode || se.Message == "" || se.Subject != events.SubjectMetadataGet) {
				t.Errorf("ServiceError = %+v, want code %d with the server's message", se, tc.wantCode)
			}
		})
	}
	t.Run("invalid also matches events.ErrInvalid and names the field", func(t *testing.T) {
		_, err := c.Get(ctx, 400)
		se, _ := errors.AsType[*anivault.ServiceError](err)
		if !errors.Is(err, events.ErrInvalid) || se == nil || se.Field != "tmdb_id" {
			t.Errorf("err = %v, want events.ErrInvalid and field tmdb_id", err)
		}
		if want := "anivault: metadata.get: tmdb_id: must be an integer greater than 0 (code 400)"; err.Error() != want {
			t.Errorf("err = %q, want %q", err, want)
		}
	})
	t.Run("found", func(t *testing.T) {
		rec, err := c.Get(ctx, 1429)
		if err != nil {
			t.Fatal(err)
		}
		if rec.TMDBID != 1429 || rec.Title != "Attack on Titan" || rec.Version != 1<<40 ||
			rec.UpdatedAt == nil || !rec.UpdatedAt.Equal(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)) ||
			string(rec.RawData) != `{"id":1429,"nested":{"a":[1,2,3]}}` {
			t.Errorf("Get decoded %+v", rec)
		}
	})
	t.Run("caller's deadline", func(t *testing.T) {
		short := newClient(t, sys.srv.URL(), anivault.Options{Prefix: "acme", RequestTimeout: time.Minute})
		sctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		if _, err := short.Get(sctx, 777); !errors.Is(err, sctx.Err()) || sctx.Err() == nil {
			t.Errorf("err = %v, want the caller's deadline", err)
		}
	})
}

// A plain responder (no micro headers) that sends only the error body is
// understood too.
func TestGetPlainErrorBody(t *testing.T) {
	t.Parallel()
	sys := startSystem(t, "")
	sub, err := sys.nc.Subscribe(events.SubjectMetadataGet, func(m *nats.Msg) {
		_ = m.Respond([]byte(`{"error":"record not found","code":404}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := sys.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, sys.srv.URL(), anivault.Options{})
	_, err = c.Get(testCtx(t, 10*time.Second), 1)
	if !errors.Is(err, anivault.ErrNotFound) || err.Error() != "anivault: metadata.get: record not found (code 404)" {
		t.Fatalf("err = %v, want ErrNotFound with the server's message", err)
	}
}

// fakeManager answers the recovery-manager's requests and hands every
// request's payload to the test.
type fakeManager struct {
	got chan string // "<endpoint> <payload>"
}

func startFakeManager(t *testing.T, nc *nats.Conn, subj events.Subjects) *fakeManager {
	t.Helper()
	f := &fakeManager{got: make(chan string, 16)}
	svc, err := micro.AddService(nc, micro.Config{Name: "fake-recovery-manager", Version: "0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	reply := func(req micro.Request, v any) {
		b, _ := json.Marshal(v)
		_ = req.Respond(b)
	}
	empty := func(name string, answer any) micro.HandlerFunc {
		return func(req micro.Request) {
			f.got <- name + " " + string(req.Data())
			var body struct{}
			if err := events.DecodeStrict(req.Data(), &body); err != nil {
				_ = req.Error("400", err.Error(), nil)
				return
			}
			reply(req, answer)
		}
	}
	endpoints := []struct {
		name, subject string
		h             micro.HandlerFunc
	}{
		{"status", events.SubjectStatusGet, empty("status", events.SystemStatus{
			IsOperational: true, Mode: events.ModeCacheOnly, Epoch: 7, CacheOnlyMode: true,
			CacheOnlyReason: "planned maintenance", Nodes: []events.NodeStatus{{ID: "node-1"}},
		})},
		{"force", events.SubjectRecoveryForce, empty("force", events.ForceRecoveryReply{
			Attempted: true, HealthStatus: events.HealthHealthy, Mode: events.ModeRecovering, Epoch: 8,
		})},
		{"exit", events.SubjectCacheOnlyExit, empty("exit", events.ModeReply{Mode: events.ModeRecovering, Epoch: 9})},
		{"enter", events.SubjectCacheOnlyEnter, func(req micro.Request) {
			f.got <- "enter " + string(req.Data())
			var body events.CacheOnlyEnterRequest
			if err := events.DecodeStrict(req.Data(), &body); err != nil {
				_ = req.Error("400", err.Error(), nil)
				return
			}
			if body.Reason == "busy" {
				b, _ := json.Marshal(events.ErrorReply{Error: "mode store unavailable", Code: 503})
				_ = req.Error("503", "mode store unavailable", b)
				return
			}
			reply(req, events.ModeReply{Mode: events.ModeCacheOnly, Epoch: 7})
		}},
	}
	for _, ep := range endpoints {
		if err := svc.AddEndpoint(ep.name, ep.h, micro.WithEndpointSubject(subj.Of(ep.subject))); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fakeManager) expect(t *testing.T, want string) {
	t.Helper()
	select {
	case got := <-f.got:
		if got != want {
			t.Errorf("manager received %q, want %q", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("manager received nothing, want %q", want)
	}
}

func TestOperatorCalls(t *testing.T) {
	t.Parallel()
	sys := startSystem(t, "")
	subj := events.NewSubjects("ops")
	mgr := startFakeManager(t, sys.nc, subj)
	c := newClient(t, sys.srv.URL(), anivault.Options{Prefix: "ops"})
	ctx := testCtx(t, 30*time.Second)

	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mgr.expect(t, "status {}")
	if !st.IsOperational || st.Mode != events.ModeCacheOnly || st.Epoch != 7 || st.CacheOnlyReason != "planned maintenance" ||
		len(st.Nodes) != 1 || st.Nodes[0].ID != "node-1" {
		t.Errorf("Status = %+v", st)
	}

	mr, err := c.EnterCacheOnly(ctx, `planned maintenance <db & "index">`)
	if err != nil {
		t.Fatal(err)
	}
	mgr.expect(t, `enter {"reason":"planned maintenance <db & \"index\">"}`)
	if mr.Mode != events.ModeCacheOnly || mr.Epoch != 7 {
		t.Errorf("EnterCacheOnly = %+v", mr)
	}

	fr, err := c.ForceRecovery(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mgr.expect(t, "force {}")
	if !fr.Attempted || fr.HealthStatus != events.HealthHealthy || fr.Mode != events.ModeRecovering || fr.Epoch != 8 {
		t.Errorf("ForceRecovery = %+v", fr)
	}

	mr, err = c.ExitCacheOnly(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mgr.expect(t, "exit {}")
	if mr.Mode != events.ModeRecovering || mr.Epoch != 9 {
		t.Errorf("ExitCacheOnly = %+v", mr)
	}

	_, err = c.EnterCacheOnly(ctx, "busy")
	mgr.expect(t, `enter {"reason":"busy"}`)
	if se, ok := errors.AsType[*anivault.ServiceError](err); !ok || !errors.Is(err, anivault.ErrUnavailable) ||
		se.Code != 503 || se.Message != "mode store unavailable" || se.Subject != events.SubjectCacheOnlyEnter {
		t.Errorf("EnterCacheOnly(busy) = %v, want a 503 ServiceError matching ErrUnavailable", err)
	}

	// Without a manager: unavailable, not a hang.
	lonely := newClient(t, sys.srv.URL(), anivault.Options{Prefix: "nobody"})
	if _, err := lonely.Status(ctx); !errors.Is(err, anivault.ErrUnavailable) {
		t.Errorf("Status without a manager = %v, want ErrUnavailable", err)
	}
}
