package main_test

// Micro-benchmarks of the hot paths that live outside pkg/ (events is not
// ours to edit, and the cache-node's package is internal): record encode,
// decode and validate, buffer batch encoding, and in-process equivalents of
// the cache-node's read path on a cache hit, its per-write CPU and its replay
// decoding, used for CPU profiles when a goal of the benchmark run is missed.
//
//	go test -run='^$' -bench=. -benchmem -count=5 ./deployments/bench/

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
	"github.com/uptrace/bun/driver/pgdriver"

	"github.com/anivault/anivault/deployments/local/fixtures"
	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/cache"
	"github.com/anivault/anivault/pkg/metastore"
)

// equivOnly skips the in-process equivalents that only serve the benchmark
// run's profiles (go tool task bench sets BENCH_EQUIV=1 for them), so that the
// micro-benchmark set stays the hot paths and stays short.
func equivOnly(b *testing.B) {
	if os.Getenv("BENCH_EQUIV") == "" {
		b.Skip("in-process equivalent for profiles: set BENCH_EQUIV=1")
	}
}

func fixture(b *testing.B) []events.Record {
	b.Helper()
	recs, err := fixtures.Records()
	if err != nil {
		b.Fatal(err)
	}
	return recs
}

// stored returns the record as the node stores it: version and updated_at set.
func stored(r events.Record) events.Record {
	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	r.Version, r.UpdatedAt = 1<<47+12345, &at
	return r
}

func BenchmarkRecordEncode(b *testing.B) {
	rec := stored(fixture(b)[0])
	enc, _ := events.Marshal(&rec)
	b.SetBytes(int64(len(enc)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := events.Marshal(&rec); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRecordDecodeValidate(b *testing.B) {
	rec := fixture(b)[0]
	body, _ := events.Marshal(&rec)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := events.DecodeRecord(body); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRecordValidate(b *testing.B) {
	rec := fixture(b)[0]
	b.ReportAllocs()
	for b.Loop() {
		if err := rec.Validate(); err != nil {
			b.Fatal(err)
		}
	}
}

func bufferBatch(recs []events.Record, n int) events.BufferBatch {
	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	var bb events.BufferBatch
	for i := range n {
		r := stored(recs[i%len(recs)])
		r.TMDBID = int64(1_000_000 + i)
		bb.Writes = append(bb.Writes, events.BufferedWrite{TMDBID: r.TMDBID, Version: r.Version, AcceptedAt: at, Node: "node-1", Record: &r})
	}
	return bb
}

func BenchmarkBufferBatchEncode(b *testing.B) {
	recs := fixture(b)
	for _, n := range []int{1, 32} {
		b.Run(fmt.Sprintf("writes=%d", n), func(b *testing.B) {
			bb := bufferBatch(recs, n)
			enc, _ := events.Marshal(bb)
			b.SetBytes(int64(len(enc)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := events.Marshal(bb); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// --- read path on a cache hit, in process ---

// discard is a reusable ResponseWriter.
type discard struct {
	h    http.Header
	code int
	n    int
}

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) WriteHeader(code int)        { d.code = code }
func (d *discard) Write(p []byte) (int, error) { d.n += len(p); return len(p), nil }

type entry struct {
	version int64
	deleted bool
	body    []byte
}

// entrySize mirrors the cache-node's entry.size: the body's allocation (its
// capacity) plus the entry's bookkeeping in the cache (LRU element, map slot).
func entrySize(body []byte) int64 { return int64(cap(body)) + 160 }

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) { s.code = code; s.ResponseWriter.WriteHeader(code) }

// nodeReadHandler mirrors the cache-node's GET /v1/anime/{tmdb_id} on a cache
// hit: ServeMux pattern routing, the Prometheus middleware (counter and
// histogram), the mode read under a RWMutex, the request's timeout context,
// the cache lookup under the cache's mutex, three headers.
func nodeReadHandler(c *cache.Cache[int64, entry]) http.Handler {
	reg := prometheus.NewRegistry()
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "r", Help: "r"}, []string{"method", "code"})
	latency := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "l", Help: "l",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, []string{"method"})
	reg.MustRegister(requests, latency)
	var modeMu sync.RWMutex
	mode := events.ModeNormal
	current := func() events.Mode { modeMu.RLock(); defer modeMu.RUnlock(); return mode }
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/anime/{tmdb_id}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-AniVault-Mode", string(current()))
		raw := r.PathValue("tmdb_id")
		id, err := strconv.ParseInt(raw, 10, 64)
		if err != nil || id <= 0 || strconv.FormatInt(id, 10) != raw {
			w.WriteHeader(400)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 7*time.Second)
		defer cancel()
		_ = ctx
		e, ok := c.Get(id)
		if !ok || e.deleted {
			w.WriteHeader(404)
			return
		}
		_ = current()
		w.Header().Set("X-AniVault-Source", "cache")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(e.body)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		mux.ServeHTTP(rec, r)
		requests.WithLabelValues(r.Method, strconv.Itoa(rec.code)).Inc()
		latency.WithLabelValues(r.Method).Observe(time.Since(start).Seconds())
	})
}

// bareHandler is the benchmark run's ceiling handler.
func bareHandler(bodies map[int64][]byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseInt(r.URL.Path[len("/v1/anime/"):], 10, 64)
		b, ok := bodies[id]
		if err != nil || !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	})
}

func BenchmarkReadPath(b *testing.B) {
	recs := fixture(b)
	c, _ := cache.New[int64, entry](cache.Config{MaxEntries: 20000, MaxBytes: 100 << 20})
	bodies := map[int64][]byte{}
	var ids []int64
	for _, r := range recs {
		s := stored(r)
		body, _ := events.Marshal(&s)
		bodies[r.TMDBID] = body
		c.Set(r.TMDBID, entry{version: s.Version, body: body}, entrySize(body))
		ids = append(ids, r.TMDBID)
	}
	for _, h := range []struct {
		name string
		h    http.Handler
	}{{"bare", bareHandler(bodies)}, {"node", nodeReadHandler(c)}} {
		b.Run(h.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				reqs := make([]*http.Request, len(ids))
				for i, id := range ids {
					reqs[i], _ = http.NewRequest(http.MethodGet, "/v1/anime/"+strconv.FormatInt(id, 10), nil)
				}
				w := &discard{h: http.Header{}}
				i := 0
				for pb.Next() {
					clear(w.h)
					h.h.ServeHTTP(w, reqs[i%len(reqs)])
					if w.code != 0 && w.code != 200 {
						b.Errorf("status %d", w.code)
						return
					}
					i++
				}
			})
		})
	}
}

// --- one PUT's CPU besides I/O, in process ---

// BenchmarkWritePathCPU mirrors what the cache-node computes for one PUT in
// cache-only mode besides HTTP and the network: decode and validate the body,
// stamp version and time, encode the record once, assemble the buffered
// write from its other fields and the record's bytes (its size), then its
// share of the group-committed buffer message, and the metadata.changed event
// the same way, and the message ids. The cache entry is the record's bytes.
func BenchmarkWritePathCPU(b *testing.B) {
	equivOnly(b)
	recs := fixture(b)
	bodies := make([][]byte, len(recs))
	for i := range recs {
		bodies[i], _ = events.Marshal(&recs[i])
	}
	const group = 32
	b.ReportAllocs()
	var pending [][]byte
	i := 0
	for b.Loop() {
		rec, err := events.DecodeRecord(bodies[i%len(bodies)])
		if err != nil {
			b.Fatal(err)
		}
		at := time.Now().UTC()
		cp := *rec
		cp.Version, cp.UpdatedAt = int64(1<<47+i), &at
		body, err := events.Marshal(&cp)
		if err != nil {
			b.Fatal(err)
		}
		head, err := events.Marshal(events.BufferedWrite{TMDBID: cp.TMDBID, Version: cp.Version, AcceptedAt: at, Node: "node-1"})
		if err != nil {
			b.Fatal(err)
		}
		pending = append(pending, withRecord(head, body))
		if len(pending) == group {
			_ = encodeBatch(pending)
			_ = watermill.NewUUID()
			pending = pending[:0]
		}
		head, err = events.Marshal(events.MetadataChanged{Envelope: events.Envelope{OccurredAt: at, Source: "node-1"}, TMDBID: cp.TMDBID, Version: cp.Version, Buffered: true})
		if err != nil {
			b.Fatal(err)
		}
		_ = withRecord(head, body)
		_ = watermill.NewUUID()
		i++
	}
}

// withRecord and encodeBatch mirror the cache-node's assembly of a payload
// from the encoding of its other fields and a record's bytes (wire.go).
func withRecord(head, body []byte) []byte {
	out := make([]byte, 0, len(head)+len(`,"record":`)+len(body))
	out = append(out, head[:len(head)-1]...)
	out = append(out, `,"record":`...)
	out = append(out, body...)
	return append(out, '}')
}

func encodeBatch(writes [][]byte) []byte {
	n := len(`{"writes":[]}`)
	for _, w := range writes {
		n += len(w) + 1
	}
	out := append(make([]byte, 0, n), `{"writes":[`...)
	for i, w := range writes {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, w...)
	}
	return append(out, `]}`...)
}

// --- replay's CPU for one fetched batch, in process ---

// BenchmarkReplayDecode mirrors the node's replay of one fetch of buffer
// messages: decode every message, then build the set-based versioned upsert
// statement the way metastore.ApplyBatch does (bun formats the values into
// the SQL text). Reported per write.
func BenchmarkReplayDecode(b *testing.B) {
	equivOnly(b)
	recs := fixture(b)
	const perMsg, msgs = 32, 100
	var data [][]byte
	for m := range msgs {
		bb := bufferBatch(recs, perMsg)
		for i := range bb.Writes {
			bb.Writes[i].TMDBID += int64(m * perMsg)
			bb.Writes[i].Record.TMDBID = bb.Writes[i].TMDBID
		}
		d, _ := events.Marshal(bb)
		data = append(data, d)
	}
	sqldb := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN("postgres://bench@127.0.0.1:1/bench?sslmode=disable")))
	defer sqldb.Close()
	db := bun.NewDB(sqldb, pgdialect.New())
	b.ReportAllocs()
	for b.Loop() {
		var writes []metastore.Write
		for _, d := range data {
			var bb events.BufferBatch
			if err := json.Unmarshal(d, &bb); err != nil {
				b.Fatal(err)
			}
			for _, w := range bb.Writes {
				writes = append(writes, metastore.Write{TMDBID: w.TMDBID, Version: w.Version, UpdatedAt: w.AcceptedAt, Record: w.Record})
			}
		}
		rows := make([]metastore.Row, 0, len(writes))
		for _, w := range writes {
			rows = append(rows, toRow(w))
		}
		sort.Slice(rows, func(i, j int) bool { return rows[i].TMDBID < rows[j].TMDBID })
		q := db.NewInsert().Model(&rows).
			On("CONFLICT (tmdb_id) DO UPDATE").
			Set("title = EXCLUDED.title, original_title = EXCLUDED.original_title, korean_title = EXCLUDED.korean_title").
			Set("overview = EXCLUDED.overview, poster_path = EXCLUDED.poster_path, backdrop_path = EXCLUDED.backdrop_path").
			Set("first_air_date = EXCLUDED.first_air_date, last_air_date = EXCLUDED.last_air_date, status = EXCLUDED.status").
			Set("vote_average = EXCLUDED.vote_average, vote_count = EXCLUDED.vote_count, popularity = EXCLUDED.popularity").
			Set("number_of_seasons = EXCLUDED.number_of_seasons, number_of_episodes = EXCLUDED.number_of_episodes").
			Set("genres = EXCLUDED.genres, networks = EXCLUDED.networks, raw_data = EXCLUDED.raw_data").
			Set("version = EXCLUDED.version, updated_at = EXCLUDED.updated_at, deleted_at = EXCLUDED.deleted_at").
			Where("am.version < EXCLUDED.version").
			Returning("tmdb_id, version")
		if _, err := q.AppendQuery(db.QueryGen(), nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*perMsg*msgs), "ns/write")
}

// toRow mirrors metastore's unexported conversion.
func toRow(w metastore.Write) metastore.Row {
	at := w.UpdatedAt.UTC()
	r := metastore.Row{TMDBID: w.TMDBID, Version: w.Version, UpdatedAt: at}
	rec := w.Record
	r.Title = rec.Title
	r.OriginalTitle, r.KoreanTitle, r.Overview = rec.OriginalTitle, rec.KoreanTitle, rec.Overview
	r.PosterPath, r.BackdropPath, r.Status = rec.PosterPath, rec.BackdropPath, rec.Status
	r.FirstAirDate, r.LastAirDate = rec.FirstAirDate, rec.LastAirDate
	r.VoteAverage, r.VoteCount, r.Popularity = rec.VoteAverage, rec.VoteCount, rec.Popularity
	r.NumberOfSeasons, r.NumberOfEpisodes = rec.NumberOfSeasons, rec.NumberOfEpisodes
	r.Genres, r.Networks = rec.Genres, rec.Networks
	r.RawData = rec.RawData
	return r
}

// --- memory of a full cache, in process ---

var keep *cache.Cache[int64, entry]

// BenchmarkCacheFull2KiB fills a cache bounded like CACHE_MAX_MEMORY_MB=100
// with 100,000 records of about 2 KiB encoded the way the node encodes them,
// each counted the way the node counts it (entrySize), and reports the bytes
// the cache accounts beside the Go heap it really takes.
// It is heavy (about a second and 200 MB): it runs only with BENCH_HEAVY=1.
func BenchmarkCacheFull2KiB(b *testing.B) {
	if os.Getenv("BENCH_HEAVY") == "" {
		b.Skip("set BENCH_HEAVY=1 (heavy: fills a 100 MiB cache)")
	}
	recs := fixture(b)
	pad := make([]byte, 800)
	for i := range pad {
		pad[i] = 'x'
	}
	for b.Loop() {
		keep = nil
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		c, _ := cache.New[int64, entry](cache.Config{MaxEntries: 1_000_000, MaxBytes: 100 << 20})
		var bodyLen int
		for i := range 100_000 {
			r := stored(recs[i%len(recs)])
			r.TMDBID = int64(40_000_000 + i)
			r.RawData = json.RawMessage(fmt.Sprintf(`{"tmdb": %s, "padding": %q}`, r.RawData, pad))
			body, _ := events.Marshal(&r)
			bodyLen = len(body)
			c.SetIf(r.TMDBID, entry{version: r.Version, body: body}, entrySize(body), func(old entry) bool { return r.Version > old.version })
		}
		keep = c
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		st := c.Stats()
		heap := float64(after.HeapAlloc - before.HeapAlloc)
		b.ReportMetric(float64(st.MemoryUsageBytes)/(1<<20), "accounted-MiB")
		b.ReportMetric(heap/(1<<20), "live-heap-MiB")
		b.ReportMetric(float64(st.CacheSize), "entries")
		b.ReportMetric(heap/float64(st.CacheSize)-float64(bodyLen), "heap-bytes-per-entry-beyond-body")
		b.ReportMetric(float64(bodyLen), "body-bytes")
	}
}
