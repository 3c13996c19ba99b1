package main

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func TestCheck(t *testing.T) {
	var ready atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	if err := check(srv.URL, time.Second); err == nil {
		t.Fatal("503 reported healthy")
	}
	ready.Store(true)
	if err := check(srv.URL, time.Second); err != nil {
		t.Fatalf("200 reported unhealthy: %v", err)
	}
	srv.Close()
	if err := check(srv.URL, time.Second); err == nil {
		t.Fatal("closed server reported healthy")
	}
}
