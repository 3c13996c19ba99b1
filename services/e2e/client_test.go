package e2e_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/anivault"
	"github.com/anivault/anivault/pkg/procs"
)

// A producer using the Go client publishes 10,000 records while a cache-node
// is killed and restarted: none is lost and none is applied twice (every row
// was inserted once and never updated).
func TestProducerClientThroughNodeRestart(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{})
	n1 := s.StartNode("n1", nil)
	s.StartNode("n2", nil)
	c, err := anivault.New(s.NC, anivault.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const total = 10_000
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	upsertWhileNodeRestarts(t, ctx, c, n1, total)
	waitRowCount(t, s, total)
	checkEveryRowInsertedOnce(t, ctx, s, total)
	st, err := s.JS.Stream(ctx, events.StreamMetadata)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := st.Info(ctx); err != nil || info.State.Msgs != 0 {
		t.Fatalf("metadata work queue not drained: %+v %v", info.State, err)
	}
}

// upsertWhileNodeRestarts upserts tmdb:1..total through the client from 16
// workers, killing n1 half-way and starting it again 1000 records later, and
// fails on any error or sequence acknowledged twice.
func upsertWhileNodeRestarts(t *testing.T, ctx context.Context, c *anivault.Client, n1 *Node, total int64) {
	t.Helper()
	ids := make(chan int64)
	var wg sync.WaitGroup
	var mu sync.Mutex
	seqs := map[uint64]bool{}
	errs := make(chan error, total)
	for range 16 {
		wg.Go(func() {
			for id := range ids {
				title := fmt.Sprintf("Producer %d", id)
				ack, err := c.Upsert(ctx, &events.Record{TMDBID: id, Title: title})
				if err != nil {
					errs <- err
					continue
				}
				mu.Lock()
				if seqs[ack.Sequence] {
					errs <- fmt.Errorf("sequence %d acknowledged twice", ack.Sequence)
				}
				seqs[ack.Sequence] = true
				mu.Unlock()
			}
		})
	}
	for id := int64(1); id <= total; id++ {
		if id == total/2 {
			if err := n1.Kill(); err != nil {
				t.Fatal(err)
			}
		}
		if id == total/2+1000 {
			if err := n1.Start(); err != nil {
				t.Fatal(err)
			}
		}
		ids <- id
	}
	close(ids)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// waitRowCount waits until the table holds total rows.
func waitRowCount(t *testing.T, s *System, total int) {
	t.Helper()
	if err := procs.Eventually(2*time.Minute, 200*time.Millisecond, func() error {
		v, err := s.Versions()
		if err != nil {
			return err
		}
		if len(v) != total {
			return fmt.Errorf("%d of %d rows", len(v), total)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// checkEveryRowInsertedOnce checks PostgreSQL's table statistics: total
// rows inserted, none updated.
func checkEveryRowInsertedOnce(t *testing.T, ctx context.Context, s *System, total int64) {
	t.Helper()
	var ins, upd int64
	if err := procs.Eventually(30*time.Second, 200*time.Millisecond, func() error {
		qctx, qcancel := context.WithTimeout(ctx, 5*time.Second)
		defer qcancel()
		err := s.store.DB().NewRaw(`SELECT n_tup_ins, n_tup_upd FROM pg_stat_user_tables WHERE relname = 'anime_metadata'`).Scan(qctx, &ins, &upd)
		if err != nil {
			return err
		}
		if ins != total {
			return fmt.Errorf("n_tup_ins %d", ins)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if upd != 0 {
		t.Fatalf("%d rows were written twice (n_tup_upd)", upd)
	}
}
