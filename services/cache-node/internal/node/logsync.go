package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/metastore"
)

// How writes reach the change log even when a node fails between making a
// write durable and logging it:
//   - a write is logged before it is acknowledged, so an acknowledged write
//     is always in the log;
//   - a write the log could not take in time (NATS unreachable) is answered
//     503 and kept in the node's unlogged set, which relogLoop retries;
//   - a node killed between the commit and the log loses that set: every
//     node's reconcile pass compares the rows written recently (updated_at
//     within the last reconcile interval plus slack) with its index of the
//     log, and logs any row the log is behind on;
//   - a buffered write is logged again at replay if the log lacks it;
//   - rows older than the log (written before it existed, or by another
//     path) are logged by the backfill, which walks the whole table once,
//     resumably, recording its progress on changes._backfill.

// logParallel bounds the change log publishes one sync pass runs at once.
const logParallel = 16

// unlogged holds durable writes that are not in the change log yet.
type unlogged struct {
	mu sync.Mutex
	m  map[int64]logEntry
}

func (n *Node) queueUnlogged(le logEntry) {
	n.pendingLog.mu.Lock()
	defer n.pendingLog.mu.Unlock()
	if cur, ok := n.pendingLog.m[le.id]; !ok || cur.version < le.version {
		n.pendingLog.m[le.id] = le
	}
}

// relogLoop retries the unlogged writes every second until ctx is done.
func (n *Node) relogLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n.pendingLog.mu.Lock()
		batch := make([]logEntry, 0, len(n.pendingLog.m))
		for _, le := range n.pendingLog.m {
			batch = append(batch, le)
		}
		n.pendingLog.mu.Unlock()
		if len(batch) == 0 {
			continue
		}
		done, _ := n.logEntries(ctx, batch)
		n.pendingLog.mu.Lock()
		for _, le := range done {
			if cur, ok := n.pendingLog.m[le.id]; ok && cur.version == le.version {
				delete(n.pendingLog.m, le.id)
			}
		}
		left := len(n.pendingLog.m)
		n.pendingLog.mu.Unlock()
		if len(done) > 0 {
			n.log.Info("durable writes put in the change log late", "logged", len(done), "left", left)
		}
	}
}

// logEntries publishes entries to the change log and returns those now in
// it (or overtaken by a newer version) and how many of them this call added.
// It puts them in atomic batches of up to maxLogBatch first (a replay of
// writes the log lacks, or a backfill, logs thousands at once: one by one,
// each waiting for its own fsync, they went at some hundreds a second), and
// publishes whatever a batch did not take one by one, logParallel at a time,
// each with its own read and compare-and-set.
func (n *Node) logEntries(ctx context.Context, entries []logEntry) (done []logEntry, added int) {
	if !n.logBatch.off.Load() {
		done, entries = n.logInBatches(ctx, entries)
		added = len(done)
	}
	more, moreAdded := n.logOneByOne(ctx, entries)
	return append(done, more...), added + moreAdded
}

// logInBatches logs what it can of entries in atomic batches and returns
// what the batches took and the rest: an entry whose record the index holds
// at an equal or newer version or at an unknown sequence, a record's second
// entry, a batch refused because another writer logged one of its records.
func (n *Node) logInBatches(ctx context.Context, entries []logEntry) (done, rest []logEntry) {
	for len(entries) > 0 {
		batch := make([]logEntry, 0, min(len(entries), maxLogBatch))
		inBatch := make(map[int64]bool, cap(batch))
		i := 0
		for ; i < len(entries) && len(batch) < maxLogBatch; i++ {
			le := entries[i]
			if !n.changes.batchable(le) || inBatch[le.id] {
				rest = append(rest, le)
				continue
			}
			inBatch[le.id] = true
			batch = append(batch, le)
		}
		entries = entries[i:]
		if len(batch) == 0 {
			continue
		}
		if err := n.logBatch.store(ctx, batch); err != nil {
			n.log.Debug("change log batch refused: its entries go one by one", "entries", len(batch), "error", err)
			rest = append(rest, batch...)
			continue
		}
		done = append(done, batch...)
	}
	return done, rest
}

// logOneByOne publishes entries one by one, logParallel at a time.
func (n *Node) logOneByOne(ctx context.Context, entries []logEntry) (done []logEntry, added int) {
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(logParallel)
	for _, le := range entries {
		g.Go(func() error {
			pctx, cancel := context.WithTimeout(gctx, 5*time.Second)
			defer cancel()
			_, published, err := n.changes.publishOnce(pctx, le)
			if err != nil {
				n.log.Debug("change log publish failed", "tmdb_id", le.id, "version", le.version, "error", err)
				return nil
			}
			mu.Lock()
			done = append(done, le)
			if published {
				added++
			}
			mu.Unlock()
			return nil
		})
	}
	_ = g.Wait()
	return done, added
}

// entryOf turns a stored or replayed write into its change log entry.
func entryOf(w metastore.Write) (logEntry, error) {
	le := logEntry{id: w.TMDBID, version: w.Version, deleted: w.Deleted || w.Record == nil, at: w.UpdatedAt}
	if le.deleted {
		return le, nil
	}
	rec := *w.Record
	at := w.UpdatedAt.UTC()
	rec.Version, rec.UpdatedAt = w.Version, &at
	body, err := events.Marshal(&rec)
	if err != nil {
		return logEntry{}, fmt.Errorf("encode tmdb:%d: %w", w.TMDBID, err)
	}
	le.body = body
	return le, nil
}

// logBehind logs the rows (at their stored versions) that the change log is
// behind on, as the node's index knows it. It returns how many it added to
// the log (another node may have logged some first).
func (n *Node) logBehind(ctx context.Context, rows []metastore.KeyVersion) (int, error) {
	var ids []int64
	for _, r := range rows {
		if r.Version > n.changes.latest(r.TMDBID) {
			ids = append(ids, r.TMDBID)
		}
	}
	if len(ids) == 0 {
		return 0, nil
	}
	var writes []metastore.Write
	err := n.dbCall(ctx, opGetMany, func(ctx context.Context) error {
		var err error
		writes, err = n.store.GetMany(ctx, ids)
		return err
	})
	if err != nil {
		return 0, err
	}
	entries := make([]logEntry, 0, len(writes))
	for _, w := range writes {
		le, err := entryOf(w)
		if err != nil {
			n.log.Error("row cannot be logged", "tmdb_id", w.TMDBID, "error", err)
			continue
		}
		entries = append(entries, le)
	}
	done, added := n.logEntries(ctx, entries)
	if len(done) < len(entries) {
		return added, fmt.Errorf("%d of %d rows could not be logged", len(entries)-len(done), len(entries))
	}
	return added, nil
}

// syncLog keeps the change log level with the table: it runs the backfill
// until it is complete, and a reconcile pass every LOG_RECONCILE_INTERVAL,
// while the node can prove its index current and the mode is normal.
func (n *Node) syncLog(ctx context.Context) {
	t := time.NewTicker(n.cfg.LogReconcileInterval)
	defer t.Stop()
	var since time.Time // the start of the last successful reconcile pass
	for {
		if n.currentMode() == events.ModeNormal && n.changes.current() && n.migrated.Load() {
			if !n.backfillDone.Load() {
				if err := n.backfill(ctx); err != nil && ctx.Err() == nil {
					n.log.Warn("change log backfill paused", "error", err)
				}
			}
			start := time.Now()
			if since.IsZero() {
				since = start
			}
			if err := n.reconcile(ctx, since); err != nil {
				if ctx.Err() == nil {
					n.log.Warn("change log reconcile failed", "error", err)
				}
			} else {
				since = start
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// expireLoop removes tombstones older than TOMBSTONE_RETENTION, so that
// deletes of ids never written cannot grow the table and the change log
// without bound.
func (n *Node) expireLoop(ctx context.Context) {
	if n.cfg.TombstoneRetention <= 0 {
		return
	}
	t := time.NewTicker(min(n.cfg.TombstoneRetention/2, time.Hour))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n.currentMode() != events.ModeNormal || !n.migrated.Load() {
			continue
		}
		if err := n.expireTombstones(ctx); err != nil && ctx.Err() == nil {
			n.log.Warn("tombstone expiry failed", "error", err)
		}
	}
}

// expireTombstones removes tombstones written before the retention, and
// before the oldest write still waiting in the buffer or the producers'
// stream (an older upsert applied after its tombstone is gone would bring
// the record back), from the table and then from the change log.
func (n *Node) expireTombstones(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cutoff := time.Now().Add(-n.cfg.TombstoneRetention)
	for _, name := range []string{events.StreamBuffer, events.StreamMetadata} {
		st, err := n.js.Stream(ctx, n.subj.Name(name))
		if err != nil {
			return fmt.Errorf("tombstone expiry: %w", err)
		}
		if info := st.CachedInfo(); info.State.Msgs > 0 && info.State.FirstTime.Before(cutoff) {
			cutoff = info.State.FirstTime.Add(-time.Second)
		}
	}
	var total int
	for ctx.Err() == nil {
		var rows []metastore.KeyVersion
		err := n.dbCall(ctx, opExpireTombstones, func(ctx context.Context) error {
			var err error
			rows, err = n.store.ExpireTombstones(ctx, cutoff, 500)
			return err
		})
		if err != nil {
			return err
		}
		for _, r := range rows {
			if err := n.changes.forgetTombstone(ctx, r.TMDBID, r.Version); err != nil {
				n.log.Warn("tombstone left in the change log", "tmdb_id", r.TMDBID, "error", err)
			}
		}
		total += len(rows)
		if len(rows) < 500 {
			break
		}
	}
	if total > 0 {
		n.metrics.expired.Add(float64(total))
		n.log.Info("expired tombstones", "removed", total, "written_before", cutoff.UTC().Format(time.RFC3339))
	}
	return ctx.Err()
}

// reconcileSlack is how far before the last pass a reconcile pass looks: a
// write's updated_at is when it was accepted, and it may commit up to its
// request's deadline later.
func (n *Node) reconcileSlack() time.Duration {
	return 2*(n.cfg.DBTimeout+n.cfg.BufferTimeout) + n.cfg.LogReconcileInterval
}

// reconcile logs the rows written since (less the slack) that the log is behind on.
func (n *Node) reconcile(ctx context.Context, since time.Time) error {
	ctx, cancel := context.WithTimeout(ctx, max(n.cfg.LogReconcileInterval, 30*time.Second))
	defer cancel()
	var rows []metastore.KeyVersion
	err := n.dbCall(ctx, opVersionsSince, func(ctx context.Context) error {
		var err error
		rows, err = n.store.VersionsSince(ctx, since.Add(-n.reconcileSlack()))
		return err
	})
	if err != nil {
		return err
	}
	logged, err := n.logBehind(ctx, rows)
	if logged > 0 {
		n.metrics.reconciled.Add(float64(logged))
		n.log.Warn("change log reconciled: rows the log was behind on (a node stopped between commit and log, or a change by another path)", "logged", logged)
	}
	return err
}

// backfillPage is how many rows one backfill step compares.
const backfillPage = 1000

// backfill walks the table in tmdb_id order from the recorded cursor and logs
// every row the log is behind on; several nodes may run it at once (the
// progress record is written with a compare-and-set, and logging is
// idempotent).
func (n *Node) backfill(ctx context.Context) error {
	subject := n.subj.Of(events.SubjectChangesBackfill)
	for ctx.Err() == nil && n.currentMode() == events.ModeNormal {
		prog, seq, err := n.backfillProgress(ctx)
		if err != nil {
			return err
		}
		if prog.Done {
			n.backfillDone.Store(true)
			return nil
		}
		var rows []metastore.KeyVersion
		err = n.dbCall(ctx, opVersionsAfter, func(ctx context.Context) error {
			var err error
			rows, err = n.store.VersionsAfter(ctx, prog.Cursor, backfillPage)
			return err
		})
		if err != nil {
			return err
		}
		logged, err := n.logBehind(ctx, rows)
		if err != nil {
			return err
		}
		next := events.BackfillProgress{Cursor: prog.Cursor, Published: prog.Published + int64(logged), UpdatedAt: time.Now().UTC()}
		if len(rows) < backfillPage {
			next.Done = true
		}
		if len(rows) > 0 {
			next.Cursor = rows[len(rows)-1].TMDBID
		}
		b, err := json.Marshal(next)
		if err != nil {
			return fmt.Errorf("encode backfill progress: %w", err)
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = n.js.PublishMsg(pctx, &nats.Msg{Subject: subject, Data: b}, jetstream.WithExpectLastSequencePerSubject(seq))
		cancel()
		if err != nil && !isWrongLastSequence(err) {
			return fmt.Errorf("record backfill progress: %w", err)
		}
		if err == nil && next.Done {
			n.log.Info("change log backfill complete", "published", next.Published, "cursor", next.Cursor)
			n.backfillDone.Store(true)
			return nil
		}
	}
	return ctx.Err()
}

// backfillProgress reads the backfill's progress record and its sequence (0: none yet).
func (n *Node) backfillProgress(ctx context.Context) (events.BackfillProgress, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var p events.BackfillProgress
	m, err := n.changes.stream.GetLastMsgForSubject(ctx, n.subj.Of(events.SubjectChangesBackfill))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return p, 0, nil
	}
	if err != nil {
		return p, 0, fmt.Errorf("read backfill progress: %w", err)
	}
	if err := json.Unmarshal(m.Data, &p); err != nil {
		return events.BackfillProgress{}, m.Sequence, nil // unreadable: start again, over it
	}
	return p, m.Sequence, nil
}

// logReplayed logs the replayed writes that the table took and the log lacks
// (their node stopped between buffering and logging them).
func (n *Node) logReplayed(ctx context.Context, chunk []metastore.Write, applied map[int64]int64) {
	var entries []logEntry
	for _, w := range chunk {
		if v, ok := applied[w.TMDBID]; !ok || v != w.Version || n.changes.latest(w.TMDBID) >= w.Version {
			continue
		}
		le, err := entryOf(w)
		if err != nil {
			continue
		}
		entries = append(entries, le)
	}
	if len(entries) == 0 {
		return
	}
	logged := map[int64]bool{}
	done, _ := n.logEntries(ctx, entries)
	for _, le := range done {
		logged[le.id] = true
	}
	for _, le := range entries {
		if !logged[le.id] {
			n.queueUnlogged(le)
		}
	}
}
