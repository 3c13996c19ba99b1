package metastore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/anivault/anivault/deployments/local/fixtures"
	"github.com/anivault/anivault/pkg/metastore"
)

// BenchmarkApplyBatchPaths applies batches of fixture-shaped records (about
// 1.2 KiB of JSON each) through both paths, fresh keys every time (as a
// replay writes them), and reports rows per second: CopyMinWrites is where
// COPY starts to win.
//
//	go test -run - -bench ApplyBatchPaths ./pkg/metastore
func BenchmarkApplyBatchPaths(b *testing.B) {
	recs, err := fixtures.Records()
	if err != nil {
		b.Fatal(err)
	}
	s := newStore(b)
	paths := []struct {
		name  string
		apply func(*metastore.Store, context.Context, []metastore.Write) (metastore.Result, error)
	}{{"insert", (*metastore.Store).ApplyBatchInsert}, {"copy", (*metastore.Store).ApplyBatchCopy}}
	next := int64(1)
	for _, size := range []int{1, 8, 16, 32, 64, 128, 1000, 5000} {
		for _, p := range paths {
			b.Run(fmt.Sprintf("%s/%d", p.name, size), func(b *testing.B) {
				ws := make([]metastore.Write, size)
				now := time.Now()
				for b.Loop() {
					b.StopTimer()
					for i := range ws {
						r := recs[int(next)%len(recs)]
						r.TMDBID = next
						ws[i] = metastore.Write{TMDBID: next, Version: next, UpdatedAt: now, Record: &r}
						next++
					}
					b.StartTimer()
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					res, err := p.apply(s, ctx, ws)
					cancel()
					if err != nil || res.Applied != size {
						b.Fatalf("%+v %v", res.Applied, err)
					}
				}
				b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "rows/s")
			})
		}
	}
}
