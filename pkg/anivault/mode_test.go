package anivault_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/anivault"
	"github.com/anivault/anivault/pkg/faultproxy"
)

// modeReader checks what a WatchMode channel delivers.
type modeReader struct {
	t     *testing.T
	ch    <-chan events.ModeChanged
	epoch int64
}

// next returns the next mode, failing the test after timeout, when the
// channel closes, or when the epoch is not newer than the last one.
func (r *modeReader) next(timeout time.Duration) events.ModeChanged {
	r.t.Helper()
	select {
	case m, ok := <-r.ch:
		if !ok {
			r.t.Fatal("mode channel closed")
		}
		if m.Epoch <= r.epoch && !(m.Epoch == 0 && r.epoch == 0) {
			r.t.Fatalf("delivered epoch %d after epoch %d", m.Epoch, r.epoch)
		}
		r.epoch = m.Epoch
		return m
	case <-time.After(timeout):
		r.t.Fatalf("no mode delivered within %s (last epoch %d)", timeout, r.epoch)
		return events.ModeChanged{}
	}
}

// expect reads the next mode and checks it.
func (r *modeReader) expect(timeout time.Duration, mode events.Mode, epoch int64) time.Duration {
	r.t.Helper()
	start := time.Now()
	m := r.next(timeout)
	if m.Mode != mode || m.Epoch != epoch {
		r.t.Fatalf("delivered %s/%d, want %s/%d", m.Mode, m.Epoch, mode, epoch)
	}
	return time.Since(start)
}

// none asserts that nothing is delivered for d.
func (r *modeReader) none(d time.Duration) {
	r.t.Helper()
	select {
	case m, ok := <-r.ch:
		r.t.Fatalf("delivered %s/%d (open %v), want nothing (last epoch %d)", m.Mode, m.Epoch, ok, r.epoch)
	case <-time.After(d):
	}
}

// WatchMode delivers cache_only → recovering → normal in order across a NATS
// server restart between recovering and normal, and never an older epoch.
func TestWatchModeAcrossServerRestart(t *testing.T) {
	t.Parallel()
	sys := startSystem(t, "")
	const poll = 250 * time.Millisecond
	c, err := anivault.Connect(sys.srv.URL(), anivault.Options{WatchPollInterval: poll},
		nats.ReconnectWait(25*time.Millisecond), nats.ReconnectJitter(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithCancel(testCtx(t, 60*time.Second))
	defer cancel()

	modes, err := c.WatchMode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := &modeReader{t: t, ch: modes}
	r.expect(time.Second, events.ModeNormal, 0) // no mode recorded yet

	sys.putMode(t, events.ModeCacheOnly, 1, "database unreachable")
	m := r.next(5 * time.Second)
	if m.Mode != events.ModeCacheOnly || m.Epoch != 1 || m.Reason != "database unreachable" {
		t.Fatalf("delivered %+v, want cache_only/1 with its reason", m)
	}
	sys.putMode(t, events.ModeRecovering, 2, "")
	r.expect(5*time.Second, events.ModeRecovering, 2)

	if err := sys.srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	sys.putMode(t, events.ModeNormal, 3, "")
	written := time.Since(restarted)
	r.expect(10*time.Second, events.ModeNormal, 3)
	t.Logf("normal/3 written %s and delivered %s after the restart",
		written.Round(time.Millisecond), time.Since(restarted).Round(time.Millisecond))

	// An older epoch written after a newer one is never delivered, neither
	// by the watcher nor by the periodic re-read.
	sys.putMode(t, events.ModeRecovering, 2, "stale")
	r.none(4 * poll)
	sys.putMode(t, events.ModeCacheOnly, 4, "again")
	r.expect(5*time.Second, events.ModeCacheOnly, 4)

	if got, err := c.Mode(ctx); err != nil || got.Mode != events.ModeCacheOnly || got.Epoch != 4 {
		t.Errorf("Mode = %+v, %v; want cache_only/4", got, err)
	}

	cancel()
	select {
	case m, ok := <-modes:
		if ok {
			t.Fatalf("delivered %+v after the context ended", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("channel not closed after the context ended")
	}
}

// Changes made while the client is cut off from a running server (its KV
// watcher's connection lost) are delivered once it reconnects: the latest
// one, coalesced, and then later changes as they happen.
func TestWatchModeAcrossDisconnect(t *testing.T) {
	t.Parallel()
	sys := startSystem(t, "")
	proxy, err := faultproxy.Start(strings.TrimPrefix(sys.srv.URL(), "nats://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Close)
	c, err := anivault.Connect("nats://"+proxy.Addr(), anivault.Options{},
		nats.ReconnectWait(25*time.Millisecond), nats.ReconnectJitter(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx := testCtx(t, 60*time.Second)

	sys.putMode(t, events.ModeNormal, 1, "")
	modes, err := c.WatchMode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := &modeReader{t: t, ch: modes}
	r.expect(time.Second, events.ModeNormal, 1)

	proxy.Disable()
	sys.putMode(t, events.ModeCacheOnly, 2, "database unreachable")
	sys.putMode(t, events.ModeRecovering, 3, "")
	time.Sleep(300 * time.Millisecond)
	if err := proxy.Enable(); err != nil {
		t.Fatal(err)
	}
	took := r.expect(5*time.Second, events.ModeRecovering, 3)
	t.Logf("recovering/3 delivered %s after the connection came back", took.Round(time.Millisecond))
	r.none(1500 * time.Millisecond) // epoch 2 was superseded while away: not delivered late

	sys.putMode(t, events.ModeNormal, 4, "")
	r.expect(5*time.Second, events.ModeNormal, 4)
}

func TestModeReadsKV(t *testing.T) {
	t.Parallel()
	sys := startSystem(t, "acme")
	ctx := testCtx(t, 30*time.Second)

	c := newClient(t, sys.srv.URL(), anivault.Options{Prefix: "acme"})
	m, err := c.Mode(ctx)
	if err != nil || m.Mode != events.ModeNormal || m.Epoch != 0 {
		t.Fatalf("Mode before any write = %+v, %v; want normal/0", m, err)
	}
	sys.putMode(t, events.ModeCacheOnly, 7, "planned maintenance")
	m, err = c.Mode(ctx)
	if err != nil || m.Mode != events.ModeCacheOnly || m.Epoch != 7 || m.Reason != "planned maintenance" {
		t.Fatalf("Mode = %+v, %v; want cache_only/7", m, err)
	}

	// Another prefix has no bucket: the mode cannot be known.
	other := newClient(t, sys.srv.URL(), anivault.Options{Prefix: "other", RequestTimeout: time.Second})
	if _, err := other.Mode(ctx); !errors.Is(err, anivault.ErrUnavailable) {
		t.Errorf("Mode without a bucket: %v, want ErrUnavailable", err)
	}
	if _, err := other.WatchMode(ctx); !errors.Is(err, anivault.ErrUnavailable) {
		t.Errorf("WatchMode without a bucket: %v, want ErrUnavailable", err)
	}
}
