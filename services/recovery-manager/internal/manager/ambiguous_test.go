package manager

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/faultproxy"
	"github.com/anivault/anivault/pkg/natsconn"
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

	cfg := Config{
		NATS:                  natsconn.Config{URL: "nats://" + proxy.Addr()},
		DatabaseURL:           "postgres://postgres@127.0.0.1:1/none?sslmode=disable",
		AutoRecovery:          false,
		RecoveryCheckInterval: time.Hour,
		CheckTimeout:          time.Second,
		NodeTimeout:           5 * time.Second,
		EvalInterval:          100 * time.Millisecond,
		NodeID:                "manager-under-test",
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
	waitCtx, waitCancel := context.WithTimeout(ctx, 30*time.Second)
	defer waitCancel()
	for !m.ready.Load() {
		select {
		case <-waitCtx.Done():
			t.Fatal("the manager did not become ready")
		case <-time.After(20 * time.Millisecond): // poll under the deadline
		}
	}

	lossy := &replyLossKV{proxy: proxy, done: make(chan error, 1)}
	if _, err := m.submit(waitCtx, func(context.Context) (any, error) {
		lossy.KeyValue = m.kv
		m.kv = lossy
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	next, terr := m.submit(waitCtx, func(ctx context.Context) (any, error) {
		return m.transition(ctx, func(c events.ModeChanged) (events.ModeChanged, bool) {
			return OnUnhealthy(c, "test: lost reply", time.Now())
		})
	})
	if uerr := <-lossy.done; !errors.Is(uerr, context.DeadlineExceeded) {
		t.Fatalf("the mode update got %v, want no reply (context deadline exceeded): the fault did not happen", uerr)
	}
	t.Logf("transition returned %v, %v", next, terr)

	nc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(waitCtx, events.BucketName)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(waitCtx, events.KeyMode)
	if err != nil {
		t.Fatal(err)
	}
	var inKV events.ModeChanged
	if err := json.Unmarshal(e.Value(), &inKV); err != nil {
		t.Fatal(err)
	}
	if inKV.Mode != events.ModeCacheOnly || inKV.Source != cfg.NodeID {
		t.Fatalf("KV holds %+v, want the manager's cache_only: the update was not applied", inKV)
	}
	stream, err := js.Stream(waitCtx, events.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	for {
		msg, err := stream.GetLastMsgForSubject(waitCtx, events.ModeCacheOnly.Subject())
		if err == nil {
			var ann events.ModeChanged
			if err := json.Unmarshal(msg.Data, &ann); err != nil {
				t.Fatal(err)
			}
			if ann.Epoch == inKV.Epoch {
				return
			}
		}
		select {
		case <-waitCtx.Done():
			t.Fatalf("epoch %d (cache_only) is in KV but was never announced on %s: %v", inKV.Epoch, events.ModeCacheOnly.Subject(), err)
		case <-time.After(50 * time.Millisecond): // poll under the deadline
		}
	}
}
