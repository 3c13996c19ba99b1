package node

import (
	"errors"
	"fmt"
	"time"

	"github.com/anivault/anivault/events"
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
