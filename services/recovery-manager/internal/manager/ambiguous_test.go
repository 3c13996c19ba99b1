package manager

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/faultproxy"
	"github.com/anivault/anivault/pkg/natsconn"
	"github.com/anivault/anivault/pkg/svckit"
	"github.com/anivault/anivault/pkg/testutil/natstest"
)

// replyLossKV cuts the replies of the manager's NATS connection (through a
// real proxy) just before a mode update, so the server stores the update and
// the manager never hears it did: the ambiguous outcome a leader election
// gives (chaos seed 245). The proxy is healed once the update gave up.
type replyLossKV struct {
	jetstream.KeyValue
	proxy *faultproxy.Proxy
	done  chan error
}

func (k *replyLossKV) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	if err := k.proxy.DropReplies(); err != nil {
		return 0, err
	}
	r, err := k.KeyValue.Update(ctx, key, value, rev)
	if herr := k.proxy.Heal(); herr != nil {
		return r, errors.Join(err, herr)
	}
	k.done <- err
	return r, err
}

// A mode write whose reply is lost but which the server applied is still
// announced: the manager reads the key back and finds its own value. Before
// the fix the transition failed with "context deadline exceeded", the mode
// was in force in KV (nodes acted on it) and no mode event ever told of it.
func TestModeWriteWithLostReplyIsAnnounced(t *testing.T) {
	srv := natstest.Start(t)
	proxy, err := faultproxy.Start(srv.URL()[len("nats://"):])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Close)
	m := startReadyManager(t, "nats://"+proxy.Addr())
	waitCtx, waitCancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer waitCancel()
	waitUntilReady(t, waitCtx, m)

	enterCacheOnlyLosingTheReply(t, waitCtx, m, proxy)

	_, js := natstest.Connect(t, srv.URL())
	inKV := modeInKV(t, waitCtx, js)
	if inKV.Mode != events.ModeCacheOnly || inKV.Source != m.cfg.NodeID {
		t.Fatalf("KV holds %+v, want the manager's cache_only: the update was not applied", inKV)
	}
	waitForCacheOnlyAnnouncement(t, waitCtx, js, inKV.Epoch)
}

// startReadyManager runs a manager on natsURL (with an unreachable
// database) until the test ends, and fails the test if it stops with an
// error.
func startReadyManager(t *testing.T, natsURL string) *Manager {
	t.Helper()
	cfg := Config{
		Shared: svckit.Shared{NATS: natsconn.Config{URL: natsURL}, NodeID: "manager-under-test",
			DatabaseURL: "postgres://postgres@127.0.0.1:1/none?sslmode=disable"},
		AutoRecovery:          false,
		RecoveryCheckInterval: time.Hour,
		CheckTimeout:          time.Second,
		NodeTimeout:           5 * time.Second,
		EvalInterval:          100 * time.Millisecond,
	}
	cfg.Buffer.MaxMsgs, cfg.Buffer.MaxBytes, cfg.Buffer.Replicas = 1000, 1<<20, 1
	m, err := New(cfg, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-stopped; err != nil {
			t.Errorf("manager stopped with %v", err)
		}
	})
	return m
}

// waitUntilReady polls the manager's readiness until ctx is done.
func waitUntilReady(t *testing.T, ctx context.Context, m *Manager) {
	t.Helper()
	for !m.ready.Load() {
		select {
		case <-ctx.Done():
			t.Fatal("the manager did not become ready")
		case <-time.After(20 * time.Millisecond): // poll under the deadline
		}
	}
}

// enterCacheOnlyLosingTheReply makes the manager enter cache_only while
// the proxy loses the reply to its KV update, and checks the fault
// happened.
func enterCacheOnlyLosingTheReply(t *testing.T, ctx context.Context, m *Manager, proxy *faultproxy.Proxy) {
	t.Helper()
	lossy := &replyLossKV{proxy: proxy, done: make(chan error, 1)}
	if _, err := m.submit(ctx, func(context.Context) (any, error) {
		lossy.KeyValue = m.kv
		m.kv = lossy
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	next, terr := m.submit(ctx, func(ctx context.Context) (any, error) {
		return m.transition(ctx, func(c events.ModeChanged) (events.ModeChanged, bool) {
			return OnUnhealthy(c, "test: lost reply", time.Now())
		})
	})
	if uerr := <-lossy.done; !errors.Is(uerr, context.DeadlineExceeded) {
		t.Fatalf("the mode update got %v, want no reply (context deadline exceeded): the fault did not happen", uerr)
	}
	t.Logf("transition returned %v, %v", next, terr)
}

// modeInKV reads the mode key of the bucket.
func modeInKV(t *testing.T, ctx context.Context, js jetstream.JetStream) events.ModeChanged {
	t.Helper()
	kv, err := js.KeyValue(ctx, events.BucketName)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, events.KeyMode)
	if err != nil {
		t.Fatal(err)
	}
	var inKV events.ModeChanged
	if err := json.Unmarshal(e.Value(), &inKV); err != nil {
		t.Fatal(err)
	}
	return inKV
}

// waitForCacheOnlyAnnouncement polls the events stream until the last
// cache_only event carries epoch, and fails the test when ctx is done
// first.
func waitForCacheOnlyAnnouncement(t *testing.T, ctx context.Context, js jetstream.JetStream, epoch int64) {
	t.Helper()
	stream, err := js.Stream(ctx, events.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	for {
		msg, err := stream.GetLastMsgForSubject(ctx, events.ModeCacheOnly.Subject())
		if err == nil {
			var ann events.ModeChanged
			if err := json.Unmarshal(msg.Data, &ann); err != nil {
				t.Fatal(err)
			}
			if ann.Epoch == epoch {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("epoch %d (cache_only) is in KV but was never announced on %s: %v", epoch, events.ModeCacheOnly.Subject(), err)
		case <-time.After(50 * time.Millisecond): // poll under the deadline
		}
	}
}
