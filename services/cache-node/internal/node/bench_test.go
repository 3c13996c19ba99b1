package node

// In-process benchmarks of the node's hot paths, on the node's own code, for
// the CPU and memory profiles of `go tool task bench`:
//
//	go test -run='^$' -bench=. -benchmem ./services/cache-node/internal/node
//
// BENCH_EQUIV=1 enables the ones that only serve those profiles, and
// BENCH_HEAVY=1 the full-cache memory benchmark.

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/cache"
	"github.com/anivault/anivault/pkg/envconfig"
)

func equivOnly(b *testing.B) {
	if os.Getenv("BENCH_EQUIV") == "" {
		b.Skip("in-process equivalent for profiles: set BENCH_EQUIV=1")
	}
}

// benchRecords returns n records shaped like TMDB series, as clients send them.
func benchRecords(b *testing.B, n int) [][]byte {
	b.Helper()
	out := make([][]byte, n)
	for i := range out {
		out[i] = fmt.Appendf(nil, `{"tmdb_id":%d,"title":"Attack on Titan","original_title":"進撃の巨人","korean_title":"진격의 거인",
			"overview":"Many years ago, the last remnants of humanity were forced to retreat behind the towering walls of a fortified city to escape the massive, man-eating Titans.",
			"first_air_date":"2013-04-07","status":"Ended","vote_average":8.7,"vote_count":6000,"popularity":120.5,"number_of_seasons":4,
			"genres":["Animation","Action & Adventure","Sci-Fi & Fantasy"],"networks":["MBS"],
			"raw_data":{"id":%d,"origin_country":["JP"],"original_language":"ja","episode_run_time":[24]}}`, i+1, i+1)
	}
	return out
}

// stamped is a record as the node stores and serves it.
func stamped(b *testing.B, body []byte, version int64) []byte {
	b.Helper()
	rec, err := events.DecodeRecord(body)
	if err != nil {
		b.Fatal(err)
	}
	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	rec.Version, rec.UpdatedAt = version, &at
	enc, err := events.Marshal(rec)
	if err != nil {
		b.Fatal(err)
	}
	return enc
}

func benchNode(b *testing.B) *Node {
	b.Helper()
	cfg, err := LoadConfig(envconfig.FromMap(map[string]string{"NODE_ID": "bench", "CACHE_MAX_SIZE": "1000000"}))
	if err != nil {
		b.Fatal(err)
	}
	n, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	n.changes.assumeCurrent()
	return n
}

// discard is a reusable ResponseWriter.
type discard struct {
	h    http.Header
	code int
}

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) WriteHeader(code int)        { d.code = code }
func (d *discard) Write(p []byte) (int, error) { return len(p), nil }

// BenchmarkReadPath: GET /v1/anime/{id} on a cache hit through the node's
// own handler (mux, metrics middleware, mode, request context, cache), beside
// a bare handler serving the same bytes from a map (the ceiling).
func BenchmarkReadPath(b *testing.B) {
	n := benchNode(b)
	bodies := map[int64][]byte{}
	var ids []int64
	for i, body := range benchRecords(b, 240) {
		id := int64(i + 1)
		enc := stamped(b, body, int64(1<<47+i))
		bodies[id] = enc
		n.cacheSet(id, entry{version: int64(1<<47 + i), body: enc})
		ids = append(ids, id)
	}
	bare := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseInt(strings.TrimPrefix(r.URL.Path, "/v1/anime/"), 10, 64)
		body, ok := bodies[id]
		if err != nil || !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})
	for _, h := range []struct {
		name string
		h    http.Handler
	}{{"bare", bare}, {"node", n.http.handler()}} {
		b.Run(h.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				reqs := make([]*http.Request, len(ids))
				for i, id := range ids {
					reqs[i], _ = http.NewRequest(http.MethodGet, "/v1/anime/"+strconv.FormatInt(id, 10), nil)
				}
				w := &discard{h: http.Header{}}
				for i := 0; pb.Next(); i++ {
					clear(w.h)
					w.code = 0
					h.h.ServeHTTP(w, reqs[i%len(reqs)])
					if w.code != 0 && w.code != http.StatusOK {
						b.Errorf("status %d", w.code)
						return
					}
				}
			})
		})
	}
}

// BenchmarkWritePathCPU is what the node computes for one PUT in cache-only
// mode besides HTTP and the network, with the node's own functions: decode and
// validate the body, stamp it, encode the record once, the buffered write and
// its share of a 32-write buffer message, the metadata.changed event, and the
// message ids.
func BenchmarkWritePathCPU(b *testing.B) {
	equivOnly(b)
	bodies := benchRecords(b, 240)
	const group = 32
	var pending [][]byte
	b.ReportAllocs()
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
		enc, err := encodeBufferedWrite(events.BufferedWrite{TMDBID: cp.TMDBID, Version: cp.Version, AcceptedAt: at, Node: "bench"}, body)
		if err != nil {
			b.Fatal(err)
		}
		if pending = append(pending, enc); len(pending) == group {
			_ = encodeBatch(pending)
			_ = watermill.NewUUID()
			pending = pending[:0]
		}
		if _, err := encodeChanged("bench", at, cp.TMDBID, cp.Version, false, true, body); err != nil {
			b.Fatal(err)
		}
		_ = watermill.NewUUID()
		i++
	}
}

// bufferPayloads returns msgs buffer messages of per fixture-shaped writes each.
func bufferPayloads(b *testing.B, msgs, per int) [][]byte {
	b.Helper()
	bodies := benchRecords(b, msgs*per)
	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	var payloads [][]byte
	for m := range msgs {
		var writes [][]byte
		for w := range per {
			i := m*per + w
			enc, err := encodeBufferedWrite(events.BufferedWrite{TMDBID: int64(i + 1), Version: int64(1<<47 + i), AcceptedAt: at, Node: "bench"},
				stamped(b, bodies[i], int64(1<<47+i)))
			if err != nil {
				b.Fatal(err)
			}
			writes = append(writes, enc)
		}
		payloads = append(payloads, encodeBatch(writes))
	}
	return payloads
}

// BenchmarkReplayDecode decodes one fetch of buffer messages (100 messages of
// 32 writes) into the writes replay applies, with the node's decodeBuffered.
// Building the statement is pkg/metastore's BenchmarkApplyBatchStatement.
// Reported per write.
func BenchmarkReplayDecode(b *testing.B) {
	equivOnly(b)
	payloads := bufferPayloads(b, 100, 32)
	b.ReportAllocs()
	for b.Loop() {
		writes, errs := decodeBuffered(payloads)
		if len(writes) != 3200 || errs[0] != nil {
			b.Fatalf("decoded %d writes, first error %v", len(writes), errs[0])
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*3200), "ns/write")
}

var keep *cache.Cache[int64, entry]

// BenchmarkCacheFull2KiB fills the node's cache as CACHE_MAX_MEMORY_MB=100
// bounds it with 100,000 records of about 2 KiB, each counted by entry.size,
// and reports the bytes the cache accounts beside the Go heap it takes.
// Heavy (about a second and 200 MB): it runs only with BENCH_HEAVY=1.
func BenchmarkCacheFull2KiB(b *testing.B) {
	if os.Getenv("BENCH_HEAVY") == "" {
		b.Skip("set BENCH_HEAVY=1 (heavy: fills a 100 MiB cache)")
	}
	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	pad := strings.Repeat("x", 1400)
	for b.Loop() {
		keep = nil
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		c, err := cache.New[int64, entry](cache.Config{MaxEntries: 1_000_000, MaxBytes: cacheBytes(100)})
		if err != nil {
			b.Fatal(err)
		}
		var bodyLen int
		for i := range 100_000 {
			rec := events.Record{TMDBID: int64(40_000_000 + i), Title: "Attack on Titan", Version: int64(1<<47 + i), UpdatedAt: &at,
				RawData: json.RawMessage(`{"padding":"` + pad + `"}`)}
			body, err := events.Marshal(&rec)
			if err != nil {
				b.Fatal(err)
			}
			bodyLen = len(body)
			e := entry{version: rec.Version, body: body}
			c.SetIf(rec.TMDBID, e, e.size(), func(old entry) bool { return e.version > old.version })
		}
		keep = c
		runtime.GC()
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
