package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
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
	// SourceReplica: the change log's last entry for the record, read when the
	// database is unavailable or holds an older version than the log.
	SourceReplica Source = "replica"
)

// read returns the encoded record of id.
//
// The cache serves only while the node can prove it current (changeLog.current):
// every write acknowledged more than the staleness bound ago has been applied
// to it. A row read from PostgreSQL is cached only when it is at least as new
// as the change log's latest version of the record, which the node's index
// knows; a row older than the log (a buffered write not yet replayed) is
// answered from the log instead.
func (n *Node) read(ctx context.Context, id int64) ([]byte, Source, error) {
	var revalidating *entry
	if n.cacheUsable() {
		if e, ok := n.cache.Get(id); ok {
			if !n.needsRevalidation(e) {
				if e.deleted {
					return nil, SourceCache, ErrNotFound
				}
				return e.body, SourceCache, nil
			}
			revalidating = &e
		}
	}
	return n.readMiss(ctx, id, revalidating)
}

// readCached answers a read from the cache alone when it can: hit is false
// when the record must be read elsewhere (not cached, or to be revalidated).
func (n *Node) readCached(id int64) (body []byte, src Source, err error, hit bool) {
	if !n.cacheUsable() {
		return nil, "", nil, false
	}
	e, ok := n.cache.Get(id)
	if !ok || n.needsRevalidation(e) {
		return nil, "", nil, false
	}
	if e.deleted {
		return nil, SourceCache, ErrNotFound, true
	}
	return e.body, SourceCache, nil, true
}

// readMiss reads a record the cache could not answer; revalidating is the
// cached entry to be checked, if any.
func (n *Node) readMiss(ctx context.Context, id int64, revalidating *entry) ([]byte, Source, error) {
	mode := n.currentMode()
	if mode == events.ModeCacheOnly {
		return n.readReplica(ctx, id, errors.New("database unavailable (cache-only mode)"))
	}
	var (
		rec     *events.Record
		deleted bool
	)
	err := n.dbCall(ctx, opGet, func(ctx context.Context) error {
		var err error
		rec, deleted, err = n.store.Get(ctx, id)
		return err
	})
	var rowVersion int64
	switch {
	case errors.Is(err, metastore.ErrNotFound):
	case err != nil:
		if resilience.IsUnavailable(err) {
			return n.readReplica(ctx, id, err)
		}
		return nil, SourceDatabase, fmt.Errorf("read tmdb:%d: %w", id, err)
	default:
		rowVersion = rec.Version
		n.clock.Observe(rec.Version)
	}

	if !n.changes.current() {
		// The index may be behind: ask the log itself whether it holds a newer
		// write, and cache nothing.
		le, found, lerr := n.changes.get(ctx, id)
		switch {
		case lerr == nil && found && le.version > rowVersion:
			n.metrics.reads.WithLabelValues(string(SourceReplica)).Inc()
			return n.serveLog(le)
		case lerr != nil && mode == events.ModeRecovering:
			// Buffered writes are being replayed: the row may be older than
			// one of them, and nothing can tell.
			return nil, SourceDatabase, fmt.Errorf("%w: replay in progress and the change log is unreachable: %v", ErrUnavailable, lerr)
		}
		return n.serveRow(id, rec, deleted, false)
	}
	if n.changes.latest(id) > rowVersion {
		le, found, lerr := n.changes.get(ctx, id)
		if lerr == nil && found && le.version > rowVersion {
			n.cacheLog(le)
			n.metrics.reads.WithLabelValues(string(SourceReplica)).Inc()
			return n.serveLog(le)
		}
		if lerr != nil {
			return nil, SourceDatabase, fmt.Errorf("%w: tmdb:%d has a newer write than the database holds and the change log is unreachable: %v", ErrUnavailable, id, lerr)
		}
	}
	body, src, err := n.serveRow(id, rec, deleted, true)
	if revalidating != nil && (revalidating.version != rowVersion || revalidating.deleted != (rec == nil || deleted) ||
		(err == nil && !sameRecord(body, revalidating.body))) {
		n.metrics.corrections.Inc()
		n.log.Warn("cache entry corrected by revalidation: the row was changed by something other than the services", "tmdb_id", id,
			"cached_version", revalidating.version, "database_version", rowVersion)
	}
	return body, src, err
}

// serveRow answers a row read from the database (rec nil: no row), caching it when cache is set.
func (n *Node) serveRow(id int64, rec *events.Record, deleted, cache bool) ([]byte, Source, error) {
	n.metrics.reads.WithLabelValues(string(SourceDatabase)).Inc()
	if rec == nil {
		if cache && n.revalidateAfter() > 0 {
			// A row may have been removed by something other than the services.
			n.cache.Remove(id)
		}
		return nil, SourceDatabase, ErrNotFound
	}
	if deleted {
		if cache {
			n.cacheSet(id, entry{version: rec.Version, deleted: true})
		}
		return nil, SourceDatabase, ErrNotFound
	}
	body, err := events.Marshal(rec)
	if err != nil {
		return nil, SourceDatabase, fmt.Errorf("encode tmdb:%d: %w", id, err)
	}
	if cache {
		n.cacheSet(id, entry{version: rec.Version, body: body})
	}
	return body, SourceDatabase, nil
}

// readReplica answers a record from the change log when the database cannot
// be read. A record the log has never seen is answered 503: the contract's
// "neither in the cache nor in the change log's replica".
func (n *Node) readReplica(ctx context.Context, id int64, cause error) ([]byte, Source, error) {
	le, found, err := n.changes.get(ctx, id)
	if err != nil {
		return nil, SourceReplica, fmt.Errorf("%w: %v, and the change log is unreachable: %v", ErrUnavailable, cause, err)
	}
	if !found {
		return nil, SourceReplica, fmt.Errorf("%w: %v, and tmdb:%d is in neither the cache nor the change log", ErrUnavailable, cause, id)
	}
	n.metrics.reads.WithLabelValues(string(SourceReplica)).Inc()
	n.cacheLog(le)
	return n.serveLog(le)
}

func (n *Node) serveLog(le logEntry) ([]byte, Source, error) {
	if le.deleted {
		return nil, SourceReplica, ErrNotFound
	}
	return le.body, SourceReplica, nil
}

// cacheLog caches a change log entry: the log holds every acknowledged write,
// so its entry is current.
func (n *Node) cacheLog(le logEntry) {
	if le.deleted {
		n.cacheSet(le.id, entry{version: le.version, deleted: true})
		return
	}
	n.cacheSet(le.id, entry{version: le.version, body: le.body})
}

// cacheUsable tells whether reads may be served from the cache.
func (n *Node) cacheUsable() bool {
	return !n.cfg.CacheDisabled && n.changes.current()
}

func (n *Node) revalidateAfter() time.Duration { return n.cfg.CacheRevalidateAfter }

// needsRevalidation tells whether a cached entry is old enough to be checked
// against the database: a safety net for rows changed in PostgreSQL by
// something other than the services. Only in normal mode, when the database
// is the source of truth.
func (n *Node) needsRevalidation(e entry) bool {
	age := n.cfg.CacheRevalidateAfter
	return age > 0 && time.Since(time.Unix(0, e.at)) > age && n.currentMode() == events.ModeNormal && n.breaker.State() == resilience.StateClosed
}

// dbCall runs fn through the retry policy and the breaker within the node's
// database budget, so no caller waits on the database longer than DBTimeout.
func (n *Node) dbCall(ctx context.Context, op string, fn func(ctx context.Context) error) error {
	if !n.migrated.Load() {
		// The table may not exist yet (the database was down at start): an
		// unavailable database, not a failed request, so writes are buffered.
		return fmt.Errorf("%w: database schema not migrated yet", resilience.ErrUnavailable)
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.DBTimeout)
	defer cancel()
	attempt := 0
	err := n.retrier.Do(ctx, func(ctx context.Context) error {
		var start time.Time
		err := n.breaker.Execute(func() error { start = time.Now(); return fn(ctx) })
		n.metrics.dbAttempt(op, attempt, !start.IsZero(), time.Since(start), err)
		attempt++
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

// cacheSet stores e unless the cache holds a newer version of id, or the
// change log a newer one than e (the node's follower saw it while e was being
// read). Nothing is cached while the node cannot prove its cache current.
func (n *Node) cacheSet(id int64, e entry) {
	if n.cfg.CacheDisabled || !n.changes.current() {
		return
	}
	if n.changes.latest(id) > e.version {
		return
	}
	e.at = time.Now().UnixNano()
	n.cache.SetIf(id, e, e.size(), func(old entry) bool { return e.version >= old.version })
	// The follower may have moved past e between the check and the set; its
	// invalidation ran before e was in the cache, so drop e here.
	if n.changes.latest(id) > e.version {
		if cur, ok := n.cache.Peek(id); ok && cur.version == e.version {
			n.cache.Remove(id)
		}
	}
}

// invalidate drops a cached entry older than a version the change log holds.
func (n *Node) invalidate(id, version int64) {
	if e, ok := n.cache.Peek(id); ok && e.version < version {
		n.cache.Remove(id)
		n.metrics.invalidations.Inc()
	}
}

// Write is one accepted write before it is committed or buffered.
type Write struct {
	TMDBID int64
	Record *events.Record // nil for a delete
	// Version is the producer's version (the stream timestamp of its
	// message); 0 for an HTTP write, which the node versions from its clock.
	Version int64
}

// WriteResult tells the client what happened to its write.
type WriteResult struct {
	Status  string `json:"status"`
	Version int64  `json:"version"`
}

// Write outcomes.
const (
	StatusCommitted = "committed"
	StatusBuffered  = "buffered"
	// StatusSuperseded: a producer's write lost to a newer version of its
	// record; the table and the log keep the newer one (HTTP writes are
	// versioned again instead).
	StatusSuperseded = "superseded"
)

// maxReversions bounds how often an HTTP write is versioned again after
// losing to a newer version.
const maxReversions = 8

// write commits w to the database, or, when the database is unavailable or
// the system is in cache-only mode, appends it to the durable buffer; then
// it puts the write in the change log. A nil error means the write is durable
// and in the log: committed, or acknowledged by the buffer.
//
// A write that meets a newer version (in the table or the log) is never
// reported as written at its own version: an HTTP write is versioned again
// above it and written again, so the last writer by arrival wins; a
// producer's write, versioned by its stream timestamp, is superseded.
func (n *Node) write(ctx context.Context, w Write) (WriteResult, error) {
	fixed := w.Version != 0
	if fixed {
		n.clock.Observe(w.Version)
	}
	for attempt := 0; ; attempt++ {
		if !fixed {
			w.Version = n.clock.Now()
		}
		res, newer, err := n.writeOnce(ctx, w)
		if err != nil || newer == 0 {
			return res, err
		}
		// A version more than hlc.MaxDrift ahead of the clock is not adopted:
		// the write cannot be versioned above it, and the client gets the
		// stored version instead.
		if !n.clock.Observe(newer) || fixed || attempt >= maxReversions {
			n.metrics.writes.WithLabelValues(StatusSuperseded).Inc()
			return WriteResult{Status: StatusSuperseded, Version: newer}, nil
		}
		n.metrics.writes.WithLabelValues("reversioned").Inc()
	}
}

// writeOnce writes w at w.Version. newer is not 0 when the table or the log
// held that newer version of the record, so w was not written (or is
// already overtaken): nothing was cached or announced. It tries the
// group-commit statement, then the database alone, then the buffer: each
// step either answers or hands the write on.
func (n *Node) writeOnce(ctx context.Context, w Write) (res WriteResult, newer int64, err error) {
	pw, err := prepareWrite(w)
	if err != nil {
		n.metrics.writes.WithLabelValues("failed").Inc()
		return WriteResult{}, 0, err
	}
	next := toDatabase
	if n.currentMode() != events.ModeCacheOnly && n.committer != nil {
		if res, newer, next, err = n.writeGrouped(ctx, pw); next == answered {
			return res, newer, err
		}
	}
	if next == toDatabase && n.currentMode() != events.ModeCacheOnly {
		if res, newer, next, err = n.writeAlone(ctx, pw); next == answered {
			return res, newer, err
		}
	}
	return n.writeBuffered(ctx, pw)
}

// pendingWrite is a write on its way: its record stamped with its version
// and time, and encoded once for the cache, the buffer, the log and
// metadata.changed.
type pendingWrite struct {
	id, version int64
	at          time.Time
	rec         *events.Record // nil for a delete
	le          logEntry
}

func prepareWrite(w Write) (pendingWrite, error) {
	pw := pendingWrite{id: w.TMDBID, version: w.Version, at: time.Now().UTC()}
	var body []byte
	if w.Record != nil {
		cp := *w.Record
		cp.Version, cp.UpdatedAt = w.Version, &pw.at
		pw.rec = &cp
		var err error
		if body, err = events.Marshal(pw.rec); err != nil {
			return pendingWrite{}, fmt.Errorf("encode tmdb:%d: %w", w.TMDBID, err)
		}
	}
	pw.le = logEntry{id: w.TMDBID, version: w.Version, deleted: pw.rec == nil, at: pw.at, body: body}
	return pw, nil
}

func (pw pendingWrite) store() metastore.Write {
	return metastore.Write{TMDBID: pw.id, Version: pw.version, Deleted: pw.rec == nil, UpdatedAt: pw.at, Record: pw.rec}
}

// writeStep is where a write goes after a step that did not answer it.
type writeStep int

const (
	answered   writeStep = iota // the step answered the write
	toDatabase                  // try the database alone
	toBuffer                    // the database is unavailable: buffer it
)

// writeGrouped submits the write to the group-commit statement.
func (n *Node) writeGrouped(ctx context.Context, pw pendingWrite) (WriteResult, int64, writeStep, error) {
	outcome, err := n.committer.submit(ctx, pw.store(), pw.le)
	switch {
	case outcome == committedLogged:
		return WriteResult{Status: StatusCommitted, Version: pw.version}, 0, answered, nil
	case outcome == committedOnly:
		res, newer, err := n.logWrite(ctx, pw.le, StatusCommitted)
		return res, newer, answered, err
	case ctx.Err() != nil:
		n.metrics.writes.WithLabelValues("failed").Inc()
		return WriteResult{}, 0, answered, fmt.Errorf("write tmdb:%d: %w", pw.id, ctx.Err())
	case resilience.IsUnavailable(err):
		// The group's statement found the database unavailable: the write
		// goes to the buffer without a second wait on it.
		n.log.Warn("database write failed, buffering instead", "tmdb_id", pw.id, "version", pw.version, "error", err)
		return WriteResult{}, 0, toBuffer, nil
	}
	// Not grouped: the write goes on alone, as it did before grouping.
	n.log.Debug("write not grouped, writing it alone", "tmdb_id", pw.id, "reason", errString(err))
	return WriteResult{}, 0, toDatabase, nil
}

// writeAlone writes the record with a statement of its own.
func (n *Node) writeAlone(ctx context.Context, pw pendingWrite) (WriteResult, int64, writeStep, error) {
	var stored int64
	err := n.dbCall(ctx, opWrite, func(ctx context.Context) error {
		r, err := n.store.ApplyBatch(ctx, []metastore.Write{pw.store()})
		if err != nil || r.Applied == 1 {
			return err
		}
		// The row holds a version at least as new: which one?
		got, _, gerr := n.store.Get(ctx, pw.id)
		if gerr != nil {
			return gerr
		}
		stored = got.Version
		return nil
	})
	if err == nil {
		if stored > pw.version {
			return WriteResult{}, stored, answered, nil
		}
		// stored == the write's version: this very write was committed
		// before (a redelivered producer message); make sure it reached the log.
		res, newer, err := n.logWrite(ctx, pw.le, StatusCommitted)
		return res, newer, answered, err
	}
	if !resilience.IsUnavailable(err) || ctx.Err() != nil {
		n.metrics.writes.WithLabelValues("failed").Inc()
		return WriteResult{}, 0, answered, fmt.Errorf("write tmdb:%d: %w", pw.id, err)
	}
	n.log.Warn("database write failed, buffering instead", "tmdb_id", pw.id, "version", pw.version, "error", err)
	return WriteResult{}, 0, toBuffer, nil
}

// writeBuffered appends the write to the durable buffer, then logs it.
func (n *Node) writeBuffered(ctx context.Context, pw pendingWrite) (WriteResult, int64, error) {
	bw := events.BufferedWrite{TMDBID: pw.id, Version: pw.version, Deleted: pw.rec == nil, AcceptedAt: pw.at, Node: n.cfg.NodeID}
	if err := n.buffer.append(ctx, bw, pw.le.body); err != nil {
		n.metrics.writes.WithLabelValues("failed").Inc()
		if errors.Is(err, ErrBufferFull) {
			n.log.Warn("write refused: the write buffer is full", "tmdb_id", pw.id, "error", err)
			return WriteResult{}, 0, fmt.Errorf("%w: write buffer full (BUFFER_MAX_MSGS, BUFFER_MAX_BYTES or the server's JetStream storage): %v", ErrUnavailable, err)
		}
		n.log.Error("write could not be buffered", "tmdb_id", pw.id, "error", err)
		return WriteResult{}, 0, fmt.Errorf("%w: write could be neither committed nor durably buffered: %v", ErrUnavailable, err)
	}
	n.acceptedTotal.Add(1)
	le := pw.le
	le.buffered = true
	return n.logWrite(ctx, le, StatusBuffered)
}

// logWrite puts a durable write in the change log before it is acknowledged,
// then caches and announces it. A write the log cannot take in time is
// answered 503 (it is durable, and the node keeps trying to log it: see
// relogLoop); one the log already holds a newer version of reports it.
func (n *Node) logWrite(ctx context.Context, le logEntry, status string) (WriteResult, int64, error) {
	logged, err := n.logBatch.publish(ctx, le)
	if err != nil {
		n.queueUnlogged(le)
		n.metrics.writes.WithLabelValues("failed").Inc()
		return WriteResult{}, 0, fmt.Errorf("%w: tmdb:%d was %s but could not be put in the change log yet: %v", ErrUnavailable, le.id, status, err)
	}
	if logged > le.version {
		return WriteResult{}, logged, nil
	}
	n.metrics.writes.WithLabelValues(status).Inc()
	n.applyLocal(le.id, le.version, le.body)
	n.publishChanged(le.id, le.version, le.buffered, le.body)
	return WriteResult{Status: status, Version: le.version}, 0, nil
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

// sameRecord tells whether two encodings hold the same record: raw_data as
// JSON values (PostgreSQL's jsonb reorders keys and drops spaces) and
// updated_at as an instant (the table keeps microseconds).
func sameRecord(a, b []byte) bool {
	if bytes.Equal(a, b) {
		return true
	}
	var ra, rb events.Record
	if json.Unmarshal(a, &ra) != nil || json.Unmarshal(b, &rb) != nil {
		return false
	}
	var va, vb any
	if len(ra.RawData) > 0 || len(rb.RawData) > 0 {
		if json.Unmarshal(ra.RawData, &va) != nil || json.Unmarshal(rb.RawData, &vb) != nil || !reflect.DeepEqual(va, vb) {
			return false
		}
	}
	ra.RawData, rb.RawData = nil, nil
	if (ra.UpdatedAt == nil) != (rb.UpdatedAt == nil) ||
		(ra.UpdatedAt != nil && !ra.UpdatedAt.Truncate(time.Microsecond).Equal(rb.UpdatedAt.Truncate(time.Microsecond))) {
		return false
	}
	ra.UpdatedAt, rb.UpdatedAt = nil, nil
	return reflect.DeepEqual(ra, rb)
}
