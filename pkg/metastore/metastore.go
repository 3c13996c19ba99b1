// Package metastore is the domain store of anime metadata in PostgreSQL: the
// contract's anime_metadata table, its migration, and versioned writes where
// the highest version of a key always wins whatever order writes arrive in.
package metastore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/pgdb"
	"github.com/uptrace/bun"
)

// ErrNotFound is returned by Get for an id that has no row.
var ErrNotFound = errors.New("record not found")

// MigrationLockKey is the advisory lock key the migration holds.
const MigrationLockKey int64 = 0x414e4956 // "ANIV"

// Migrations create the contract's table, idempotently.
var migrations = []pgdb.Migration{
	{Name: "create anime_metadata", SQL: `CREATE TABLE IF NOT EXISTS anime_metadata (
	tmdb_id bigint PRIMARY KEY,
	title text NOT NULL,
	original_title text,
	korean_title text,
	overview text,
	poster_path text,
	backdrop_path text,
	first_air_date date,
	last_air_date date,
	status text,
	vote_average double precision,
	vote_count integer,
	popularity double precision,
	number_of_seasons integer,
	number_of_episodes integer,
	genres jsonb,
	networks jsonb,
	raw_data jsonb,
	version bigint NOT NULL,
	updated_at timestamptz NOT NULL,
	deleted_at timestamptz
)`},
	{Name: "index live rows", SQL: `CREATE INDEX IF NOT EXISTS anime_metadata_live_idx ON anime_metadata (updated_at) WHERE deleted_at IS NULL`},
	// The change log's reconciliation reads the rows written recently,
	// tombstones included.
	{Name: "index rows by update time", SQL: `CREATE INDEX IF NOT EXISTS anime_metadata_updated_idx ON anime_metadata (updated_at)`},
}

// Migrate creates or updates the schema; safe when several processes run it at once.
func Migrate(ctx context.Context, db *bun.DB) error {
	return pgdb.Migrate(ctx, db, MigrationLockKey, migrations)
}

// Row is the table's bun model.
type Row struct {
	bun.BaseModel `bun:"table:anime_metadata,alias:am"`

	TMDBID           int64           `bun:"tmdb_id,pk"`
	Title            string          `bun:"title,notnull"`
	OriginalTitle    *string         `bun:"original_title"`
	KoreanTitle      *string         `bun:"korean_title"`
	Overview         *string         `bun:"overview"`
	PosterPath       *string         `bun:"poster_path"`
	BackdropPath     *string         `bun:"backdrop_path"`
	FirstAirDate     *string         `bun:"first_air_date,type:date"`
	LastAirDate      *string         `bun:"last_air_date,type:date"`
	Status           *string         `bun:"status"`
	VoteAverage      *float64        `bun:"vote_average"`
	VoteCount        *int64          `bun:"vote_count"`
	Popularity       *float64        `bun:"popularity"`
	NumberOfSeasons  *int64          `bun:"number_of_seasons"`
	NumberOfEpisodes *int64          `bun:"number_of_episodes"`
	Genres           []string        `bun:"genres,type:jsonb"`
	Networks         []string        `bun:"networks,type:jsonb"`
	RawData          json.RawMessage `bun:"raw_data,type:jsonb,nullzero"`
	Version          int64           `bun:"version,notnull"`
	UpdatedAt        time.Time       `bun:"updated_at,notnull"`
	DeletedAt        *time.Time      `bun:"deleted_at"`
}

// Write is one versioned write: an upsert of Record, or a tombstone when Deleted.
type Write struct {
	TMDBID    int64
	Version   int64
	Deleted   bool
	UpdatedAt time.Time
	Record    *events.Record
}

// Result counts what ApplyBatch did.
type Result struct {
	// Applied writes changed a row; Stale writes met a row with an equal or newer version.
	Applied, Stale int
	// AppliedKeys lists the ids whose row now holds the written version.
	AppliedKeys map[int64]int64
}

// Store reads and writes anime_metadata.
type Store struct {
	db *bun.DB
}

// New returns a Store over db.
func New(db *bun.DB) (*Store, error) {
	if db == nil {
		return nil, errors.New("metastore: nil db")
	}
	return &Store{db: db}, nil
}

// DB returns the underlying pool.
func (s *Store) DB() *bun.DB { return s.db }

// Get returns the row of id, tombstones included (check Deleted on the result).
func (s *Store) Get(ctx context.Context, id int64) (*events.Record, bool, error) {
	var r Row
	err := s.db.NewSelect().Model(&r).Where("am.tmdb_id = ?", id).Scan(ctx)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, false, ErrNotFound
	}
	if err != nil {
		return nil, false, fmt.Errorf("get %d: %w", id, err)
	}
	return r.Record(), r.DeletedAt != nil, nil
}

// Upsert writes rec at version unless the row already holds a version ≥ version.
func (s *Store) Upsert(ctx context.Context, rec *events.Record, version int64, at time.Time) (bool, error) {
	res, err := s.ApplyBatch(ctx, []Write{{TMDBID: rec.TMDBID, Version: version, UpdatedAt: at, Record: rec}})
	return res.Applied == 1, err
}

// Delete writes a tombstone for id at version unless the row holds a version ≥ version.
func (s *Store) Delete(ctx context.Context, id, version int64, at time.Time) (bool, error) {
	res, err := s.ApplyBatch(ctx, []Write{{TMDBID: id, Version: version, Deleted: true, UpdatedAt: at}})
	return res.Applied == 1, err
}

// CopyMinWrites is the batch size from which ApplyBatch takes the bulk path
// (ApplyBatchCopy); smaller batches are one INSERT (ApplyBatchInsert), which
// takes fewer round trips. Both are measured in BenchmarkApplyBatchPaths.
const CopyMinWrites = 32

// ApplyBatch applies writes atomically. For each key only the highest
// version in the batch is sent (the first of equal versions); the others
// count as stale. A write whose version is not greater than the row's is
// skipped (stale), so replaying a batch twice, or in any order, ends in the
// same table. A batch of CopyMinWrites or more goes through COPY
// (ApplyBatchCopy), a smaller one is one INSERT (ApplyBatchInsert); both give
// the same table and the same Result.
func (s *Store) ApplyBatch(ctx context.Context, writes []Write) (Result, error) {
	if len(writes) >= CopyMinWrites {
		return s.ApplyBatchCopy(ctx, writes)
	}
	return s.ApplyBatchInsert(ctx, writes)
}

// ApplyBatchInsert is ApplyBatch as one multi-row INSERT … ON CONFLICT DO
// UPDATE built by bun.
func (s *Store) ApplyBatchInsert(ctx context.Context, writes []Write) (Result, error) {
	res := Result{AppliedKeys: map[int64]int64{}}
	if len(writes) == 0 {
		return res, nil
	}
	best := make(map[int64]Write, len(writes))
	for _, w := range writes {
		if cur, ok := best[w.TMDBID]; !ok || w.Version > cur.Version {
			if ok {
				res.Stale++
			}
			best[w.TMDBID] = w
		} else {
			res.Stale++
		}
	}
	rows := make([]Row, 0, len(best))
	for _, w := range best {
		if err := validateWrite(&w); err != nil {
			return Result{}, err
		}
		rows = append(rows, toRow(w))
	}
	// A stable order keeps lock acquisition consistent between concurrent batches (no deadlocks).
	sort.Slice(rows, func(i, j int) bool { return rows[i].TMDBID < rows[j].TMDBID })

	var applied []struct {
		TMDBID  int64 `bun:"tmdb_id"`
		Version int64 `bun:"version"`
	}
	_, err := upsertQuery(s.db, &rows).Exec(ctx, &applied)
	if err != nil {
		return Result{}, fmt.Errorf("apply batch of %d: %w", len(rows), err)
	}
	for _, a := range applied {
		res.AppliedKeys[a.TMDBID] = a.Version
	}
	res.Applied = len(applied)
	res.Stale += len(rows) - len(applied)
	return res, nil
}

// Count returns the number of live rows and tombstones.
func (s *Store) Count(ctx context.Context) (live, deleted int, err error) {
	err = s.db.NewRaw(`SELECT count(*) FILTER (WHERE deleted_at IS NULL), count(*) FILTER (WHERE deleted_at IS NOT NULL) FROM anime_metadata`).
		Scan(ctx, &live, &deleted)
	if err != nil {
		return 0, 0, fmt.Errorf("count: %w", err)
	}
	return live, deleted, nil
}

// Versions returns every key's version and whether it is deleted.
func (s *Store) Versions(ctx context.Context) (map[int64]Version, error) {
	var rows []struct {
		TMDBID    int64      `bun:"tmdb_id"`
		Version   int64      `bun:"version"`
		DeletedAt *time.Time `bun:"deleted_at"`
	}
	if err := s.db.NewRaw(`SELECT tmdb_id, version, deleted_at FROM anime_metadata`).Scan(ctx, &rows); err != nil {
		return nil, fmt.Errorf("versions: %w", err)
	}
	out := make(map[int64]Version, len(rows))
	for _, r := range rows {
		out[r.TMDBID] = Version{Version: r.Version, Deleted: r.DeletedAt != nil}
	}
	return out, nil
}

// KeyVersion is one row's key, version and tombstone flag.
type KeyVersion struct {
	TMDBID  int64 `bun:"tmdb_id"`
	Version int64 `bun:"version"`
	Deleted bool  `bun:"deleted"`
}

// VersionsAfter returns up to limit rows with a tmdb_id greater than after,
// in tmdb_id order: a resumable walk of the whole table.
func (s *Store) VersionsAfter(ctx context.Context, after int64, limit int) ([]KeyVersion, error) {
	var rows []KeyVersion
	err := s.db.NewRaw(`SELECT tmdb_id, version, deleted_at IS NOT NULL AS deleted FROM anime_metadata WHERE tmdb_id > ? ORDER BY tmdb_id LIMIT ?`, after, limit).
		Scan(ctx, &rows)
	if err != nil {
		return nil, fmt.Errorf("versions after %d: %w", after, err)
	}
	return rows, nil
}

// VersionsSince returns the rows whose updated_at is at or after since.
func (s *Store) VersionsSince(ctx context.Context, since time.Time) ([]KeyVersion, error) {
	var rows []KeyVersion
	err := s.db.NewRaw(`SELECT tmdb_id, version, deleted_at IS NOT NULL AS deleted FROM anime_metadata WHERE updated_at >= ?`, since.UTC()).
		Scan(ctx, &rows)
	if err != nil {
		return nil, fmt.Errorf("versions since %s: %w", since.Format(time.RFC3339), err)
	}
	return rows, nil
}

// ExpireTombstones deletes up to limit tombstones written before cutoff and
// returns their keys and versions.
func (s *Store) ExpireTombstones(ctx context.Context, cutoff time.Time, limit int) ([]KeyVersion, error) {
	var rows []KeyVersion
	err := s.db.NewRaw(`DELETE FROM anime_metadata WHERE tmdb_id IN (
		SELECT tmdb_id FROM anime_metadata WHERE deleted_at IS NOT NULL AND updated_at < ? ORDER BY updated_at LIMIT ?)
		AND deleted_at IS NOT NULL AND updated_at < ?
		RETURNING tmdb_id, version, true AS deleted`, cutoff.UTC(), limit, cutoff.UTC()).Scan(ctx, &rows)
	if err != nil {
		return nil, fmt.Errorf("expire tombstones before %s: %w", cutoff.Format(time.RFC3339), err)
	}
	return rows, nil
}

// GetMany returns the rows of ids that exist, tombstones included, as
// writes at their stored version.
func (s *Store) GetMany(ctx context.Context, ids []int64) ([]Write, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	var rows []Row
	if err := s.db.NewSelect().Model(&rows).Where("am.tmdb_id IN (?)", bun.In(ids)).Scan(ctx); err != nil {
		return nil, fmt.Errorf("get %d rows: %w", len(ids), err)
	}
	out := make([]Write, len(rows))
	for i := range rows {
		r := &rows[i]
		out[i] = Write{TMDBID: r.TMDBID, Version: r.Version, Deleted: r.DeletedAt != nil, UpdatedAt: r.UpdatedAt.UTC()}
		if r.DeletedAt == nil {
			out[i].Record = r.Record()
		}
	}
	return out, nil
}

// Version is a key's version and tombstone flag.
type Version struct {
	Version int64
	Deleted bool
}

// upsertQuery is the set-based versioned upsert of rows: a row replaces the
// stored one only if its version is newer, and the statement returns the
// rows it applied.
func upsertQuery(db bun.IDB, rows *[]Row) *bun.InsertQuery {
	return db.NewInsert().Model(rows).
		On("CONFLICT (tmdb_id) DO UPDATE").
		Set("title = EXCLUDED.title, original_title = EXCLUDED.original_title, korean_title = EXCLUDED.korean_title").
		Set("overview = EXCLUDED.overview, poster_path = EXCLUDED.poster_path, backdrop_path = EXCLUDED.backdrop_path").
		Set("first_air_date = EXCLUDED.first_air_date, last_air_date = EXCLUDED.last_air_date, status = EXCLUDED.status").
		Set("vote_average = EXCLUDED.vote_average, vote_count = EXCLUDED.vote_count, popularity = EXCLUDED.popularity").
		Set("number_of_seasons = EXCLUDED.number_of_seasons, number_of_episodes = EXCLUDED.number_of_episodes").
		Set("genres = EXCLUDED.genres, networks = EXCLUDED.networks, raw_data = EXCLUDED.raw_data").
		Set("version = EXCLUDED.version, updated_at = EXCLUDED.updated_at, deleted_at = EXCLUDED.deleted_at").
		Where("am.version < EXCLUDED.version").
		Returning("tmdb_id, version")
}

func toRow(w Write) Row {
	at := w.UpdatedAt.UTC()
	r := Row{TMDBID: w.TMDBID, Version: w.Version, UpdatedAt: at}
	if w.Deleted || w.Record == nil {
		r.DeletedAt = &at
		return r
	}
	rec := w.Record
	r.Title = rec.Title
	r.OriginalTitle, r.KoreanTitle, r.Overview = rec.OriginalTitle, rec.KoreanTitle, rec.Overview
	r.PosterPath, r.BackdropPath, r.Status = rec.PosterPath, rec.BackdropPath, rec.Status
	r.FirstAirDate, r.LastAirDate = rec.FirstAirDate, rec.LastAirDate
	r.VoteAverage, r.VoteCount, r.Popularity = rec.VoteAverage, rec.VoteCount, rec.Popularity
	r.NumberOfSeasons, r.NumberOfEpisodes = rec.NumberOfSeasons, rec.NumberOfEpisodes
	r.Genres, r.Networks = rec.Genres, rec.Networks
	if len(rec.RawData) > 0 && string(rec.RawData) != "null" {
		r.RawData = rec.RawData
	}
	return r
}

// Record converts a row to the API record, with version and updated_at.
func (r *Row) Record() *events.Record {
	at := r.UpdatedAt.UTC()
	rec := &events.Record{
		TMDBID: r.TMDBID, Title: r.Title,
		OriginalTitle: r.OriginalTitle, KoreanTitle: r.KoreanTitle, Overview: r.Overview,
		PosterPath: r.PosterPath, BackdropPath: r.BackdropPath, Status: r.Status,
		FirstAirDate: dateOnly(r.FirstAirDate), LastAirDate: dateOnly(r.LastAirDate),
		VoteAverage: r.VoteAverage, VoteCount: r.VoteCount, Popularity: r.Popularity,
		NumberOfSeasons: r.NumberOfSeasons, NumberOfEpisodes: r.NumberOfEpisodes,
		Genres: r.Genres, Networks: r.Networks, RawData: r.RawData,
		Version: r.Version, UpdatedAt: &at,
	}
	return rec
}

// dateOnly trims a date scanned as a timestamp string down to YYYY-MM-DD.
func dateOnly(s *string) *string {
	if s == nil || len(*s) <= len(events.DateLayout) {
		return s
	}
	d := (*s)[:len(events.DateLayout)]
	return &d
}
