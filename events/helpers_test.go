package events_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/anivault/anivault/events"
)

// contractExample is the record of the contract's "Anime metadata" section, verbatim.
const contractExample = `{
  "tmdb_id": 1429,
  "title": "Attack on Titan",
  "original_title": "進撃の巨人",
  "korean_title": "진격의 거인",
  "overview": "…",
  "poster_path": "/hTP1DtLGFamjfu8WqjnuQdP1n4i.jpg",
  "backdrop_path": "/rqbCbjB19amtOtFQbb3K2lgm2zv.jpg",
  "first_air_date": "2013-04-07",
  "last_air_date": "2023-11-05",
  "status": "Ended",
  "vote_average": 8.7,
  "vote_count": 6100,
  "popularity": 151.2,
  "number_of_seasons": 4,
  "number_of_episodes": 94,
  "genres": ["Animation", "Action & Adventure"],
  "networks": ["MBS"],
  "raw_data": {"any": "JSON object, kept whole"}
}`

// raw marks a JSON fragment that recordJSON must embed verbatim.
type raw = json.RawMessage

// recordJSON returns a minimal valid record ({"tmdb_id":1429,"title":"Attack on
// Titan"}) with the keys of set added or replaced and the keys of drop removed.
// Values are marshalled with encoding/json; use raw(...) for exact fragments.
func recordJSON(t testing.TB, set map[string]any, drop ...string) []byte {
	t.Helper()
	m := map[string]any{"tmdb_id": 1429, "title": "Attack on Titan"}
	for k, v := range set {
		m[k] = v
	}
	for _, k := range drop {
		delete(m, k)
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatalf("build record JSON: %v", err)
	}
	return b
}

// checkInvalid asserts that err is a *events.ValidationError naming field that
// wraps events.ErrInvalid (and not events.ErrTooLarge).
func checkInvalid(t testing.TB, err error, field string) *events.ValidationError {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want a *events.ValidationError for field %q", field)
	}
	var ve *events.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("error %q is a %T, want *events.ValidationError", err, err)
	}
	if ve.Field != field {
		t.Errorf("Field = %q, want %q (error: %q)", ve.Field, field, err)
	}
	if !errors.Is(err, events.ErrInvalid) {
		t.Errorf("errors.Is(%q, ErrInvalid) = false", err)
	}
	if errors.Is(err, events.ErrTooLarge) {
		t.Errorf("errors.Is(%q, ErrTooLarge) = true for a payload that is not too large", err)
	}
	if ve.Message == "" {
		t.Errorf("empty Message in %#v", ve)
	}
	if field != "" && !strings.HasPrefix(err.Error(), field+": ") {
		t.Errorf("Error() = %q, want it to start with %q", err.Error(), field+": ")
	}
	return ve
}

// decodeAny decodes JSON with UseNumber so that numbers compare exactly.
func decodeAny(t testing.TB, b []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decode %.200q: %v", b, err)
	}
	return v
}

// sameJSON asserts that a and b are the same JSON value (key order, spacing
// and escaping aside).
func sameJSON(t testing.TB, what string, got, want []byte) {
	t.Helper()
	g, w := decodeAny(t, got), decodeAny(t, want)
	if !reflect.DeepEqual(g, w) {
		t.Errorf("%s differs:\n got  %.300s\n want %.300s", what, got, want)
	}
}

var dateRE = regexp.MustCompile(`^[0-9]{4}-[0-9]{2}-[0-9]{2}$`)

// checkRecordInvariants re-checks, independently of Validate, what the contract
// promises about an accepted record.
func checkRecordInvariants(t testing.TB, r *events.Record) {
	t.Helper()
	if r.TMDBID <= 0 {
		t.Errorf("accepted tmdb_id %d", r.TMDBID)
	}
	if strings.TrimSpace(r.Title) == "" {
		t.Errorf("accepted blank title %q", r.Title)
	}
	if n := utf8.RuneCountInString(r.Title); n > events.MaxTitleLength {
		t.Errorf("accepted a title of %d characters", n)
	}
	if r.Version != 0 || r.UpdatedAt != nil {
		t.Errorf("DecodeRecord kept version %d / updated_at %v", r.Version, r.UpdatedAt)
	}
	strs := map[string]*string{
		"title": &r.Title, "original_title": r.OriginalTitle, "korean_title": r.KoreanTitle,
		"overview": r.Overview, "poster_path": r.PosterPath, "backdrop_path": r.BackdropPath,
		"status": r.Status, "first_air_date": r.FirstAirDate, "last_air_date": r.LastAirDate,
	}
	for name, s := range strs {
		if s == nil {
			continue
		}
		if !utf8.ValidString(*s) || strings.IndexByte(*s, 0) >= 0 {
			t.Errorf("accepted %s %q (invalid UTF-8 or NUL)", name, *s)
		}
	}
	for _, list := range [][]string{r.Genres, r.Networks} {
		for _, s := range list {
			if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
				t.Errorf("accepted list element %q (invalid UTF-8 or NUL)", s)
			}
		}
	}
	for name, d := range map[string]*string{"first_air_date": r.FirstAirDate, "last_air_date": r.LastAirDate} {
		if d == nil {
			continue
		}
		if _, err := time.Parse(time.DateOnly, *d); err != nil || !dateRE.MatchString(*d) {
			t.Errorf("accepted %s %q", name, *d)
		}
	}
	for name, f := range map[string]*float64{"vote_average": r.VoteAverage, "popularity": r.Popularity} {
		if f != nil && (math.IsNaN(*f) || math.IsInf(*f, 0)) {
			t.Errorf("accepted %s %v", name, *f)
		}
	}
	for name, n := range map[string]*int64{"vote_count": r.VoteCount, "number_of_seasons": r.NumberOfSeasons, "number_of_episodes": r.NumberOfEpisodes} {
		if n != nil && (*n < 0 || *n > math.MaxInt32) {
			t.Errorf("accepted %s %d", name, *n)
		}
	}
	if rd := bytes.TrimSpace(r.RawData); len(rd) > 0 && string(rd) != "null" {
		if rd[0] != '{' || !json.Valid(rd) {
			t.Errorf("accepted raw_data %.200q that is not a JSON object", rd)
		}
		var m map[string]any
		dec := json.NewDecoder(bytes.NewReader(rd))
		dec.UseNumber() // raw_data numbers need not fit a float64
		if err := dec.Decode(&m); err != nil {
			t.Errorf("accepted raw_data %.200q that does not decode as an object: %v", rd, err)
		}
		if bytes.Contains(rd, []byte(`\u0000`)) {
			t.Errorf("accepted raw_data with a NUL escape: %.200q", rd)
		}
	}
}

func ptr[T any](v T) *T { return &v }
