package events_test

import (
	"errors"
	"testing"

	"github.com/anivault/anivault/events"
)

func TestDecodeMode(t *testing.T) {
	mc, err := events.DecodeMode([]byte(`{"occurred_at":"2024-05-01T12:45:00Z","source":"rm-1","mode":"cache_only","epoch":4,"reason":"db down","since":"2024-05-01T12:45:00Z","manual":true,"counters":{"total_failures":2,"total_recoveries":1,"recovery_attempts":0,"last_failure_time":null,"last_recovery_time":null,"in_outage":true},"added_later":1}`))
	if err != nil {
		t.Fatalf("DecodeMode: %v", err)
	}
	if mc.Mode != events.ModeCacheOnly || mc.Epoch != 4 || mc.Reason != "db down" || mc.Source != "rm-1" || !mc.Manual ||
		mc.Counters == nil || mc.Counters.TotalFailures != 2 || !mc.Counters.InOutage {
		t.Fatalf("decoded %+v", mc)
	}

	for _, bad := range []string{
		``,
		`{"mode":"normal"`,
		`null`,
		`[]`,
		`{"mode":"normal","epoch":"1"}`,
		`{}`,
		`{"epoch":3}`,
		`{"mode":"Normal","epoch":3}`,
		`{"mode":"offline","epoch":3}`,
	} {
		mc, err := events.DecodeMode([]byte(bad))
		if err == nil {
			t.Errorf("DecodeMode(%q) = %+v, want an error", bad, mc)
			continue
		}
		var ve *events.ValidationError
		if !errors.As(err, &ve) || !errors.Is(err, events.ErrInvalid) {
			t.Errorf("DecodeMode(%q): error %q is a %T that does not match ErrInvalid", bad, err, err)
		}
		if mc != (events.ModeChanged{}) {
			t.Errorf("DecodeMode(%q) returned %+v along with its error", bad, mc)
		}
	}
}

// FuzzDecodeMode: DecodeMode never panics; an error is a *ValidationError
// with a zero mode; an accepted mode is one of the contract's three.
func FuzzDecodeMode(f *testing.F) {
	for _, s := range []string{
		`{"mode":"normal","epoch":0}`,
		`{"mode":"recovering","epoch":5,"counters":{"in_outage":true}}`,
		`{"mode":"cache_only","epoch":-1,"extra":[1,2]}`,
		`{"mode":"offline"}`, `{"mode":1}`, `null`, `{`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		mc, err := events.DecodeMode(data)
		if err != nil {
			var ve *events.ValidationError
			if !errors.As(err, &ve) || !errors.Is(err, events.ErrInvalid) {
				t.Fatalf("error %q is a %T that does not match ErrInvalid", err, err)
			}
			if mc != (events.ModeChanged{}) {
				t.Fatalf("returned %+v along with error %q", mc, err)
			}
			return
		}
		if !mc.Mode.Valid() {
			t.Fatalf("accepted mode %q from %q", mc.Mode, data)
		}
	})
}
