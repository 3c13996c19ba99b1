// Package launchtest starts a launch.System for a test: it fails the test
// when the system cannot start, stops every process when the test ends
// (printing the end of its output when the test failed) and closes the
// system after them.
package launchtest

import (
	"context"
	"testing"
	"time"

	"github.com/anivault/anivault/deployments/launch"
	"github.com/anivault/anivault/pkg/procs"
)

const (
	startTimeout = 5 * time.Minute
	closeTimeout = 30 * time.Second
	stopTimeout  = 10 * time.Second
)

// Start starts a system with opts. Every process it makes is stopped in
// t.Cleanup, and when the test failed the last tailLines lines of its output
// are logged (opts.OnProc, when set, is called first, so that what it
// registers in t.Cleanup runs after the stop).
func Start(t testing.TB, opts launch.Options, tailLines int) *launch.System {
	t.Helper()
	onProc := opts.OnProc
	opts.OnProc = func(p *procs.Proc) {
		if onProc != nil {
			onProc(p)
		}
		t.Cleanup(func() {
			_ = p.Stop(stopTimeout)
			if t.Failed() {
				t.Logf("---- %s output (tail) ----\n%s", p.Name, launch.Tail(p.Output(), tailLines))
			}
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	s, err := launch.Start(ctx, opts)
	if err != nil {
		t.Fatalf("launch: %v", err)
	}
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), closeTimeout)
		defer ccancel()
		if err := s.Close(cctx); err != nil {
			t.Errorf("launch: close: %v", err)
		}
	})
	return s
}
