package events

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"unicode/utf16"
	"unicode/utf8"
)

// Marshal encodes v as JSON without HTML escaping, so that a record's encoding
// stays about the size of the JSON it was accepted as (json.Marshal turns each
// of < > & into six bytes).
func Marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// fieldNames numbers the JSON names of t's fields from 0, embedded structs flattened.
func fieldNames(t reflect.Type, into map[string]int) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return
	}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		name, _, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if f.Anonymous && name == "" {
			fieldNames(f.Type, into)
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		if _, ok := into[name]; !ok {
			into[name] = len(into)
		}
	}
}

// recordFields is fieldNames of Record, computed once: every write decodes a
// record, and walking its fields by reflection each time cost 4 µs. The map
// is never written after it is built.
var recordFields = sync.OnceValue(func() map[string]int {
	m := map[string]int{}
	fieldNames(reflect.TypeFor[Record](), m)
	return m
})

// fieldIndex returns fieldNames of t; callers must not modify it.
func fieldIndex(t reflect.Type) map[string]int {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == reflect.TypeFor[Record]() {
		return recordFields()
	}
	m := map[string]int{}
	fieldNames(t, m)
	return m
}

// checkKeys rejects top-level keys that are not exactly (case included) one of
// v's JSON field names, and duplicate keys: encoding/json would match
// "TITLE" to title and let a later duplicate silently win. data must be
// JSON the decoder has accepted.
func checkKeys(data []byte, v any) error {
	known := fieldIndex(reflect.TypeOf(v))
	if len(known) == 0 {
		return nil
	}
	seen := make([]bool, len(known))
	return objectKeys(data, func(key []byte) error {
		i, ok := known[string(key)]
		switch {
		case !ok:
			return invalid(string(key), "unknown field")
		case seen[i]:
			return invalid(string(key), "duplicate field")
		}
		seen[i] = true
		return nil
	})
}

// The scanning helpers below walk JSON that is already known to be valid (the
// decoder or json.Valid accepted it), so they skip rather than check syntax.
// On other input their answer means nothing, but they never panic or loop.
// json_internal_test.go checks them against json.Decoder.Token walks.

// objectKeys calls fn with each member name of the JSON object in data, in
// order and unescaped, and stops at the first error fn returns. fn must not
// keep key.
func objectKeys(data []byte, fn func(key []byte) error) error {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return nil
	}
	i = skipSpace(data, i+1)
	for i < len(data) && data[i] == '"' {
		end := skipString(data, i)
		key := data[i+1 : max(end-1, i+1)]
		if bytes.IndexByte(key, '\\') >= 0 || !utf8.Valid(key) {
			// Unescape as the decoder does (invalid UTF-8 becomes U+FFFD).
			var s string
			if err := json.Unmarshal(data[i:end], &s); err != nil {
				return nil
			}
			key = []byte(s)
		}
		if err := fn(key); err != nil {
			return err
		}
		i = skipSpace(data, end)                  // at the colon
		i = skipValue(data, skipSpace(data, i+1)) // after the value
		if i = skipSpace(data, i); i < len(data) && data[i] == ',' {
			i = skipSpace(data, i+1)
		}
	}
	return nil
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipSpace(data []byte, i int) int {
	for i < len(data) && isSpace(data[i]) {
		i++
	}
	return i
}

// skipString returns the index just after the string whose opening quote is data[i].
func skipString(data []byte, i int) int {
	for i++; i < len(data); i++ {
		switch data[i] {
		case '\\':
			i++ // the escaped character cannot end the string
		case '"':
			return i + 1
		}
	}
	return len(data)
}

// skipValue returns the index just after the value that starts at data[i].
func skipValue(data []byte, i int) int {
	if i >= len(data) {
		return i
	}
	switch data[i] {
	case '"':
		return skipString(data, i)
	case '{', '[':
		depth := 0
		for i < len(data) {
			switch data[i] {
			case '"':
				i = skipString(data, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	default: // a number, true, false or null
		for i < len(data) && !isSpace(data[i]) && data[i] != ',' && data[i] != '}' && data[i] != ']' {
			i++
		}
		return i
	}
}

// maxNumberLiteral bounds a number in raw_data: PostgreSQL's jsonb refuses
// numbers beyond its numeric range, and huge literals expand when read back.
const maxNumberLiteral = 64

// checkRawData validates raw_data beyond JSON syntax: it must be something
// PostgreSQL's jsonb stores as given, so no NUL character, no unpaired UTF-16
// surrogate escape and no number jsonb cannot hold. raw must be valid JSON.
func checkRawData(raw []byte) error {
	if err := checkEscapes(raw); err != nil {
		return err
	}
	// Strings (keys included) and numbers in document order. Outside strings,
	// only a number starts with '-' or a digit.
	for i := 0; i < len(raw); {
		switch c := raw[i]; {
		case c == '"':
			end := skipString(raw, i)
			if hasNULEscape(raw[i:end]) {
				return invalid("raw_data", "must not contain a NUL character (\\u0000)")
			}
			i = end
		case c == '-' || '0' <= c && c <= '9':
			end := skipValue(raw, i)
			if err := checkNumber(string(raw[i:end])); err != nil {
				return err
			}
			i = end
		default:
			i++
		}
	}
	return nil
}

// hasNULEscape reports whether the quoted JSON string s holds the escape
// \u0000, the only way valid JSON puts a NUL character in a string.
func hasNULEscape(s []byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			continue
		}
		if bytes.HasPrefix(s[i+1:], []byte("u0000")) {
			return true
		}
		i++ // skip the escaped character: in \\u0000 the u is not an escape
	}
	return false
}

// checkNumber rejects a raw_data number literal jsonb cannot hold.
func checkNumber(t string) error {
	if len(t) > maxNumberLiteral {
		return invalid("raw_data", "number %.20s... is longer than %d characters", t, maxNumberLiteral)
	}
	f, err := strconv.ParseFloat(t, 64)
	mantissa, _, _ := strings.Cut(strings.ToLower(t), "e")
	if err != nil || (f == 0 && strings.ContainsAny(mantissa, "123456789")) {
		return invalid("raw_data", "number %s is out of range", t)
	}
	return nil
}

// checkEscapes finds \u escapes of UTF-16 surrogates that are not paired:
// Go would turn them into U+FFFD silently and PostgreSQL would refuse them.
func checkEscapes(raw []byte) error {
	inString := false
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if !inString {
			if c == '"' {
				inString = true
			}
			continue
		}
		switch c {
		case '"':
			inString = false
		case '\\':
			if i+1 >= len(raw) {
				return nil
			}
			if raw[i+1] != 'u' {
				i++
				continue
			}
			r1, ok := hex4(raw, i+2)
			if !ok {
				return nil // the decoder reports the syntax error
			}
			switch {
			case utf16.IsSurrogate(r1) && r1 < 0xDC00:
				if i+11 < len(raw) && raw[i+6] == '\\' && raw[i+7] == 'u' {
					if r2, ok := hex4(raw, i+8); ok && r2 >= 0xDC00 && r2 <= 0xDFFF {
						i += 11
						continue
					}
				}
				return invalid("raw_data", "contains an unpaired UTF-16 surrogate escape")
			case utf16.IsSurrogate(r1):
				return invalid("raw_data", "contains an unpaired UTF-16 surrogate escape")
			}
			i += 5
		}
	}
	return nil
}

func hex4(b []byte, at int) (rune, bool) {
	if at+4 > len(b) {
		return 0, false
	}
	n, err := strconv.ParseUint(string(b[at:at+4]), 16, 32)
	if err != nil {
		return 0, false
	}
	return rune(n), true
}

// checkReencodes makes sure a decoded value can be encoded again (a time
// offset of +24:00 decodes but does not encode).
func checkReencodes(v any) error {
	if _, err := Marshal(v); err != nil {
		return invalid("", "payload holds a value that cannot be encoded again: %v", err)
	}
	return nil
}
