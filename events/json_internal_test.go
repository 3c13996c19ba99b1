package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// The byte scanners of json.go replaced two json.Decoder.Token walks. These
// are those walks, kept as the reference the scanners must agree with.

func tokenCheckKeys(data []byte, v any) error {
	known := map[string]int{}
	fieldNames(reflect.TypeOf(v), known)
	if len(known) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if _, err := dec.Token(); err != nil {
		return nil
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil
		}
		key, ok := tok.(string)
		if !ok {
			return nil
		}
		if _, ok := known[key]; !ok {
			return invalid(key, "unknown field")
		}
		if seen[key] {
			return invalid(key, "duplicate field")
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return nil
		}
	}
	return nil
}

func tokenCheckRawData(raw []byte) error {
	if err := checkEscapes(raw); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return invalid("raw_data", "must be a JSON object: %v", err)
		}
		switch t := tok.(type) {
		case string:
			if strings.IndexByte(t, 0) >= 0 {
				return invalid("raw_data", "must not contain a NUL character (\\u0000)")
			}
		case json.Number:
			if len(t) > maxNumberLiteral {
				return invalid("raw_data", "number %.20s... is longer than %d characters", string(t), maxNumberLiteral)
			}
			f, err := strconv.ParseFloat(string(t), 64)
			mantissa, _, _ := strings.Cut(strings.ToLower(string(t)), "e")
			if err != nil || (f == 0 && strings.ContainsAny(mantissa, "123456789")) {
				return invalid("raw_data", "number %s is out of range", string(t))
			}
		}
	}
}

func sameError(t *testing.T, what string, data []byte, got, want error) {
	t.Helper()
	if (got == nil) != (want == nil) || (got != nil && got.Error() != want.Error()) {
		t.Fatalf("%s(%q) = %v, the tokenizer says %v", what, data, got, want)
	}
	var ve *ValidationError
	if got != nil && !errors.As(got, &ve) {
		t.Fatalf("%s(%q) = %T, want *ValidationError", what, data, got)
	}
}

var scannerSeeds = []string{
	`{}`,
	` { "tmdb_id" : 1 , "title" : "A" } `,
	`{"tmdb_id":1,"title":"A","tmdb_id":2}`,
	`{"TMDB_ID":1}`,
	`{"tmdb\u005fid":1,"title":"A"}`,
	`{"tmdb_id":1,"tmdb\u005fid":2}`,
	`{"title":"a\"b\\","raw_data":{"tmdb_id":[1,{"x":"}"}],"y":"\\"},"genres":["]","{"]}`,
	`{"a":"\u0000"}`,
	`{"\u0000":1}`,
	`{"a":"\\u0000"}`,
	`{"a":"\\\u0000"}`,
	`{"a":"x\u0000y"}`,
	`{"a":"\ud800"}`,
	`{"a":"\ud83d\ude00","b":"\udc00"}`,
	`{"a":[1,-0,0.5,1e400,1e-400,-1E+2,0e5,123456789012345678901234567890123456789012345678901234567890123456789]}`,
	`{"a":1e-16384,"b":"\u0000"}`,
	`{"a":true,"b":false,"c":null,"d":-1}`,
	`{"a":{"b":{"c":[[[]]]}},"d":"\\"}`,
}

// FuzzCheckKeysMatchesTokenizer: on any JSON object, checkKeys gives the
// answer the Token walk gives, for a record and for a mode event.
func FuzzCheckKeysMatchesTokenizer(f *testing.F) {
	for _, s := range scannerSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if !json.Valid(data) || !bytes.HasPrefix(bytes.TrimLeft(data, " \t\r\n"), []byte("{")) {
			return
		}
		for _, v := range []any{&Record{}, &ModeChanged{}, &DeleteRequest{}} {
			sameError(t, "checkKeys", data, checkKeys(data, v), tokenCheckKeys(data, v))
		}
	})
}

// FuzzCheckRawDataMatchesTokenizer: on any valid JSON, checkRawData gives the
// answer the Token walk gives.
func FuzzCheckRawDataMatchesTokenizer(f *testing.F) {
	for _, s := range scannerSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if !json.Valid(raw) {
			return
		}
		sameError(t, "checkRawData", raw, checkRawData(raw), tokenCheckRawData(raw))
	})
}

// FuzzDecodeRecordMatchesFullReencodeCheck: DecodeRecord checks only
// updated_at for encoding again; it answers as if it encoded the whole record.
func FuzzDecodeRecordMatchesFullReencodeCheck(f *testing.F) {
	for _, s := range append(scannerSeeds,
		`{"tmdb_id":1,"title":"A","updated_at":"2024-05-01T12:00:00+24:00"}`,
		`{"tmdb_id":1,"title":"A","updated_at":"2024-05-01T12:00:00.5+09:00","version":3}`,
		`{"tmdb_id":1,"title":"A","vote_average":1e308,"popularity":-0,"raw_data":{"a":"<\u2028>"}}`,
	) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		_, got := DecodeRecord(data)
		var r Record
		want := decodeStrict(data, &r)
		if want == nil {
			r.Version, r.UpdatedAt = 0, nil
			want = r.Validate()
		}
		sameError(t, "DecodeRecord", data, got, want)
	})
}
