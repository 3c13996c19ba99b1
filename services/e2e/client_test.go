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
	checkWriteStreamEmpty(t, s)
	checkEveryRowInsertedOnce(t, ctx, s, total)
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

// checkEveryRowInsertedOnce checks PostgreSQL's table statistics once the
// nodes are stopped: no row was updated or deleted, so no record was applied
// twice (a second application of a record is an update: the key is the
// primary key). n_tup_ins counts at least total; it may count more, because
// PostgreSQL also counts the rows of a statement that was rolled back (one
// cancelled at its deadline on a loaded machine and retried), which are not
// in the table.
func checkEveryRowInsertedOnce(t *testing.T, ctx context.Context, s *System, total int64) {
	t.Helper()
	for _, n := range s.Nodes {
		if err := n.Stop(30 * time.Second); err != nil {
			t.Fatalf("stop %s: %v", n.ID, err)
		}
	}
	// A backend flushes its statistics before it leaves pg_stat_activity:
	// once no node's backend is left, the counters are final.
	db := s.store.DB()
	if err := procs.Eventually(30*time.Second, 100*time.Millisecond, func() error {
		qctx, qcancel := context.WithTimeout(ctx, 5*time.Second)
		defer qcancel()
		var left int
		err := db.NewRaw(`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'anivault-cache-node%'`).Scan(qctx, &left)
		if err != nil {
			return err
		}
		if left > 0 {
			return fmt.Errorf("%d cache-node backends still connected", left)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	qctx, qcancel := context.WithTimeout(ctx, 5*time.Second)
	defer qcancel()
	var ins, upd, del int64
	if err := db.NewRaw(`SELECT n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables WHERE relname = 'anime_metadata'`).Scan(qctx, &ins, &upd, &del); err != nil {
		t.Fatal(err)
	}
	t.Logf("pg_stat_user_tables: n_tup_ins %d (%d rolled back), n_tup_upd %d, n_tup_del %d", ins, ins-total, upd, del)
	if ins < total {
		t.Fatalf("n_tup_ins %d: fewer than the %d rows in the table", ins, total)
	}
	if upd != 0 || del != 0 {
		t.Fatalf("rows were written twice: n_tup_upd %d, n_tup_del %d", upd, del)
	}
}
