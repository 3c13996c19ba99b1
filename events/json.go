package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf16"
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

// fieldNames returns the JSON names of t's fields, embedded structs flattened.
func fieldNames(t reflect.Type, into map[string]bool) {
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
		into[name] = true
	}
}

// checkKeys rejects top-level keys that are not exactly (case included) one of
// v's JSON field names, and duplicate keys: encoding/json would match
// "TITLE" to title and let a later duplicate silently win.
func checkKeys(data []byte, v any) error {
	known := map[string]bool{}
	fieldNames(reflect.TypeOf(v), known)
	if len(known) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if _, err := dec.Token(); err != nil { // {
		return nil // the full decode reports malformed input
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
		if !known[key] {
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

// maxNumberLiteral bounds a number in raw_data: PostgreSQL's jsonb refuses
// numbers beyond its numeric range, and huge literals expand when read back.
const maxNumberLiteral = 64

// checkRawData validates raw_data beyond JSON syntax: it must be something
// PostgreSQL's jsonb stores as given, so no NUL character, no unpaired UTF-16
// surrogate escape and no number jsonb cannot hold.
func checkRawData(raw []byte) error {
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
