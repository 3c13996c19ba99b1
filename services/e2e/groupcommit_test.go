package e2e_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/anivault/anivault/pkg/procs"
)

// Group commit of committed writes (DB_GROUP_COMMIT_MAX): two nodes take
// concurrent writes, many of the same records at once, and answer each with
// its own outcome once its row is committed and logged. The table holds the
// newest acknowledged version of every key, every node serves it, and the
// nodes really grouped (more writes than statements).
func TestGroupCommitAnswersEachWrite(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{Env: map[string]string{"DB_GROUP_COMMIT_MAX": "256"}})
	n1 := s.StartNode("n1", nil)
	n2 := s.StartNode("n2", nil)
	nodes := []*Node{n1, n2}
	l := newLedger()
	// Every record twice or three times, spread over both nodes and 16 writers.
	ids := append(append(idRange(1, 150), idRange(1, 150)...), idRange(76, 75)...)
	writeAll(t, nodes, l, ids, false, "grouped", 200)
	writeAll(t, nodes, l, idRange(1, 30), true, "", 200)
	got, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	l.check(t, got)
	if len(got) != 150 {
		t.Fatalf("table has %d rows, want 150", len(got))
	}
	// Every node serves the table (within the staleness bound).
	err = procs.Eventually(15*time.Second, 200*time.Millisecond, func() error {
		for _, n := range nodes {
			for id, want := range got {
				r, err := n.Get(id)
				if err != nil {
					return err
				}
				if want.Deleted != (r.Code == 404) {
					return fmt.Errorf("tmdb:%d on %s: %d, table %+v", id, n.ID, r.Code, want)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	assertServesTable(t, s, nodes, idRange(1, 150))
	var statements, grouped float64
	for _, n := range nodes {
		statements += metricValue(t, n, "anivault_db_group_commits_total")
		grouped += metricValue(t, n, "anivault_db_group_commit_writes_total")
	}
	t.Logf("group commit: %.0f writes in %.0f statements (%.1f a statement)", grouped, statements, grouped/statements)
	if statements == 0 || grouped < float64(len(ids)+30) || grouped <= statements {
		t.Fatalf("group commit: %.0f writes in %.0f statements; want all %d writes grouped, more than one a statement", grouped, statements, len(ids)+30)
	}
}
