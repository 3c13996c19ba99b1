package events_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/anivault/anivault/events"
)

func TestDecodeRecordRejectsEachRule(t *testing.T) {
	t.Parallel()
	korean256 := strings.Repeat("진", 256)
	tests := []struct {
		name  string
		in    []byte
		field string
	}{
		// tmdb_id
		{name: "tmdb_id missing", in: recordJSON(t, nil, "tmdb_id"), field: "tmdb_id"},
		{name: "tmdb_id zero", in: recordJSON(t, map[string]any{"tmdb_id": 0}), field: "tmdb_id"},
		{name: "tmdb_id negative", in: recordJSON(t, map[string]any{"tmdb_id": -1429}), field: "tmdb_id"},
		{name: "tmdb_id min int64", in: recordJSON(t, map[string]any{"tmdb_id": raw("-9223372036854775808")}), field: "tmdb_id"},
		{name: "tmdb_id null", in: recordJSON(t, map[string]any{"tmdb_id": nil}), field: "tmdb_id"},
		{name: "tmdb_id as string", in: recordJSON(t, map[string]any{"tmdb_id": "1429"}), field: "tmdb_id"},
		{name: "tmdb_id as float", in: recordJSON(t, map[string]any{"tmdb_id": 1.5}), field: "tmdb_id"},
		{name: "tmdb_id in exponent notation", in: recordJSON(t, map[string]any{"tmdb_id": raw("1.429e3")}), field: "tmdb_id"},
		{name: "tmdb_id as bool", in: recordJSON(t, map[string]any{"tmdb_id": true}), field: "tmdb_id"},
		{name: "tmdb_id as object", in: recordJSON(t, map[string]any{"tmdb_id": map[string]int{"id": 1}}), field: "tmdb_id"},
		{name: "tmdb_id beyond int64", in: recordJSON(t, map[string]any{"tmdb_id": raw("9223372036854775808")}), field: "tmdb_id"},
		{name: "tmdb_id 1e400", in: recordJSON(t, map[string]any{"tmdb_id": raw("1e400")}), field: "tmdb_id"},

		// title
		{name: "title missing", in: recordJSON(t, nil, "title"), field: "title"},
		{name: "title empty", in: recordJSON(t, map[string]any{"title": ""}), field: "title"},
		{name: "title null", in: recordJSON(t, map[string]any{"title": nil}), field: "title"},
		{name: "title spaces", in: recordJSON(t, map[string]any{"title": "   "}), field: "title"},
		{name: "title tabs and newlines", in: recordJSON(t, map[string]any{"title": "\t\r\n "}), field: "title"},
		{name: "title ideographic space", in: recordJSON(t, map[string]any{"title": "\u3000\u3000"}), field: "title"},
		{name: "title 256 ASCII characters", in: recordJSON(t, map[string]any{"title": strings.Repeat("a", 256)}), field: "title"},
		{name: "title 256 Korean characters", in: recordJSON(t, map[string]any{"title": korean256}), field: "title"},
		{name: "title 256 emoji", in: recordJSON(t, map[string]any{"title": strings.Repeat("😀", 256)}), field: "title"},
		{name: "title as number", in: recordJSON(t, map[string]any{"title": 42}), field: "title"},
		{name: "title as array", in: recordJSON(t, map[string]any{"title": []string{"a"}}), field: "title"},
		{name: "title is a NUL", in: []byte(`{"tmdb_id":1429,"title":"\u0000"}`), field: "title"},
		{name: "title contains a NUL", in: []byte(`{"tmdb_id":1429,"title":"Attack\u0000on Titan"}`), field: "title"},

		// NUL in other strings
		{name: "overview contains a NUL", in: []byte(`{"tmdb_id":1429,"title":"A","overview":"x\u0000y"}`), field: "overview"},
		{name: "original_title contains a NUL", in: []byte(`{"tmdb_id":1429,"title":"A","original_title":"進撃\u0000"}`), field: "original_title"},
		{name: "korean_title contains a NUL", in: []byte(`{"tmdb_id":1429,"title":"A","korean_title":"\u0000진격"}`), field: "korean_title"},
		{name: "poster_path contains a NUL", in: []byte(`{"tmdb_id":1429,"title":"A","poster_path":"/a\u0000.jpg"}`), field: "poster_path"},
		{name: "backdrop_path contains a NUL", in: []byte(`{"tmdb_id":1429,"title":"A","backdrop_path":"/b\u0000.jpg"}`), field: "backdrop_path"},
		{name: "status contains a NUL", in: []byte(`{"tmdb_id":1429,"title":"A","status":"Ended\u0000"}`), field: "status"},
		{name: "second genre contains a NUL", in: []byte(`{"tmdb_id":1429,"title":"A","genres":["Animation","Act\u0000ion"]}`), field: "genres[1]"},
		{name: "first genre contains a NUL", in: []byte(`{"tmdb_id":1429,"title":"A","genres":["\u0000"]}`), field: "genres[0]"},
		{name: "third network contains a NUL", in: []byte(`{"tmdb_id":1429,"title":"A","networks":["MBS","TBS","\u0000"]}`), field: "networks[2]"},

		// unknown fields
		{name: "unknown field", in: recordJSON(t, map[string]any{"rating": 9}), field: "rating"},
		{name: "unknown field id", in: recordJSON(t, map[string]any{"id": 1429}), field: "id"},
		{name: "unknown field with null value", in: recordJSON(t, map[string]any{"deleted_at": nil}), field: "deleted_at"},
		{name: "unknown field with a typo", in: recordJSON(t, map[string]any{"tmdbid": 1429}), field: "tmdbid"},

		// wrong types
		{name: "genres as string", in: recordJSON(t, map[string]any{"genres": "Animation"}), field: "genres"},
		{name: "genres as object", in: recordJSON(t, map[string]any{"genres": map[string]string{"a": "b"}}), field: "genres"},
		{name: "genres with a number", in: recordJSON(t, map[string]any{"genres": []any{"Animation", 3}}), field: "genres"},
		{name: "networks as string", in: recordJSON(t, map[string]any{"networks": "MBS"}), field: "networks"},
		{name: "overview as number", in: recordJSON(t, map[string]any{"overview": 1}), field: "overview"},
		{name: "status as bool", in: recordJSON(t, map[string]any{"status": false}), field: "status"},

		// numbers
		{name: "vote_count negative", in: recordJSON(t, map[string]any{"vote_count": -1}), field: "vote_count"},
		{name: "vote_count above int32", in: recordJSON(t, map[string]any{"vote_count": int64(math.MaxInt32) + 1}), field: "vote_count"},
		{name: "vote_count fractional", in: recordJSON(t, map[string]any{"vote_count": 1.5}), field: "vote_count"},
		{name: "vote_count as string", in: recordJSON(t, map[string]any{"vote_count": "6100"}), field: "vote_count"},
		{name: "vote_average as string", in: recordJSON(t, map[string]any{"vote_average": "8.7"}), field: "vote_average"},
		{name: "vote_average overflows float64", in: recordJSON(t, map[string]any{"vote_average": raw("1e400")}), field: "vote_average"},
		{name: "popularity as string", in: recordJSON(t, map[string]any{"popularity": "high"}), field: "popularity"},
		{name: "number_of_seasons negative", in: recordJSON(t, map[string]any{"number_of_seasons": -4}), field: "number_of_seasons"},
		{name: "number_of_episodes above int32", in: recordJSON(t, map[string]any{"number_of_episodes": raw("4294967296")}), field: "number_of_episodes"},

		// raw_data
		{name: "raw_data array", in: recordJSON(t, map[string]any{"raw_data": []int{1, 2}}), field: "raw_data"},
		{name: "raw_data string", in: recordJSON(t, map[string]any{"raw_data": "{}"}), field: "raw_data"},
		{name: "raw_data number", in: recordJSON(t, map[string]any{"raw_data": 1}), field: "raw_data"},
		{name: "raw_data bool", in: recordJSON(t, map[string]any{"raw_data": true}), field: "raw_data"},
		{name: "raw_data NUL in a value", in: []byte(`{"tmdb_id":1429,"title":"A","raw_data":{"a":"x\u0000"}}`), field: "raw_data"},
		{name: "raw_data NUL in a key", in: []byte(`{"tmdb_id":1429,"title":"A","raw_data":{"\u0000":1}}`), field: "raw_data"},
		{name: "raw_data NUL deep inside", in: []byte(`{"tmdb_id":1429,"title":"A","raw_data":{"a":[{"b":{"c":["\u0000"]}}]}}`), field: "raw_data"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, err := events.DecodeRecord(tt.in)
			checkInvalid(t, err, tt.field)
			if r != nil {
				t.Errorf("DecodeRecord returned a record %+v along with an error", r)
			}
		})
	}
}

func TestDecodeRecordAccepts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		in    []byte
		check func(t *testing.T, r *events.Record)
	}{
		{name: "minimal", in: []byte(`{"tmdb_id":1429,"title":"Attack on Titan"}`), check: func(t *testing.T, r *events.Record) {
			if r.TMDBID != 1429 || r.Title != "Attack on Titan" || r.Overview != nil || r.Genres != nil || r.RawData != nil {
				t.Errorf("got %+v", r)
			}
		}},
		{name: "surrounding whitespace", in: []byte("\n\t {\"tmdb_id\":1,\"title\":\"A\"} \r\n"), check: func(t *testing.T, r *events.Record) {
			if r.TMDBID != 1 || r.Title != "A" {
				t.Errorf("got %+v", r)
			}
		}},
		{name: "tmdb_id max int64", in: recordJSON(t, map[string]any{"tmdb_id": int64(math.MaxInt64)}), check: func(t *testing.T, r *events.Record) {
			if r.TMDBID != math.MaxInt64 {
				t.Errorf("tmdb_id = %d", r.TMDBID)
			}
		}},
		{name: "title kept as sent, spaces included", in: recordJSON(t, map[string]any{"title": "  One Piece  "}), check: func(t *testing.T, r *events.Record) {
			if r.Title != "  One Piece  " {
				t.Errorf("title = %q", r.Title)
			}
		}},
		{name: "title 255 ASCII characters", in: recordJSON(t, map[string]any{"title": strings.Repeat("a", 255)}), check: func(t *testing.T, r *events.Record) {
			if len(r.Title) != 255 {
				t.Errorf("title has %d bytes", len(r.Title))
			}
		}},
		{name: "title 255 Korean characters (765 bytes)", in: recordJSON(t, map[string]any{"title": strings.Repeat("진", 255)}), check: func(t *testing.T, r *events.Record) {
			if r.Title != strings.Repeat("진", 255) {
				t.Errorf("title changed: %d bytes", len(r.Title))
			}
		}},
		{name: "title 255 emoji (1020 bytes)", in: recordJSON(t, map[string]any{"title": strings.Repeat("😀", 255)}), check: func(t *testing.T, r *events.Record) {
			if r.Title != strings.Repeat("😀", 255) {
				t.Errorf("title changed: %d bytes", len(r.Title))
			}
		}},
		{name: "title escaped surrogate pair", in: []byte(`{"tmdb_id":1,"title":"\ud83d\ude00"}`), check: func(t *testing.T, r *events.Record) {
			if r.Title != "😀" {
				t.Errorf("title = %q", r.Title)
			}
		}},
		{name: "nulls for every optional field", in: []byte(`{"tmdb_id":1,"title":"A","original_title":null,"korean_title":null,"overview":null,"poster_path":null,"backdrop_path":null,"first_air_date":null,"last_air_date":null,"status":null,"vote_average":null,"vote_count":null,"popularity":null,"number_of_seasons":null,"number_of_episodes":null,"genres":null,"networks":null}`), check: func(t *testing.T, r *events.Record) {
			if r.OriginalTitle != nil || r.FirstAirDate != nil || r.VoteAverage != nil || r.VoteCount != nil || r.Genres != nil {
				t.Errorf("got %+v", r)
			}
		}},
		{name: "zero values kept", in: []byte(`{"tmdb_id":1,"title":"A","overview":"","vote_average":0,"vote_count":0,"popularity":0,"number_of_seasons":0,"number_of_episodes":0,"genres":[]}`), check: func(t *testing.T, r *events.Record) {
			if r.Overview == nil || *r.Overview != "" || r.VoteCount == nil || *r.VoteCount != 0 || r.VoteAverage == nil || r.Genres == nil || len(r.Genres) != 0 {
				t.Errorf("got %+v", r)
			}
		}},
		{name: "counts at int32 max", in: recordJSON(t, map[string]any{"vote_count": math.MaxInt32, "number_of_seasons": math.MaxInt32, "number_of_episodes": math.MaxInt32}), check: func(t *testing.T, r *events.Record) {
			if *r.VoteCount != math.MaxInt32 || *r.NumberOfSeasons != math.MaxInt32 || *r.NumberOfEpisodes != math.MaxInt32 {
				t.Errorf("got %+v", r)
			}
		}},
		{name: "vote_average in exponent notation", in: recordJSON(t, map[string]any{"vote_average": raw("8.7e0"), "popularity": raw("1.5e2")}), check: func(t *testing.T, r *events.Record) {
			if *r.VoteAverage != 8.7 || *r.Popularity != 150 {
				t.Errorf("got %v %v", *r.VoteAverage, *r.Popularity)
			}
		}},
		{name: "escaped HTML and unicode in strings", in: []byte(`{"tmdb_id":1,"title":"A \u0026 B \u003c3","overview":"line1\nline2\t\"q\" \u2028"}`), check: func(t *testing.T, r *events.Record) {
			if r.Title != "A & B <3" || *r.Overview != "line1\nline2\t\"q\" \u2028" {
				t.Errorf("got %q %q", r.Title, *r.Overview)
			}
		}},
		{name: "lone surrogate escape becomes U+FFFD", in: []byte(`{"tmdb_id":1,"title":"a\ud800b"}`), check: func(t *testing.T, r *events.Record) {
			if r.Title != "a\uFFFDb" {
				t.Errorf("title = %q", r.Title)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, err := events.DecodeRecord(tt.in)
			if err != nil {
				t.Fatalf("DecodeRecord: %v", err)
			}
			if r == nil {
				t.Fatal("DecodeRecord returned a nil record and no error")
			}
			if err := r.Validate(); err != nil {
				t.Errorf("Validate of an accepted record: %v", err)
			}
			checkRecordInvariants(t, r)
			tt.check(t, r)
		})
	}
}

func TestDecodeRecordDates(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		value   any // marshalled as the date's JSON value
		wantErr bool
	}{
		{name: "YYYY-MM-DD", value: "2013-04-07"},
		{name: "null", value: nil},
		{name: "leap day", value: "2024-02-29"},
		{name: "first day of year 1", value: "0001-01-01"},
		{name: "last day of year 9999", value: "9999-12-31"},
		{name: "single-digit month and day", value: "2013-4-7", wantErr: true},
		{name: "February 30", value: "2013-02-30", wantErr: true},
		{name: "February 29 of a common year", value: "2023-02-29", wantErr: true},
		{name: "April 31", value: "2013-04-31", wantErr: true},
		{name: "month 13", value: "2013-13-01", wantErr: true},
		{name: "month 00", value: "2013-00-10", wantErr: true},
		{name: "day 00", value: "2013-04-00", wantErr: true},
		{name: "basic format", value: "20130407", wantErr: true},
		{name: "RFC 3339 timestamp", value: "2013-04-07T00:00:00Z", wantErr: true},
		{name: "date and time", value: "2013-04-07 00:00:00", wantErr: true},
		{name: "slashes", value: "2013/04/07", wantErr: true},
		{name: "day first", value: "07-04-2013", wantErr: true},
		{name: "two-digit year", value: "13-04-07", wantErr: true},
		{name: "five-digit year", value: "12013-04-07", wantErr: true},
		{name: "leading space", value: " 2013-04-07", wantErr: true},
		{name: "trailing space", value: "2013-04-07 ", wantErr: true},
		{name: "trailing newline", value: "2013-04-07\n", wantErr: true},
		{name: "fullwidth digits", value: "２０１３-０４-０７", wantErr: true},
		{name: "empty string", value: "", wantErr: true},
		{name: "word", value: "unknown", wantErr: true},
		{name: "NUL after the date", value: "2013-04-07\x00", wantErr: true},
		{name: "number", value: 20130407, wantErr: true},
		{name: "object", value: map[string]int{"year": 2013}, wantErr: true},
	}
	for _, field := range []string{"first_air_date", "last_air_date"} {
		for _, tt := range tests {
			t.Run(field+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				r, err := events.DecodeRecord(recordJSON(t, map[string]any{field: tt.value}))
				if tt.wantErr {
					checkInvalid(t, err, field)
					return
				}
				if err != nil {
					t.Fatalf("DecodeRecord: %v", err)
				}
				got := r.FirstAirDate
				if field == "last_air_date" {
					got = r.LastAirDate
				}
				switch {
				case tt.value == nil && got != nil:
					t.Errorf("%s = %q, want nil", field, *got)
				case tt.value != nil && (got == nil || *got != tt.value):
					t.Errorf("%s = %v, want %q", field, got, tt.value)
				}
			})
		}
	}
}

func TestDecodeRecordTitleCountsCharactersNotBytes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		char    string
		n       int
		wantErr bool
	}{
		{name: "255 ASCII", char: "a", n: 255},
		{name: "256 ASCII", char: "a", n: 256, wantErr: true},
		{name: "255 Korean (3 bytes each)", char: "거", n: 255},
		{name: "256 Korean (3 bytes each)", char: "거", n: 256, wantErr: true},
		{name: "255 Japanese (3 bytes each)", char: "巨", n: 255},
		{name: "256 Japanese (3 bytes each)", char: "巨", n: 256, wantErr: true},
		{name: "255 accented Latin (2 bytes each)", char: "é", n: 255},
		{name: "256 accented Latin (2 bytes each)", char: "é", n: 256, wantErr: true},
		{name: "255 emoji (4 bytes each)", char: "🎌", n: 255},
		{name: "256 emoji (4 bytes each)", char: "🎌", n: 256, wantErr: true},
		{name: "1 character", char: "x", n: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			title := strings.Repeat(tt.char, tt.n)
			rec := &events.Record{TMDBID: 1, Title: title}
			vErr := rec.Validate()
			r, err := events.DecodeRecord(recordJSON(t, map[string]any{"title": title}))
			if tt.wantErr {
				checkInvalid(t, err, "title")
				checkInvalid(t, vErr, "title")
				if !strings.Contains(err.Error(), strconv.Itoa(tt.n)) {
					t.Errorf("error %q does not give the length %d in characters", err, tt.n)
				}
				return
			}
			if err != nil || vErr != nil {
				t.Fatalf("DecodeRecord: %v; Validate: %v", err, vErr)
			}
			if r.Title != title {
				t.Errorf("title changed")
			}
		})
	}
}

func TestDecodeRecordRawData(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		raw  string
	}{
		{name: "contract example", raw: `{"any": "JSON object, kept whole"}`},
		{name: "empty object", raw: `{}`},
		{name: "whitespace kept inside", raw: "{ \"a\" :\n 1 ,\t\"b\" : [ ] }"},
		{name: "nested TMDB payload", raw: `{"id":1429,"name":"진격의 거인","origin_country":["JP"],"seasons":[{"season_number":1,"episode_count":25,"air_date":"2013-04-07"},{"season_number":4,"episode_count":30,"air_date":null}],"adult":false,"vote_average":8.7}`},
		{name: "big and precise numbers", raw: `{"big":123456789012345678901234567890,"tiny":1e-300,"huge":1e300,"prec":0.1000000000000000055511151231257827,"neg":-0}`},
		{name: "HTML and line separators", raw: `{"html":"<b>&amp;</b>","ls":"a` + "\u2028" + `b"}`},
		{name: "escapes", raw: `{"q":"\"\\\/\b\f\n\r\t","u":"\u00e9\ud83d\ude00"}`},
		{name: "duplicate keys", raw: `{"a":1,"a":2}`},
		{name: "nested 500 deep", raw: strings.Repeat(`{"a":`, 500) + "1" + strings.Repeat("}", 500)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in := []byte(`{"tmdb_id":1429,"title":"A","raw_data":` + tt.raw + `}`)
			r, err := events.DecodeRecord(in)
			if err != nil {
				t.Fatalf("DecodeRecord: %v", err)
			}
			sameJSON(t, "decoded raw_data", r.RawData, []byte(tt.raw))
			// Re-encode the record as a producer or a cache-node would, and
			// read raw_data back out of it.
			out, err := json.Marshal(r)
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			var back struct {
				RawData json.RawMessage `json:"raw_data"`
			}
			if err := json.Unmarshal(out, &back); err != nil {
				t.Fatalf("Unmarshal: %v", err)
			}
			sameJSON(t, "re-encoded raw_data", back.RawData, []byte(tt.raw))
			r2, err := events.DecodeRecord(out)
			if err != nil {
				t.Fatalf("DecodeRecord of the re-encoded record: %v\n%.300s", err, out)
			}
			sameJSON(t, "raw_data after a second decode", r2.RawData, []byte(tt.raw))
		})
	}

	t.Run("null is no raw_data", func(t *testing.T) {
		t.Parallel()
		r, err := events.DecodeRecord([]byte(`{"tmdb_id":1,"title":"A","raw_data":null}`))
		if err != nil {
			t.Fatalf("DecodeRecord: %v", err)
		}
		if len(r.RawData) != 0 && string(r.RawData) != "null" {
			t.Errorf("raw_data = %q", r.RawData)
		}
		out, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := events.DecodeRecord(out); err != nil {
			t.Errorf("re-encoded record %s rejected: %v", out, err)
		}
	})
}

func TestDecodeRecordSizeLimit(t *testing.T) {
	t.Parallel()
	// padded returns a valid record of exactly n bytes, padding the overview.
	padded := func(t *testing.T, n int) []byte {
		b := recordJSON(t, map[string]any{"overview": ""})
		if n < len(b) {
			t.Fatalf("cannot build a record of %d bytes", n)
		}
		b = recordJSON(t, map[string]any{"overview": strings.Repeat("x", n-len(b))})
		if len(b) != n {
			t.Fatalf("built %d bytes, want %d", len(b), n)
		}
		return b
	}
	rawData200K := `{"blob":"` + strings.Repeat("가", 200<<10/3) + `","n":[1,2,3]}`
	tests := []struct {
		name     string
		in       func(t *testing.T) []byte
		tooLarge bool
	}{
		{name: "overview of 300 KiB", tooLarge: true, in: func(t *testing.T) []byte {
			return recordJSON(t, map[string]any{"overview": strings.Repeat("a", 300<<10)})
		}},
		{name: "one byte over the limit", tooLarge: true, in: func(t *testing.T) []byte { return padded(t, events.MaxRecordBytes+1) }},
		{name: "exactly the limit", in: func(t *testing.T) []byte { return padded(t, events.MaxRecordBytes) }},
		{name: "one byte under the limit", in: func(t *testing.T) []byte { return padded(t, events.MaxRecordBytes-1) }},
		{name: "over the limit in trailing whitespace", tooLarge: true, in: func(t *testing.T) []byte {
			return append(recordJSON(t, nil), bytes.Repeat([]byte(" "), events.MaxRecordBytes)...)
		}},
		{name: "over the limit and malformed", tooLarge: true, in: func(t *testing.T) []byte {
			return bytes.Repeat([]byte("["), events.MaxRecordBytes+10)
		}},
		{name: "raw_data of 200 KiB", in: func(t *testing.T) []byte {
			return []byte(`{"tmdb_id":1429,"title":"Attack on Titan","raw_data":` + rawData200K + `}`)
		}},
		{name: "raw_data of 300 KiB", tooLarge: true, in: func(t *testing.T) []byte {
			return []byte(`{"tmdb_id":1429,"title":"A","raw_data":{"blob":"` + strings.Repeat("b", 300<<10) + `"}}`)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in := tt.in(t)
			r, err := events.DecodeRecord(in)
			if tt.tooLarge {
				if err == nil {
					t.Fatalf("accepted %d bytes", len(in))
				}
				var ve *events.ValidationError
				if !errors.As(err, &ve) {
					t.Fatalf("error %q is a %T, want *events.ValidationError", err, err)
				}
				if !errors.Is(err, events.ErrTooLarge) || !errors.Is(err, events.ErrInvalid) {
					t.Errorf("error %q: Is(ErrTooLarge) = %v, Is(ErrInvalid) = %v, want both", err,
						errors.Is(err, events.ErrTooLarge), errors.Is(err, events.ErrInvalid))
				}
				if r != nil {
					t.Errorf("returned a record along with the error")
				}
				// The same payload is too large for every decoder.
				if err := events.DecodeStrict(in, &events.DeleteRequest{}); !errors.Is(err, events.ErrTooLarge) {
					t.Errorf("DecodeStrict: %v, want ErrTooLarge", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("DecodeRecord of %d bytes: %v", len(in), err)
			}
			if r.RawData != nil {
				sameJSON(t, "raw_data", r.RawData, []byte(rawData200K))
			}
		})
	}
}

func TestDecodeRecordMalformed(t *testing.T) {
	t.Parallel()
	valid := `{"tmdb_id":1429,"title":"Attack on Titan"}`
	tests := []struct {
		name string
		in   string
	}{
		{name: "empty body", in: ""},
		{name: "only whitespace", in: " \n\t "},
		{name: "truncated in a string", in: `{"tmdb_id":1429,"title":"Attack on`},
		{name: "truncated after a comma", in: `{"tmdb_id":1429,`},
		{name: "truncated after the key", in: `{"tmdb_id"`},
		{name: "only an opening brace", in: `{`},
		{name: "trailing object", in: valid + ` {}`},
		{name: "trailing object without space", in: valid + `{}`},
		{name: "trailing garbage", in: valid + ` x`},
		{name: "trailing brace", in: valid + `}`},
		{name: "trailing number", in: valid + "\n1"},
		{name: "two records", in: valid + "\n" + valid},
		{name: "array", in: `[]`},
		{name: "array of a record", in: `[` + valid + `]`},
		{name: "string", in: `"x"`},
		{name: "number", in: `1429`},
		{name: "null", in: `null`},
		{name: "true", in: `true`},
		{name: "byte order mark", in: "\ufeff" + valid},
		{name: "single quotes", in: `{'tmdb_id':1429,'title':'A'}`},
		{name: "trailing comma", in: `{"tmdb_id":1429,"title":"A",}`},
		{name: "comment", in: `{"tmdb_id":1429, /* c */ "title":"A"}`},
		{name: "unquoted key", in: `{tmdb_id:1429,"title":"A"}`},
		{name: "NaN literal", in: `{"tmdb_id":1429,"title":"A","vote_average":NaN}`},
		{name: "Infinity literal", in: `{"tmdb_id":1429,"title":"A","popularity":Infinity}`},
		{name: "hex number", in: `{"tmdb_id":0x595,"title":"A"}`},
		{name: "leading zero", in: `{"tmdb_id":01429,"title":"A"}`},
		{name: "plus sign", in: `{"tmdb_id":+1429,"title":"A"}`},
		{name: "raw newline in a string", in: "{\"tmdb_id\":1429,\"title\":\"A\nB\"}"},
		{name: "raw NUL byte in a string", in: "{\"tmdb_id\":1429,\"title\":\"A\x00B\"}"},
		{name: "bad escape", in: `{"tmdb_id":1429,"title":"A\x41"}`},
		{name: "short unicode escape", in: `{"tmdb_id":1429,"title":"A\u12"}`},
		{name: "malformed raw_data", in: `{"tmdb_id":1429,"title":"A","raw_data":{"a":}}`},
		{name: "raw_data nested beyond the decoder's depth", in: `{"tmdb_id":1429,"title":"A","raw_data":` + strings.Repeat(`{"a":`, 10001) + "1" + strings.Repeat("}", 10001) + `}`},
		// invalid UTF-8
		{name: "invalid UTF-8 byte in title", in: "{\"tmdb_id\":1429,\"title\":\"A\xffB\"}"},
		{name: "invalid UTF-8 in a key", in: "{\"tmdb_id\":1429,\"title\":\"A\",\"\xfe\":1}"},
		{name: "invalid UTF-8 in raw_data", in: "{\"tmdb_id\":1429,\"title\":\"A\",\"raw_data\":{\"a\":\"\xc3\x28\"}}"},
		{name: "overlong encoding of a slash", in: "{\"tmdb_id\":1429,\"title\":\"\xc0\xaf\"}"},
		{name: "UTF-8 encoded surrogate", in: "{\"tmdb_id\":1429,\"title\":\"\xed\xa0\x80\"}"},
		{name: "truncated multi-byte character", in: "{\"tmdb_id\":1429,\"title\":\"\xec\xa7\"}"},
		{name: "code point above U+10FFFF", in: "{\"tmdb_id\":1429,\"title\":\"\xf4\x90\x80\x80\"}"},
		{name: "invalid UTF-8 outside strings", in: "{\"tmdb_id\":1429,\"title\":\"A\"}\xff"},
		{name: "Latin-1 encoded title", in: "{\"tmdb_id\":1429,\"title\":\"Pok\xe9mon\"}"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, err := events.DecodeRecord([]byte(tt.in))
			checkInvalid(t, err, "")
			if r != nil {
				t.Errorf("returned a record along with the error")
			}
		})
	}
}

func TestDecodeRecordClearsSystemFields(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
	}{
		{name: "version and updated_at", in: `{"tmdb_id":1429,"title":"A","version":42,"updated_at":"2024-05-01T12:00:00Z"}`},
		{name: "largest exact version", in: `{"tmdb_id":1429,"title":"A","version":9007199254740991,"updated_at":"2024-05-01T12:00:00.123456789+09:00"}`},
		{name: "version only", in: `{"version":7,"tmdb_id":1429,"title":"A"}`},
		{name: "updated_at only", in: `{"tmdb_id":1429,"title":"A","updated_at":"2024-05-01T12:00:00Z"}`},
		{name: "nulls", in: `{"tmdb_id":1429,"title":"A","version":null,"updated_at":null}`},
		{name: "negative version", in: `{"tmdb_id":1429,"title":"A","version":-1}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, err := events.DecodeRecord([]byte(tt.in))
			if err != nil {
				t.Fatalf("DecodeRecord: %v", err)
			}
			if r.Version != 0 || r.UpdatedAt != nil {
				t.Errorf("version = %d, updated_at = %v; want both cleared", r.Version, r.UpdatedAt)
			}
			out, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			var m map[string]json.RawMessage
			if err := json.Unmarshal(out, &m); err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"version", "updated_at"} {
				if v, ok := m[k]; ok {
					t.Errorf("re-encoded record still has %s = %s", k, v)
				}
			}
		})
	}
}

func TestRecordContractExampleRoundTrip(t *testing.T) {
	t.Parallel()
	onePiece := `{"tmdb_id":37854,"title":"One Piece","original_title":"ワンピース","korean_title":"원피스",` +
		`"overview":"海賊王を目指す少年モンキー・D・ルフィの冒険。해적왕을 꿈꾸는 소년 루피의 모험.","first_air_date":"1999-10-20","last_air_date":null,` +
		`"status":"Returning Series","vote_average":8.727,"vote_count":4700,"popularity":220.5,"number_of_seasons":22,"number_of_episodes":1122,` +
		`"genres":["アニメ","애니메이션","Action & Adventure"],"networks":["Fuji TV"],"raw_data":{"origin_country":["JP"],"name":"ワンピース","tagline":"<해적왕>"}}`
	tests := []struct {
		name  string
		in    string
		check func(t *testing.T, r *events.Record)
	}{
		{name: "Attack on Titan (contract example)", in: contractExample, check: func(t *testing.T, r *events.Record) {
			want := events.Record{
				TMDBID: 1429, Title: "Attack on Titan", OriginalTitle: ptr("進撃の巨人"), KoreanTitle: ptr("진격의 거인"),
				Overview: ptr("…"), PosterPath: ptr("/hTP1DtLGFamjfu8WqjnuQdP1n4i.jpg"), BackdropPath: ptr("/rqbCbjB19amtOtFQbb3K2lgm2zv.jpg"),
				FirstAirDate: ptr("2013-04-07"), LastAirDate: ptr("2023-11-05"), Status: ptr("Ended"),
				VoteAverage: ptr(8.7), VoteCount: ptr(int64(6100)), Popularity: ptr(151.2),
				NumberOfSeasons: ptr(int64(4)), NumberOfEpisodes: ptr(int64(94)),
				Genres: []string{"Animation", "Action & Adventure"}, Networks: []string{"MBS"},
			}
			got := *r
			got.RawData = nil
			if !reflect.DeepEqual(got, want) {
				t.Errorf("decoded\n %+v\nwant\n %+v", got, want)
			}
			sameJSON(t, "raw_data", r.RawData, []byte(`{"any": "JSON object, kept whole"}`))
		}},
		{name: "One Piece (Japanese and Korean everywhere)", in: onePiece, check: func(t *testing.T, r *events.Record) {
			if *r.OriginalTitle != "ワンピース" || *r.KoreanTitle != "원피스" || r.Genres[1] != "애니메이션" || r.LastAirDate != nil {
				t.Errorf("got %+v", r)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, err := events.DecodeRecord([]byte(tt.in))
			if err != nil {
				t.Fatalf("DecodeRecord: %v", err)
			}
			tt.check(t, r)
			out, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			// Null values are omitted on output; everything else is the same JSON.
			var in map[string]any
			if err := json.Unmarshal([]byte(tt.in), &in); err != nil {
				t.Fatal(err)
			}
			for k, v := range in {
				if v == nil {
					delete(in, k)
				}
			}
			wantOut, _ := json.Marshal(in)
			sameJSON(t, "re-encoded record", out, wantOut)
			r2, err := events.DecodeRecord(out)
			if err != nil {
				t.Fatalf("DecodeRecord of the re-encoded record: %v", err)
			}
			out2, err := json.Marshal(r2)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, out2) {
				t.Errorf("encoding is not stable:\n %s\n %s", out, out2)
			}
			sameJSON(t, "raw_data", r2.RawData, r.RawData)
			r.RawData, r2.RawData = nil, nil
			if !reflect.DeepEqual(r, r2) {
				t.Errorf("round trip changed the record:\n %+v\n %+v", r, r2)
			}
		})
	}
}

func TestRecordValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		rec   events.Record
		field string // "" means valid
	}{
		{name: "minimal", rec: events.Record{TMDBID: 1, Title: "A"}},
		{name: "system fields are not validated away", rec: events.Record{TMDBID: 1, Title: "A", Version: 5, UpdatedAt: ptr(time.Now())}},
		{name: "raw_data padded with whitespace", rec: events.Record{TMDBID: 1, Title: "A", RawData: json.RawMessage(" \n{\"a\":1}\t")}},
		{name: "raw_data null", rec: events.Record{TMDBID: 1, Title: "A", RawData: json.RawMessage("null")}},
		{name: "raw_data empty", rec: events.Record{TMDBID: 1, Title: "A", RawData: json.RawMessage{}}},
		{name: "zero id", rec: events.Record{Title: "A"}, field: "tmdb_id"},
		{name: "negative id", rec: events.Record{TMDBID: math.MinInt64, Title: "A"}, field: "tmdb_id"},
		{name: "id checked before title", rec: events.Record{}, field: "tmdb_id"},
		{name: "blank title", rec: events.Record{TMDBID: 1, Title: " \u00a0\u3000"}, field: "title"},
		{name: "invalid UTF-8 title", rec: events.Record{TMDBID: 1, Title: "A\xff"}, field: "title"},
		{name: "invalid UTF-8 korean_title", rec: events.Record{TMDBID: 1, Title: "A", KoreanTitle: ptr("\xed\xa0\x80")}, field: "korean_title"},
		{name: "NUL in status", rec: events.Record{TMDBID: 1, Title: "A", Status: ptr("\x00")}, field: "status"},
		{name: "invalid UTF-8 in a network", rec: events.Record{TMDBID: 1, Title: "A", Networks: []string{"MBS", "\xc0"}}, field: "networks[1]"},
		{name: "NaN vote_average", rec: events.Record{TMDBID: 1, Title: "A", VoteAverage: ptr(math.NaN())}, field: "vote_average"},
		{name: "+Inf popularity", rec: events.Record{TMDBID: 1, Title: "A", Popularity: ptr(math.Inf(1))}, field: "popularity"},
		{name: "-Inf vote_average", rec: events.Record{TMDBID: 1, Title: "A", VoteAverage: ptr(math.Inf(-1))}, field: "vote_average"},
		{name: "vote_count above int32", rec: events.Record{TMDBID: 1, Title: "A", VoteCount: ptr(int64(math.MaxInt32) + 1)}, field: "vote_count"},
		{name: "negative number_of_episodes", rec: events.Record{TMDBID: 1, Title: "A", NumberOfEpisodes: ptr(int64(-1))}, field: "number_of_episodes"},
		{name: "bad first_air_date", rec: events.Record{TMDBID: 1, Title: "A", FirstAirDate: ptr("2013-02-30")}, field: "first_air_date"},
		{name: "bad last_air_date", rec: events.Record{TMDBID: 1, Title: "A", LastAirDate: ptr("2013-04-07T00:00:00Z")}, field: "last_air_date"},
		{name: "raw_data not JSON", rec: events.Record{TMDBID: 1, Title: "A", RawData: json.RawMessage(`{"a":`)}, field: "raw_data"},
		{name: "raw_data array", rec: events.Record{TMDBID: 1, Title: "A", RawData: json.RawMessage(`[{}]`)}, field: "raw_data"},
		{name: "raw_data two objects", rec: events.Record{TMDBID: 1, Title: "A", RawData: json.RawMessage(`{}{}`)}, field: "raw_data"},
		{name: "raw_data with NUL", rec: events.Record{TMDBID: 1, Title: "A", RawData: json.RawMessage(`{"a":"\u0000"}`)}, field: "raw_data"},
		{name: "raw_data whitespace only", rec: events.Record{TMDBID: 1, Title: "A", RawData: json.RawMessage("  ")}, field: "raw_data"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.rec.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			checkInvalid(t, err, tt.field)
		})
	}
}

// TestDecodeRecordContractGaps holds inputs where DecodeRecord disagrees with
// the contract or with the database the record must reach. Each case failing
// here is a bug in events/record.go, reported rather than fixed.
func TestDecodeRecordContractGaps(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		in    string
		field string // "" means the record must be accepted
	}{
		// PostgreSQL's date has no year 0: '0000-01-01'::date fails with
		// "date/time field value out of range", so such a write can never be committed.
		{name: "year 0000 date cannot be stored", in: `{"tmdb_id":1,"title":"A","first_air_date":"0000-01-01"}`, field: "first_air_date"},
		// jsonb refuses a lone surrogate escape ("Unicode low surrogate must follow a high surrogate").
		{name: "raw_data lone high surrogate cannot be stored", in: `{"tmdb_id":1,"title":"A","raw_data":{"a":"\ud800"}}`, field: "raw_data"},
		{name: "raw_data lone low surrogate cannot be stored", in: `{"tmdb_id":1,"title":"A","raw_data":{"a":"\udc00x"}}`, field: "raw_data"},
		// jsonb numbers are numeric: 1e131072 fails with "value overflows numeric format".
		{name: "raw_data number beyond numeric cannot be stored", in: `{"tmdb_id":1,"title":"A","raw_data":{"a":1e131072}}`, field: "raw_data"},
		{name: "raw_data number below numeric cannot be stored", in: `{"tmdb_id":1,"title":"A","raw_data":{"a":1e-16384}}`, field: "raw_data"},
		// The text \u0000 (an escaped backslash, then "u0000") holds no NUL and jsonb stores it.
		{name: "raw_data escaped backslash before u0000 is no NUL", in: `{"tmdb_id":1,"title":"A","raw_data":{"path":"C:\\u0000"}}`},
		// Unknown fields are rejected: encoding/json matches keys case-insensitively.
		{name: "field names are case-sensitive (TMDB_ID)", in: `{"TMDB_ID":1,"title":"A"}`, field: "TMDB_ID"},
		{name: "field names are case-sensitive (Title)", in: `{"tmdb_id":1,"Title":"A"}`, field: "Title"},
		{name: "field names are case-sensitive (Raw_Data)", in: `{"tmdb_id":1,"title":"A","Raw_Data":{}}`, field: "Raw_Data"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, err := events.DecodeRecord([]byte(tt.in))
			if tt.field == "" {
				if err != nil {
					t.Fatalf("DecodeRecord(%s): %v", tt.in, err)
				}
				return
			}
			if err == nil {
				out, _ := json.Marshal(r)
				t.Fatalf("DecodeRecord(%s) accepted it as %s, want an error naming %s", tt.in, out, tt.field)
			}
			checkInvalid(t, err, tt.field)
		})
	}
}

// TestDecodeRecordReencodingStaysUnderLimit checks that a record DecodeRecord
// accepts can be re-encoded (json.Marshal, as the cache-node does for the
// buffer, the cache and metadata.changed) and accepted again. encoding/json
// escapes <, >, & and U+2028/U+2029 as 6-byte \uXXXX sequences, so an accepted
// record near the limit can grow up to six times.
func TestDecodeRecordReencodingStaysUnderLimit(t *testing.T) {
	t.Parallel()
	size := events.MaxRecordBytes - 100
	tests := []struct {
		name string
		fill string
	}{
		{name: "plain ASCII overview", fill: "a"},
		{name: "Korean overview", fill: "가"},
		{name: "overview full of <", fill: "<"},
		{name: "overview full of &", fill: "&"},
		{name: "overview full of U+2028", fill: "\u2028"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			prefix := `{"tmdb_id":1,"title":"A","overview":"`
			n := (size - len(prefix) - 2) / len(tt.fill)
			in := []byte(prefix + strings.Repeat(tt.fill, n) + `"}`)
			r, err := events.DecodeRecord(in)
			if err != nil {
				t.Fatalf("DecodeRecord of %d bytes: %v", len(in), err)
			}
			// The system re-encodes without HTML escaping; only U+2028 and
			// U+2029 still grow (3 bytes to 6), so an accepted record stays
			// within twice the limit, which every internal message allows.
			out, err := events.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			if len(out) > 2*events.MaxRecordBytes {
				t.Errorf("accepted a %d-byte record whose re-encoding is %d bytes, over twice the limit", len(in), len(out))
			}
		})
	}
}

func TestDecodeDeleteAndGet(t *testing.T) {
	t.Parallel()
	decoders := []struct {
		name   string
		decode func([]byte) (int64, error)
	}{
		{name: "DecodeDelete", decode: func(b []byte) (int64, error) { d, err := events.DecodeDelete(b); return d.TMDBID, err }},
		{name: "DecodeGet", decode: func(b []byte) (int64, error) { g, err := events.DecodeGet(b); return g.TMDBID, err }},
	}
	tests := []struct {
		name     string
		in       string
		want     int64
		field    string
		tooLarge bool
		wantErr  bool
	}{
		{name: "valid", in: `{"tmdb_id": 1429}`, want: 1429},
		{name: "valid with whitespace", in: "\n {\"tmdb_id\":1}\n", want: 1},
		{name: "max int64", in: `{"tmdb_id":9223372036854775807}`, want: math.MaxInt64},
		{name: "tmdb_id zero", in: `{"tmdb_id":0}`, field: "tmdb_id", wantErr: true},
		{name: "tmdb_id negative", in: `{"tmdb_id":-5}`, field: "tmdb_id", wantErr: true},
		{name: "tmdb_id missing", in: `{}`, field: "tmdb_id", wantErr: true},
		{name: "tmdb_id null", in: `{"tmdb_id":null}`, field: "tmdb_id", wantErr: true},
		{name: "tmdb_id as string", in: `{"tmdb_id":"1429"}`, field: "tmdb_id", wantErr: true},
		{name: "tmdb_id as float", in: `{"tmdb_id":1.5}`, field: "tmdb_id", wantErr: true},
		{name: "tmdb_id as bool", in: `{"tmdb_id":true}`, field: "tmdb_id", wantErr: true},
		{name: "tmdb_id as array", in: `{"tmdb_id":[1429]}`, field: "tmdb_id", wantErr: true},
		{name: "tmdb_id beyond int64", in: `{"tmdb_id":9223372036854775808}`, field: "tmdb_id", wantErr: true},
		{name: "unknown field", in: `{"tmdb_id":1429,"title":"A"}`, field: "title", wantErr: true},
		{name: "unknown field only", in: `{"id":1429}`, field: "id", wantErr: true},
		{name: "not an object", in: `[1429]`, wantErr: true},
		{name: "bare number", in: `1429`, wantErr: true},
		{name: "empty", in: ``, wantErr: true},
		{name: "truncated", in: `{"tmdb_id":14`, wantErr: true},
		{name: "trailing data", in: `{"tmdb_id":1429}{"tmdb_id":1}`, wantErr: true},
		{name: "invalid UTF-8", in: "{\"tmdb_id\":1429}\xff", wantErr: true},
		{name: "too large", in: `{"tmdb_id":1429}` + strings.Repeat(" ", events.MaxRecordBytes), tooLarge: true, wantErr: true},
	}
	for _, d := range decoders {
		for _, tt := range tests {
			t.Run(d.name+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				got, err := d.decode([]byte(tt.in))
				switch {
				case !tt.wantErr:
					if err != nil {
						t.Fatalf("%s: %v", d.name, err)
					}
					if got != tt.want {
						t.Errorf("tmdb_id = %d, want %d", got, tt.want)
					}
				case tt.tooLarge:
					var ve *events.ValidationError
					if !errors.As(err, &ve) || !errors.Is(err, events.ErrTooLarge) || !errors.Is(err, events.ErrInvalid) {
						t.Errorf("error %v (%T), want a *ValidationError wrapping ErrTooLarge and ErrInvalid", err, err)
					}
				default:
					checkInvalid(t, err, tt.field)
				}
			})
		}
	}
}

func TestValidationError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  *events.ValidationError
		want string
	}{
		{name: "with field", err: &events.ValidationError{Field: "title", Message: "is required"}, want: "title: is required"},
		{name: "without field", err: &events.ValidationError{Message: "payload must be a JSON object"}, want: "payload must be a JSON object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.err.Error(); got != tt.want {
				t.Errorf("Error() = %q, want %q", got, tt.want)
			}
			if !errors.Is(tt.err, events.ErrInvalid) {
				t.Error("does not wrap ErrInvalid")
			}
			if errors.Is(tt.err, events.ErrTooLarge) {
				t.Error("a hand-made ValidationError wraps ErrTooLarge")
			}
			var ve *events.ValidationError
			if wrapped := errors.Join(errors.New("context"), tt.err); !errors.As(wrapped, &ve) || ve != tt.err || !errors.Is(wrapped, events.ErrInvalid) {
				t.Error("not found through a wrapping error")
			}
		})
	}
}
