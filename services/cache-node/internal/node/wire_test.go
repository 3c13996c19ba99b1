package node

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
)

func wireRecords(t *testing.T) []*events.Record {
	t.Helper()
	at := time.Date(2026, 5, 1, 12, 0, 0, 123456789, time.UTC)
	inputs := []string{
		`{"tmdb_id":1429,"title":"A"}`,
		`{"tmdb_id": 1429, "title": "Attack on Titan", "original_title": "進撃の巨人", "korean_title": "진격의 거인",
		  "overview": "<b>Tom & Jerry</b> \u2028 \u2029 \"q\" \\ \t", "first_air_date": "2013-04-07", "last_air_date": null,
		  "vote_average": 8.7, "vote_count": 6100, "popularity": 1e-7, "number_of_seasons": 4, "number_of_episodes": 94,
		  "genres": ["Animation", "Action & Adventure"], "networks": [],
		  "raw_data": { "a" : [1, 2.50, -0, 1E+3, {"b": null}], "html": "<&>", "ls": "\u2028", "big": 123456789012345678901234567890 }}`,
	}
	var recs []*events.Record
	for _, in := range inputs {
		r, err := events.DecodeRecord([]byte(in))
		if err != nil {
			t.Fatalf("DecodeRecord(%s): %v", in, err)
		}
		r.Version, r.UpdatedAt = 1<<47+12345, &at
		recs = append(recs, r)
	}
	return recs
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := events.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestWirePayloadsAreWhatEncodingTheStructsGives checks that the payloads
// assembled from a record's encoding are byte for byte those of events.Marshal.
func TestWirePayloadsAreWhatEncodingTheStructsGives(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 5, 1, 12, 0, 0, 5, time.FixedZone("KST", 9*3600))
	var (
		writes    []events.BufferedWrite
		encWrites [][]byte
	)
	recs := append(wireRecords(t), nil) // nil: a delete
	for i, rec := range recs {
		var body []byte
		if rec != nil {
			body = mustMarshal(t, rec)
		}
		node := []string{"node-1", `n<"1">&ü`}[i%2]
		bw := events.BufferedWrite{TMDBID: 1429, Version: 77, Deleted: rec == nil, AcceptedAt: at, Node: node}
		got, err := encodeBufferedWrite(bw, body)
		if err != nil {
			t.Fatal(err)
		}
		bw.Record = rec
		if want := mustMarshal(t, bw); !bytes.Equal(got, want) {
			t.Errorf("buffered write:\n got  %s\n want %s", got, want)
		}
		writes = append(writes, bw)
		encWrites = append(encWrites, got)

		for _, buffered := range []bool{false, true} {
			got, err := encodeChanged(node, at, 1429, 77, rec == nil, buffered, body)
			if err != nil {
				t.Fatal(err)
			}
			want := mustMarshal(t, events.MetadataChanged{Envelope: events.Envelope{OccurredAt: at, Source: node},
				TMDBID: 1429, Version: 77, Deleted: rec == nil, Buffered: buffered, Record: rec})
			if !bytes.Equal(got, want) {
				t.Errorf("metadata.changed:\n got  %s\n want %s", got, want)
			}
		}
	}
	for n := 1; n <= len(writes); n++ {
		got := encodeBatch(encWrites[:n])
		if want := mustMarshal(t, events.BufferBatch{Writes: writes[:n]}); !bytes.Equal(got, want) {
			t.Errorf("batch of %d:\n got  %s\n want %s", n, got, want)
		}
		if _, err := decodeBatch(got); err != nil {
			t.Errorf("decodeBatch of a batch of %d: %v", n, err)
		}
	}
	if _, err := encodeBufferedWrite(events.BufferedWrite{Record: recs[0]}, nil); err == nil {
		t.Error("encodeBufferedWrite took a write with a decoded record")
	}
}

// TestWirePayloadShapes pins what withRecord and encodeBatch rely on: the
// record is the last field of the payloads, tagged record,omitempty, and a
// buffer batch is an object with the one member writes.
func TestWirePayloadShapes(t *testing.T) {
	t.Parallel()
	for _, typ := range []reflect.Type{reflect.TypeFor[events.BufferedWrite](), reflect.TypeFor[events.MetadataChanged]()} {
		last := typ.Field(typ.NumField() - 1)
		if last.Name != "Record" || last.Type != reflect.TypeFor[*events.Record]() || last.Tag.Get("json") != "record,omitempty" {
			t.Errorf("%s: last field is %s %s `%s`, want Record *events.Record `json:\"record,omitempty\"`", typ, last.Name, last.Type, last.Tag)
		}
	}
	bb := reflect.TypeFor[events.BufferBatch]()
	if bb.NumField() != 1 || bb.Field(0).Tag.Get("json") != "writes" {
		t.Errorf("events.BufferBatch changed shape: encodeBatch must follow")
	}
	if got := mustMarshal(t, events.BufferBatch{Writes: []events.BufferedWrite{}}); string(got) != batchOpen+batchClose {
		t.Errorf("empty batch encodes as %s, want %s", got, batchOpen+batchClose)
	}
}

func TestWithRecordRejectsNonObjects(t *testing.T) {
	t.Parallel()
	for _, head := range []string{``, `{}`, `[1]`, `{"a":1`} {
		if _, err := withRecord([]byte(head), []byte(`{}`)); err == nil {
			t.Errorf("withRecord(%q) gave no error", head)
		}
	}
	got, err := withRecord([]byte(`{"a":1}`), nil)
	if err != nil || string(got) != `{"a":1}` {
		t.Errorf("withRecord without a body = %s, %v", got, err)
	}
	var v map[string]json.RawMessage
	got, _ = withRecord([]byte(`{"a":1}`), []byte(`{"b":2}`))
	if err := json.Unmarshal(got, &v); err != nil || string(v["record"]) != `{"b":2}` {
		t.Errorf("withRecord = %s, %v", got, err)
	}
}

// FuzzDecodeBatchMatchesEncodingJSON checks the fast decode of buffer
// messages against encoding/json: whatever goccy/go-json accepts,
// encoding/json accepts too and decodes to the same writes (so decodeBatch,
// which falls back to encoding/json on a refusal, decides as encoding/json
// alone would).
func FuzzDecodeBatchMatchesEncodingJSON(f *testing.F) {
	at := time.Date(2026, 5, 1, 12, 0, 0, 123456789, time.UTC)
	seedT := &testing.T{}
	var writes [][]byte
	for i, r := range wireRecords(seedT) {
		enc, err := encodeBufferedWrite(events.BufferedWrite{TMDBID: r.TMDBID, Version: r.Version + int64(i), AcceptedAt: at, Node: "node-1"}, mustMarshal(seedT, r))
		if err != nil {
			f.Fatal(err)
		}
		writes = append(writes, enc)
		f.Add(encodeBatch([][]byte{enc}))
	}
	f.Add(encodeBatch(writes))
	del, err := encodeBufferedWrite(events.BufferedWrite{TMDBID: 7, Version: 9, Deleted: true, AcceptedAt: at, Node: "n"}, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(encodeBatch(append(writes, del)))
	for _, s := range []string{
		`{"writes":[]}`, `{"writes":null}`, `{}`, `[]`, `null`, ``, `{"writes":[{}]}`,
		`{"WRITES":[{"TMDB_ID":1,"Version":2,"deleted":true,"accepted_at":"2026-05-01T12:00:00Z"}]}`,
		`{"writes":[{"tmdb_id":1,"tmdb_id":2,"version":3,"deleted":true,"accepted_at":"2026-05-01T12:00:00Z"}]}`,
		`{"writes":[{"tmdb_id":1.0,"version":3,"accepted_at":"2026-05-01T12:00:00Z","record":{"tmdb_id":1,"title":"\ud800"}}]}`,
		`{"writes":[{"tmdb_id":1,"version":3e0,"accepted_at":"2026-05-01T12:00:00+24:00","record":{"tmdb_id":1,"title":"x","raw_data":{"a":}}}]}`,
		`{"writes":[{"tmdb_id":1,"version":3,"accepted_at":"2026-05-01T12:00:00Z","record":{"tmdb_id":1,"title":"x","genres":["a",1],"vote_average":"1"}}]}`,
		`{"writes":[{"tmdb_id":9223372036854775808,"version":-1,"accepted_at":"x","record":null}]} trailing`,
		"{\"writes\":[{\"tmdb_id\":1,\"version\":3,\"node\":\"\xff\",\"accepted_at\":\"2026-05-01T12:00:00Z\",\"deleted\":true}]}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fast, err := decodeBatchFast(data)
		if err != nil {
			return
		}
		var std events.BufferBatch
		if err := json.Unmarshal(data, &std); err != nil {
			t.Fatalf("goccy/go-json accepted what encoding/json refuses (%v):\n%q", err, data)
		}
		if !reflect.DeepEqual(fast, std) {
			t.Fatalf("decodes differ for %q:\ngoccy/go-json: %+v\nencoding/json: %+v", data, fast, std)
		}
	})
}

// BenchmarkBufferDecode decodes buffer messages of 32 fixture-shaped writes
// with decodeBatch and, beside it, with encoding/json alone (what replay
// used before). Reported per write.
func BenchmarkBufferDecode(b *testing.B) {
	payloads := bufferPayloads(b, 10, 32)
	for _, c := range []struct {
		name   string
		decode func([]byte) (events.BufferBatch, error)
	}{
		{"decodeBatch", decodeBatch},
		{"encoding-json", func(p []byte) (bb events.BufferBatch, err error) { return bb, json.Unmarshal(p, &bb) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				for _, p := range payloads {
					if bb, err := c.decode(p); err != nil || len(bb.Writes) != 32 {
						b.Fatalf("%d writes: %v", len(bb.Writes), err)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(payloads)*32), "ns/write")
		})
	}
}

func TestIsBufferFull(t *testing.T) {
	for _, tt := range []struct {
		err  error
		full bool
	}{
		{&jetstream.APIError{ErrorCode: jsErrStreamStoreFailed, Description: "maximum messages exceeded"}, true},
		{fmt.Errorf("publish: %w", &jetstream.APIError{ErrorCode: jsErrStreamStoreFailed, Description: "maximum bytes exceeded"}), true},
		{&jetstream.APIError{ErrorCode: jsErrStorageResourcesExceeded, Description: "insufficient storage resources available"}, true},
		{&jetstream.APIError{ErrorCode: jsErrInsufficientResources, Description: "insufficient resources"}, true},
		{&jetstream.APIError{ErrorCode: jsErrStreamStoreFailed, Description: "write error: no space left on device"}, false},
		{&jetstream.APIError{ErrorCode: jetstream.JSErrCodeStreamWrongLastSequence, Description: "wrong last sequence"}, false},
		{errors.New("maximum messages exceeded"), false},
		{nil, false},
	} {
		if got := isBufferFull(tt.err); got != tt.full {
			t.Errorf("isBufferFull(%v) = %v, want %v", tt.err, got, tt.full)
		}
	}
}
