package modefollow_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/modefollow"
	"github.com/anivault/anivault/pkg/natsembed"
	"github.com/anivault/anivault/pkg/testutil/natstest"
)

const poll = 200 * time.Millisecond

// env is an in-process NATS server with a mode bucket under prefix "t".
type env struct {
	srv    *natsembed.Server
	js     jetstream.JetStream
	kv     jetstream.KeyValue
	bucket *modefollow.Bucket
}

func start(t *testing.T) *env {
	t.Helper()
	srv := natstest.Start(t)
	_, js := natstest.Connect(t, srv.URL(), nats.MaxReconnects(-1),
		nats.ReconnectWait(25*time.Millisecond), nats.ReconnectJitter(0, 0))
	subj := events.NewSubjects("t")
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: subj.Name(events.BucketName), Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	b := modefollow.NewBucket(js, subj)
	if b.Name() != kv.Bucket() {
		t.Fatalf("bucket name %q, want %q", b.Name(), kv.Bucket())
	}
	return &env{srv: srv, js: js, kv: kv, bucket: b}
}

// retry calls op until it succeeds, failing the test after 15 s: the test's
// connection may still be reconnecting after a server restart.
func retry(t *testing.T, what string, op func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		octx, ocancel := context.WithTimeout(ctx, time.Second)
		err := op(octx)
		ocancel()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %v", what, err)
		case <-tick.C:
		}
	}
}

func (e *env) putRaw(t *testing.T, value []byte) {
	t.Helper()
	retry(t, "put mode", func(ctx context.Context) error {
		_, err := e.kv.Put(ctx, events.KeyMode, value)
		return err
	})
}

func (e *env) put(t *testing.T, mode events.Mode, epoch int64) {
	t.Helper()
	b, err := json.Marshal(events.ModeChanged{Mode: mode, Epoch: epoch, Reason: "test"})
	if err != nil {
		t.Fatal(err)
	}
	e.putRaw(t, b)
}

// follow runs a Follower until the test ends and returns its deliveries and
// a channel closed when Run returns.
func (e *env) follow(ctx context.Context, t *testing.T, f *modefollow.Follower) (<-chan events.ModeChanged, <-chan struct{}) {
	t.Helper()
	got := make(chan events.ModeChanged, 16)
	done := make(chan struct{})
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		defer close(done)
		f.Run(ctx, func(ctx context.Context, m events.ModeChanged) bool {
			select {
			case got <- m:
				return true
			case <-ctx.Done():
				return false
			}
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return got, done
}

func (e *env) follower() *modefollow.Follower {
	return modefollow.New(e.bucket, modefollow.Options{PollInterval: poll, RequestTimeout: time.Second})
}

func expect(t *testing.T, got <-chan events.ModeChanged, mode events.Mode, epoch int64) {
	t.Helper()
	select {
	case m := <-got:
		if m.Mode != mode || m.Epoch != epoch {
			t.Fatalf("delivered %s/%d, want %s/%d", m.Mode, m.Epoch, mode, epoch)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s/%d not delivered", mode, epoch)
	}
}

func none(t *testing.T, got <-chan events.ModeChanged, d time.Duration) {
	t.Helper()
	select {
	case m := <-got:
		t.Fatalf("delivered %s/%d, want nothing", m.Mode, m.Epoch)
	case <-time.After(d):
	}
}

// The follower delivers the initial mode of an empty bucket, then every newer
// epoch; older epochs and invalid values are skipped, by the watcher and by
// the re-reads alike.
func TestFollowerDeliversNewerEpochs(t *testing.T) {
	t.Parallel()
	e := start(t)
	got, _ := e.follow(t.Context(), t, e.follower())
	expect(t, got, events.ModeNormal, 0)

	e.put(t, events.ModeCacheOnly, 1)
	expect(t, got, events.ModeCacheOnly, 1)
	e.put(t, events.ModeRecovering, 2)
	expect(t, got, events.ModeRecovering, 2)

	e.put(t, events.ModeCacheOnly, 1)
	e.putRaw(t, []byte(`{"mode":"offline","epoch":9}`))
	e.putRaw(t, []byte(`not json`))
	none(t, got, 4*poll)
	e.put(t, events.ModeNormal, 3)
	expect(t, got, events.ModeNormal, 3)
}

// A deleted or purged key keeps the last mode; a newer mode written after it
// is delivered. Read of a deleted key is the initial mode.
func TestFollowerKeepsModeOfDeletedKey(t *testing.T) {
	t.Parallel()
	e := start(t)
	e.put(t, events.ModeCacheOnly, 5)
	got, _ := e.follow(t.Context(), t, e.follower())
	expect(t, got, events.ModeCacheOnly, 5)

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := e.kv.Delete(ctx, events.KeyMode); err != nil {
		t.Fatal(err)
	}
	none(t, got, 4*poll)
	if m, rev, err := e.bucket.Read(ctx); err != nil || m != modefollow.Initial() || rev != 0 {
		t.Fatalf("Read of a deleted key = %+v, %d, %v; want the initial mode at revision 0", m, rev, err)
	}
	e.put(t, events.ModeNormal, 6)
	expect(t, got, events.ModeNormal, 6)

	if err := e.kv.Purge(ctx, events.KeyMode); err != nil {
		t.Fatal(err)
	}
	none(t, got, 4*poll)
	e.put(t, events.ModeRecovering, 7)
	expect(t, got, events.ModeRecovering, 7)
}

// After a NATS server restart the follower still delivers updates.
func TestFollowerAcrossServerRestart(t *testing.T) {
	t.Parallel()
	e := start(t)
	e.put(t, events.ModeCacheOnly, 1)
	got, _ := e.follow(t.Context(), t, e.follower())
	expect(t, got, events.ModeCacheOnly, 1)

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := e.srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	e.put(t, events.ModeRecovering, 2)
	expect(t, got, events.ModeRecovering, 2)
	e.put(t, events.ModeNormal, 3)
	expect(t, got, events.ModeNormal, 3)
}

// After skips the mode its caller already has; Run ends when its context
// ends and when deliver returns false.
func TestFollowerAfterAndStop(t *testing.T) {
	t.Parallel()
	e := start(t)
	e.put(t, events.ModeCacheOnly, 4)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	m, rev, err := e.bucket.Read(ctx)
	if err != nil || m.Mode != events.ModeCacheOnly || m.Epoch != 4 || rev == 0 {
		t.Fatalf("Read = %+v, %d, %v; want cache_only/4", m, rev, err)
	}

	runCtx, stop := context.WithCancel(t.Context())
	got, done := e.follow(runCtx, t, e.follower().After(m, rev))
	none(t, got, 4*poll)
	e.put(t, events.ModeRecovering, 5)
	expect(t, got, events.ModeRecovering, 5)
	stop()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}

	// deliver returning false ends Run.
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		e.follower().Run(t.Context(), func(context.Context, events.ModeChanged) bool { return false })
	}()
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after deliver returned false")
	}
}

// Read rejects an invalid value with its revision, and a missing bucket.
func TestReadErrors(t *testing.T) {
	t.Parallel()
	e := start(t)
	e.putRaw(t, []byte(`{"mode":"offline","epoch":1}`))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, rev, err := modefollow.Read(ctx, e.kv); !errors.Is(err, events.ErrInvalid) || rev == 0 {
		t.Fatalf("Read of an invalid value: revision %d, %v; want ErrInvalid with its revision", rev, err)
	}
	other := modefollow.NewBucket(e.js, events.NewSubjects("other"))
	if _, _, err := other.Read(ctx); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("Read without a bucket: %v, want ErrBucketNotFound", err)
	}
}
