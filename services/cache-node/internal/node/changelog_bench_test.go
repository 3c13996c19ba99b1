package node

import (
	"context"
	"io"
	"log/slog"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/natsembed"
	"github.com/anivault/anivault/pkg/topology"
)

// BenchmarkChangeLogFollowerLoad measures what a node pays at start for a
// catalogue of 100,000 records in the change log: the time its follower
// takes to index every record (headers only) and prove itself current, and
// the heap its index holds. Run with -benchtime=1x; the seeding publishes
// without fsync to keep the set-up short.
func BenchmarkChangeLogFollowerLoad(b *testing.B) {
	const records = 100_000
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	srv, err := natsembed.Start(ctx, natsembed.Options{StoreDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown()
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	top, err := topology.New(js, events.NewSubjects(""))
	if err != nil {
		b.Fatal(err)
	}
	if err := top.EnsureWrites(ctx, topology.BufferLimits{}); err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, 1400) // about a fixture record's entry
	for id := int64(1); id <= records; id++ {
		msg := nats.NewMsg(events.ChangeSubject(id))
		msg.Data = payload
		msg.Header.Set(events.HeaderVersion, strconv.FormatInt(id<<12, 10))
		if _, err := js.PublishMsgAsync(msg); err != nil {
			b.Fatal(err)
		}
		if id%10_000 == 0 {
			select {
			case <-js.PublishAsyncComplete():
			case <-ctx.Done():
				b.Fatal("seeding timed out")
			}
		}
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	b.ResetTimer()
	for range b.N {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		start := time.Now()
		l := newChangeLog(events.NewSubjects(""), "bench", 5*time.Second, log)
		if err := l.attach(ctx, js); err != nil {
			b.Fatal(err)
		}
		fctx, fcancel := context.WithCancel(ctx)
		go l.run(fctx)
		for !l.current() || l.keys() < records {
			if ctx.Err() != nil {
				b.Fatalf("follower indexed %d of %d", l.keys(), records)
			}
			time.Sleep(5 * time.Millisecond)
		}
		elapsed := time.Since(start)
		fcancel()
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(elapsed.Seconds(), "s-to-current")
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/records, "index-B/record")
		runtime.KeepAlive(l)
	}
}
