package node

import (
	"context"
	"log/slog"
	"runtime/debug"
)

// CACHE_MAX_MEMORY_MB is the node's memory budget, not only the cache's:
// an operator sets it to what the node may use. The cache's share is three
// quarters of it (cacheBytes, counted with entry.size, an upper bound of what
// the entries cost the heap), less the change log's index (cacheBound): the
// index holds every record in the log, so it grows with the catalogue, not
// with the traffic (340,000 records took 13 to 20 MiB of a 100 MiB budget in
// the benchmark, and with the cache at its full share the collector ran five
// times as often and the node went 17 % over its budget). The rest is for
// the idle process (runtime, NATS and PostgreSQL clients, HTTP server,
// metrics: about 12 MiB), requests in flight, group-commit batches and the
// garbage made between two collections. Unless GOMEMLIMIT is set, the Go
// memory limit is the budget itself (memoryLimit), so the collector keeps
// the process near it where GOGC=100 alone would let the heap grow to twice
// the live heap.
func cacheBytes(budgetMB int) int64 { return int64(budgetMB) << 20 * 3 / 4 }

// indexEntryBytes is an upper bound of what one record of the change log's
// index costs the heap: a map slot of the key and its indexEntry (24 bytes)
// and a control byte, at the lowest load the map keeps (just after it grew,
// 7/16). TestIndexEntrySizeCoversHeap measures it: 57 bytes at the worst
// load, 35 to 47 at most.
const indexEntryBytes = 64

// cacheBound is the cache's byte bound while the change log's index holds
// indexed records: the cache's share less the index, at least a quarter of
// the share. starved tells that the floor was taken: the budget is too small
// for the catalogue.
func cacheBound(budgetMB, indexed int) (bound int64, starved bool) {
	share := cacheBytes(budgetMB)
	bound = share - int64(indexed)*indexEntryBytes
	if floor := share / 4; bound < floor {
		return floor, true
	}
	return bound, false
}

// minHeadroom is the least the memory limit leaves beyond a full cache: a
// small budget cannot hold the idle process, and a limit below the live heap
// would only make the collector run without end.
const minHeadroom = 24 << 20

// memoryLimit is the soft memory limit (runtime/debug.SetMemoryLimit) a node
// sets when GOMEMLIMIT is unset.
func memoryLimit(budgetMB int) int64 {
	return max(int64(budgetMB)<<20, cacheBytes(budgetMB)+minHeadroom)
}

// applyMemoryLimit sets the soft memory limit unless GOMEMLIMIT set one, and logs it.
func applyMemoryLimit(cfg Config, log *slog.Logger) {
	if cfg.GoMemLimit != "" {
		log.Info("memory limit from GOMEMLIMIT", "gomemlimit", cfg.GoMemLimit, "memory_limit_bytes", debug.SetMemoryLimit(-1),
			"cache_max_bytes", cacheBytes(cfg.CacheMaxMemoryMB))
		return
	}
	limit := memoryLimit(cfg.CacheMaxMemoryMB)
	debug.SetMemoryLimit(limit)
	log.Info("memory budget: cache bound and Go memory limit from CACHE_MAX_MEMORY_MB (GOMEMLIMIT unset)", "memory_limit_bytes", limit,
		"cache_max_bytes", cacheBytes(cfg.CacheMaxMemoryMB), "cache_max_memory_mb", cfg.CacheMaxMemoryMB)
}

// budgetLoop shares the budget between the cache and the change log's
// index at every status interval (fitBudget).
func (n *Node) budgetLoop(ctx context.Context) { n.every(ctx, n.fitBudget) }

// fitBudget sets the cache's byte bound to cacheBound for the index as it is
// now; the cache evicts down to it at once. When the index leaves the cache
// only its floor, the node says so and, unless GOMEMLIMIT is set, raises its
// Go memory limit to hold both: over its budget rather than collecting
// garbage without end.
func (n *Node) fitBudget(context.Context) {
	indexed := n.changes.keys()
	bound, starved := cacheBound(n.cfg.CacheMaxMemoryMB, indexed)
	if err := n.cache.SetMaxBytes(bound); err != nil {
		n.log.Error("cache bound not set", "cache_max_bytes", bound, "error", err)
		return
	}
	if n.budgetStarved.Swap(starved) == starved {
		return
	}
	index := int64(indexed) * indexEntryBytes
	if !starved {
		n.log.Info("the change log's index fits CACHE_MAX_MEMORY_MB again", "indexed_records", indexed, "cache_max_bytes", bound)
		return
	}
	// The least budget whose cache share holds the index and keeps three
	// quarters of itself for the cache.
	need := (index*16/9)>>20 + 1
	n.log.Warn("CACHE_MAX_MEMORY_MB is too small for the change log's index: the cache keeps a quarter of its share and the node goes over its budget; raise CACHE_MAX_MEMORY_MB",
		"indexed_records", indexed, "index_bytes", index, "cache_max_bytes", bound, "cache_max_memory_mb", n.cfg.CacheMaxMemoryMB, "suggested_mb", need)
	if n.cfg.GoMemLimit == "" {
		if limit := bound + index + minHeadroom; limit > debug.SetMemoryLimit(-1) {
			debug.SetMemoryLimit(limit)
			n.log.Warn("Go memory limit raised over the budget to hold the cache's floor and the change log's index", "memory_limit_bytes", limit)
		}
	}
}
