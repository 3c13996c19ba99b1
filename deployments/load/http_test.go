package load_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"

	"github.com/anivault/anivault/deployments/load"
)

func TestWriteAndReadAnswers(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPut && r.URL.Path == "/v1/anime/1":
			w.WriteHeader(http.StatusAccepted)
			_, _ = w.Write([]byte(`{"status":"buffered","version":7}`))
		case r.Method == http.MethodDelete && r.URL.Path == "/v1/anime/2":
			_, _ = w.Write([]byte(`{"status":"superseded","version":9}`))
		case r.Method == http.MethodGet && r.URL.Path == "/v1/anime/3":
			w.Header().Set("X-AniVault-Source", "cache")
			w.Header().Set("X-AniVault-Mode", "normal")
			_, _ = w.Write([]byte(`{"tmdb_id":3,"version":4}`))
		default:
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(" unavailable \n"))
		}
	}))
	defer srv.Close()
	c := srv.Client()
	ctx := t.Context()

	if a := load.Write(ctx, c, srv.URL, 1, []byte(`{}`)); !a.Acked() || a.Status != 202 || a.Version != 7 || a.Superseded || a.Method != http.MethodPut {
		t.Errorf("buffered PUT: %+v", a)
	}
	if a := load.Write(ctx, c, srv.URL, 2, nil); !a.Acked() || a.Version != 9 || !a.Superseded || a.Method != http.MethodDelete {
		t.Errorf("superseded DELETE: %+v", a)
	}
	if a := load.Write(ctx, c, srv.URL, 5, []byte(`{}`)); a.Acked() || a.Status != 503 || a.String() != "PUT "+srv.URL+"/v1/anime/5: 503 unavailable" {
		t.Errorf("refused PUT: %+v (%s)", a, a)
	}
	if a := load.Read(ctx, c, srv.URL, 3); a.Err != nil || a.Status != 200 || a.Source != "cache" || a.Mode != "normal" || string(a.Body) != `{"tmdb_id":3,"version":4}` {
		t.Errorf("GET: %+v", a)
	}
	addr := srv.URL
	srv.Close()
	if a := load.Write(ctx, c, addr, 1, []byte(`{}`)); a.Err == nil || !errors.Is(a.Err, syscall.ECONNREFUSED) || a.Acked() {
		t.Errorf("PUT to a closed server: %+v", a)
	}
	if a := load.Read(ctx, c, addr, 3); a.Err == nil || !errors.Is(a.Err, syscall.ECONNREFUSED) || a.Status != 0 {
		t.Errorf("GET from a closed server: %+v", a)
	}
}
