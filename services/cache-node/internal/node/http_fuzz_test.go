package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/anivault/anivault/events"
)

// FuzzHTTPHandlers sends arbitrary methods, path ids and bodies to a running
// node (real NATS and PostgreSQL, both up) through its HTTP handler. The node
// must never fail with a 5xx or panic; it must refuse exactly what the
// decoder refuses, naming a field; and a refused write must change nothing.
// `go test` replays the seeds below and testdata/fuzz/FuzzHTTPHandlers;
// `go test -fuzz FuzzHTTPHandlers ./services/cache-node/internal/node` explores.
func FuzzHTTPHandlers(f *testing.F) {
	for _, s := range []struct {
		method, id string
		body       string
	}{
		{"PUT", "1429", `{"tmdb_id":1429,"title":"Attack on Titan","genres":["Action"],"first_air_date":"2013-04-07"}`},
		{"PUT", "1429", `{"tmdb_id":1429,"TITLE":"x"}`},
		{"PUT", "1429", `{"tmdb_id":1429,"title":"a","title":"b"}`},
		{"PUT", "1429", `{"tmdb_id":1430,"title":"other id"}`},
		{"PUT", "01429", `{"tmdb_id":1429,"title":"leading zero"}`},
		{"PUT", "7", `{"tmdb_id":7,"title":"x","raw_data":{"n":1e400}}`},
		{"PUT", "7", `{"tmdb_id":7,"title":"x","raw_data":{"s":"\u0000"}}`},
		{"PUT", "7", `{"tmdb_id":7,"title":"x","first_air_date":"0000-01-01"}`},
		{"PUT", "7", `{"tmdb_id":7,"title":"x"} trailing`},
		{"PUT", "7", "\xff\xfe"},
		{"PUT", "-1", `{}`},
		{"DELETE", "1429", ``},
		{"DELETE", "abc", ``},
		{"GET", "1429", ``},
		{"GET", "9223372036854775808", ``},
		{"GET", "../status", ``},
	} {
		f.Add(s.method, s.id, []byte(s.body))
	}
	n, _ := startTestNode(f, map[string]string{"NODE_ID": "fuzz"})
	h := n.http.handler()
	f.Fuzz(func(t *testing.T, method, id string, body []byte) {
		switch method {
		case "GET", "PUT", "DELETE":
		default:
			method = "PUT"
		}
		target := "/v1/anime/" + url.PathEscape(id)
		before, _, beforeErr := n.store.Get(context.Background(), fuzzID(id))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, target, bytes.NewReader(body)))
		code := rec.Code
		if code >= 500 {
			t.Fatalf("%s %s %q: %d %s", method, target, body, code, rec.Body)
		}
		want := expectedCode(method, id, body)
		if want == 0 {
			return
		}
		if want == http.StatusBadRequest || want == http.StatusRequestEntityTooLarge {
			var e httpError
			if code != want || json.Unmarshal(rec.Body.Bytes(), &e) != nil || e.Field == "" {
				t.Fatalf("%s %s %q: %d %s, want %d naming a field", method, target, body, code, rec.Body, want)
			}
			after, _, afterErr := n.store.Get(context.Background(), fuzzID(id))
			if !errors.Is(afterErr, beforeErr) || (before != nil) != (after != nil) || (before != nil && before.Version != after.Version) {
				t.Fatalf("%s %s %q was refused but changed the row", method, target, body)
			}
			return
		}
		if code != want && !(method == "GET" && code == http.StatusNotFound) {
			t.Fatalf("%s %s %q: %d %s, want %d", method, target, body, code, rec.Body, want)
		}
	})
}

// expectedCode is what a healthy node answers, judged by the decoders alone.
func expectedCode(method, id string, body []byte) int {
	if id == "" || id == "." || id == ".." || strings.Contains(id, "/") {
		return 0 // the mux answers (404, or a redirect to the cleaned path): no handler runs
	}
	pid, err := strconv.ParseInt(id, 10, 64)
	if err != nil || pid <= 0 || strconv.FormatInt(pid, 10) != id {
		return http.StatusBadRequest
	}
	switch method {
	case "GET":
		return http.StatusOK // or 404
	case "DELETE":
		return http.StatusOK
	}
	rec, err := events.DecodeRecord(body)
	switch {
	case errors.Is(err, events.ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case err != nil, rec.TMDBID != pid:
		return http.StatusBadRequest
	}
	return http.StatusOK
}

func fuzzID(id string) int64 {
	v, err := strconv.ParseInt(id, 10, 64)
	if err != nil || v <= 0 {
		return 1
	}
	return v
}
