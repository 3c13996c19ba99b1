package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/metastore"
	"github.com/anivault/anivault/pkg/pgdb"
	"github.com/anivault/anivault/pkg/resilience"
)

// Errors of the read and write paths, mapped to HTTP statuses and NATS error replies.
var (
	// ErrNotFound: unknown or deleted record (404).
	ErrNotFound = errors.New("record not found")
	// ErrUnavailable: the database cannot be reached and the record is not cached,
	// or a write can be neither committed nor durably buffered (503).
	ErrUnavailable = errors.New("service unavailable")
)

// Source says where a read was served from.
type Source string

// Read sources.
const (
	SourceCache    Source = "cache"
	SourceDatabase Source = "database"
)

// read returns the encoded record of id.
func (n *Node) read(ctx context.Context, id int64) ([]byte, Source, error) {
	if !n.cfg.CacheDisabled {
		if e, ok := n.cache.Get(id); ok {
			if e.deleted {
				return nil, SourceCache, ErrNotFound
			}
			return e.body, SourceCache, nil
		}
	}
	if n.currentMode() == events.ModeCacheOnly {
		return nil, SourceCache, fmt.Errorf("%w: database unavailable (cache-only mode) and tmdb:%d is not cached", ErrUnavailable, id)
	}
	var (
		rec     *events.Record
		deleted bool
	)
	err := n.dbCall(ctx, func(ctx context.Context) error {
		var err error
		rec, deleted, err = n.store.Get(ctx, id)
		return err
	})
	switch {
	case errors.Is(err, metastore.ErrNotFound):
		return nil, SourceDatabase, ErrNotFound
	case err != nil:
		if resilience.IsUnavailable(err) {
			return nil, SourceDatabase, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		return nil, SourceDatabase, fmt.Errorf("read tmdb:%d: %w", id, err)
	}
	n.clock.Observe(rec.Version)
	if deleted {
		n.cacheSet(id, entry{version: rec.Version, deleted: true})
		return nil, SourceDatabase, ErrNotFound
	}
	body, err := events.Marshal(rec)
	if err != nil {
		return nil, SourceDatabase, fmt.Errorf("encode tmdb:%d: %w", id, err)
	}
	n.cacheSet(id, entry{version: rec.Version, body: body})
	return body, SourceDatabase, nil
}

// dbCall runs fn through the retry policy and the breaker within the node's
// database budget, so no caller waits on the database longer than DBTimeout.
func (n *Node) dbCall(ctx context.Context, fn func(ctx context.Context) error) error {
	if !n.migrated.Load() {
		// The table may not exist yet (the database was down at start): an
		// unavailable database, not a failed request, so writes are buffered.
		return fmt.Errorf("%w: database schema not migrated yet", resilience.ErrUnavailable)
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.DBTimeout)
	defer cancel()
	err := n.retrier.Do(ctx, func(ctx context.Context) error {
		err := n.breaker.Execute(func() error { return fn(ctx) })
		if err != nil && resilience.IsTransient(err) {
			pgdb.DropIdle(n.db, n.cfg.DBMaxConns)
		}
		return err
	})
	if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, metastore.ErrNotFound) {
		n.log.Debug("database call failed", "error", err, "breaker", n.breaker.State())
	}
	return err
}

// cacheSet stores e unless the cache holds a newer version of id.
func (n *Node) cacheSet(id int64, e entry) {
	if n.cfg.CacheDisabled {
		return
	}
	n.cache.SetIf(id, e, e.size(), func(old entry) bool { return e.version > old.version })
}

// Write is one accepted write before it is committed or buffered.
type Write struct {
	TMDBID  int64
	Record  *events.Record // nil for a delete
	Version int64          // 0: assign from the node's clock
}

// WriteResult tells the client what happened to its write.
type WriteResult struct {
	Status  string `json:"status"`
	Version int64  `json:"version"`
}

// write commits w to the database, or, when the database is unavailable or
// the system is in cache-only mode, appends it to the durable buffer. A nil
// error means the write is durable: committed, or acknowledged by the buffer.
func (n *Node) write(ctx context.Context, w Write) (WriteResult, error) {
	if w.Version == 0 {
		w.Version = n.clock.Now()
	} else {
		n.clock.Observe(w.Version)
	}
	at := time.Now().UTC()
	deleted := w.Record == nil
	var (
		rec  *events.Record
		body []byte // rec encoded once, for the cache, the buffer and metadata.changed
	)
	if !deleted {
		cp := *w.Record
		cp.Version, cp.UpdatedAt = w.Version, &at
		rec = &cp
		var err error
		if body, err = events.Marshal(rec); err != nil {
			n.metrics.writes.WithLabelValues("failed").Inc()
			return WriteResult{}, fmt.Errorf("encode tmdb:%d: %w", w.TMDBID, err)
		}
	}

	if n.currentMode() != events.ModeCacheOnly {
		err := n.dbCall(ctx, func(ctx context.Context) error {
			_, err := n.store.ApplyBatch(ctx, []metastore.Write{{TMDBID: w.TMDBID, Version: w.Version, Deleted: deleted, UpdatedAt: at, Record: rec}})
			return err
		})
		if err == nil {
			n.metrics.writes.WithLabelValues("committed").Inc()
			n.applyLocal(w.TMDBID, w.Version, body)
			n.publishChanged(w.TMDBID, w.Version, false, body)
			return WriteResult{Status: "committed", Version: w.Version}, nil
		}
		if !resilience.IsUnavailable(err) || ctx.Err() != nil {
			n.metrics.writes.WithLabelValues("failed").Inc()
			return WriteResult{}, fmt.Errorf("write tmdb:%d: %w", w.TMDBID, err)
		}
		n.log.Warn("database write failed, buffering instead", "tmdb_id", w.TMDBID, "version", w.Version, "error", err)
	}

	bw := events.BufferedWrite{TMDBID: w.TMDBID, Version: w.Version, Deleted: deleted, AcceptedAt: at, Node: n.cfg.NodeID}
	if err := n.buffer.append(ctx, bw, body); err != nil {
		n.metrics.writes.WithLabelValues("failed").Inc()
		n.log.Error("write could not be buffered", "tmdb_id", w.TMDBID, "error", err)
		return WriteResult{}, fmt.Errorf("%w: write could be neither committed nor durably buffered: %v", ErrUnavailable, err)
	}
	n.acceptedTotal.Add(1)
	n.metrics.writes.WithLabelValues("buffered").Inc()
	n.applyLocal(w.TMDBID, w.Version, body)
	n.publishChanged(w.TMDBID, w.Version, true, body)
	return WriteResult{Status: "buffered", Version: w.Version}, nil
}

// applyLocal puts a durable write into this node's cache: body is the
// record's encoding (version and updated_at included), nil for a delete.
func (n *Node) applyLocal(id, version int64, body []byte) {
	if body == nil {
		n.cacheSet(id, entry{version: version, deleted: true})
		return
	}
	n.cacheSet(id, entry{version: version, body: body})
}
