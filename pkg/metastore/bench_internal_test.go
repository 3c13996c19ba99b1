package metastore

import (
	"database/sql"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
	"github.com/uptrace/bun/driver/pgdriver"

	"github.com/anivault/anivault/events"
)

// BenchmarkApplyBatchStatement builds (without running) the statement
// ApplyBatch sends for 1,000 rows, the replay's statement size: bun formats
// every value into the SQL text. Reported per row.
func BenchmarkApplyBatchStatement(b *testing.B) {
	sqldb := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN("postgres://bench@127.0.0.1:1/bench?sslmode=disable")))
	defer sqldb.Close()
	db := bun.NewDB(sqldb, pgdialect.New())
	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	const n = 1000
	writes := make([]Write, n)
	for i := range writes {
		rec, err := events.DecodeRecord(fmt.Appendf(nil, `{"tmdb_id":%d,"title":"Attack on Titan","original_title":"進撃の巨人",
			"overview":"Many years ago, the last remnants of humanity were forced to retreat behind the walls of a fortified city.",
			"first_air_date":"2013-04-07","vote_average":8.7,"vote_count":6000,"genres":["Animation","Action & Adventure"],
			"raw_data":{"id":%d,"origin_country":["JP"]}}`, i+1, i+1))
		if err != nil {
			b.Fatal(err)
		}
		writes[i] = Write{TMDBID: rec.TMDBID, Version: int64(1<<47 + i), UpdatedAt: at, Record: rec}
	}
	b.ReportAllocs()
	for b.Loop() {
		rows := make([]Row, 0, n)
		for _, w := range writes {
			rows = append(rows, toRow(w))
		}
		if _, err := upsertQuery(db, &rows).AppendQuery(db.QueryGen(), nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/row")
}

// BenchmarkCopyRows encodes the COPY rows ApplyBatchCopy streams for 1,000
// writes (the same records as BenchmarkApplyBatchStatement), without
// reflection and without holding the batch's encoding. Reported per row.
func BenchmarkCopyRows(b *testing.B) {
	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	const n = 1000
	writes := make([]Write, n)
	for i := range writes {
		rec, err := events.DecodeRecord(fmt.Appendf(nil, `{"tmdb_id":%d,"title":"Attack on Titan","original_title":"進撃の巨人",
			"overview":"Many years ago, the last remnants of humanity were forced to retreat behind the walls of a fortified city.",
			"first_air_date":"2013-04-07","vote_average":8.7,"vote_count":6000,"genres":["Animation","Action & Adventure"],
			"raw_data":{"id":%d,"origin_country":["JP"]}}`, i+1, i+1))
		if err != nil {
			b.Fatal(err)
		}
		writes[i] = Write{TMDBID: rec.TMDBID, Version: int64(1<<47 + i), UpdatedAt: at, Record: rec}
	}
	buf := make([]byte, 1019) // what pgdriver's pooled write buffer offers a read
	b.ReportAllocs()
	var total int
	for b.Loop() {
		r, err := NewCopyReader(writes)
		if err != nil {
			b.Fatal(err)
		}
		total = 0
		for {
			k, err := r.Read(buf)
			total += k
			if err == io.EOF {
				break
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/row")
	b.ReportMetric(float64(total)/n, "bytes/row")
}
