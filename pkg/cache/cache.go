// Package cache provides an in-memory LRU cache bounded both by entry count
// and by total (caller-declared) bytes, so a burst of large records cannot
// exhaust memory even while the entry count stays low. Ordering comes from
// github.com/hashicorp/golang-lru/v2/simplelru; locking, byte accounting and
// statistics are ours, because golang-lru's thread-safe wrapper cannot
// account bytes.
package cache

import (
	"errors"
	"fmt"
	"sync"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// ErrInvalidConfig is wrapped by New's error for a bad Config, so wiring
// code can tell configuration mistakes from other failures.
var ErrInvalidConfig = errors.New("cache: invalid config")

// Config bounds a Cache. Both limits are required: the entry bound caps
// per-entry overhead, the byte bound caps payload memory.
type Config struct {
	// MaxEntries is the maximum number of entries (>= 1).
	MaxEntries int
	// MaxBytes is the maximum sum of the sizes passed to Set/SetIf (>= 1).
	MaxBytes int64
}

// Stats is a snapshot of a Cache's counters, shaped for a JSON stats
// endpoint.
type Stats struct {
	// Hits and Misses count Get calls; Peek is not counted.
	Hits   uint64 `json:"hits"`
	Misses uint64 `json:"misses"`
	// Evictions counts entries dropped to respect the bounds (not Remove,
	// not replacement of a key).
	Evictions     uint64 `json:"evictions"`
	TotalRequests uint64 `json:"total_requests"`
	// CacheSize is the current number of entries.
	CacheSize int `json:"cache_size"`
	// MemoryUsageBytes is the current sum of entry sizes.
	MemoryUsageBytes int64 `json:"memory_usage_bytes"`
	// HitRate is Hits / TotalRequests, 0 when there were no requests.
	HitRate    float64 `json:"hit_rate"`
	MaxEntries int     `json:"max_entries"`
	MaxBytes   int64   `json:"max_bytes"`
}

type entry[V any] struct {
	value V
	size  int64
}

// Cache is an LRU cache bounded by entry count and total bytes. It is safe
// for concurrent use. Its single mutex is held only for in-memory map and
// list work; callers must load values (I/O) outside the cache and then Set
// them.
type Cache[K comparable, V any] struct {
	maxEntries int
	maxBytes   int64 // guarded by mu: SetMaxBytes changes it

	mu        sync.Mutex
	lru       *simplelru.LRU[K, entry[V]]
	bytes     int64
	hits      uint64
	misses    uint64
	evictions uint64
}

// New returns an empty Cache with the given bounds, or an error wrapping
// ErrInvalidConfig if MaxEntries < 1 or MaxBytes < 1.
func New[K comparable, V any](cfg Config) (*Cache[K, V], error) {
	if cfg.MaxEntries < 1 {
		return nil, fmt.Errorf("%w: MaxEntries %d < 1", ErrInvalidConfig, cfg.MaxEntries)
	}
	if cfg.MaxBytes < 1 {
		return nil, fmt.Errorf("%w: MaxBytes %d < 1", ErrInvalidConfig, cfg.MaxBytes)
	}
	// One slot of headroom: we evict ourselves (to count evictions and
	// bytes) and never let simplelru evict on Add.
	l, err := simplelru.NewLRU[K, entry[V]](cfg.MaxEntries+1, nil)
	if err != nil {
		return nil, fmt.Errorf("cache: create lru: %w", err)
	}
	return &Cache[K, V]{maxEntries: cfg.MaxEntries, maxBytes: cfg.MaxBytes, lru: l}, nil
}

// Get returns the value for k and marks it most recently used. It counts a
// hit or a miss.
func (c *Cache[K, V]) Get(k K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.lru.Get(k)
	if !ok {
		c.misses++
		var zero V
		return zero, false
	}
	c.hits++
	return e.value, true
}

// Peek returns the value for k without counting a request or changing its
// recency, for inspection (e.g. comparing versions) that should not keep an
// entry alive.
func (c *Cache[K, V]) Peek(k K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.lru.Peek(k)
	return e.value, ok
}

// Set stores v under k as most recently used, replacing any previous value,
// then evicts least recently used entries until both bounds hold. size is
// the caller's estimate of v's memory in bytes (negative counts as 0); for
// MaxBytes to bound the heap, it should include the cache's own cost per
// entry, which the cache does not add: an LRU list element (three pointers,
// the key, v, an int64, and 25 bytes of expiry golang-lru keeps) and a map
// slot (the key and a pointer, at a load between 7/16 and 7/8). An
// entry larger than MaxBytes on its own is not stored, and any previous
// value for k is removed so a stale value is not served; Set then returns
// false.
func (c *Cache[K, V]) Set(k K, v V, size int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.setLocked(k, v, size)
}

// SetIf is Set made conditional on the current value: if k is present and
// replace(old) returns false, the old value is kept (its recency unchanged)
// and SetIf returns false. It is how "only a newer version replaces an older
// one" is done atomically. replace runs under the cache lock: it must be
// cheap and pure (no I/O, no calls back into the cache).
func (c *Cache[K, V]) SetIf(k K, v V, size int64, replace func(old V) bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.lru.Peek(k); ok && !replace(old.value) {
		return false
	}
	return c.setLocked(k, v, size)
}

func (c *Cache[K, V]) setLocked(k K, v V, size int64) bool {
	size = max(size, 0)
	if size > c.maxBytes {
		c.removeLocked(k)
		return false
	}
	if old, ok := c.lru.Peek(k); ok {
		c.bytes -= old.size
	}
	c.lru.Add(k, entry[V]{value: v, size: size})
	c.bytes += size
	// The new entry is the most recent and fits alone, so eviction stops
	// before reaching it.
	c.evictLocked()
	return true
}

// evictLocked evicts least recently used entries until both bounds hold.
func (c *Cache[K, V]) evictLocked() {
	for c.lru.Len() > c.maxEntries || c.bytes > c.maxBytes {
		_, old, ok := c.lru.RemoveOldest()
		if !ok {
			return
		}
		c.bytes -= old.size
		c.evictions++
	}
}

// SetMaxBytes changes the byte bound (>= 1) and evicts least recently used
// entries until the stored bytes fit it; the evictions are counted.
func (c *Cache[K, V]) SetMaxBytes(n int64) error {
	if n < 1 {
		return fmt.Errorf("%w: MaxBytes %d < 1", ErrInvalidConfig, n)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.maxBytes = n
	c.evictLocked()
	return nil
}

// Remove deletes k and reports whether it was present.
func (c *Cache[K, V]) Remove(k K) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.removeLocked(k)
}

func (c *Cache[K, V]) removeLocked(k K) bool {
	old, ok := c.lru.Peek(k)
	if !ok {
		return false
	}
	c.lru.Remove(k)
	c.bytes -= old.size
	return true
}

// Len returns the number of entries.
func (c *Cache[K, V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// Bytes returns the sum of the sizes of the stored entries.
func (c *Cache[K, V]) Bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}

// Purge removes all entries; statistics are kept.
func (c *Cache[K, V]) Purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Purge()
	c.bytes = 0
}

// Keys returns a snapshot of the keys, least recently used first.
func (c *Cache[K, V]) Keys() []K {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Keys()
}

// Range calls fn for each entry, least recently used first, until fn
// returns false. It iterates over a snapshot taken under the lock and calls
// fn after releasing it, so fn may do slow work or use the cache; entries
// changed meanwhile are seen as they were. It does not affect recency or
// statistics.
func (c *Cache[K, V]) Range(fn func(k K, v V) bool) {
	c.mu.Lock()
	keys := c.lru.Keys()
	entries := c.lru.Values()
	c.mu.Unlock()
	for i, k := range keys {
		if !fn(k, entries[i].value) {
			return
		}
	}
}

// Stats returns a consistent snapshot of the counters and current usage.
func (c *Cache[K, V]) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Stats{
		Hits:             c.hits,
		Misses:           c.misses,
		Evictions:        c.evictions,
		TotalRequests:    c.hits + c.misses,
		CacheSize:        c.lru.Len(),
		MemoryUsageBytes: c.bytes,
		MaxEntries:       c.maxEntries,
		MaxBytes:         c.maxBytes,
	}
	if s.TotalRequests > 0 {
		s.HitRate = float64(s.Hits) / float64(s.TotalRequests)
	}
	return s
}
