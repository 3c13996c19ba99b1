package chaos

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/anivault/anivault/pkg/hlc"
	"github.com/anivault/anivault/pkg/metastore"
)

// Check is the verdict of one checker.
type Check struct {
	Name    string
	OK      bool
	Skipped bool // not applicable to this schedule (see Detail)
	// Warn marks an advisory checker: a violation is reported (and fails the
	// run under Config.Strict) but does not fail the schedule by itself.
	Warn   bool
	Detail string   // one line: what was compared
	Errors []string // the first violations, for the report
	errs   int
}

func (c *Check) fail(format string, a ...any) {
	c.OK = false
	c.errs++
	if len(c.Errors) < 12 {
		c.Errors = append(c.Errors, fmt.Sprintf(format, a...))
	}
}

func newCheck(name string) *Check { return &Check{Name: name, OK: true} }

// Names of the ledger checkers.
const (
	CheckNoLoss     = "no acknowledged write lost"
	CheckFinalState = "final state is the highest acknowledged write"
	CheckNoUndelete = "no delete undone"
)

// LedgerResult is what the ledger checkers found.
type LedgerResult struct {
	Acked         int // acknowledged writes
	Lost          int // acknowledged writes whose version is missing from the table (must be 0)
	Keys          int // keys written
	Explained     int // keys whose row is newer than every acknowledged write, explained by a write with an unknown outcome
	Indeterminate int // writes with an unknown outcome
	Checks        []*Check
}

// httpWindow bounds the version a node minted for an HTTP write that ran
// from start to end: the hybrid logical clock's physical part is the wall
// clock of the node (on this machine) at acceptance, or slightly ahead when
// it observed a newer version; one second of slack covers that.
func httpWindow(op Op) (lo, hi int64) {
	return hlc.FromStream(op.Start.Add(-10*time.Millisecond)) &^ (1<<hlc.LogicalBits - 1),
		hlc.FromStream(op.End.Add(time.Second)) | (1<<hlc.LogicalBits - 1)
}

// producerWindow bounds the version of a producer write: it is derived from
// the stream timestamp, taken by the (in-process) NATS server between the
// first publish attempt and the acknowledgement.
func producerWindow(op Op) (lo, hi int64) {
	return hlc.FromStream(op.Start), hlc.FromStream(op.End)
}

func window(op Op) (int64, int64) {
	if op.Producer {
		return producerWindow(op)
	}
	return httpWindow(op)
}

func describe(op Op) string {
	kind := "put"
	if op.Delete {
		kind = "delete"
	}
	via := "http " + op.Node
	if op.Producer {
		via = "producer"
	}
	state := "acked"
	switch {
	case op.Indeterminate:
		state = "unknown(" + truncate(op.Err, 60) + ")"
	case !op.Acked:
		state = "rejected"
	}
	s := fmt.Sprintf("%s %s %s @%s+%dms", kind, via, state, op.Start.Format("15:04:05.000"), op.End.Sub(op.Start).Milliseconds())
	if op.Version > 0 {
		s += fmt.Sprintf(" v%d", op.Version)
	}
	if op.Seq > 0 {
		s += fmt.Sprintf(" seq%d", op.Seq)
	}
	return s
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func rowString(v metastore.Version, ok bool) string {
	switch {
	case !ok:
		return "no row"
	case v.Deleted:
		return fmt.Sprintf("v%d deleted", v.Version)
	default:
		return fmt.Sprintf("v%d live", v.Version)
	}
}

// CheckLedger compares the ledger with the table.
//
//   - no acknowledged write lost: every HTTP write answered 200/202 has its
//     version or a newer one in the row; every acknowledged producer write has
//     a row version at least the version its stream timestamp can have had at
//     the earliest (hlc.FromStream of the first publish attempt).
//   - final state: the row holds the highest acknowledged version (HTTP), or
//     a version that the last acknowledged producer write or a write with an
//     unknown outcome (a timeout, a 5xx, a failed connection) can have
//     produced, with the matching tombstone state. A version no write of the
//     run can have produced is a failure.
//   - no delete undone: when the write the row's version belongs to is an
//     acknowledged delete (or the last acknowledged producer write is a
//     delete), the row is a tombstone.
func CheckLedger(ops []Op, table map[int64]metastore.Version) LedgerResult {
	loss, final, undel := newCheck(CheckNoLoss), newCheck(CheckFinalState), newCheck(CheckNoUndelete)
	res := LedgerResult{Checks: []*Check{loss, final, undel}}
	byKey := map[int64][]Op{}
	for _, op := range ops {
		byKey[op.Key] = append(byKey[op.Key], op)
		if op.Acked {
			res.Acked++
		}
		if op.Indeterminate {
			res.Indeterminate++
		}
	}
	keys := make([]int64, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	for _, key := range keys {
		kops := byKey[key]
		res.Keys++
		got, ok := table[key]
		var maxHTTP *Op
		var lastProd *Op
		acked := 0
		for i := range kops {
			op := &kops[i]
			if !op.Acked {
				continue
			}
			acked++
			if op.Producer {
				if lastProd == nil || op.Seq > lastProd.Seq {
					lastProd = op
				}
			} else if maxHTTP == nil || op.Version > maxHTTP.Version {
				maxHTTP = op
			}
		}
		history := func() string {
			var b strings.Builder
			sorted := append([]Op(nil), kops...)
			sort.Slice(sorted, func(i, j int) bool { return sorted[i].Start.Before(sorted[j].Start) })
			if len(sorted) > 8 {
				sorted = sorted[len(sorted)-8:]
			}
			for _, op := range sorted {
				b.WriteString("\n      " + describe(op))
			}
			return b.String()
		}

		// 1. No acknowledged write lost.
		lostHere := 0
		for _, op := range kops {
			if !op.Acked {
				continue
			}
			need := op.Version
			if op.Producer {
				need, _ = producerWindow(op)
			}
			if !ok || got.Version < need {
				lostHere++
			}
		}
		if lostHere > 0 {
			res.Lost += lostHere
			loss.fail("tmdb:%d: %d acknowledged writes lost; row %s; highest http %s; last producer %s; recent writes:%s",
				key, lostHere, rowString(got, ok), opVersion(maxHTTP), opVersion(lastProd), history())
			continue
		}
		if !ok {
			// Only writes with unknown outcomes (or none applied): no row is fine.
			continue
		}

		// 2. Which writes can the row's version belong to?
		var exact *Op
		for i := range kops {
			if kops[i].Acked && !kops[i].Producer && kops[i].Version == got.Version {
				exact = &kops[i]
			}
		}
		if exact != nil {
			if exact.Delete != got.Deleted {
				c := final
				if exact.Delete {
					c = undel
				}
				c.fail("tmdb:%d: row %s holds the version of an acknowledged %s; recent writes:%s", key, rowString(got, ok), describe(*exact), history())
			}
			continue
		}
		var cands []Op
		for _, op := range kops {
			if !op.Acked && !op.Indeterminate {
				continue
			}
			if !op.Producer && op.Acked {
				continue // its exact version is known and differs
			}
			lo, hi := window(op)
			if got.Version >= lo && got.Version <= hi {
				cands = append(cands, op)
			}
		}
		if len(cands) == 0 {
			final.fail("tmdb:%d: row %s: no write of this run can have produced that version (highest acked http %s, last acked producer %s); recent writes:%s",
				key, rowString(got, ok), opVersion(maxHTTP), opVersion(lastProd), history())
			continue
		}
		match := false
		onlyIndet := true
		for _, op := range cands {
			if op.Delete == got.Deleted {
				match = true
			}
			if op.Acked {
				onlyIndet = false
			}
		}
		if !match {
			c := final
			if !got.Deleted && lastProd != nil && lastProd.Delete {
				c = undel
			}
			c.fail("tmdb:%d: row %s, but every write that can have produced that version is a %s; recent writes:%s",
				key, rowString(got, ok), kindWord(cands[0].Delete), history())
			continue
		}
		if onlyIndet && acked > 0 {
			res.Explained++
		}
	}
	loss.Detail = fmt.Sprintf("%d acknowledged writes on %d keys, %d lost", res.Acked, res.Keys, res.Lost)
	final.Detail = fmt.Sprintf("%d keys; %d rows newer than every acknowledged write, each explained by a write with an unknown outcome (%d such writes)",
		res.Keys, res.Explained, res.Indeterminate)
	undel.Detail = "rows holding the version of a delete are tombstones"
	return res
}

func kindWord(del bool) string {
	if del {
		return "delete"
	}
	return "put"
}

func opVersion(op *Op) string {
	if op == nil {
		return "none"
	}
	return describe(*op)
}
