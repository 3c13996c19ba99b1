package node

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestSameRecord(t *testing.T) {
	written := []byte(`{"tmdb_id":1,"title":"A","genres":["x"],"raw_data":{"nested":{"b":2,"a":1},"id":1},"version":5,"updated_at":"2026-11-30T01:02:03.123456789Z"}`)
	for _, c := range []struct {
		name string
		row  string
		same bool
	}{
		{"as the table holds it: jsonb key order, microseconds", `{"tmdb_id":1,"title":"A","genres":["x"],"raw_data":{"id": 1, "nested": {"a": 1, "b": 2}},"version":5,"updated_at":"2026-11-30T01:02:03.123456Z"}`, true},
		{"a title changed by hand", `{"tmdb_id":1,"title":"B","genres":["x"],"raw_data":{"id":1,"nested":{"a":1,"b":2}},"version":5,"updated_at":"2026-11-30T01:02:03.123456Z"}`, false},
		{"raw_data changed", `{"tmdb_id":1,"title":"A","genres":["x"],"raw_data":{"id":2,"nested":{"a":1,"b":2}},"version":5,"updated_at":"2026-11-30T01:02:03.123456Z"}`, false},
		{"updated_at moved", `{"tmdb_id":1,"title":"A","genres":["x"],"raw_data":{"id":1,"nested":{"a":1,"b":2}},"version":5,"updated_at":"2026-11-30T01:02:04.123456Z"}`, false},
		{"genres changed", `{"tmdb_id":1,"title":"A","genres":["y"],"raw_data":{"id":1,"nested":{"a":1,"b":2}},"version":5,"updated_at":"2026-11-30T01:02:03.123456Z"}`, false},
	} {
		if got := sameRecord(written, []byte(c.row)); got != c.same {
			t.Errorf("%s: sameRecord = %v, want %v", c.name, got, c.same)
		}
	}
}

func TestReadBody(t *testing.T) {
	for _, tt := range []struct {
		name          string
		body          string
		contentLength int64
		limit         int64
		want          string
	}{
		{"exact length", "0123456789", 10, 100, "0123456789"},
		{"no length", strings.Repeat("x", 3000), -1, 5000, strings.Repeat("x", 3000)},
		{"longer than announced", "0123456789abcdef", 4, 100, "0123456789abcdef"},
		{"shorter than announced", "0123", 10, 100, "0123"},
		{"over the limit", strings.Repeat("y", 300), 300, 101, strings.Repeat("y", 101)},
		{"empty", "", 0, 100, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPut, "/v1/anime/1", strings.NewReader(tt.body))
			r.ContentLength = tt.contentLength
			got, err := readBody(r, tt.limit)
			if err != nil || string(got) != tt.want {
				t.Fatalf("readBody = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}
