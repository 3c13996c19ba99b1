package svckit_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/anivault/anivault/pkg/procs"
	"github.com/anivault/anivault/pkg/svckit"
)

// ServeAdmin returns once its context is done and the server has shut
// down, so that a service's Run can wait for it.
func TestServeAdminReturnsWhenStopped(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		svckit.ServeAdmin(ctx, addr, svckit.NewRegistry("test"), func() (bool, string) { return true, "" }, slog.New(slog.DiscardHandler))
	}()
	client := &http.Client{Timeout: time.Second}
	if err := procs.Eventually(10*time.Second, 10*time.Millisecond, func() error {
		select {
		case <-done:
			return errors.New("ServeAdmin returned before its context ended (port taken?)")
		default:
		}
		resp, err := client.Get("http://" + addr + "/healthz")
		if err != nil {
			return err
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /healthz: %s", resp.Status)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second): // a bound on the wait, not a synchronisation
		t.Fatal("ServeAdmin did not return within 10 s of its context ending")
	}
	if resp, err := client.Get("http://" + addr + "/healthz"); err == nil {
		_ = resp.Body.Close()
		t.Fatal("the admin endpoints still answer after ServeAdmin returned")
	}
}
