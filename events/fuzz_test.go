package events_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/anivault/anivault/events"
)

// checkDecodeError asserts what every decoder error must be, whatever the input.
func checkDecodeError(t *testing.T, data []byte, err error) {
	t.Helper()
	var ve *events.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("error %q is a %T, want *events.ValidationError", err, err)
	}
	if !errors.Is(err, events.ErrInvalid) {
		t.Fatalf("error %q does not wrap ErrInvalid", err)
	}
	if ve.Error() == "" {
		t.Fatal("empty error message")
	}
	if tooLarge := errors.Is(err, events.ErrTooLarge); tooLarge != (len(data) > events.MaxRecordBytes) {
		t.Fatalf("%d-byte payload: Is(ErrTooLarge) = %v (error %q)", len(data), tooLarge, err)
	}
}

// checkAcceptedPayload asserts what any accepted payload must be.
func checkAcceptedPayload(t *testing.T, data []byte) {
	t.Helper()
	if len(data) > events.MaxRecordBytes {
		t.Fatalf("accepted %d bytes, over the limit", len(data))
	}
	if !utf8.Valid(data) {
		t.Fatalf("accepted invalid UTF-8: %q", data)
	}
	if !json.Valid(data) {
		t.Fatalf("accepted invalid JSON: %q", data)
	}
	if trimmed := bytes.TrimSpace(data); len(trimmed) == 0 || trimmed[0] != '{' {
		t.Fatalf("accepted a payload that is not a JSON object: %q", data)
	}
}

var fuzzRecordSeeds = []string{
	contractExample,
	`{"tmdb_id":1429,"title":"Attack on Titan"}`,
	`{"tmdb_id":37854,"title":"One Piece","original_title":"ワンピース","korean_title":"원피스","genres":["アニメ","애니메이션"],"raw_data":{"a":[1,{"b":null}],"c":"<&>"}}`,
	`{"tmdb_id":1,"title":"A","version":5,"updated_at":"2024-01-01T00:00:00Z","first_air_date":null,"raw_data":null}`,
	`{"tmdb_id":1,"title":"A","vote_average":8.7,"vote_count":2147483647,"popularity":1e-7,"number_of_seasons":0}`,
	`{"tmdb_id":1,"title":"\u0000"}`,
	`{"tmdb_id":1,"title":"A","genres":["x","\u0000"]}`,
	`{"tmdb_id":"1429","title":"A"}`,
	`{"tmdb_id":1.5,"title":"A"}`,
	`{"tmdb_id":1,"title":" "}`,
	`{"tmdb_id":1,"title":"A","first_air_date":"2013-02-30"}`,
	`{"tmdb_id":1,"title":"A","unknown":1}`,
	`{"tmdb_id":1,"title":"A","raw_data":[1]}`,
	`{"tmdb_id":1,"title":"A","raw_data":{"a":"\u0000"}}`,
	`{"tmdb_id":1,"title":"A","vote_average":1e400}`,
	`{"tmdb_id":1,"title":"A"} {}`,
	`{"tmdb_id":1,"title":"A`,
	`[]`,
	`"x"`,
	``,
	"{\"tmdb_id\":1,\"title\":\"\xff\"}",
	`{"tmdb_id":1,"title":"A","title":"\u0000"}`,
}

// FuzzDecodeRecord: DecodeRecord never panics; an error is a *ValidationError;
// an accepted record satisfies the contract, validates, and re-encodes to JSON
// that DecodeRecord accepts again and that encodes the same way.
func FuzzDecodeRecord(f *testing.F) {
	for _, s := range fuzzRecordSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := events.DecodeRecord(data)
		if err != nil {
			if r != nil {
				t.Fatalf("returned a record along with error %q", err)
			}
			checkDecodeError(t, data, err)
			return
		}
		if r == nil {
			t.Fatal("nil record and nil error")
		}
		checkAcceptedPayload(t, data)
		if err := r.Validate(); err != nil {
			t.Fatalf("accepted record fails Validate: %v", err)
		}
		checkRecordInvariants(t, r)
		out, err := events.Marshal(r)
		if err != nil {
			t.Fatalf("Marshal of an accepted record: %v", err)
		}
		r2, err := events.DecodeRecord(out)
		if err != nil {
			t.Fatalf("input %q was accepted but its re-encoding %q is rejected: %v", data, out, err)
		}
		out2, err := events.Marshal(r2)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out, out2) {
			t.Fatalf("re-encoding is not stable:\n %q\n %q", out, out2)
		}
	})
}

var fuzzIDSeeds = []string{
	`{"tmdb_id":1429}`,
	` {"tmdb_id": 9223372036854775807} `,
	`{"tmdb_id":0}`,
	`{"tmdb_id":-1}`,
	`{"tmdb_id":"1429"}`,
	`{"tmdb_id":1.5}`,
	`{"tmdb_id":1e400}`,
	`{}`,
	`{"tmdb_id":1,"title":"A"}`,
	`{"tmdb_id":1}{}`,
	`[1429]`,
	"\xff",
}

func fuzzID(f *testing.F, decode func([]byte) (int64, error)) {
	for _, s := range fuzzIDSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		id, err := decode(data)
		if err != nil {
			checkDecodeError(t, data, err)
			return
		}
		checkAcceptedPayload(t, data)
		if id <= 0 {
			t.Fatalf("accepted tmdb_id %d from %q", id, data)
		}
		out, err := json.Marshal(events.DeleteRequest{TMDBID: id})
		if err != nil {
			t.Fatal(err)
		}
		id2, err := decode(out)
		if err != nil || id2 != id {
			t.Fatalf("re-encoding %s decodes to %d, %v; want %d", out, id2, err, id)
		}
	})
}

// FuzzDecodeDelete: DecodeDelete never panics, errors are *ValidationError,
// and an accepted id is positive and survives a round trip.
func FuzzDecodeDelete(f *testing.F) {
	fuzzID(f, func(b []byte) (int64, error) { d, err := events.DecodeDelete(b); return d.TMDBID, err })
}

// FuzzDecodeGet: as FuzzDecodeDelete, for metadata.get requests.
func FuzzDecodeGet(f *testing.F) {
	fuzzID(f, func(b []byte) (int64, error) { g, err := events.DecodeGet(b); return g.TMDBID, err })
}

// FuzzDecodeStrictModeChanged: DecodeStrict into a ModeChanged (the payload of
// mode.* and the KV value every process reads at start) never panics, errors
// are *ValidationError, and an accepted payload re-encodes to JSON that decodes
// again to the same encoding.
func FuzzDecodeStrictModeChanged(f *testing.F) {
	for _, s := range []string{
		`{"occurred_at":"2024-05-01T12:45:00Z","source":"rm-1","mode":"cache_only","epoch":4,"reason":"db down","since":"2024-05-01T12:45:00Z"}`,
		`{"occurred_at":"2024-05-01T12:45:00.123456789+09:00","source":"rm","mode":"normal","epoch":9007199254740991,"since":"0001-01-01T00:00:00Z","manual":true}`,
		`{"mode":"recovering","epoch":5,"counters":{"total_failures":1,"total_recoveries":0,"recovery_attempts":2,"last_failure_time":"2024-05-01T12:45:00Z","last_recovery_time":null,"in_outage":true}}`,
		`{}`,
		`{"mode":"normal","epoch":"1"}`,
		`{"since":"yesterday"}`,
		`{"since":"2024-05-01T12:45:00+24:00"}`,
		`{"mode":"normal","extra":1}`,
		`{"source":1}`,
		`{"mode":"normal"`,
		`null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var m events.ModeChanged
		if err := events.DecodeStrict(data, &m); err != nil {
			checkDecodeError(t, data, err)
			return
		}
		checkAcceptedPayload(t, data)
		out, err := json.Marshal(m)
		if err != nil {
			// A time.Time that parsed but cannot be formatted again would
			// make the recovery-manager unable to republish the mode.
			if strings.Contains(err.Error(), "Time.MarshalJSON") {
				t.Fatalf("accepted %q but cannot re-encode it: %v", data, err)
			}
			t.Fatalf("Marshal: %v", err)
		}
		var m2 events.ModeChanged
		if err := events.DecodeStrict(out, &m2); err != nil {
			t.Fatalf("accepted %q but its re-encoding %q is rejected: %v", data, out, err)
		}
		out2, err := json.Marshal(m2)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out, out2) {
			t.Fatalf("re-encoding is not stable:\n %q\n %q", out, out2)
		}
		if m2.Epoch != m.Epoch || m2.Mode != m.Mode || !m2.Since.Equal(m.Since) || !m2.OccurredAt.Equal(m.OccurredAt) {
			t.Fatalf("round trip changed %+v into %+v", m, m2)
		}
	})
}

// FuzzEventPayloads: every other payload that arrives over NATS (the events
// the services consume, the operator's request, a buffer message) decodes
// strictly without panicking; an error is a *ValidationError; an accepted
// payload re-encodes to JSON that decodes again to the same encoding.
func FuzzEventPayloads(f *testing.F) {
	for _, s := range []string{
		`{"occurred_at":"2026-01-01T00:00:00Z","source":"hm-1","status":"healthy","latency_ms":1.5,"consecutive_failures":0,"consecutive_successes":3}`,
		`{"occurred_at":"2026-01-01T00:00:00Z","source":"hm-1","reason":"2 consecutive health checks failed","consecutive_failures":2}`,
		`{"occurred_at":"2026-01-01T00:00:00Z","source":"hm-1","downtime_seconds":14.7}`,
		`{"occurred_at":"2026-01-01T00:00:00Z","source":"n1","epoch":2,"replayed":157,"skipped_stale":2388,"failed":0,"duration_ms":10493}`,
		`{"id":"n1","mode":"normal","epoch":3,"replayed_epoch":2,"circuit_breaker_state":"closed"}`,
		`{"writes":[{"tmdb_id":1,"version":5,"deleted":true,"accepted_at":"2026-01-01T00:00:00Z","node":"n1"}]}`,
		`{"reason":"planned maintenance"}`,
		`{"occurred_at":"2026-01-01T00:00:00Z","source":"n1","tmdb_id":1,"version":5,"deleted":false,"buffered":true,"record":{"tmdb_id":1,"title":"A"}}`,
		`{"epoch":"1"}`, `{"writes":[{"tmdb_id":1e999}]}`, `{"reason":"\ud800"}`, `{}`, `[]`, `null`, ``,
	} {
		for kind := range uint8(8) {
			f.Add(kind, []byte(s))
		}
	}
	f.Fuzz(func(t *testing.T, kind uint8, data []byte) {
		newValue := []func() any{
			func() any { return new(events.DBHealth) },
			func() any { return new(events.DBUnhealthy) },
			func() any { return new(events.DBRecovered) },
			func() any { return new(events.ReplayCompleted) },
			func() any { return new(events.NodeStatus) },
			func() any { return new(events.BufferBatch) },
			func() any { return new(events.CacheOnlyEnterRequest) },
			func() any { return new(events.MetadataChanged) },
		}[int(kind)%8]
		v := newValue()
		if err := events.DecodeStrict(data, v); err != nil {
			checkDecodeError(t, data, err)
			return
		}
		checkAcceptedPayload(t, data)
		out, err := events.Marshal(v)
		if err != nil {
			t.Fatalf("%T: Marshal of an accepted payload: %v", v, err)
		}
		v2 := newValue()
		if err := events.DecodeStrict(out, v2); err != nil {
			t.Fatalf("%T: %q was accepted but its re-encoding %q is rejected: %v", v, data, out, err)
		}
		out2, err := events.Marshal(v2)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out, out2) {
			t.Fatalf("%T: re-encoding is not stable:\n %q\n %q", v, out, out2)
		}
	})
}
