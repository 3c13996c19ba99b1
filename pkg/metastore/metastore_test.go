package metastore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/metastore"
	"github.com/anivault/anivault/pkg/pgdb"
	"github.com/anivault/anivault/pkg/testutil/pgtest"
)

func newStore(t testing.TB) *metastore.Store {
	t.Helper()
	return newStoreConns(t, 0)
}

// newStoreConns is newStore with a pool of at most conns connections (0:
// pgdb's default).
func newStoreConns(t testing.TB, conns int) *metastore.Store {
	t.Helper()
	db, err := pgdb.Open(pgdb.Config{DSN: pgtest.NewDatabase(t), ReadTimeout: time.Minute, WriteTimeout: time.Minute, MaxOpenConns: conns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Several processes migrate at once: all must succeed.
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() { errs <- metastore.Migrate(ctx, db) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent migrate: %v", err)
		}
	}
	s, err := metastore.New(db)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func rec(id int64, title string) *events.Record {
	d := "2013-04-07"
	va := 8.7
	return &events.Record{
		TMDBID: id, Title: title, FirstAirDate: &d, VoteAverage: &va,
		Genres:  []string{"Animation", "Action & Adventure"},
		RawData: json.RawMessage(`{"id": 1429, "nested": {"k": [1, 2, 3]}}`),
	}
}

func TestUpsertOlderVersionIgnored(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	now := time.Now()
	if ok, err := s.Upsert(ctx, rec(1, "new"), 20, now); err != nil || !ok {
		t.Fatalf("first upsert: %v %v", ok, err)
	}
	if ok, err := s.Upsert(ctx, rec(1, "old"), 10, now); err != nil || ok {
		t.Fatalf("older upsert applied: %v %v", ok, err)
	}
	got, deleted, err := s.Get(ctx, 1)
	if err != nil || deleted {
		t.Fatalf("get: %v deleted=%v", err, deleted)
	}
	if got.Title != "new" || got.Version != 20 {
		t.Fatalf("got %q v%d, want new v20", got.Title, got.Version)
	}
	if got.FirstAirDate == nil || *got.FirstAirDate != "2013-04-07" {
		t.Fatalf("date round trip: %v", got.FirstAirDate)
	}
	var raw map[string]any
	if err := json.Unmarshal(got.RawData, &raw); err != nil || raw["nested"] == nil {
		t.Fatalf("raw_data round trip: %s %v", got.RawData, err)
	}
	if len(got.Genres) != 2 || got.Genres[1] != "Action & Adventure" {
		t.Fatalf("genres: %v", got.Genres)
	}
}

func TestDeleteThenOlderUpsertDoesNotResurrect(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	now := time.Now()
	if _, err := s.Upsert(ctx, rec(7, "a"), 5, now); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.Delete(ctx, 7, 9, now); err != nil || !ok {
		t.Fatalf("delete: %v %v", ok, err)
	}
	if ok, err := s.Upsert(ctx, rec(7, "zombie"), 8, now); err != nil || ok {
		t.Fatalf("older upsert resurrected: %v %v", ok, err)
	}
	_, deleted, err := s.Get(ctx, 7)
	if err != nil || !deleted {
		t.Fatalf("want tombstone, got deleted=%v err=%v", deleted, err)
	}
	// A delete of an unknown key is a tombstone too, so an older upsert arriving later stays dead.
	if ok, err := s.Delete(ctx, 8, 100, now); err != nil || !ok {
		t.Fatalf("delete unknown: %v %v", ok, err)
	}
	if ok, _ := s.Upsert(ctx, rec(8, "late"), 99, now); ok {
		t.Fatal("late older upsert applied over a tombstone")
	}
	if _, _, err := s.Get(ctx, 12345); err != metastore.ErrNotFound {
		t.Fatalf("unknown id: %v", err)
	}
}

func TestBatchUpsertTenThousand(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	writes := make([]metastore.Write, 0, 10_001)
	now := time.Now()
	for i := range 10_000 {
		id := int64(i + 1)
		writes = append(writes, metastore.Write{TMDBID: id, Version: 100, UpdatedAt: now, Record: rec(id, fmt.Sprintf("t%d", id))})
	}
	// A duplicate key in the same batch: only the higher version goes in.
	writes = append(writes, metastore.Write{TMDBID: 1, Version: 50, UpdatedAt: now, Record: rec(1, "dup")})
	res, err := s.ApplyBatch(ctx, writes)
	if err != nil {
		t.Fatal(err)
	}
	if res.Applied != 10_000 || res.Stale != 1 {
		t.Fatalf("applied %d stale %d", res.Applied, res.Stale)
	}
	// Replaying the same batch is idempotent: everything is stale.
	res, err = s.ApplyBatch(ctx, writes)
	if err != nil || res.Applied != 0 || res.Stale != 10_001 {
		t.Fatalf("replay: %+v %v", res, err)
	}
	live, deleted, err := s.Count(ctx)
	if err != nil || live != 10_000 || deleted != 0 {
		t.Fatalf("count %d %d %v", live, deleted, err)
	}
	got, _, _ := s.Get(ctx, 1)
	if got.Title != "t1" {
		t.Fatalf("duplicate in batch won: %q", got.Title)
	}
}
