package main

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// closingNote quotes every figure with the machine it ran on and, for each
// goal not met, says what the measurements and profiles show and what
// would close the gap.
func closingNote(rep *Report) string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	m := rep.Machine
	p("## Closing note\n\n")
	p("Measured on %s, %d logical cores, %.0f GiB, Linux %s, %s, PostgreSQL %s, nats-server %s; load average %s at the start and %s at the end (the machine ran other jobs at the same time, so every figure carries their noise; the CPU columns show how much of the machine they took).\n\n",
		m.CPUModel, m.Cores, m.MemTotalGiB, m.Kernel, m.GoVersion, pgShort(m.PostgresVersion), m.NATSVersion, m.LoadAvgStart, m.LoadAvgEnd)

	if r := rep.Reads; r != nil {
		srvH, _, benchH := r.Hits.CPUPerOp()
		srvC, _, _ := r.Ceiling.CPUPerOp()
		srvD, pgD, benchD := r.DB.CPUPerOp()
		p("- **Reads.** Cache hits %s req/s (p50 %s, p99 %s) against %s req/s for the bare handler: **%.2f of the ceiling** (goal %.2f, %s). Against %s req/s with every read from PostgreSQL: **%.1f×** (goal 5×, %s).",
			num(r.Hits.RPS()), ms(r.Hits.P50), ms(r.Hits.P99), num(r.Ceiling.RPS()), r.HitsOverCeiling, readGoalRatio, metWord(r.HitsOverCeiling >= readGoalRatio), num(r.DB.RPS()), r.HitsOverDB, metWord(r.HitsOverDB >= 5))
		if srvH > 0 && srvD > 0 {
			p(" Server-side CPU per request: %.0f µs in the node for a hit (the bare handler: %.0f µs), %.0f µs in the node plus %.0f µs in PostgreSQL for a database read, so the database path costs **%.1f×** the CPU of a hit.",
				srvH, srvC, srvD, pgD, (srvD+pgD)/srvH)
			if r.HitsOverDB < 5 {
				p(" The throughput ratio is smaller than that because the load generator runs on the same %d cores and spends %.0f–%.0f µs of CPU per request whatever the path, and other processes took part of the machine: the cache path is not what is slow here. What would close the gap as measured: the load generator on cores (or a machine) of its own, so that throughput follows server-side cost; on this machine nothing in the cache path would, since a hit already costs only %.0f µs more than the bare handler.",
					m.Cores, benchH, benchD, srvH-srvC)
			}
		}
		if rp := r.Replica; rp.Ops > 0 {
			srvR, _, _ := rp.CPUPerOp()
			p(" In cache-only mode a read the cache cannot answer comes from the change log: **replica reads %s req/s (p50 %s, p99 %s)**, beside cache hits %s req/s (p50 %s, p99 %s) and database reads %s req/s (p50 %s, p99 %s), all three driven by wrk in the same run; %.2f× the database path",
				num(rp.RPS()), ms(rp.P50), ms(rp.P99), num(r.Hits.RPS()), ms(r.Hits.P50), ms(r.Hits.P99), num(r.DB.RPS()), ms(r.DB.P50), ms(r.DB.P99), r.ReplicaOverDB)
			if srvR > 0 {
				_, _, benchR := rp.CPUPerOp()
				p(", at %.0f µs of node CPU per read; the direct get itself is answered by the NATS server, which runs in the bench process: that column (wrk plus the server) is %.0f µs per replica read against %.0f µs per cache hit", srvR, benchR, benchH)
			}
			p(".")
			if !r.ReplicaChecked {
				p(" **Some reads of the replica runs were not served from the change log** (see the table).")
			}
		}
		p("\n")
	}
	if c := rep.ChangeLog; c != nil && c.MsgsAfter > c.MsgsBefore {
		d := float64(c.MsgsAfter - c.MsgsBefore)
		p("- **Change log cost.** Every durable write is also an entry of `ANIVAULT_CHANGES`, one per record (the last write): with records of %s bytes it takes **%s MB of stream bytes per 100,000 records** (%.0f bytes per record, from %s records written)",
			commas(int64(c.RecordBytes)), mbf(c.BytesPer100k), c.BytesPerRecord, commas(int64(c.Records)))
		if c.StreamDir != "" {
			p(" and **%s MB on disk** (%s MB allocated)", mbf(c.DirPer100k), mbf(c.DirAllocPer100k))
		}
		p("; the NATS server (embedded in the benchmark process, so measured as that process after a forced GC) grew by %+.1f MiB of RSS and %+.1f MiB of Go heap right after the writes (its block caches), and kept %+.1f MiB of RSS and %+.1f MiB of heap once those expired: **about %s MiB of heap (%s MiB RSS) per 100,000 records** that stay (mostly the file store's per-subject state).\n",
			float64(c.RSSAfter-c.RSSBefore)/(1<<20), (float64(c.HeapAfter)-float64(c.HeapBefore))/(1<<20),
			float64(c.RSSSettled-c.RSSBefore)/(1<<20), (float64(c.HeapSettled)-float64(c.HeapBefore))/(1<<20),
			mibf((float64(c.HeapSettled)-float64(c.HeapBefore))/d*100_000), mibf(float64(c.RSSSettled-c.RSSBefore)/d*100_000))
	}
	if w := rep.Writes; w != nil {
		srvB, _, _ := w.Buffered.CPUPerOp()
		_, _, benchJ := w.RawJetStream.CPUPerOp()
		p("- **Writes.** Committed %s writes/s (p99 %s), buffered %s writes/s (p99 %s), raw JetStream %s messages/s, raw PostgreSQL upserts %s rows/s. Group commit put %.1f writes in each buffer message. **Buffered / raw JetStream = %.2f×** (goal 2×, %s).",
			num(w.Committed.RPS()), ms(w.Committed.P99), num(w.Buffered.RPS()), ms(w.Buffered.P99), num(w.RawJetStream.RPS()), num(w.RawPostgres.RPS()), w.WritesPerMsg, w.BufferedOverRawJS, metWord(w.BufferedOverRawJS >= 2))
		if srvB > 0 {
			ours := func(s runStats) (float64, float64) {
				if s.CPU == nil || s.CPU.Wall == 0 {
					return 0, 0
				}
				return (s.CPU.Bench + s.CPU.Server + s.CPU.Postgres) / s.CPU.Wall, s.CPU.Other / s.CPU.Wall
			}
			oB, xB := ours(w.Buffered)
			oJ, xJ := ours(w.RawJetStream)
			p(" Group commit did its part: JetStream stored and fsynced %.1f× fewer messages than writes. The two runs are limited by different things. The raw publish waits on fsync (the SyncAlways server fsyncs every message; %s messages/s is far below the %s fsyncs/s the disk did for one writer at the start, the disk being shared with other jobs): it kept only %.2f cores busy in our processes (other processes %.2f). The buffered run is CPU-bound: our processes used %.2f cores (other processes %.2f of the %d), and the node alone spends **%.0f µs of CPU per buffered write** (the raw publish: %.0f µs per message, client and server together). So the ratio depends on how much CPU the other jobs on this machine leave to the node (compare the rounds), and it moves with that background load.",
				w.WritesPerMsg, num(w.RawJetStream.RPS()), num(1e6/maxf(rep.Machine.FsyncMicros, 1)), oJ, xJ, oB, xB, rep.Machine.Cores, srvB, benchJ)
			if w.BufferedOverRawJS < 2 {
				p(" What would close it is less CPU per write in the node.")
			} else {
				p(" What would make it hold with room to spare is less CPU per write in the node.")
			}
			p(" Where the node's CPU goes: the in-process equivalent of one PUT's CPU besides I/O is `BenchmarkWritePathCPU` (%s), of which `events.DecodeRecord` takes %s (`BenchmarkRecordDecodeValidate`); the rest is HTTP, NATS and GC (see the profiles). What keeps it down: the record is encoded once per write and its bytes reused by the buffer message, the cache entry and `metadata.changed`; the strict decoder checks keys and `raw_data` with byte scanners over the validated JSON instead of two more tokenizing passes, and re-encodes only `updated_at` (the one field that can decode and not encode); and a node skips its own `metadata.changed` by a header before decoding it.",
				microNs(allBenchOutput(rep), "BenchmarkWritePathCPU"), microNs(rep.Micro, "BenchmarkRecordDecodeValidate"))
			if m := regexp.MustCompile(`(?m)^\s*([\d.]+)%\s+[\d.]+%\s+\[\.\] \S*\(\*Node\)\.handleChanged$`).FindStringSubmatch(w.NodePerfProfile); m != nil {
				p(" A waste found in the same profile: with a single node running, `handleChanged` appears in %s%% of the node's samples (perf's inclusive figure; call chains overlap, so read it as an order of magnitude), even though the node now skips its own events by their header before decoding: what remains is the watermill router's per-message cost (one goroutine hand-off and an ack per event). A per-node subject, or a plain core subscription for these events, would save it.", m[1])
			}
		}
		p("\n")
	}
	closeCommitted(p, rep)
	closeIngest(p, rep)
	if r := rep.Replay; r != nil && r.Default != nil {
		p("- **Replay.** %s buffered writes (%d per message) replayed in %s (`recovering` → `normal`, %s rows/s), against %s for the set-based ceiling (%s rows/s; COPY of the same rows %s) and %s (extrapolated from %s rows) one row at a time: **%.2f of the ceiling** (goal ≥ %s rows/s and ≥ 0.5, %s).",
			commas(int64(r.Writes)), r.WritesPerMsg, secs(r.Default.RecoveringToNormal), num(r.RowsPerSec()), secs(r.Ceiling), num(r.CeilingRowsPerSec()), secs(r.CopyCeiling), secs(r.NaiveExtrap), commas(int64(r.NaiveN)), r.Ratio,
			num(replayGoalRowsPerSec), metWord(r.RowsPerSec() >= replayGoalRowsPerSec && r.Ratio >= 0.5))
		if r.Default.ReplayErrors > 0 {
			p(" The node logged %d replay errors on the way (`%s`).", r.Default.ReplayErrors, firstLine(r.Default.ReplayErrorSample))
		}
		if c, cc := r.Default.CPU, r.CeilingCPU; c.Wall > 0 && cc.Wall > 0 {
			n := float64(r.Writes)
			p(" CPU per row: the replay took %.0f µs in the node, %.0f µs in PostgreSQL and %.0f µs in the bench process (the NATS server: fetches and acknowledgements); the ceiling %.0f µs in PostgreSQL and %.0f µs in the bench process (encoding the COPY rows). Other processes took %.2f cores during the replay and %.2f during the ceiling.",
				c.Server/n*1e6, c.Postgres/n*1e6, c.Bench/n*1e6, cc.Postgres/n*1e6, cc.Bench/n*1e6, c.Other/c.Wall, cc.Other/cc.Wall)
		}
		if len(r.Trials) > 0 {
			p(" Other paces:")
			for _, t := range r.Trials {
				p(" REPLAY_BATCH_SIZE=%d took %s (%.2f of the ceiling, %d errors)", t.BatchSize, secs(t.RecoveringToNormal), r.Ceiling.Seconds()/t.RecoveringToNormal.Seconds(), t.ReplayErrors)
				if t.TimedOut {
					p(" without finishing")
				}
				p(";")
			}
		}
		if bg := r.Big; bg != nil && bg.Run != nil {
			if bg.Run.TimedOut || bg.Run.ReplayErrors > 0 {
				p(" A problem (service code, not changed here): `REPLAY_BATCH_SIZE` counts buffer messages, not writes, and with group commit a fetch of 500 messages holds up to 500 × 256 = 128,000 rows, while each replay statement runs under the per-request `DB_TIMEOUT` budget (pool read timeout and context).")
				if bg.Run.TimedOut {
					p(" Measured: %s writes in messages of %d hit the timeout %d times (`%s`) and **did not finish within %s**; the batch is retried whole each time and the abandoned statements keep running in PostgreSQL, so the system stays in `recovering` (writes still accepted, nothing lost, the buffer does not drain). A restart with REPLAY_BATCH_SIZE=%d finished it in %s.",
						commas(int64(bg.Run.Writes)), bg.PerMsg, bg.Run.ReplayErrors, firstLine(bg.Run.ReplayErrorSample), ms(bg.Limit), bg.Run.RescueBatchSize, ms(bg.Run.RescueTime))
				} else {
					p(" Measured: %s writes in messages of %d replayed in %s after %d timeouts (`%s`).",
						commas(int64(bg.Run.Writes)), bg.PerMsg, ms(bg.Run.RecoveringToNormal), bg.Run.ReplayErrors, firstLine(bg.Run.ReplayErrorSample))
				}
				p(" What would close it: cap the rows of one replay statement (a fetch applied in chunks of at most a few thousand rows, each with its own budget, the messages acknowledged once all their writes committed), halve the chunk after a timeout, and set `statement_timeout` so that an abandoned statement stops in PostgreSQL too.")
			} else {
				p(" Large group-committed messages: %s writes in messages of %d (a fetch is bounded by `REPLAY_MAX_BYTES`) replayed in %s without a single timeout. This experiment checks that a replay of the largest messages finishes within the per-request `DB_TIMEOUT`: the cache-node applies a fetch in statements of at most 1,000 rows, each with its own budget, and its connections carry `statement_timeout` (the request budget plus one second), so that a statement abandoned by a timeout also stops in PostgreSQL.",
					commas(int64(bg.Run.Writes)), bg.PerMsg, ms(bg.Run.RecoveringToNormal))
			}
		}
		closeReplay(p, rep)
		p("\n")
	}
	if d := rep.Detect; d != nil {
		p("- **Detection and recovery.** PostgreSQL killed → `cache_only` on every node in **%s** (bound %s = %s × %d; `db.unhealthy` at %s). With %s writes buffered (all answered 202 in %s), PostgreSQL took %s to come back (crash recovery), then `db.recovered` %s, `recovering` %s and **`normal` on every node %s** after it answered; %s of the %s rows were there afterwards.\n",
			ms(d.KillToAll), ms(d.Bound), healthInterval, healthThreshold, ms(d.KillToUnhealthy), commas(int64(d.BufferedN)), ms(d.BufferTime), ms(d.PGStart), ms(d.UpToRecovered), ms(d.UpToRecovering), ms(d.UpToAll), commas(int64(d.RowsFound)), commas(int64(d.BufferedN)))
	}
	if mm := rep.Memory; mm != nil && len(mm.Runs) > 0 {
		r0 := mm.Runs[0]
		p("- **Memory.** With %s records of %d bytes offered and `CACHE_MAX_MEMORY_MB=100` (the node's budget: the cache may hold three quarters of it less the change log's index, here %s records, so a bound of %s MiB, counted with each entry's bookkeeping, and the Go memory limit is the budget), the cache held %s MiB accounted in %s entries (%s evictions) and the node's RSS was **%s MiB** (peak %s MiB; goal ≤ 110 MiB, %s)",
			commas(int64(mm.Records)), mm.RecordBytes, commas(r0.Indexed), mibf(r0.CacheBound), mibf(float64(r0.CacheBytes)), commas(r0.CacheSize), commas(r0.Evictions), mib(r0.RSS), mib(r0.HWM), metWord(r0.WithinBound))
		for _, r := range mm.Runs[1:] {
			p("; with %s it was **%s MiB** (%.0f GC cycles instead of %.0f, %.1f s of node CPU instead of %.1f s)", r.Label, mib(r.RSS), r.GCCycles, r0.GCCycles, r.CPU, r0.CPU)
		}
		p(".")
		if r0.CacheSize > 0 {
			p(" Under the limit the heap in use settles at %s MiB: %.0f bytes per cached entry for %.0f accounted.", mibf(r0.HeapInuse), r0.HeapInuse/float64(r0.CacheSize), float64(r0.CacheBytes)/float64(r0.CacheSize))
		}
		for _, pr := range rep.Profiles {
			if pr.Goal != "memory" {
				continue
			}
			live := regexp.MustCompile(`([\d.]+) live-heap-MiB`).FindStringSubmatch(pr.Text)
			beyond := regexp.MustCompile(`([\d.]+) heap-bytes-per-entry-beyond-body`).FindStringSubmatch(pr.Text)
			acc := regexp.MustCompile(`([\d.]+) accounted-MiB`).FindStringSubmatch(pr.Text)
			if live != nil && beyond != nil && acc != nil {
				p(" In process (`BenchmarkCacheFull2KiB`, after a forced GC), a cache accounting %s MiB holds a live heap of **%s MiB**, %s bytes per entry beyond the encoded record", acc[1], live[1], beyond[1])
				if v, _ := strconv.ParseFloat(live[1], 64); v > 110 {
					p(": the live heap alone is above the bound plus 10 %%, before any GC headroom or runtime.")
				} else {
					p(": the live heap alone nearly fills the bound plus 10 %%, leaving nothing for GC headroom or the runtime.")
				}
			}
		}
		if !r0.WithinBound {
			p(" RSS is above the goal although the cache's count is an upper bound of its heap: the rest is the idle process (%s MiB RSS before any record), the garbage between two collections and the resident binary. What would close it: a larger share of the budget for the rest of the process (a smaller cache), at the price of fewer cached records.",
				mib(r0.RSSIdle))
		}
		p("\n")
	}
	if t := rep.Timeline; t != nil {
		p("- **Outage under load.** %s writes acknowledged through a PostgreSQL SIGKILL, restart and replay (%s committed, %s buffered), **%d write errors and %d lost**; %s; normal on every node %s after PostgreSQL was started again.\n",
			commas(t.Tally.Acknowledged), commas(t.Counters.Committed), commas(t.Counters.Buffered), t.Counters.WriteErrors, t.Tally.Lost, readsUnavail(t.Counters.ReadUnavailable), secs(t.NormalAt-t.StartCalledAt))
	}
	if rep.Micro != "" {
		p("- **Micro-benchmarks** (medians of five runs, section 7): record encode %s, decode and validate %s, validate alone %s, cache-hit read path in process %s against %s for the bare handler.\n",
			microNs(rep.Micro, "BenchmarkRecordEncode"), microNs(rep.Micro, "BenchmarkRecordDecodeValidate"), microNs(rep.Micro, "BenchmarkRecordValidate"),
			microNs(rep.Micro, "BenchmarkReadPath/node"), microNs(rep.Micro, "BenchmarkReadPath/bare"))
	}
	p("\n")
	return b.String()
}

func metWord(ok bool) string {
	if ok {
		return "met"
	}
	return "**not met**"
}

func firstLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " / ")
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}

func pgShort(v string) string {
	f := strings.Fields(v)
	if len(f) >= 2 {
		return f[1]
	}
	return v
}

// microNs returns the median ns/op of a benchmark in go test output, formatted.
func microNs(out, name string) string {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(-\d+)?\s+\d+\s+([\d.]+) ns/op`)
	var vals []float64
	for _, m := range re.FindAllStringSubmatch(out, -1) {
		if v, err := strconv.ParseFloat(m[2], 64); err == nil {
			vals = append(vals, v)
		}
	}
	if len(vals) == 0 {
		return "–"
	}
	// median
	for i := range vals {
		for j := i + 1; j < len(vals); j++ {
			if vals[j] < vals[i] {
				vals[i], vals[j] = vals[j], vals[i]
			}
		}
	}
	v := time.Duration(vals[len(vals)/2])
	switch {
	case v < time.Microsecond:
		return fmt.Sprintf("%.0f ns", float64(v))
	default:
		return fmt.Sprintf("%.1f µs", float64(v)/1e3)
	}
}

func readsUnavail(n int64) string {
	if n == 0 {
		return "no read was refused (every key read was cached on both nodes)"
	}
	return commas(n) + " reads of keys not cached on the node asked were answered 503 while PostgreSQL was down, as the contract says"
}

// allBenchOutput is the micro-benchmark output and the profiles' benchmark lines.
func allBenchOutput(rep *Report) string {
	var b strings.Builder
	b.WriteString(rep.Micro)
	for _, p := range rep.Profiles {
		b.WriteString("\n" + p.Text)
	}
	return b.String()
}

// closeCommitted says what limits committed writes and what would close
// their goal.
func closeCommitted(p func(string, ...any), rep *Report) {
	w := rep.Writes
	if w == nil || w.CommittedGroup.RPS() == 0 {
		return
	}
	g := w.CommittedGroup
	srv, pg, _ := g.CPUPerOp()
	busy := 0.0
	if g.CPU != nil && g.CPU.Wall > 0 {
		busy = g.CPU.Machine / g.CPU.Wall / float64(rep.Machine.Cores)
	}
	met := g.RPS() >= committedGoalPerSec && g.P99 <= committedGoalP99
	p("- **Committed writes.** %s writes/s with group commit (`DB_GROUP_COMMIT_MAX=%d`, p50 %s, p99 %s) and %s one by one, against %s single-row upserts/s straight into PostgreSQL (goal ≥ %s/s with p99 ≤ %s, %s).",
		num(g.RPS()), w.GroupCommitMax, ms(g.P50), ms(g.P99), num(w.Committed.RPS()), num(w.RawPostgres.RPS()), num(committedGoalPerSec), ms(committedGoalP99), metWord(met))
	if met {
		p("\n")
		return
	}
	p(" Each write waits for two fsync'd stores one after the other: its group's statement commits in PostgreSQL, then its change-log entry's atomic batch is stored in JetStream, and only then is it answered; with %d clients a write took %s at the median, so %d clients cannot go past %s writes/s whatever the CPU. The machine was %.0f %% busy; the node spent %.0f µs and PostgreSQL %.0f µs of CPU per write.",
		g.Clients, ms(g.P50), g.Clients, num(float64(g.Clients)/maxf(g.P50.Seconds(), 1e-9)), busy*100, srv, pg)
	p(" What would close it: one durable store per write on the answer's path instead of two in a row, e.g. the change log as the write-ahead log of committed writes (a write answered once its entry is stored, the table brought up to date from the log in set-based statements, as the replay does, and a read of a key whose log is ahead of the table served from the log); %s writes/s with %d clients needs a write answered in %s.\n",
		num(committedGoalPerSec), g.Clients, ms(time.Duration(float64(g.Clients)/committedGoalPerSec*float64(time.Second))))
}

// closeIngest says what limits producer ingest and what would close its goal.
func closeIngest(p func(string, ...any), rep *Report) {
	g := rep.Ingest
	if g == nil || len(g.Runs) == 0 {
		return
	}
	best := g.Runs[0]
	for _, r := range g.Runs[1:] {
		if r.RowsPerSec > best.RowsPerSec {
			best = r
		}
	}
	met := best.RowsPerSec >= ingestGoalPerSec && best.LastRounds == g.Keys
	p("- **Producer ingest.** %s `metadata.upsert` records applied at %s records/s (%s), every key holding its last write: %d of %d (goal ≥ %s/s, %s).",
		commas(int64(g.Records)), num(best.RowsPerSec), best.Label, best.LastRounds, g.Keys, num(ingestGoalPerSec), metWord(met))
	if met || best.CPU.Wall == 0 {
		p("\n")
		return
	}
	n := float64(g.Records)
	c := best.CPU
	p(" CPU per record: %.0f µs in the node, %.0f µs in PostgreSQL, %.0f µs in the bench process (the NATS server: delivery, acknowledgement and the change log), %.0f µs on the whole machine; %s records/s on %d cores leaves at most %.0f µs of machine CPU per record.",
		c.Server/n*1e6, c.Postgres/n*1e6, c.Bench/n*1e6, c.Machine/n*1e6, num(ingestGoalPerSec), rep.Machine.Cores, float64(rep.Machine.Cores)/ingestGoalPerSec*1e6)
	if len(g.Ceilings) > 0 {
		var parts []string
		for _, c := range g.Ceilings {
			parts = append(parts, fmt.Sprintf("%s messages/s from a %s stream", num(c.PerSec), c.Retention))
		}
		p(" The NATS server alone drains these records at %s.", strings.Join(parts, " and "))
	}
	p(" The stream is no longer the limit (a work queue would be: one fsync per acknowledgement); the CPU spent per record is. Each record is one message through the watermill router: delivered, strictly decoded, handled and acknowledged one by one, its upsert and change-log entry grouped with others' only inside the node (up to 256 at once). What would close it: the writer consumer read in batches without the router (a fetch of hundreds of messages decoded in one pass, one set-based statement and one change-log batch for all of them, per key the newest version, pipelined acknowledgements), as the replay reads the buffer, and a cheaper strict decoder (the profile above).\n")
}

// closeReplay says what limits the replay and what would close its goal.
func closeReplay(p func(string, ...any), rep *Report) {
	r := rep.Replay
	c := r.Default.CPU
	if r.Ratio >= 0.5 && r.RowsPerSec() >= replayGoalRowsPerSec || c.Wall == 0 {
		return
	}
	n := float64(r.Writes)
	perRow := (c.Server + c.Postgres + c.Bench) / n * 1e6
	bulk := (r.CopyCeiling + r.Ceiling).Seconds()
	p(" What limits it: the node stages each chunk with COPY and merges it, so one connection cannot beat COPY plus upsert of the same rows (%s rows/s, %.2f of the upsert alone); the replay's two appliers reach %.2f of that. Node, PostgreSQL and NATS together spend %.0f µs of CPU per row, so these %d cores could not replay more than %s rows/s fully busy (they were %.0f %% busy). What would close it: less CPU per row (the merge without a staging copy, e.g. the rows as one binary array parameter; the buffer decoded without reflection), then a third applier for the idle share.",
		num(n/maxf(bulk, 1e-9)), r.Ceiling.Seconds()/maxf(bulk, 1e-9), r.RowsPerSec()/maxf(n/maxf(bulk, 1e-9), 1e-9), perRow, rep.Machine.Cores, num(float64(rep.Machine.Cores)/perRow*1e6), c.Machine/c.Wall/float64(rep.Machine.Cores)*100)
}
