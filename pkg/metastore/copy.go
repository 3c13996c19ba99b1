package metastore

import (
	"bytes"
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/driver/pgdriver"
)

// The bulk apply: a batch is streamed with COPY FROM STDIN (text format) into
// a session-local staging table and merged into anime_metadata by one
// INSERT … SELECT … ON CONFLICT DO UPDATE … WHERE version < EXCLUDED.version
// … RETURNING, all in one transaction. The rows are encoded here, without
// reflection and without holding the batch's encoding in memory: the reader
// encodes a few rows at a time as the driver asks for bytes.

// CopyColumns are the columns of a COPY row, in the order NewCopyReader
// encodes them: every column of anime_metadata.
const CopyColumns = "tmdb_id, title, original_title, korean_title, overview, poster_path, backdrop_path, " +
	"first_air_date, last_air_date, status, vote_average, vote_count, popularity, number_of_seasons, " +
	"number_of_episodes, genres, networks, raw_data, version, updated_at, deleted_at"

// stageTable is the staging table: temporary (one per session, never
// WAL-logged, invisible to other sessions) and emptied at the end of every
// transaction that used it. The suffix names its shape: a release that
// changes it uses another name. Qualified with pg_temp, so that no table of
// that name elsewhere on the search path is ever used instead.
const stageTable = "pg_temp.anivault_stage_v1"

// beginStage opens the transaction and makes sure the session has its
// staging table (one simple-query round trip).
const beginStage = "BEGIN; CREATE TEMP TABLE IF NOT EXISTS " + stageTable +
	" (LIKE anime_metadata) ON COMMIT DELETE ROWS"

// copyStage is the COPY statement that fills the staging table.
const copyStage = "COPY " + stageTable + " (" + CopyColumns + ") FROM STDIN"

// mergeStage merges the staging table; its rows are distinct keys.
var mergeStage = UpsertFromSQL(stageTable)

// UpsertFromSQL returns the set-based versioned upsert of every row of
// source (a table with CopyColumns, one row per key) into anime_metadata: a
// row replaces the stored one only if its version is newer, and the
// statement returns the key and version of every row it wrote. Rows are
// taken in key order, so that concurrent batches lock rows in the same order.
func UpsertFromSQL(source string) string {
	var set strings.Builder
	for i, c := range strings.Split(CopyColumns, ", ") {
		if c == "tmdb_id" {
			continue
		}
		if i > 1 {
			set.WriteString(", ")
		}
		set.WriteString(c + " = EXCLUDED." + c)
	}
	return "INSERT INTO anime_metadata AS am (" + CopyColumns + ") SELECT " + CopyColumns + " FROM " + source +
		" ORDER BY tmdb_id ON CONFLICT (tmdb_id) DO UPDATE SET " + set.String() +
		" WHERE am.version < EXCLUDED.version RETURNING am.tmdb_id, am.version"
}

// ErrInvalidWrite is wrapped by the error for a write PostgreSQL's text
// types cannot hold (a NUL byte in a string): the batch is refused whole
// before anything is sent.
var ErrInvalidWrite = errors.New("metastore: invalid write")

// ApplyBatchCopy is ApplyBatch through COPY into a staging table and one
// merge statement, in one transaction: either every applied write is
// committed or none is. Result is exactly ApplyBatch's.
func (s *Store) ApplyBatchCopy(ctx context.Context, writes []Write) (_ Result, err error) {
	res := Result{AppliedKeys: map[int64]int64{}}
	if len(writes) == 0 {
		return res, nil
	}
	order := winners(writes)
	if err := validate(writes, order); err != nil {
		return Result{}, err
	}
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("copy batch of %d: connection: %w", len(order), err)
	}
	defer conn.Close()
	committed := false
	defer func() {
		if !committed {
			abort(ctx, conn, err)
		}
	}()
	if _, err := conn.ExecContext(ctx, beginStage); err != nil {
		return Result{}, fmt.Errorf("copy batch of %d: begin: %w", len(order), err)
	}
	if _, err := pgdriver.CopyFrom(ctx, conn, newCopyReader(writes, order), copyStage); err != nil {
		return Result{}, fmt.Errorf("copy batch of %d: copy: %w", len(order), err)
	}
	rows, err := conn.QueryContext(ctx, mergeStage)
	if err != nil {
		return Result{}, fmt.Errorf("copy batch of %d: merge: %w", len(order), err)
	}
	for rows.Next() {
		var id, v int64
		if err := rows.Scan(&id, &v); err != nil {
			_ = rows.Close()
			return Result{}, fmt.Errorf("copy batch of %d: merge result: %w", len(order), err)
		}
		res.AppliedKeys[id] = v
	}
	if err := rows.Close(); err != nil {
		return Result{}, fmt.Errorf("copy batch of %d: merge: %w", len(order), err)
	}
	if err := rows.Err(); err != nil {
		return Result{}, fmt.Errorf("copy batch of %d: merge: %w", len(order), err)
	}
	if _, err := conn.ExecContext(ctx, "COMMIT"); err != nil {
		return Result{}, fmt.Errorf("copy batch of %d: commit: %w", len(order), err)
	}
	committed = true
	res.Applied = len(res.AppliedKeys)
	res.Stale = len(writes) - res.Applied
	return res, nil
}

// abort ends a failed bulk apply's transaction. Only after an error the
// server reported (and then waited for the next command) is the connection
// known to be in step with the server, and rolled back; after any other
// (a network error or a deadline in the middle of the COPY or of a reply),
// or a ROLLBACK that did not go through, unread replies may be on the wire:
// the connection is closed, never returned to the pool, where the next
// query would read them as its own.
func abort(ctx context.Context, conn bun.Conn, cause error) {
	var pgErr pgdriver.Error
	if errors.As(cause, &pgErr) && pgErr.Field('V') != "FATAL" && pgErr.Field('V') != "PANIC" {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		if _, err := conn.ExecContext(rctx, "ROLLBACK"); err == nil {
			return
		}
	}
	_ = conn.Raw(func(dc any) error {
		if c, ok := dc.(driver.Conn); ok {
			_ = c.Close()
		}
		return driver.ErrBadConn // database/sql discards the connection
	})
}

// winners returns the indices of the writes that ApplyBatch sends, in key
// order: for each key the write of the highest version, the first one of
// equal versions. The others are stale by definition.
func winners(writes []Write) []int32 {
	idx := make([]int32, len(writes))
	for i := range idx {
		idx[i] = int32(i)
	}
	slices.SortFunc(idx, func(a, b int32) int {
		wa, wb := &writes[a], &writes[b]
		switch {
		case wa.TMDBID != wb.TMDBID:
			return cmpInt(wa.TMDBID, wb.TMDBID)
		case wa.Version != wb.Version:
			return cmpInt(wb.Version, wa.Version) // highest first
		default:
			return cmpInt(a, b)
		}
	})
	out := idx[:0]
	for i, k := range idx {
		if i == 0 || writes[k].TMDBID != writes[idx[i-1]].TMDBID {
			out = append(out, k)
		}
	}
	return out
}

func cmpInt[T int32 | int64](a, b T) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// validate refuses a batch with a value no PostgreSQL text or jsonb column
// can hold, before any of it is sent.
func validate(writes []Write, order []int32) error {
	for _, k := range order {
		if err := validateWrite(&writes[k]); err != nil {
			return err
		}
	}
	return nil
}

func validateWrite(w *Write) error {
	if w.Deleted || w.Record == nil {
		return nil
	}
	r := w.Record
	bad := strings.IndexByte(r.Title, 0) >= 0 || bytes.IndexByte(r.RawData, 0) >= 0
	for _, p := range []*string{r.OriginalTitle, r.KoreanTitle, r.Overview, r.PosterPath, r.BackdropPath, r.FirstAirDate, r.LastAirDate, r.Status} {
		bad = bad || (p != nil && strings.IndexByte(*p, 0) >= 0)
	}
	for _, s := range r.Genres {
		bad = bad || strings.IndexByte(s, 0) >= 0
	}
	for _, s := range r.Networks {
		bad = bad || strings.IndexByte(s, 0) >= 0
	}
	if bad {
		return fmt.Errorf("%w: tmdb_id %d version %d holds a NUL byte", ErrInvalidWrite, w.TMDBID, w.Version)
	}
	return nil
}

// NewCopyReader returns the rows of writes in COPY's text format, in
// CopyColumns order: for each key only the write ApplyBatch would send (the
// highest version), in key order. It fails for a batch validate refuses.
func NewCopyReader(writes []Write) (io.Reader, error) {
	order := winners(writes)
	if err := validate(writes, order); err != nil {
		return nil, err
	}
	return newCopyReader(writes, order), nil
}

// copyChunk is about how many encoded bytes the reader prepares at a time.
const copyChunk = 64 << 10

type copyReader struct {
	writes []Write
	order  []int32
	next   int
	buf    []byte
	off    int
}

func newCopyReader(writes []Write, order []int32) *copyReader {
	return &copyReader{writes: writes, order: order, buf: make([]byte, 0, copyChunk+copyChunk/4)}
}

// Read never returns data together with io.EOF: pgdriver's CopyFrom drops
// the bytes of a read that ends with io.EOF.
func (r *copyReader) Read(p []byte) (int, error) {
	for r.off == len(r.buf) {
		if r.next == len(r.order) {
			return 0, io.EOF
		}
		r.buf, r.off = r.buf[:0], 0
		for r.next < len(r.order) && len(r.buf) < copyChunk {
			r.buf = appendCopyRow(r.buf, &r.writes[r.order[r.next]])
			r.next++
		}
	}
	n := copy(p, r.buf[r.off:])
	r.off += n
	return n, nil
}

// appendCopyRow appends w as one row of COPY's text format (tab-separated,
// \N for NULL, newline-terminated), as toRow would write it.
func appendCopyRow(b []byte, w *Write) []byte {
	at := w.UpdatedAt.UTC()
	b = strconv.AppendInt(b, w.TMDBID, 10)
	if w.Deleted || w.Record == nil {
		// A tombstone: an empty title (the column is NOT NULL), nothing
		// else but the version and the times.
		b = append(b, "\t\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t"...)
		b = strconv.AppendInt(b, w.Version, 10)
		b = append(b, '\t')
		b = appendTimestamp(b, at)
		b = append(b, '\t')
		b = appendTimestamp(b, at)
		return append(b, '\n')
	}
	r := w.Record
	b = append(b, '\t')
	b = appendText(b, r.Title)
	b = appendNullText(append(b, '\t'), r.OriginalTitle)
	b = appendNullText(append(b, '\t'), r.KoreanTitle)
	b = appendNullText(append(b, '\t'), r.Overview)
	b = appendNullText(append(b, '\t'), r.PosterPath)
	b = appendNullText(append(b, '\t'), r.BackdropPath)
	b = appendNullText(append(b, '\t'), r.FirstAirDate)
	b = appendNullText(append(b, '\t'), r.LastAirDate)
	b = appendNullText(append(b, '\t'), r.Status)
	b = append(b, '\t')
	b = appendFloat(b, r.VoteAverage)
	b = append(b, '\t')
	b = appendInt(b, r.VoteCount)
	b = append(b, '\t')
	b = appendFloat(b, r.Popularity)
	b = append(b, '\t')
	b = appendInt(b, r.NumberOfSeasons)
	b = append(b, '\t')
	b = appendInt(b, r.NumberOfEpisodes)
	b = append(b, '\t')
	b = appendStringsJSON(b, r.Genres)
	b = append(b, '\t')
	b = appendStringsJSON(b, r.Networks)
	b = append(b, '\t')
	if len(r.RawData) > 0 && string(r.RawData) != "null" {
		b = appendText(b, []byte(r.RawData))
	} else {
		b = append(b, `\N`...)
	}
	b = append(b, '\t')
	b = strconv.AppendInt(b, w.Version, 10)
	b = append(b, '\t')
	b = appendTimestamp(b, at)
	b = append(b, "\t\\N\n"...)
	return b
}

// copySpecial marks the bytes that mean something in COPY's text format:
// backslash, newline, carriage return and tab (validate has refused NUL). A
// UTF-8 sequence never holds one of them.
var copySpecial = [256]bool{'\\': true, '\n': true, '\r': true, '\t': true}

// appendText appends s escaped for COPY's text format.
func appendText[T string | []byte](b []byte, s T) []byte {
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !copySpecial[c] {
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '\\':
			b = append(b, `\\`...)
		case '\n':
			b = append(b, `\n`...)
		case '\r':
			b = append(b, `\r`...)
		case '\t':
			b = append(b, `\t`...)
		}
		start = i + 1
	}
	return append(b, s[start:]...)
}

func appendNullText(b []byte, p *string) []byte {
	if p == nil {
		return append(b, `\N`...)
	}
	return appendText(b, *p)
}

func appendInt(b []byte, p *int64) []byte {
	if p == nil {
		return append(b, `\N`...)
	}
	return strconv.AppendInt(b, *p, 10)
}

func appendFloat(b []byte, p *float64) []byte {
	switch {
	case p == nil:
		return append(b, `\N`...)
	case math.IsInf(*p, 1):
		return append(b, "Infinity"...)
	case math.IsInf(*p, -1):
		return append(b, "-Infinity"...)
	case math.IsNaN(*p):
		return append(b, "NaN"...)
	}
	return strconv.AppendFloat(b, *p, 'g', -1, 64)
}

// appendTimestamp appends t as bun does (microseconds, UTC offset).
func appendTimestamp(b []byte, t time.Time) []byte {
	return t.AppendFormat(b, "2006-01-02 15:04:05.999999-07:00")
}

// appendStringsJSON appends ss as a JSON array for a jsonb column, already
// escaped for COPY (every backslash of a JSON escape doubled); nil is NULL,
// as bun writes a nil slice.
func appendStringsJSON(b []byte, ss []string) []byte {
	if ss == nil {
		return append(b, `\N`...)
	}
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, s)
	}
	return append(b, ']')
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string inside a COPY text field: the
// JSON escapes' backslashes are doubled for COPY, and control characters are
// \u escapes, so no raw tab or newline is written. Invalid UTF-8 becomes
// U+FFFD, as encoding/json does.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"':
				b = append(b, `\\"`...)
			case c == '\\':
				b = append(b, `\\\\`...)
			case c < 0x20:
				b = append(b, `\\u00`...)
				b = append(b, hexDigits[c>>4], hexDigits[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
