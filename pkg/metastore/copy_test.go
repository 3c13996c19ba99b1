package metastore_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/metastore"
)

// applyPaths are the two ways ApplyBatch writes: every semantic test runs on
// both, and on ApplyBatch itself (which picks one by size).
var applyPaths = []struct {
	name  string
	apply func(*metastore.Store, context.Context, []metastore.Write) (metastore.Result, error)
}{
	{"copy", (*metastore.Store).ApplyBatchCopy},
	{"insert", (*metastore.Store).ApplyBatchInsert},
	{"auto", (*metastore.Store).ApplyBatch},
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func up(id, version int64, title string, at time.Time) metastore.Write {
	return metastore.Write{TMDBID: id, Version: version, UpdatedAt: at, Record: rec(id, title)}
}

func del(id, version int64, at time.Time) metastore.Write {
	return metastore.Write{TMDBID: id, Version: version, Deleted: true, UpdatedAt: at}
}

func mustApply(t *testing.T, s *metastore.Store, apply func(*metastore.Store, context.Context, []metastore.Write) (metastore.Result, error), ws []metastore.Write) metastore.Result {
	t.Helper()
	res, err := apply(s, ctxT(t), ws)
	if err != nil {
		t.Fatalf("apply %d writes: %v", len(ws), err)
	}
	if res.Applied+res.Stale != len(ws) {
		t.Fatalf("applied %d + stale %d != %d writes", res.Applied, res.Stale, len(ws))
	}
	if len(res.AppliedKeys) != res.Applied {
		t.Fatalf("applied %d but %d applied keys", res.Applied, len(res.AppliedKeys))
	}
	return res
}

func checkRow(t *testing.T, s *metastore.Store, id, version int64, title string, deleted bool) {
	t.Helper()
	got, gotDeleted, err := s.Get(ctxT(t), id)
	if err != nil {
		t.Fatalf("get %d: %v", id, err)
	}
	if got.Version != version || gotDeleted != deleted || (!deleted && got.Title != title) {
		t.Fatalf("row %d: v%d %q deleted=%v, want v%d %q deleted=%v", id, got.Version, got.Title, gotDeleted, version, title, deleted)
	}
	if deleted && (got.Title != "" || got.Genres != nil || got.RawData != nil) {
		t.Fatalf("tombstone %d keeps data: %+v", id, got)
	}
}

// padded returns writes plus filler writes of other keys, so that a batch
// goes through ApplyBatch's COPY path as well when it is small.
func padded(ws []metastore.Write, base int64, at time.Time) []metastore.Write {
	for i := range metastore.CopyMinWrites {
		ws = append(ws, up(base+int64(i), 1, "filler", at))
	}
	return ws
}

// Stale writes (older or equal versions) are skipped and reported; newer ones applied.
func TestApplyStaleSkip(t *testing.T) {
	t.Parallel()
	for _, p := range applyPaths {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			s := newStore(t)
			now := time.Now()
			mustApply(t, s, p.apply, []metastore.Write{up(1, 20, "one", now), up(2, 20, "two", now), up(3, 20, "three", now)})
			ws := padded([]metastore.Write{
				up(1, 10, "older", now), // stale
				up(2, 20, "equal", now), // stale: not newer
				up(3, 30, "newer", now), // applied
				up(4, 5, "fresh", now),  // applied
			}, 1000, now)
			res := mustApply(t, s, p.apply, ws)
			wantApplied := 2 + metastore.CopyMinWrites
			if res.Applied != wantApplied || res.Stale != 2 {
				t.Fatalf("applied %d stale %d, want %d and 2", res.Applied, res.Stale, wantApplied)
			}
			if _, ok := res.AppliedKeys[1]; ok {
				t.Fatal("stale key 1 reported applied")
			}
			if _, ok := res.AppliedKeys[2]; ok {
				t.Fatal("equal-version key 2 reported applied")
			}
			if res.AppliedKeys[3] != 30 || res.AppliedKeys[4] != 5 {
				t.Fatalf("applied keys %v", res.AppliedKeys)
			}
			checkRow(t, s, 1, 20, "one", false)
			checkRow(t, s, 2, 20, "two", false)
			checkRow(t, s, 3, 30, "newer", false)
			checkRow(t, s, 4, 5, "fresh", false)
			// The whole batch again: all stale.
			res = mustApply(t, s, p.apply, ws)
			if res.Applied != 0 || res.Stale != len(ws) {
				t.Fatalf("batch again: applied %d stale %d", res.Applied, res.Stale)
			}
		})
	}
}

// Deletes are tombstones with a version: an older upsert never resurrects
// one, a newer one does, and a delete of an unknown key is a tombstone too.
func TestApplyTombstones(t *testing.T) {
	t.Parallel()
	for _, p := range applyPaths {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			s := newStore(t)
			now := time.Now().Truncate(time.Microsecond)
			mustApply(t, s, p.apply, padded([]metastore.Write{up(1, 10, "a", now), up(2, 10, "b", now), up(3, 10, "c", now)}, 1000, now))
			later := now.Add(time.Second)
			res := mustApply(t, s, p.apply, padded([]metastore.Write{
				del(1, 20, later), // applied: tombstone
				del(2, 5, later),  // stale: older than the row
				del(9, 7, later),  // applied: unknown key, tombstone row
			}, 2000, now))
			if res.AppliedKeys[1] != 20 || res.AppliedKeys[9] != 7 || res.Stale != 1 {
				t.Fatalf("deletes: %+v", res)
			}
			checkRow(t, s, 1, 20, "", true)
			checkRow(t, s, 2, 10, "b", false)
			checkRow(t, s, 9, 7, "", true)
			var deletedAt, updatedAt time.Time
			if err := s.DB().NewRaw("SELECT deleted_at, updated_at FROM anime_metadata WHERE tmdb_id = 1").Scan(ctxT(t), &deletedAt, &updatedAt); err != nil {
				t.Fatal(err)
			}
			if !deletedAt.Equal(later) || !updatedAt.Equal(later) {
				t.Fatalf("tombstone times: deleted_at %v updated_at %v, want %v", deletedAt, updatedAt, later)
			}
			// Older upserts do not resurrect; a newer one does.
			res = mustApply(t, s, p.apply, padded([]metastore.Write{up(1, 15, "zombie", now), up(9, 6, "zombie", now), up(3, 30, "c2", now)}, 3000, now))
			if _, ok := res.AppliedKeys[1]; ok || res.Stale != 2 {
				t.Fatalf("older upserts over tombstones: %+v", res)
			}
			checkRow(t, s, 1, 20, "", true)
			checkRow(t, s, 9, 7, "", true)
			mustApply(t, s, p.apply, padded([]metastore.Write{up(1, 25, "back", now)}, 4000, now))
			checkRow(t, s, 1, 25, "back", false)
			var stillDeleted bool
			if err := s.DB().NewRaw("SELECT deleted_at IS NOT NULL FROM anime_metadata WHERE tmdb_id = 1").Scan(ctxT(t), &stillDeleted); err != nil || stillDeleted {
				t.Fatalf("resurrected row keeps deleted_at: %v %v", stillDeleted, err)
			}
		})
	}
}

// Several writes of one key in a batch: the highest version wins (the first
// of equal versions), whatever the order, deletes and upserts mixed.
func TestApplyDuplicatesInBatch(t *testing.T) {
	t.Parallel()
	for _, p := range applyPaths {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			s := newStore(t)
			now := time.Now()
			ws := padded([]metastore.Write{
				up(1, 5, "v5", now), up(1, 9, "v9 first", now), up(1, 7, "v7", now), up(1, 9, "v9 second", now),
				del(2, 8, now), up(2, 9, "upsert after delete", now),
				up(3, 9, "upsert before delete", now), del(3, 10, now),
				up(4, 3, "only", now),
			}, 1000, now)
			res := mustApply(t, s, p.apply, ws)
			if res.Stale != 5 || res.Applied != 4+metastore.CopyMinWrites {
				t.Fatalf("applied %d stale %d", res.Applied, res.Stale)
			}
			if res.AppliedKeys[1] != 9 || res.AppliedKeys[2] != 9 || res.AppliedKeys[3] != 10 || res.AppliedKeys[4] != 3 {
				t.Fatalf("applied keys %v", res.AppliedKeys)
			}
			checkRow(t, s, 1, 9, "v9 first", false)
			checkRow(t, s, 2, 9, "upsert after delete", false)
			checkRow(t, s, 3, 10, "", true)
			checkRow(t, s, 4, 3, "only", false)
		})
	}
}

// hostile are strings with every byte that means something to COPY's text
// format, to SQL or to JSON.
var hostile = []string{
	"tab\there", "new\nline", "carriage\rreturn", "crlf\r\n", `back\slash`, `\N`, `\.`, "\\.\n", `\\N`,
	`trailing\`, `"quoted"`, `'single' ''`, "$$dollar$$", "ctrl \x01\x02\x07\x08\x0b\x0c\x1b\x1f \x7f",
	"unicode 進撃の巨人 진격의 거인 🦖 \u2028\u2029 \ufeff", `\x00 looks like NUL`, `E'\n'`, "\\\t\\\n\\\r",
	"", " ", "\t", "\n", "\\",
}

// Strings with tabs, newlines, backslashes, quotes, control characters and
// any Unicode come back byte for byte; raw_data keeps its value.
func TestApplyHostileStringsRoundTrip(t *testing.T) {
	t.Parallel()
	for _, p := range applyPaths {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			s := newStore(t)
			now := time.Now()
			var ws []metastore.Write
			wants := map[int64]*events.Record{}
			for i, h := range hostile {
				id := int64(i + 1)
				title := "t " + h // title is required non-empty
				h := h
				raw, err := json.Marshal(map[string]any{"s": h, "list": []string{h, h + h}, "nested": map[string]any{h: h}})
				if err != nil {
					t.Fatal(err)
				}
				// JSON whitespace with newlines and tabs between tokens too.
				raw = append([]byte("{\n\t\"pretty\" :\r\n [1,\t2] ,"), raw[1:]...)
				r := &events.Record{TMDBID: id, Title: title, OriginalTitle: &h, KoreanTitle: &h, Overview: &h,
					PosterPath: &h, BackdropPath: &h, Status: &h,
					Genres: []string{h, "x" + h, ""}, Networks: []string{h}, RawData: raw}
				ws = append(ws, metastore.Write{TMDBID: id, Version: 10, UpdatedAt: now, Record: r})
				wants[id] = r
			}
			ws = padded(ws, 1000, now)
			mustApply(t, s, p.apply, ws)
			for id, want := range wants {
				got, _, err := s.Get(ctxT(t), id)
				if err != nil {
					t.Fatal(err)
				}
				for _, f := range []struct {
					name      string
					got, want *string
				}{
					{"title", &got.Title, &want.Title}, {"original_title", got.OriginalTitle, want.OriginalTitle},
					{"korean_title", got.KoreanTitle, want.KoreanTitle}, {"overview", got.Overview, want.Overview},
					{"poster_path", got.PosterPath, want.PosterPath}, {"backdrop_path", got.BackdropPath, want.BackdropPath},
					{"status", got.Status, want.Status},
				} {
					if f.got == nil || *f.got != *f.want {
						t.Errorf("%d %s: got %q, want %q", id, f.name, deref(f.got), *f.want)
					}
				}
				if !slices.Equal(got.Genres, want.Genres) || !slices.Equal(got.Networks, want.Networks) {
					t.Errorf("%d genres/networks: got %q %q, want %q %q", id, got.Genres, got.Networks, want.Genres, want.Networks)
				}
				var g, w any
				if err := json.Unmarshal(got.RawData, &g); err != nil {
					t.Fatalf("%d raw_data %q: %v", id, got.RawData, err)
				}
				if err := json.Unmarshal(want.RawData, &w); err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(g, w) {
					t.Errorf("%d raw_data: got %s, want %s", id, got.RawData, want.RawData)
				}
			}
		})
	}
}

func deref(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}

// A NUL byte cannot be stored in a text or jsonb column: the batch is
// refused before anything is sent, with an error naming the key.
func TestApplyNULRefusedWhole(t *testing.T) {
	t.Parallel()
	for _, p := range applyPaths {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			s := newStore(t)
			now := time.Now()
			for _, mutate := range []func(r *events.Record){
				func(r *events.Record) { r.Title = "a\x00b" },
				func(r *events.Record) { s := "x\x00"; r.Overview = &s },
				func(r *events.Record) { r.Genres = []string{"ok", "\x00"} },
				func(r *events.Record) { r.RawData = json.RawMessage("{\"a\":\"\x00\"}") },
			} {
				bad := rec(77, "bad")
				mutate(bad)
				ws := padded([]metastore.Write{up(1, 10, "good", now), {TMDBID: 77, Version: 10, UpdatedAt: now, Record: bad}}, 1000, now)
				_, err := p.apply(s, ctxT(t), ws)
				if !errors.Is(err, metastore.ErrInvalidWrite) {
					t.Fatalf("NUL: got %v, want ErrInvalidWrite", err)
				}
				if live, deleted, err := s.Count(ctxT(t)); err != nil || live+deleted != 0 {
					t.Fatalf("after a refused batch the table holds %d+%d rows (%v)", live, deleted, err)
				}
			}
		})
	}
}

// An empty batch does nothing, without a database round trip.
func TestApplyEmptyBatch(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	if err := s.DB().Close(); err != nil { // any I/O would fail now
		t.Fatal(err)
	}
	for _, p := range applyPaths {
		res, err := p.apply(s, ctxT(t), nil)
		if err != nil || res.Applied != 0 || res.Stale != 0 || res.AppliedKeys == nil || len(res.AppliedKeys) != 0 {
			t.Fatalf("%s: empty batch: %+v %v", p.name, res, err)
		}
	}
}

// A batch PostgreSQL refuses part of (an impossible date, an integer out of
// range) leaves nothing of itself in the table, changes no existing row,
// and the store keeps working on the same pool.
func TestApplyFailingBatchLeavesNothing(t *testing.T) {
	t.Parallel()
	for _, p := range applyPaths {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			s := newStore(t)
			now := time.Now()
			mustApply(t, s, p.apply, []metastore.Write{up(1, 10, "before", now)})
			for _, mutate := range []func(r *events.Record){
				func(r *events.Record) { d := "2013-02-30"; r.FirstAirDate = &d },
				func(r *events.Record) { v := int64(math.MaxInt32) + 1; r.VoteCount = &v },
				func(r *events.Record) { r.RawData = json.RawMessage(`{"broken": `) },
			} {
				var ws []metastore.Write
				ws = append(ws, up(1, 20, "changed", now))
				for i := range 300 {
					ws = append(ws, up(int64(100+i), 5, "new", now))
				}
				mutate(ws[len(ws)-1].Record) // the last key in key order: everything before it was sent
				if _, err := p.apply(s, ctxT(t), ws); err == nil {
					t.Fatal("a batch PostgreSQL must refuse was applied")
				}
				live, deleted, err := s.Count(ctxT(t))
				if err != nil || live != 1 || deleted != 0 {
					t.Fatalf("after a failed batch: %d live %d deleted (%v), want only the row before", live, deleted, err)
				}
				checkRow(t, s, 1, 10, "before", false)
			}
			// The pool is healthy: the same keys apply now.
			res := mustApply(t, s, p.apply, []metastore.Write{up(1, 20, "changed", now), up(100, 5, "new", now)})
			if res.Applied != 2 {
				t.Fatalf("after failures: %+v", res)
			}
		})
	}
}

// A deadline anywhere in the bulk apply (connecting, BEGIN, the COPY's data
// or its reply, the merge, the commit) leaves nothing of the batch, and the
// connection is either rolled back or dropped: never returned to the pool
// with replies still unread, where the next query would take them for its
// own. The pool has one connection, so every query after a failure would
// meet such a leftover.
func TestApplyCopyDeadlineLeavesNothing(t *testing.T) {
	t.Parallel()
	s := newStoreConns(t, 1)
	now := time.Now()
	const n = 20_000
	failed, committed := 0, 0
	base := int64(0)
	for d := 500 * time.Microsecond; d < 3*time.Second; d = d * 5 / 4 {
		ws := make([]metastore.Write, n)
		for i := range ws {
			ws[i] = up(base+int64(i+1), 10, "deadline", now)
		}
		ctx, cancel := context.WithTimeout(context.Background(), d)
		_, err := s.ApplyBatchCopy(ctx, ws)
		cancel()
		var rows int
		if cerr := s.DB().NewRaw("SELECT count(*) FROM anime_metadata WHERE tmdb_id > ? AND tmdb_id <= ?", base, base+n).Scan(ctxT(t), &rows); cerr != nil {
			t.Fatalf("deadline %v (%v): the next query on the pool failed: %v", d, err, cerr)
		}
		switch {
		case err == nil && rows == n:
			committed++
		case err != nil && rows == 0:
			failed++
		default:
			t.Fatalf("deadline %v: error %v, and %d of %d rows in the table", d, err, rows, n)
		}
		if _, _, err := s.Get(ctxT(t), 1); err != nil && !errors.Is(err, metastore.ErrNotFound) {
			t.Fatalf("deadline %v: a read after it: %v", d, err)
		}
		base += n
	}
	t.Logf("%d batches failed by their deadline, %d committed", failed, committed)
	if failed == 0 {
		t.Fatal("no deadline was short enough to fail the batch")
	}
	// The pool still applies.
	ws := make([]metastore.Write, 100)
	for i := range ws {
		ws[i] = up(base+int64(i+1), 10, "after", now)
	}
	if res := mustApply(t, s, (*metastore.Store).ApplyBatchCopy, ws); res.Applied != len(ws) {
		t.Fatalf("after the deadlines: applied %d", res.Applied)
	}
}

// Concurrent bulk batches over the same keys in different orders neither
// deadlock nor lose: every key ends at its highest version.
func TestApplyCopyConcurrentOverlap(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	now := time.Now()
	const keys, workers = 2000, 4
	var wg sync.WaitGroup
	errs := make(chan error, workers*3)
	for w := range workers {
		wg.Go(func() {
			for round := range 3 {
				ws := make([]metastore.Write, keys)
				for i := range ws {
					id := int64(i + 1)
					if w%2 == 1 {
						id = keys - int64(i)
					}
					v := int64(round*workers + w + 1)
					ws[i] = up(id, v, fmt.Sprintf("w%d r%d", w, round), now)
				}
				if _, err := s.ApplyBatchCopy(ctxT(t), ws); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent batch: %v", err)
	}
	vs, err := s.Versions(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != keys {
		t.Fatalf("%d rows, want %d", len(vs), keys)
	}
	for id, v := range vs {
		if v.Version != 3*workers {
			t.Fatalf("key %d at v%d, want v%d", id, v.Version, 3*workers)
		}
	}
}

// Both paths write the same row for the same write, column by column:
// nulls, empty and nil lists, missing and null raw_data, floats,
// timestamps to the microsecond, tombstones.
func TestApplyPathsWriteIdenticalRows(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	at := time.Date(2026, 5, 1, 12, 30, 45, 123456789, time.FixedZone("KST", 9*3600))
	str := func(v string) *string { return &v }
	f := func(v float64) *float64 { return &v }
	n := func(v int64) *int64 { return &v }
	full := &events.Record{Title: "Attack on Titan", OriginalTitle: str("進撃の巨人"), KoreanTitle: str("진격의 거인"),
		Overview: str("line\nwith\ttab and \\"), PosterPath: str("/p.jpg"), BackdropPath: str("/b.jpg"),
		FirstAirDate: str("2013-04-07"), LastAirDate: str("2023-11-05"), Status: str("Ended"),
		VoteAverage: f(8.7), VoteCount: n(6100), Popularity: f(151.2), NumberOfSeasons: n(4), NumberOfEpisodes: n(94),
		Genres: []string{"Animation", "Action & Adventure", "<>&"}, Networks: []string{"MBS"},
		RawData: json.RawMessage(`{"id": 1429, "a": [1, 2.50, 1e3, true, null], "s": "\u00e9\u0001\"\\"}`)}
	variants := []func(r *events.Record){
		func(r *events.Record) {},
		func(r *events.Record) { *r = events.Record{Title: "bare"} },
		func(r *events.Record) { r.Genres, r.Networks = []string{}, nil },
		func(r *events.Record) { r.RawData = json.RawMessage("null") },
		func(r *events.Record) { r.RawData = json.RawMessage(`{}`) },
		func(r *events.Record) { r.VoteAverage, r.Popularity = f(0), f(-1e-300) },
		func(r *events.Record) { r.VoteAverage, r.Popularity = f(1.7976931348623157e308), f(5e-324) },
		func(r *events.Record) { r.VoteAverage, r.Popularity = f(math.Inf(1)), f(math.NaN()) },
		func(r *events.Record) { r.VoteCount, r.NumberOfSeasons = n(-2147483648), n(2147483647) },
	}
	const offset = 1_000_000
	var viaCopy, viaInsert []metastore.Write
	for i, v := range variants {
		r := *full
		v(&r)
		id := int64(i + 1)
		ra, rb := r, r
		ra.TMDBID, rb.TMDBID = id, id+offset
		viaCopy = append(viaCopy, metastore.Write{TMDBID: id, Version: 1 << 50, UpdatedAt: at, Record: &ra})
		viaInsert = append(viaInsert, metastore.Write{TMDBID: id + offset, Version: 1 << 50, UpdatedAt: at, Record: &rb})
	}
	tomb := int64(len(variants) + 1)
	viaCopy = append(viaCopy, del(tomb, 7, at))
	viaInsert = append(viaInsert, del(tomb+offset, 7, at))
	mustApply(t, s, (*metastore.Store).ApplyBatchCopy, viaCopy)
	mustApply(t, s, (*metastore.Store).ApplyBatchInsert, viaInsert)
	var rows []struct {
		TMDBID int64  `bun:"tmdb_id"`
		Row    string `bun:"row"`
	}
	if err := s.DB().NewRaw(`SELECT tmdb_id, (to_jsonb(am) - 'tmdb_id')::text AS row FROM anime_metadata am ORDER BY tmdb_id`).Scan(ctxT(t), &rows); err != nil {
		t.Fatal(err)
	}
	byID := map[int64]string{}
	for _, r := range rows {
		byID[r.TMDBID] = r.Row
	}
	if len(byID) != 2*len(viaCopy) {
		t.Fatalf("%d rows, want %d", len(byID), 2*len(viaCopy))
	}
	for _, w := range viaCopy {
		c, i := byID[w.TMDBID], byID[w.TMDBID+offset]
		if c != i {
			t.Errorf("key %d:\n copy   %s\n insert %s", w.TMDBID, c, i)
		}
	}
	t.Logf("full row: %s", byID[1])
}

// NewCopyReader streams: it never holds the whole batch's encoding.
func TestCopyReaderStreams(t *testing.T) {
	t.Parallel()
	now := time.Now()
	ws := make([]metastore.Write, 5000)
	for i := range ws {
		ws[i] = up(int64(i+1), 1, "streamed", now)
	}
	r, err := metastore.NewCopyReader(ws)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1019) // what pgdriver's pooled buffer offers
	total, reads := 0, 0
	for {
		n, err := r.Read(buf)
		if n > 0 && err != nil {
			t.Fatalf("read returned %d bytes with %v: pgdriver drops them", n, err)
		}
		total += n
		reads++
		if err != nil {
			break
		}
	}
	if reads < total/len(buf) {
		t.Fatalf("%d reads for %d bytes", reads, total)
	}
	if total < len(ws)*100 {
		t.Fatalf("only %d bytes for %d rows", total, len(ws))
	}
	if _, err := metastore.NewCopyReader([]metastore.Write{{TMDBID: 1, Version: 1, UpdatedAt: now, Record: &events.Record{Title: "\x00"}}}); !errors.Is(err, metastore.ErrInvalidWrite) {
		t.Fatalf("NUL: %v", err)
	}
}
