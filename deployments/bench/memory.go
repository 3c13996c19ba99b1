package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/anivault/anivault/deployments/launch"
	"github.com/anivault/anivault/events"
)

// MemoryResult is phase 5.
type MemoryResult struct {
	Records     int
	RecordBytes int // encoded size of one offered record as served
	BoundMiB    int
	Runs        []memoryRun
}

type memoryRun struct {
	Label          string
	Env            string
	OfferTime      time.Duration
	Served, Errors int64 // keys the cache took (entries + evictions), and offered keys it never took
	CacheSize      int64
	CacheBytes     int64 // memory_usage_bytes
	Evictions      int64
	RSS, HWM       int64 // VmRSS, VmHWM after offering
	RSSIdle        int64 // VmRSS before offering
	// Backfill is how long the fresh node took to put the table in its
	// change log (its own SUBJECT_PREFIX: a log of its own, on the shared
	// table) before the offering began; Indexed is the records its change
	// log index held after the offering.
	Backfill    time.Duration
	Indexed     int64
	CacheBound  float64 // anivault_cache_max_bytes after the offering
	HeapAlloc   float64
	HeapInuse   float64
	HeapSys     float64
	NextGC      float64
	GoSys       float64
	GCCycles    float64
	CPU         float64 // the node's CPU seconds since its start
	WithinBound bool    // RSS <= bound + 10 %
	CacheWithin bool    // accounted bytes <= bound
}

const memBase = 40_000_000

func (r *runner) phaseMemory(ctx context.Context) error {
	n := r.cfg.memN
	res := &MemoryResult{Records: n, BoundMiB: 100}
	r.rep.Memory = res
	// Records of about 2 KiB: the fixture record plus a raw_data payload.
	now := time.Now().UTC()
	pad := 0
	for {
		rec := r.record(0, memBase)
		rec.RawData = padded(rec.RawData, pad)
		rec.Version, rec.UpdatedAt = r.clock.Now(), &now
		b, _ := events.Marshal(&rec)
		if len(b) >= 2048 {
			res.RecordBytes = len(b)
			break
		}
		pad += 2048 - len(b)
	}
	// Both configurations at once, each node on subjects of its own (its
	// SUBJECT_PREFIX, so no other node sees these records), offered the same
	// events: half the time, and the same load for both.
	type cfg struct{ label, gomemlimit, prefix string }
	cfgs := []cfg{
		{"default: cache bound and Go memory limit derived from CACHE_MAX_MEMORY_MB", "", "memtest1"},
		{"GOMEMLIMIT=max: no memory limit, GOGC=100 alone (for comparison)", "9223372036854775807", "memtest2"},
	}
	var nodes []*launch.Node
	for i, c := range cfgs {
		env := launch.MergeEnv(r.common, map[string]string{"CACHE_MAX_MEMORY_MB": "100", "CACHE_MAX_SIZE": "1000000", "SUBJECT_PREFIX": c.prefix})
		label := "CACHE_MAX_MEMORY_MB=100 CACHE_MAX_SIZE=1000000 SUBJECT_PREFIX=" + c.prefix
		if c.gomemlimit != "" {
			env["GOMEMLIMIT"] = c.gomemlimit
			label += " GOMEMLIMIT=" + c.gomemlimit
		}
		node, err := r.st.StartNode(ctx, fmt.Sprintf("node-mem%d", i+1), "", env)
		if err != nil {
			return err
		}
		defer r.stopNode(node)
		nodes = append(nodes, node)
		res.Runs = append(res.Runs, memoryRun{Label: c.label, Env: label})
	}
	// A fresh node backfills its change log from the table (every row the
	// earlier phases left, here in a log of its own): measure the steady
	// state, after it, not the backfill.
	t0 := time.Now()
	if err := r.waitBackfilled(ctx, nodes, 10*time.Minute); err != nil {
		return err
	}
	for i, node := range nodes {
		res.Runs[i].Backfill = time.Since(t0)
		res.Runs[i].RSSIdle, _ = procStatus(node.Pid(), "VmRSS")
	}
	r.say("memory: offering %d records of %d bytes as metadata.changed events to %d nodes", n, res.RecordBytes, len(nodes))
	// inserted counts the keys the slower cache took: entries plus evictions (every key is new).
	inserted := func() int64 {
		least := int64(-1)
		for _, node := range nodes {
			st, err := r.nodeStatus(node)
			if err != nil {
				return -1
			}
			v := st.CacheStatistics.CacheSize + st.CacheStatistics.Evictions
			if least < 0 || v < least {
				least = v
			}
		}
		return least
	}
	t0 = time.Now()
	const chunk = 1000
	for i := 0; i < n; i += chunk {
		for j := i; j < min(i+chunk, n); j++ {
			rec := r.record(j, int64(memBase+j))
			rec.RawData = padded(rec.RawData, pad)
			v := r.clock.Now()
			rec.Version, rec.UpdatedAt = v, &now
			data, err := events.Marshal(events.MetadataChanged{Envelope: events.Envelope{OccurredAt: now, Source: "bench"},
				TMDBID: rec.TMDBID, Version: v, Record: &rec})
			if err != nil {
				return err
			}
			for _, c := range cfgs {
				if err := r.nc.Publish(c.prefix+"."+events.SubjectMetadataChanged, data); err != nil {
					return err
				}
			}
		}
		if err := r.nc.Flush(); err != nil {
			return err
		}
		// Pace: at most two chunks ahead of the slower node, so that nothing is dropped as a slow consumer.
		deadline := time.Now().Add(15 * time.Second)
		for inserted() < int64(i-chunk) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for inserted() < int64(n) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	offer := time.Since(t0)
	time.Sleep(time.Second)
	for i, node := range nodes {
		mr := &res.Runs[i]
		mr.OfferTime = offer
		st, err := r.nodeStatus(node)
		if err != nil {
			return err
		}
		mr.CacheSize, mr.CacheBytes, mr.Evictions = st.CacheStatistics.CacheSize, st.CacheStatistics.MemoryUsageBytes, st.CacheStatistics.Evictions
		if st.ChangeLog != nil {
			mr.Indexed = st.ChangeLog.IndexedRecords
		}
		mr.Served = mr.CacheSize + mr.Evictions
		mr.Errors = int64(n) - mr.Served
		mr.RSS, _ = procStatus(node.Pid(), "VmRSS")
		mr.HWM, _ = procStatus(node.Pid(), "VmHWM")
		m := r.metrics(node)
		mr.HeapAlloc, mr.HeapInuse, mr.HeapSys = m["go_memstats_heap_alloc_bytes"], m["go_memstats_heap_inuse_bytes"], m["go_memstats_heap_sys_bytes"]
		mr.NextGC, mr.GoSys, mr.GCCycles = m["go_memstats_next_gc_bytes"], m["go_memstats_sys_bytes"], m["go_gc_duration_seconds_count"]
		mr.CacheBound = m["anivault_cache_max_bytes"]
		mr.CPU = procCPU(node.Pid())
		bound := int64(100 << 20)
		mr.WithinBound = mr.RSS <= bound+bound/10
		mr.CacheWithin = mr.CacheBytes <= bound
		r.say("  %s: %v; cached %d of %d; cache %d entries %d bytes; change log index %d records (backfilled in %v); RSS %d MiB (peak %d MiB); heap in use %.0f MiB; GC cycles %.0f; CPU %.1f s",
			mr.Label, offer.Round(time.Millisecond), mr.Served, n, mr.CacheSize, mr.CacheBytes, mr.Indexed, mr.Backfill.Round(time.Millisecond), mr.RSS>>20, mr.HWM>>20, mr.HeapInuse/(1<<20), mr.GCCycles, mr.CPU)
	}
	return nil
}

// padded returns raw_data as {"tmdb": <raw>, "padding": "xxx…"} with pad bytes of padding.
func padded(raw json.RawMessage, pad int) json.RawMessage {
	if len(raw) == 0 {
		raw = json.RawMessage(`{}`)
	}
	return json.RawMessage(fmt.Sprintf(`{"tmdb": %s, "padding": %q}`, raw, strings.Repeat("x", max(pad, 0))))
}

// procStatus returns a /proc/<pid>/status value in bytes (kB fields).
func procStatus(pid int, field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != field {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 0 {
			break
		}
		kb, err := strconv.ParseInt(fs[0], 10, 64)
		return kb << 10, err
	}
	return 0, fmt.Errorf("%s not in /proc/%d/status", field, pid)
}

// metrics reads a node's Prometheus metrics without labels.
func (r *runner) metrics(n *launch.Node) map[string]float64 {
	out := map[string]float64{}
	resp, err := r.http.Get(n.URL() + "/metrics")
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || line[0] == '#' || strings.Contains(line, "{") {
			continue
		}
		fs := strings.Fields(line)
		if len(fs) != 2 {
			continue
		}
		if v, err := strconv.ParseFloat(fs[1], 64); err == nil {
			out[fs[0]] = v
		}
	}
	return out
}

// waitBackfilled waits until every node reports its change log backfill done.
func (r *runner) waitBackfilled(ctx context.Context, nodes []*launch.Node, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, node := range nodes {
		for {
			st, err := r.nodeStatus(node)
			if err == nil && st.ChangeLog != nil && st.ChangeLog.BackfillDone {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: change log backfill not done within %v (%v)", node.Name, timeout, err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}
