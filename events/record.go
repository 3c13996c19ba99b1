package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"time"
	"unicode/utf8"
)

// MaxRecordBytes is the largest accepted record, in bytes of JSON.
const MaxRecordBytes = 256 << 10

// MaxTitleLength is the longest accepted title, in characters.
const MaxTitleLength = 255

// DateLayout is the format of first_air_date and last_air_date.
const DateLayout = "2006-01-02"

// Record is an anime metadata record keyed by its TMDB series id. Nullable
// columns are pointers. Version and UpdatedAt are assigned by the system when a
// write is accepted; they are ignored on input and always present on reads.
type Record struct {
	TMDBID           int64           `json:"tmdb_id"`
	Title            string          `json:"title"`
	OriginalTitle    *string         `json:"original_title,omitempty"`
	KoreanTitle      *string         `json:"korean_title,omitempty"`
	Overview         *string         `json:"overview,omitempty"`
	PosterPath       *string         `json:"poster_path,omitempty"`
	BackdropPath     *string         `json:"backdrop_path,omitempty"`
	FirstAirDate     *string         `json:"first_air_date,omitempty"`
	LastAirDate      *string         `json:"last_air_date,omitempty"`
	Status           *string         `json:"status,omitempty"`
	VoteAverage      *float64        `json:"vote_average,omitempty"`
	VoteCount        *int64          `json:"vote_count,omitempty"`
	Popularity       *float64        `json:"popularity,omitempty"`
	NumberOfSeasons  *int64          `json:"number_of_seasons,omitempty"`
	NumberOfEpisodes *int64          `json:"number_of_episodes,omitempty"`
	Genres           []string        `json:"genres,omitempty"`
	Networks         []string        `json:"networks,omitempty"`
	RawData          json.RawMessage `json:"raw_data,omitempty"`
	Version          int64           `json:"version,omitempty"`
	UpdatedAt        *time.Time      `json:"updated_at,omitempty"`
}

// ErrInvalid is wrapped by every *ValidationError.
var ErrInvalid = errors.New("invalid record")

// ErrTooLarge is wrapped by a *ValidationError for a payload over MaxRecordBytes.
var ErrTooLarge = errors.New("record too large")

// ValidationError names the field that failed validation.
type ValidationError struct {
	Field   string
	Message string
	tooBig  bool
}

func (e *ValidationError) Error() string {
	if e.Field == "" {
		return e.Message
	}
	return e.Field + ": " + e.Message
}

// Unwrap lets errors.Is match ErrInvalid (and ErrTooLarge for oversize payloads).
func (e *ValidationError) Unwrap() []error {
	if e.tooBig {
		return []error{ErrInvalid, ErrTooLarge}
	}
	return []error{ErrInvalid}
}

func invalid(field, format string, args ...any) *ValidationError {
	return &ValidationError{Field: field, Message: fmt.Sprintf(format, args...)}
}

// DecodeRecord decodes and validates one record from JSON. Unknown fields,
// trailing data, invalid UTF-8 and payloads over MaxRecordBytes are rejected.
// Version and UpdatedAt from the input are cleared.
func DecodeRecord(data []byte) (*Record, error) {
	var r Record
	if err := decodeChecked(data, &r); err != nil {
		return nil, err
	}
	// Of a record's fields only updated_at can decode and then fail to encode
	// again (an offset of +24:00): numbers that decode are finite, and strings
	// and raw_data that decode encode. So that one is checked, not the record.
	if r.UpdatedAt != nil {
		if err := checkReencodes(r.UpdatedAt); err != nil {
			return nil, err
		}
	}
	r.Version = 0
	r.UpdatedAt = nil
	// raw_data is syntactically valid: encoding/json checks the whole
	// payload before it decodes it.
	if err := r.validate(true); err != nil {
		return nil, err
	}
	return &r, nil
}

// DecodeDelete decodes and validates a metadata.delete payload.
func DecodeDelete(data []byte) (DeleteRequest, error) {
	var d DeleteRequest
	if err := decodeStrict(data, &d); err != nil {
		return d, err
	}
	if d.TMDBID <= 0 {
		return d, invalid("tmdb_id", "must be an integer greater than 0")
	}
	return d, nil
}

// DecodeGet decodes and validates a metadata.get request.
func DecodeGet(data []byte) (GetRequest, error) {
	var g GetRequest
	if err := decodeStrict(data, &g); err != nil {
		return g, err
	}
	if g.TMDBID <= 0 {
		return g, invalid("tmdb_id", "must be an integer greater than 0")
	}
	return g, nil
}

// DecodeStrict decodes a JSON object into v, rejecting unknown fields,
// trailing data, invalid UTF-8 and payloads over MaxRecordBytes, with an error
// that names the offending field where one can be told.
func DecodeStrict(data []byte, v any) error { return decodeStrict(data, v) }

func decodeStrict(data []byte, v any) error {
	if err := decodeChecked(data, v); err != nil {
		return err
	}
	return checkReencodes(v)
}

// decodeChecked is decodeStrict without the check that v encodes again.
func decodeChecked(data []byte, v any) error {
	if len(data) > MaxRecordBytes {
		return &ValidationError{Message: fmt.Sprintf("payload is %d bytes, the limit is %d", len(data), MaxRecordBytes), tooBig: true}
	}
	if !utf8.Valid(data) {
		return invalid("", "payload is not valid UTF-8")
	}
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return invalid("", "payload must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return invalid("", "unexpected data after the JSON object")
	}
	return checkKeys(data, v)
}

func jsonError(err error) *ValidationError {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		field := strings.TrimPrefix(typeErr.Field, "Envelope.")
		if field == "" {
			field = typeErr.Struct
		}
		return invalid(field, "must be %s, not JSON %s", typeName(typeErr.Type.String()), typeErr.Value)
	case errors.As(err, &syntaxErr):
		return invalid("", "malformed JSON at byte %d: %v", syntaxErr.Offset, syntaxErr)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return invalid(name, "unknown field")
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return invalid("", "malformed JSON: unexpected end of input")
	default:
		return invalid("", "malformed JSON: %v", err)
	}
}

func typeName(goType string) string {
	goType = strings.TrimPrefix(goType, "*")
	switch {
	case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "uint"):
		return "an integer"
	case strings.HasPrefix(goType, "float"):
		return "a number"
	case goType == "string":
		return "a string"
	case strings.HasPrefix(goType, "[]string"):
		return "an array of strings"
	case goType == "bool":
		return "a boolean"
	default:
		return "a " + goType
	}
}

// Validate checks every rule of the contract and names the first failing field.
func (r *Record) Validate() error { return r.validate(false) }

// validate is Validate; rawValid says raw_data is known to be valid JSON
// (decoded by encoding/json), so that its syntax is not checked again.
func (r *Record) validate(rawValid bool) error {
	if r.TMDBID <= 0 {
		return invalid("tmdb_id", "must be an integer greater than 0")
	}
	if strings.TrimSpace(r.Title) == "" {
		return invalid("title", "is required and must not be empty")
	}
	if n := utf8.RuneCountInString(r.Title); n > MaxTitleLength {
		return invalid("title", "is %d characters long, the limit is %d", n, MaxTitleLength)
	}
	strs := []struct {
		name string
		v    *string
	}{
		{"title", &r.Title}, {"original_title", r.OriginalTitle}, {"korean_title", r.KoreanTitle},
		{"overview", r.Overview}, {"poster_path", r.PosterPath}, {"backdrop_path", r.BackdropPath},
		{"status", r.Status}, {"first_air_date", r.FirstAirDate}, {"last_air_date", r.LastAirDate},
	}
	for _, s := range strs {
		if s.v == nil {
			continue
		}
		if err := checkString(s.name, *s.v); err != nil {
			return err
		}
	}
	for _, d := range []struct {
		name string
		v    *string
	}{{"first_air_date", r.FirstAirDate}, {"last_air_date", r.LastAirDate}} {
		if d.v == nil {
			continue
		}
		t, err := time.Parse(DateLayout, *d.v)
		if err != nil || len(*d.v) != len(DateLayout) || t.Year() < 1 {
			return invalid(d.name, "must be a date as YYYY-MM-DD (year 0001 to 9999) or null, got %q", *d.v)
		}
	}
	for _, list := range []struct {
		name string
		v    []string
	}{{"genres", r.Genres}, {"networks", r.Networks}} {
		for i, s := range list.v {
			if err := checkString(list.name, s); err != nil {
				err.Field = fmt.Sprintf("%s[%d]", list.name, i)
				return err
			}
		}
	}
	for _, f := range []struct {
		name string
		v    *float64
	}{{"vote_average", r.VoteAverage}, {"popularity", r.Popularity}} {
		if f.v != nil && (math.IsNaN(*f.v) || math.IsInf(*f.v, 0)) {
			return invalid(f.name, "must be a finite number")
		}
	}
	for _, n := range []struct {
		name string
		v    *int64
	}{{"vote_count", r.VoteCount}, {"number_of_seasons", r.NumberOfSeasons}, {"number_of_episodes", r.NumberOfEpisodes}} {
		if n.v != nil && (*n.v < 0 || *n.v > math.MaxInt32) {
			return invalid(n.name, "must be an integer from 0 to %d", math.MaxInt32)
		}
	}
	if len(r.RawData) > 0 && !bytes.Equal(bytes.TrimSpace(r.RawData), []byte("null")) {
		raw := bytes.TrimSpace(r.RawData)
		if len(raw) == 0 || raw[0] != '{' || !rawValid && !json.Valid(raw) {
			return invalid("raw_data", "must be a JSON object")
		}
		// Refuse here what PostgreSQL's jsonb would refuse later: a write
		// accepted now must be able to reach the database after an outage.
		if err := checkRawData(raw); err != nil {
			return err
		}
	}
	return nil
}

func checkString(field, s string) *ValidationError {
	if !utf8.ValidString(s) {
		return invalid(field, "must be valid UTF-8")
	}
	if strings.IndexByte(s, 0) >= 0 {
		return invalid(field, "must not contain a NUL byte")
	}
	return nil
}
