package node

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/anivault/anivault/pkg/procs"
)

// requests is the node's count of GET /v1/anime/{tmdb_id} answered with code.
func (c *compNode) requests(t *testing.T, code int) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.metrics.requestCounter(routeAnime, http.MethodGet, code).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// A read whose client went away while it waited on the database is counted
// as 499 (client closed request), not as the 503 or 500 its cancelled work
// ended in: such answers reach no client, and counted as the node's failures
// they made a benchmark's stop look like an outage. A client that waits still
// gets the 503.
func TestAbandonedReadIsNotCountedAsAFailure(t *testing.T) {
	c := startCompNode(t, map[string]string{"DB_TIMEOUT": "300ms"})
	api, err := c.newHTTPAPI()
	if err != nil {
		t.Fatal(err)
	}
	arrived := make(chan struct{}, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		api.handler().ServeHTTP(w, r)
	}))
	defer srv.Close()
	// Every read of an uncached record now waits on the database until its
	// budget or its context ends.
	if err := c.db.BlackHole(); err != nil {
		t.Fatal(err)
	}

	// The client goes away once the node has the request.
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/v1/anime/4242", nil)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("answered %s", resp.Status)
		}
		got <- err
	}()
	<-arrived
	cancel()
	if err := <-got; !errors.Is(err, context.Canceled) {
		t.Fatalf("the client's request: %v, want it cancelled", err)
	}
	if err := procs.Eventually(10*time.Second, 10*time.Millisecond, func() error {
		if n := c.requests(t, statusClientClosedRequest); n != 1 {
			return fmt.Errorf("%v requests counted as 499", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, code := range []int{http.StatusServiceUnavailable, http.StatusInternalServerError} {
		if n := c.requests(t, code); n != 0 {
			t.Errorf("the abandoned read was also counted as %d (%v)", code, n)
		}
	}

	// A client that waits: the database is out of reach and the record in
	// neither the cache nor the change log.
	tctx, tcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer tcancel()
	req, err = http.NewRequestWithContext(tctx, http.MethodGet, srv.URL+"/v1/anime/4243", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("a waiting client got %s (Retry-After %q), want 503 with Retry-After", resp.Status, resp.Header.Get("Retry-After"))
	}
	if n := c.requests(t, http.StatusServiceUnavailable); n != 1 {
		t.Errorf("%v reads counted as 503, want 1", n)
	}
}
