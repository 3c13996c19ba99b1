package node

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	gojson "github.com/goccy/go-json"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/metastore"
)

// A write's record is encoded once (events.Marshal) and its bytes are reused
// for the cache entry, the buffer message and metadata.changed. The payloads
// that carry it are assembled from the encoding of their other fields and the
// record's bytes, byte for byte what encoding the whole payload would give
// (wire_test.go checks it). json.RawMessage would not save the work: the
// encoder compacts, that is re-scans, a RawMessage, which costs about as much
// as encoding the record again.

// recordMember is how events.BufferedWrite and events.MetadataChanged encode
// a record: their last field, tagged record,omitempty.
const recordMember = `,"record":`

// withRecord returns the encoding of a payload whose last field is the record,
// from head, the encoding of the payload with that field nil (so left out),
// and body, the record's encoding. head is a JSON object with at least one
// member; an empty body leaves head unchanged, as omitempty would.
func withRecord(head, body []byte) ([]byte, error) {
	if len(head) < 3 || head[0] != '{' || head[len(head)-1] != '}' {
		return nil, fmt.Errorf("payload head %.40q is not a JSON object with members", head)
	}
	if len(body) == 0 {
		return head, nil
	}
	out := make([]byte, 0, len(head)+len(recordMember)+len(body))
	out = append(out, head[:len(head)-1]...)
	out = append(out, recordMember...)
	out = append(out, body...)
	return append(out, '}'), nil
}

// encodeBufferedWrite encodes w with body as its record (nil for a delete).
func encodeBufferedWrite(w events.BufferedWrite, body []byte) ([]byte, error) {
	if w.Record != nil {
		return nil, errors.New("encode buffered write: pass the record as its encoding")
	}
	head, err := events.Marshal(w)
	if err != nil {
		return nil, fmt.Errorf("encode buffered write: %w", err)
	}
	return withRecord(head, body)
}

// batchOpen and batchClose frame the encoded writes of an events.BufferBatch.
const (
	batchOpen  = `{"writes":[`
	batchClose = `]}`
)

// encodeBatch encodes an events.BufferBatch from its writes' encodings.
func encodeBatch(writes [][]byte) []byte {
	n := len(batchOpen) + len(batchClose)
	for _, w := range writes {
		n += len(w) + 1
	}
	out := make([]byte, 0, n)
	out = append(out, batchOpen...)
	for i, w := range writes {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, w...)
	}
	return append(out, batchClose...)
}

// decodeBatch decodes one buffer message.
//
// Replay reads buffer messages in bulk, and encoding/json's decode of them
// was most of a replaying node's CPU. They are the nodes' own encoding
// (encodeBatch of encodeBufferedWrite), so they are decoded with
// goccy/go-json: pure Go, the same struct tags and rules as encoding/json,
// about four times faster on these messages (BenchmarkReplayDecode). A
// message it refuses, or that makes it panic, is decoded again by
// encoding/json, whose verdict stands; FuzzDecodeBatchMatchesEncodingJSON
// checks that whatever goccy/go-json accepts, encoding/json accepts and
// decodes to the same writes.
func decodeBatch(data []byte) (events.BufferBatch, error) {
	bb, err := decodeBatchFast(data)
	if err != nil {
		bb = events.BufferBatch{}
		if err := json.Unmarshal(data, &bb); err != nil {
			return bb, fmt.Errorf("decode buffer batch: %w", err)
		}
	}
	for _, w := range bb.Writes {
		if w.TMDBID <= 0 || w.Version <= 0 {
			return bb, fmt.Errorf("decode buffer batch: bad write %d v%d", w.TMDBID, w.Version)
		}
		if !w.Deleted && w.Record == nil {
			return bb, fmt.Errorf("decode buffer batch: upsert of %d without record", w.TMDBID)
		}
	}
	return bb, nil
}

// decodeBatchFast is goccy/go-json's decode of a buffer message; a panic
// in it, or a message with a control character or invalid UTF-8, is an error.
func decodeBatchFast(data []byte) (bb events.BufferBatch, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("decode buffer batch: goccy/go-json panicked: %v", r)
		}
	}()
	// encoding/json replaces invalid bytes in strings by U+FFFD and refuses
	// control characters in them; goccy/go-json keeps the former and takes
	// the latter. The nodes' encoding has neither, nor any whitespace.
	if !utf8.Valid(data) || hasControl(data) {
		return bb, errors.New("decode buffer batch: control characters or invalid UTF-8")
	}
	dec := gojson.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields() // goccy/go-json skips unknown members without checking their syntax
	if err = dec.Decode(&bb); err == nil && dec.InputOffset() != int64(len(data)) {
		err = errors.New("decode buffer batch: data after the message")
	}
	return bb, err
}

func hasControl(b []byte) bool {
	for _, c := range b {
		if c < 0x20 {
			return true
		}
	}
	return false
}

// encodeChanged encodes a metadata.changed event with body as its record
// (nil for a delete).
func encodeChanged(source string, at time.Time, id, version int64, deleted, buffered bool, body []byte) ([]byte, error) {
	head, err := events.Marshal(events.MetadataChanged{
		Envelope: events.Envelope{OccurredAt: at, Source: source},
		TMDBID:   id, Version: version, Deleted: deleted, Buffered: buffered,
	})
	if err != nil {
		return nil, fmt.Errorf("encode metadata.changed: %w", err)
	}
	return withRecord(head, body)
}

// decodeBuffered decodes buffer messages into the writes they hold, and
// reports for each message the error that made it undecodable (nil if none).
func decodeBuffered(payloads [][]byte) ([]metastore.Write, []error) {
	errs := make([]error, len(payloads))
	var writes []metastore.Write
	for i, p := range payloads {
		bb, err := decodeBatch(p)
		if err != nil {
			errs[i] = err
			continue
		}
		for _, w := range bb.Writes {
			writes = append(writes, metastore.Write{TMDBID: w.TMDBID, Version: w.Version, Deleted: w.Deleted, UpdatedAt: w.AcceptedAt, Record: w.Record})
		}
	}
	return writes, errs
}
