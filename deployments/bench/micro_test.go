package main_test

// Micro-benchmarks of the record's encoding, decoding and validation and of a
// buffer batch's encoding, on the fixture records of the benchmark run. The
// cache-node's own paths (read on a cache hit, one write's CPU, replay
// decoding, a full cache) are benchmarked in its package, and the replay
// statement in pkg/metastore.
//
//	go test -run='^$' -bench=. -benchmem -count=5 ./deployments/bench/

import (
	"fmt"
	"testing"
	"time"

	"github.com/anivault/anivault/deployments/local/fixtures"
	"github.com/anivault/anivault/events"
)

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
