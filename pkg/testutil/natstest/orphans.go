package natstest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/anivault/anivault/pkg/natsembed"
)

// KeepStreamMessages saves the message files of streams (server stopped for a
// moment and restarted) and returns a function that puts them back (again
// across a restart), without touching the consumers' state. Messages that
// were acknowledged and removed from a work-queue stream in between come
// back as orphans: in the stream, but at or below their consumer's ack floor,
// so the consumer never delivers them again. This is the state a NATS server
// restart can leave behind (nats-server issues 4736, 5214, 5542), made
// deterministic.
func KeepStreamMessages(t testing.TB, srv *natsembed.Server, streams ...string) (restore func()) {
	t.Helper()
	tmp := t.TempDir()
	dir := func(stream string) string {
		return filepath.Join(srv.StoreDir(), "jetstream", "$G", "streams", stream, "msgs")
	}
	restart(t, srv, func() {
		for _, s := range streams {
			if err := os.CopyFS(filepath.Join(tmp, s), os.DirFS(dir(s))); err != nil {
				t.Fatalf("natstest: save %s: %v", dir(s), err)
			}
		}
	})
	return func() {
		t.Helper()
		restart(t, srv, func() {
			for _, s := range streams {
				if err := os.RemoveAll(dir(s)); err != nil {
					t.Fatalf("natstest: %v", err)
				}
				if err := os.CopyFS(dir(s), os.DirFS(filepath.Join(tmp, s))); err != nil {
					t.Fatalf("natstest: restore %s: %v", dir(s), err)
				}
				// Without its index the stream state is rebuilt from the blocks.
				_ = os.Remove(filepath.Join(dir(s), "index.db"))
			}
		})
	}
}

func restart(t testing.TB, srv *natsembed.Server, whileDown func()) {
	t.Helper()
	srv.Shutdown()
	whileDown()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Restart(ctx); err != nil {
		t.Fatalf("natstest: %v", err)
	}
}
