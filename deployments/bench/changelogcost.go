package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/deployments/load"
	"github.com/anivault/anivault/events"
)

// ChangeLogResult is the cost of the change log (ANIVAULT_CHANGES): disk
// bytes per record and the NATS server's memory, measured by writing
// fixture-shaped records of keys of their own through a cache-node (each
// committed write is logged by the node before it is acknowledged).
type ChangeLogResult struct {
	Records     int // records written (distinct new keys)
	Clients     int // concurrent writers
	RecordBytes int // mean encoded record (the PUT body)
	WriteTime   time.Duration
	Committed   int64
	Buffered    int64

	// Stream info State before and after.
	MsgsBefore, MsgsAfter   uint64
	BytesBefore, BytesAfter uint64
	BytesPerRecord          float64 // (BytesAfter-BytesBefore) / (MsgsAfter-MsgsBefore)
	BytesPer100k            float64

	// One entry as stored: subject, header and payload sizes.
	SampleSubject      string
	SampleHeaders      []string
	SampleHeaderBytes  int
	SamplePayloadBytes int
	SampleRecordBytes  int // the file store's record of it

	// The stream's directory in the JetStream store (empty when not found).
	StreamDir                   string
	DirBefore, DirAfter         dirUsage
	DirPer100k, DirAllocPer100k float64
	Blocks                      int // message block files after

	// Memory of the process that runs the NATS server (the benchmark
	// process: the server is embedded). VmRSS and Go heap in use, each read
	// after a forced GC and returning freed memory to the OS; "settled" is
	// after SettleWait idle, when the file store has dropped its block caches.
	NATSInProcess                   bool
	RSSBefore, RSSAfter, RSSSettled int64
	HeapBefore, HeapAfter           uint64
	HeapSettled                     uint64
	SettleWait                      time.Duration
}

// dirUsage is a directory's files: apparent size and allocated blocks.
type dirUsage struct {
	Files     int
	Apparent  int64
	Allocated int64
}

const changeLogBase = 80_000_000

// directGetHeaders are the headers a direct get adds to the stored message.
var directGetHeaders = map[string]bool{
	"Nats-Stream": true, "Nats-Subject": true, "Nats-Sequence": true, "Nats-Time-Stamp": true,
	"Nats-Num-Pending": true, "Nats-Last-Sequence": true, "Nats-UpTo-Sequence": true,
}

func (r *runner) phaseChangeLog(ctx context.Context) error {
	n := r.cfg.changeLogN
	if n <= 0 {
		return errors.New("--changelog-records must be positive")
	}
	res := &ChangeLogResult{Records: n, Clients: r.cfg.conns, NATSInProcess: true, SettleWait: 11 * time.Second}
	r.rep.ChangeLog = res
	if err := r.waitNormalEmpty(ctx, time.Minute); err != nil {
		return err
	}
	stream, err := r.js.Stream(ctx, events.StreamChanges)
	if err != nil {
		return fmt.Errorf("stream %s: %w", events.StreamChanges, err)
	}
	res.StreamDir = findStreamDir(r.st.NATS.StoreDir(), events.StreamChanges)

	recs := make([]events.Record, n)
	total := 0
	for i := range recs {
		recs[i] = r.record(i, changeLogBase+int64(i))
		b, _ := events.Marshal(&recs[i])
		total += len(b)
	}
	res.RecordBytes = total / n

	info, err := stream.Info(ctx)
	if err != nil {
		return err
	}
	res.MsgsBefore, res.BytesBefore = info.State.Msgs, info.State.Bytes
	res.DirBefore = usage(res.StreamDir)
	res.RSSBefore, res.HeapBefore = selfMemory()
	r.say("change log before: %d entries, %d bytes (stream info); directory %s: %d bytes in %d files; this process (NATS server embedded): RSS %s MiB, Go heap in use %s MiB",
		res.MsgsBefore, res.BytesBefore, res.StreamDir, res.DirBefore.Apparent, res.DirBefore.Files, mib(res.RSSBefore), mibf(float64(res.HeapBefore)))

	r.say("writing %d fixture-shaped records (mean %d bytes, keys %d…) through %s, %d clients", n, res.RecordBytes, changeLogBase, r.nodeA.ID, r.cfg.conns)
	gen, err := load.New(load.Config{Nodes: []string{r.nodeA.URL()}, Records: recs})
	if err != nil {
		return err
	}
	t0 := time.Now()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	err = gen.WriteAll(wctx, r.cfg.conns)
	cancel()
	res.WriteTime = time.Since(t0)
	c := gen.Counters()
	res.Committed, res.Buffered = c.Committed, c.Buffered
	if err != nil {
		return fmt.Errorf("write: %w", err)
	}
	r.say("  %d committed, %d buffered in %v", res.Committed, res.Buffered, res.WriteTime.Round(time.Millisecond))

	// Every write is in the log before it is acknowledged; wait anyway for
	// the count, in case a fast-path write is logged late.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if info, err = stream.Info(ctx); err != nil {
			return err
		}
		if info.State.Msgs >= res.MsgsBefore+uint64(n) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	res.MsgsAfter, res.BytesAfter = info.State.Msgs, info.State.Bytes
	if d := res.MsgsAfter - res.MsgsBefore; d > 0 {
		res.BytesPerRecord = float64(res.BytesAfter-res.BytesBefore) / float64(d)
		res.BytesPer100k = res.BytesPerRecord * 100_000
	}
	res.DirAfter = usage(res.StreamDir)
	if d := res.MsgsAfter - res.MsgsBefore; d > 0 {
		res.DirPer100k = float64(res.DirAfter.Apparent-res.DirBefore.Apparent) / float64(d) * 100_000
		res.DirAllocPer100k = float64(res.DirAfter.Allocated-res.DirBefore.Allocated) / float64(d) * 100_000
	}
	if res.StreamDir != "" {
		blks, _ := filepath.Glob(filepath.Join(res.StreamDir, "msgs", "*.blk"))
		res.Blocks = len(blks)
	}
	if m, err := stream.GetLastMsgForSubject(ctx, events.ChangeSubject(changeLogBase)); err == nil {
		res.SampleSubject, res.SamplePayloadBytes = m.Subject, len(m.Data)
		// The stored headers: a direct get adds the Nats-Stream, -Subject,
		// -Sequence and -Time-Stamp (and pending counts) of its reply.
		for k, vs := range m.Header {
			if directGetHeaders[k] {
				continue
			}
			res.SampleHeaders = append(res.SampleHeaders, k)
			for _, v := range vs {
				res.SampleHeaderBytes += len(k) + 2 + len(v) + 2 // "Key: value\r\n"
			}
		}
		slices.Sort(res.SampleHeaders)
		if res.SampleHeaderBytes > 0 {
			res.SampleHeaderBytes += len("NATS/1.0\r\n") + 2
			// The file store's record: length, sequence, time stamp, subject
			// length, subject, header length, headers, payload, hash.
			res.SampleRecordBytes = 22 + len(m.Subject) + 4 + res.SampleHeaderBytes + len(m.Data) + 8
		} else {
			res.SampleRecordBytes = 22 + len(m.Subject) + len(m.Data) + 8
		}
	} else if !errors.Is(err, jetstream.ErrMsgNotFound) {
		r.say("  sample entry: %v", err)
	}
	res.RSSAfter, res.HeapAfter = selfMemory()
	r.say("change log after: %d entries (+%d), %d bytes (+%d): %.0f bytes per record, %s MB per 100,000 records; directory +%d bytes apparent, +%d allocated; RSS %s MiB, heap %s MiB",
		res.MsgsAfter, res.MsgsAfter-res.MsgsBefore, res.BytesAfter, res.BytesAfter-res.BytesBefore, res.BytesPerRecord, mbf(res.BytesPer100k),
		res.DirAfter.Apparent-res.DirBefore.Apparent, res.DirAfter.Allocated-res.DirBefore.Allocated, mib(res.RSSAfter), mibf(float64(res.HeapAfter)))
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(res.SettleWait):
	}
	res.RSSSettled, res.HeapSettled = selfMemory()
	r.say("  after %v idle: RSS %s MiB, heap %s MiB", res.SettleWait, mib(res.RSSSettled), mibf(float64(res.HeapSettled)))
	return nil
}

// selfMemory returns this process's VmRSS and Go heap in use after a forced
// GC that also returns freed memory to the OS.
func selfMemory() (int64, uint64) {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, _ := procStatus(os.Getpid(), "VmRSS")
	return rss, ms.HeapInuse
}

// findStreamDir finds the directory of a stream in a JetStream store
// (<store>/jetstream/<account>/streams/<name>).
func findStreamDir(store, name string) string {
	var found []string
	_ = filepath.WalkDir(store, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && d.Name() == name && filepath.Base(filepath.Dir(p)) == "streams" {
			found = append(found, p)
			return filepath.SkipDir
		}
		return nil
	})
	slices.Sort(found)
	if len(found) == 0 {
		return ""
	}
	return found[0]
}

func usage(dir string) dirUsage {
	var u dirUsage
	if dir == "" {
		return u
	}
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		u.Files++
		u.Apparent += fi.Size()
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			u.Allocated += st.Blocks * 512
		}
		return nil
	})
	return u
}

// mbf formats bytes as decimal megabytes.
func mbf(b float64) string { return fmt.Sprintf("%.1f", b/1e6) }

// renderChangeLog writes the report's change log section.
func renderChangeLog(p func(string, ...any), c *ChangeLogResult) {
	d := float64(c.MsgsAfter - c.MsgsBefore)
	per := func(delta float64) string {
		if d <= 0 {
			return "– | –"
		}
		return fmt.Sprintf("%s bytes | **%s MB**", num(delta/d), mbf(delta/d*100_000))
	}
	p("## 1b. Change log cost (ANIVAULT_CHANGES)\n\n")
	p("%s fixture-shaped records (the fixture records cycled, each under a key of its own from %s, mean %s bytes encoded) were written once each through node-1 with PUT, %d clients at a time: %s committed, %s buffered, in %s (%s writes/s). ",
		commas(int64(c.Records)), commas(changeLogBase), commas(int64(c.RecordBytes)), c.Clients, commas(c.Committed), commas(c.Buffered), secs(c.WriteTime), num(float64(c.Committed+c.Buffered)/maxf(c.WriteTime.Seconds(), 1e-9)))
	p("The node logs every durable write to `changes.<tmdb_id>` (file storage, `MaxMsgsPerSubject` 1, `AllowDirect`) before it answers, so each new key adds one entry; the figures are the differences before and after, scaled linearly to 100,000 records.\n\n")
	p("| | before | after | difference | per record | per 100,000 records |\n| --- | ---: | ---: | ---: | ---: | ---: |\n")
	p("| stream entries (stream info `State.Msgs`) | %s | %s | %s | | |\n", commas(int64(c.MsgsBefore)), commas(int64(c.MsgsAfter)), commas(int64(c.MsgsAfter-c.MsgsBefore)))
	p("| stream bytes (stream info `State.Bytes`) | %s | %s | %s | %s |\n", commas(int64(c.BytesBefore)), commas(int64(c.BytesAfter)), commas(int64(c.BytesAfter-c.BytesBefore)), per(float64(c.BytesAfter-c.BytesBefore)))
	if c.StreamDir != "" {
		p("| stream directory on disk, sum of file sizes (%d files, %d message blocks after) | %s | %s | %s | %s |\n", c.DirAfter.Files, c.Blocks, commas(c.DirBefore.Apparent), commas(c.DirAfter.Apparent), commas(c.DirAfter.Apparent-c.DirBefore.Apparent), per(float64(c.DirAfter.Apparent-c.DirBefore.Apparent)))
		p("| stream directory on disk, allocated blocks (`du`) | %s | %s | %s | %s |\n", commas(c.DirBefore.Allocated), commas(c.DirAfter.Allocated), commas(c.DirAfter.Allocated-c.DirBefore.Allocated), per(float64(c.DirAfter.Allocated-c.DirBefore.Allocated)))
	}
	settled := func(delta float64) string {
		if d <= 0 {
			return "–"
		}
		return fmt.Sprintf("%s bytes (settled) | **%+.1f MiB** (settled)", num(delta/d), delta/d*100_000/(1<<20))
	}
	p("| NATS server's process RSS (`VmRSS` of the benchmark process, which embeds the server) | %s MiB | %s MiB, %s MiB after %s idle | %+.1f MiB, %+.1f MiB settled | %s |\n",
		mib(c.RSSBefore), mib(c.RSSAfter), mib(c.RSSSettled), c.SettleWait, float64(c.RSSAfter-c.RSSBefore)/(1<<20), float64(c.RSSSettled-c.RSSBefore)/(1<<20), settled(float64(c.RSSSettled-c.RSSBefore)))
	p("| Go heap in use of that process | %s MiB | %s MiB, %s MiB after %s idle | %+.1f MiB, %+.1f MiB settled | %s |\n\n",
		mibf(float64(c.HeapBefore)), mibf(float64(c.HeapAfter)), mibf(float64(c.HeapSettled)), c.SettleWait,
		(float64(c.HeapAfter)-float64(c.HeapBefore))/(1<<20), (float64(c.HeapSettled)-float64(c.HeapBefore))/(1<<20), settled(float64(c.HeapSettled)-float64(c.HeapBefore)))
	if c.SampleSubject != "" {
		p("One entry as stored (the first key, fixture record 0): subject `%s` (%d bytes), headers %d bytes (%s; `AniVault-Deleted` on a tombstone), payload %s bytes (the `metadata.changed` JSON with the record), %s bytes in all as the file store's record (+%d bytes: length, sequence, time stamp, subject and header lengths, hash), which is what `State.Bytes` adds up. ",
			c.SampleSubject, len(c.SampleSubject), c.SampleHeaderBytes, "`"+strings.Join(c.SampleHeaders, "`, `")+"`", commas(int64(c.SamplePayloadBytes)), commas(int64(c.SampleRecordBytes)),
			c.SampleRecordBytes-len(c.SampleSubject)-c.SampleHeaderBytes-c.SamplePayloadBytes)
	}
	if slices.Contains(c.SampleHeaders, "Nats-Expected-Last-Subject-Sequence") {
		p("(`Nats-Expected-Last-Subject-Sequence` is the node's compare-and-set condition on the publish; the server keeps it in the stored entry.) ")
	}
	if c.StreamDir != "" {
		p("The directory is `%s` under the JetStream store (message blocks `msgs/*.blk` and their index, `meta.inf`, the consumers' state in `obs/`); it also holds records of deleted messages until a block is compacted, which a stream of new keys has none of. ", c.StreamDir)
	}
	if c.NATSInProcess {
		p("Memory: the NATS server runs embedded in the benchmark process (as in `go tool task demo`), so RSS and heap are that process's, read after a forced GC that returned freed memory to the OS (`runtime.GC` + `debug.FreeOSMemory`); the load generator's goroutines are idle between phases, so the difference is the NATS server's: the file store's per-subject index and subject tree for the new keys, and the message block cache, which the file store drops after 10 s without access (hence the second reading after %s idle). The cache-nodes' own index of the log (one map entry per record in each node) is not in these figures.\n\n", c.SettleWait)
	}
}
