package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/procs"
)

// A PUT on node 1 reaches node 2's cache through metadata.changed: node 2
// serves the new version from its cache, not from a lucky cache miss.
func TestTwoNodesShareWritesThroughMetadataChanged(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{Prefix: "t1"})
	n1 := s.StartNode("n1", nil)
	n2 := s.StartNode("n2", nil)

	v1 := putAndWaitCachedOnOther(t, n1, n2)
	updateAndWaitServedFromOthersCache(t, n1, n2, v1)
	// A delete on node 2 is a 404 on node 1.
	deleteAndWaitGoneOnOther(t, n2, n1)
	checkUnknownIDAndMetadataGet(t, s, n1)
}

// putAndWaitCachedOnOther writes v1 of tmdb:1429 through n1 and waits
// until n2 serves it from its cache; it returns v1's version.
func putAndWaitCachedOnOther(t *testing.T, n1, n2 *Node) int64 {
	t.Helper()
	r, err := n1.Put(anime(1429, "Attack on Titan"))
	if err != nil || r.Code != 200 {
		t.Fatalf("put v1: %v %d %s", err, r.Code, r.Body)
	}
	var w1 WriteResult
	r.JSON(t, &w1)
	if w1.Status != "committed" || w1.Version <= 0 {
		t.Fatalf("put v1: %+v", w1)
	}
	// Node 2 learns v1 (from the change event or the database) and caches it.
	if err := procs.Eventually(10*time.Second, 20*time.Millisecond, func() error {
		r, err := n2.Get(1429)
		if err != nil || r.Code != 200 {
			return fmt.Errorf("get: %v %d", err, r.Code)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	r, _ = n2.Get(1429)
	if r.Header.Get("X-AniVault-Source") != "cache" {
		t.Fatalf("second read of node 2 not from cache: %q", r.Header.Get("X-AniVault-Source"))
	}
	return w1.Version
}

// updateAndWaitServedFromOthersCache writes v2 of tmdb:1429 through n1 and
// waits until n2 serves v2 from its cache in normal mode.
func updateAndWaitServedFromOthersCache(t *testing.T, n1, n2 *Node, v1 int64) {
	t.Helper()
	r, err := n1.Put(anime(1429, "Shingeki no Kyojin"))
	if err != nil || r.Code != 200 {
		t.Fatalf("put v2: %v %d", err, r.Code)
	}
	var w2 WriteResult
	r.JSON(t, &w2)
	if w2.Version <= v1 {
		t.Fatalf("version did not grow: %d then %d", v1, w2.Version)
	}
	err = procs.Eventually(10*time.Second, 10*time.Millisecond, func() error {
		r, err := n2.Get(1429)
		if err != nil {
			return err
		}
		var rec events.Record
		if err := json.Unmarshal(r.Body, &rec); err != nil {
			return err
		}
		if rec.Version != w2.Version || rec.Title != "Shingeki no Kyojin" {
			return fmt.Errorf("node 2 serves v%d %q", rec.Version, rec.Title)
		}
		if src := r.Header.Get("X-AniVault-Source"); src != "cache" {
			return fmt.Errorf("served from %s", src)
		}
		if mode := r.Header.Get("X-AniVault-Mode"); mode != "normal" {
			return fmt.Errorf("mode header %q", mode)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// deleteAndWaitGoneOnOther deletes tmdb:1429 through n2 and waits until n1
// answers 404.
func deleteAndWaitGoneOnOther(t *testing.T, n2, n1 *Node) {
	t.Helper()
	if r, _ := n2.Delete(1429); r.Code != 200 {
		t.Fatalf("delete: %d %s", r.Code, r.Body)
	}
	if err := procs.Eventually(10*time.Second, 10*time.Millisecond, func() error {
		r, _ := n1.Get(1429)
		if r.Code != 404 {
			return fmt.Errorf("node 1 answers %d", r.Code)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// checkUnknownIDAndMetadataGet checks 404 for an unknown id, over HTTP and
// NATS, and a metadata.get round trip.
func checkUnknownIDAndMetadataGet(t *testing.T, s *System, n1 *Node) {
	t.Helper()
	if r, _ := n1.Get(99999999); r.Code != 404 {
		t.Fatalf("unknown id: %d", r.Code)
	}
	if r, _ := n1.Put(anime(20, "Naruto")); r.Code != 200 {
		t.Fatalf("put: %d", r.Code)
	}
	var rec events.Record
	if err := s.Request(events.SubjectMetadataGet, events.GetRequest{TMDBID: 20}, &rec); err != nil || rec.Title != "Naruto" || rec.Version == 0 || rec.UpdatedAt == nil {
		t.Fatalf("metadata.get: %+v %v", rec, err)
	}
	if err := s.Request(events.SubjectMetadataGet, events.GetRequest{TMDBID: 424242}, nil); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("metadata.get unknown: %v", err)
	}
}

func publishJS(t *testing.T, s *System, subject string, v any) {
	t.Helper()
	b, _ := json.Marshal(v)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.JS.Publish(ctx, s.subject(subject), b); err != nil {
		t.Fatalf("publish %s: %v", subject, err)
	}
}

// A producer's write published while no cache-node runs is applied when one starts.
func TestProducerWriteWaitsForANode(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{})
	n := s.StartNode("n1", nil) // provisions the streams
	if err := n.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	publishJS(t, s, events.SubjectMetadataUpsert, anime(31910, "Naruto Shippuden"))
	n2 := s.StartNode("n2", nil)
	if err := procs.Eventually(15*time.Second, 50*time.Millisecond, func() error {
		v, err := s.Versions()
		if err != nil {
			return err
		}
		if got, ok := v[31910]; !ok || got.Deleted {
			return fmt.Errorf("not applied yet: %+v", got)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	r, _ := n2.Get(31910)
	if r.Code != 200 || !strings.Contains(string(r.Body), "Naruto Shippuden") {
		t.Fatalf("get: %d %s", r.Code, r.Body)
	}
}

// Writes published in quick succession keep their per-key publish order,
// whichever of two nodes applies them.
func TestProducerOrderPerKey(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{})
	s.StartNode("n1", nil)
	s.StartNode("n2", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var futures []jetstream.PubAckFuture
	pub := func(subject string, v any) {
		b, _ := json.Marshal(v)
		f, err := s.JS.PublishAsync(s.subject(subject), b)
		if err != nil {
			t.Fatal(err)
		}
		futures = append(futures, f)
	}
	for i := range 500 {
		id := int64(100_000 + i)
		pub(events.SubjectMetadataUpsert, anime(id, "first"))
		pub(events.SubjectMetadataUpsert, anime(id, "second"))
		pub(events.SubjectMetadataDelete, events.DeleteRequest{TMDBID: id})
	}
	for i := range 500 {
		id := int64(200_000 + i)
		pub(events.SubjectMetadataDelete, events.DeleteRequest{TMDBID: id})
		pub(events.SubjectMetadataUpsert, anime(id, "alive"))
	}
	select {
	case <-s.JS.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("publishes not acknowledged")
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatalf("publish: %v", err)
		}
	}
	err := procs.Eventually(60*time.Second, 100*time.Millisecond, func() error {
		v, err := s.Versions()
		if err != nil {
			return err
		}
		for i := range 500 {
			if got, ok := v[int64(100_000+i)]; !ok || !got.Deleted {
				return fmt.Errorf("key %d: %+v present=%v, want deleted", 100_000+i, got, ok)
			}
			if got, ok := v[int64(200_000+i)]; !ok || got.Deleted {
				return fmt.Errorf("key %d: %+v present=%v, want live", 200_000+i, got, ok)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Producers' writes and the manager's event consumers keep working after the
// NATS server restarts (same port, same store).
func TestConsumersSurviveNATSRestart(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{PrivatePG: true, AutoRecovery: true})
	n := s.StartNode("n1", nil)
	s.StartMonitor(nil)
	s.StartManager(nil)
	publishJS(t, s, events.SubjectMetadataUpsert, anime(1, "before restart"))
	waitRow := func(id int64) {
		t.Helper()
		if err := procs.Eventually(30*time.Second, 50*time.Millisecond, func() error {
			v, err := s.Versions()
			if err != nil {
				return err
			}
			if _, ok := v[id]; !ok {
				return fmt.Errorf("tmdb:%d not applied", id)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	waitRow(1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.NATS.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := procs.Eventually(30*time.Second, 100*time.Millisecond, func() error {
		b, _ := json.Marshal(anime(2, "after restart"))
		_, err := s.JS.Publish(ctx, s.subject(events.SubjectMetadataUpsert), b)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	waitRow(2)
	// The manager's durable consumers still see db.unhealthy: an outage after the restart is handled.
	co := startOutage(t, s)
	if co.Mode != events.ModeCacheOnly {
		t.Fatalf("mode %s", co.Mode)
	}
	if r, _ := n.Put(anime(3, "buffered")); r.Code != 202 {
		t.Fatalf("put in cache-only: %d %s", r.Code, r.Body)
	}
	endOutage(t, s)
	waitRow(3)
}
