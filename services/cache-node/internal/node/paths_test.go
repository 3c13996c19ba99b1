package node

import "testing"

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
