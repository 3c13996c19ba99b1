package node

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/anivault/anivault/pkg/metastore"
)

// The group commit's decisions, write by write, with its database and
// change log given as functions: a write the statement applied and the log
// batch took is answered committedLogged (and reported to Logged); a write
// that met a newer row goes back to its caller (notGrouped); when the log
// batch fails the committed writes are answered committedOnly, for their
// callers to log one by one; when the statement fails every write goes back.
func TestCommitterDecisions(t *testing.T) {
	t.Parallel()
	f := &fakeCommitDeps{newerInRow: map[int64]bool{3: true}}
	c, err := newCommitter(16, f.deps())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() { c.run(runCtx); close(ran) }()

	got := submitAll(ctx, c, 1, 2, 3)
	if got[1] != committedLogged || got[2] != committedLogged || got[3] != notGrouped {
		t.Fatalf("outcomes %v, want 1 and 2 committed and logged, 3 (a newer row) back to its caller", got)
	}
	if logged := f.loggedIDs(); len(logged) != 2 {
		t.Fatalf("Logged told of %v, want the two written", logged)
	}
	f.set(true, false)
	if got := submitAll(ctx, c, 4); got[4] != committedOnly {
		t.Fatalf("outcome %v with the log batch refused, want committedOnly", got[4])
	}
	f.set(false, true)
	if got := submitAll(ctx, c, 5, 6); got[5] != notGrouped || got[6] != notGrouped {
		t.Fatalf("outcomes %v with the statement failed, want both back to their callers", got)
	}
	stop()
	<-ran
	if o, err := c.submit(ctx, metastore.Write{TMDBID: 7, Version: 1}, logEntry{id: 7, version: 1}); o != notGrouped {
		t.Fatalf("a write after the committer stopped: %v %v, want notGrouped", o, err)
	}
}

// fakeCommitDeps stands for the database and the change log: a statement
// applies every write but those whose row is newer, unless it fails; a log
// batch is taken unless it is refused.
type fakeCommitDeps struct {
	mu                 sync.Mutex
	logged             []int64
	failLog, failApply bool
	newerInRow         map[int64]bool
}

func (f *fakeCommitDeps) set(failLog, failApply bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failLog, f.failApply = failLog, failApply
}

func (f *fakeCommitDeps) loggedIDs() []int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]int64(nil), f.logged...)
}

func (f *fakeCommitDeps) deps() commitDeps {
	return commitDeps{
		Log: slog.New(slog.DiscardHandler),
		Apply: func(_ context.Context, ws []metastore.Write) (metastore.Result, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.failApply {
				return metastore.Result{}, errors.New("statement failed")
			}
			res := metastore.Result{AppliedKeys: map[int64]int64{}}
			for _, w := range ws {
				if !f.newerInRow[w.TMDBID] {
					res.AppliedKeys[w.TMDBID] = w.Version
				}
			}
			res.Applied = len(res.AppliedKeys)
			return res, nil
		},
		LogBatch: func(context.Context, []logEntry) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.failLog {
				return errors.New("batch refused")
			}
			return nil
		},
		Logged: func(le logEntry) { f.mu.Lock(); f.logged = append(f.logged, le.id); f.mu.Unlock() },
	}
}

// submitAll submits a write of each id at once and returns their outcomes.
func submitAll(ctx context.Context, c *committer, ids ...int64) map[int64]commitOutcome {
	out := map[int64]commitOutcome{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Go(func() {
			o, _ := c.submit(ctx, metastore.Write{TMDBID: id, Version: 10, UpdatedAt: time.Now()}, logEntry{id: id, version: 10})
			mu.Lock()
			out[id] = o
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}
