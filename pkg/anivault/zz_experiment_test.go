package anivault_test

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/faultproxy"
)

func rawWatch(t *testing.T, sys *system, url string, cut func(), heal func()) {
	nc := dial(t, url)
	js, _ := jetstream.New(nc)
	kv, err := js.KeyValue(t.Context(), events.BucketName)
	if err != nil {
		t.Fatal(err)
	}
	w, err := kv.Watch(t.Context(), events.KeyMode, jetstream.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	sys.putMode(t, events.ModeCacheOnly, 1, "")
	select {
	case e := <-w.Updates():
		t.Logf("before: got rev %d", e.Revision())
	case <-time.After(2 * time.Second):
		t.Fatal("no update before")
	}
	cut()
	sys.putMode(t, events.ModeRecovering, 2, "")
	heal()
	time.Sleep(500 * time.Millisecond)
	sys.putMode(t, events.ModeNormal, 3, "")
	deadline := time.After(15 * time.Second)
	start := time.Now()
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				t.Logf("watcher channel closed after %s", time.Since(start))
				return
			}
			t.Logf("after %s: got rev %d", time.Since(start).Round(time.Millisecond), e.Revision())
			if e.Revision() >= 3 {
				return
			}
		case <-deadline:
			t.Logf("raw watcher delivered nothing in 15s after the cut")
			return
		}
	}
}

func TestExperimentRawWatcherRestart(t *testing.T) {
	sys := startSystem(t, "")
	rawWatch(t, sys, sys.srv.URL(), func() {
		if err := sys.srv.Restart(t.Context()); err != nil {
			t.Fatal(err)
		}
	}, func() {})
}

func TestExperimentRawWatcherDisconnect(t *testing.T) {
	sys := startSystem(t, "")
	proxy, err := faultproxy.Start(strings.TrimPrefix(sys.srv.URL(), "nats://"))
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	rawWatch(t, sys, "nats://"+proxy.Addr(), proxy.Disable, func() { _ = proxy.Enable() })
}
