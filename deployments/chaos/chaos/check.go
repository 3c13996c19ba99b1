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
	if op.Superseded {
		state = "acked(superseded)"
	}
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

// Names of the read-side checkers.
const (
	CheckNoStaleRead = "no stale read"
	CheckServesTable = "every node serves the table"
)

// ReadResult is what the stale-read checker found.
type ReadResult struct {
	Bound       time.Duration // the staleness bound the reads were judged with
	Reads       int           // every read recorded
	Checked     int           // 200 and 404 answers judged
	Stale       int           // judged stale (must be 0)
	Unavailable int           // 503: in neither the cache nor the change log while the database was away
	Replica     int           // judged answers served from the change log (X-AniVault-Source: replica)
	Errors      int           // transport errors and unexpected answers (not judged)
	Explained   int           // 404s after an upsert and records after a delete, explained by a later write (acknowledged within the bound, in flight, or of unknown outcome)
	// StaleHTTP counts the stale reads (each missed an acknowledged HTTP
	// write); MaxLagHTTP is the longest time from such a write's
	// acknowledgement to the read.
	StaleHTTP  int
	MaxLagHTTP time.Duration
	// ProducerLag counts reads that are not stale against any node's
	// acknowledgement but older than a producer write the stream
	// acknowledged more than the bound before: not a violation (a producer's
	// write is visible once a node applied it), reported as a figure.
	ProducerLag int
	Check       *Check
}

// FinalReads is what the final read-back found.
type FinalReads struct {
	Compared  int // reads compared with the table (keys written × live nodes)
	Differing int // answers other than the row (must be 0)
	Check     *Check
}

// minVersion is the lowest version an acknowledged write can have: the exact
// version of an HTTP write, the lower end of a producer write's window.
func minVersion(op Op) int64 {
	if op.Producer {
		lo, _ := producerWindow(op)
		return lo
	}
	return op.Version
}

// versionWindow bounds the version a write can have been applied at: exact
// for an acknowledged HTTP write, httpWindow/producerWindow otherwise.
func versionWindow(op Op) (lo, hi int64) {
	if op.Acked && !op.Producer {
		return op.Version, op.Version
	}
	return window(op)
}

// CheckReads judges every read against the writes (Jepsen-style, from the
// client's side only): once a write is acknowledged, no node serves an older
// version of its record than it, beyond the staleness bound.
//
// For a read that started at s, the newest write that must be visible is W,
// the acknowledged write of the key that ended before s - bound with the
// highest (lowest possible) version: the floor. Writes that may have been
// applied besides are every acknowledged write (in flight ones included) and
// every write with an unknown outcome (a timeout, a 5xx, a failed
// connection) that started before the read ended.
//
//   - 200 with a version below the floor is stale;
//   - 404 is stale when W is an upsert, unless a delete that may have been
//     applied can be newer than W (its version, or its window's upper end,
//     above the floor);
//   - 200 when W is a delete is stale unless an upsert that may have been
//     applied can have produced the version read, above the floor;
//   - 503 is not stale (counted as unavailable); other answers are errors.
//
// An HTTP write answered "superseded" promises the record's version is at
// least the one it was told, but not whether it is a delete: it sets the
// floor but never decides a 404 or a 200 by its kind.
//
// during, when not nil, describes what was going on (faults) between two
// times, for the violations.
func CheckReads(ops []Op, reads []Read, bound time.Duration, during func(a, b time.Time) string) ReadResult {
	c := newCheck(CheckNoStaleRead)
	res := ReadResult{Bound: bound, Reads: len(reads), Check: c}
	byKey := map[int64][]Op{}
	for _, op := range ops {
		if op.Acked || op.Indeterminate {
			byKey[op.Key] = append(byKey[op.Key], op)
		}
	}
	for k := range byKey {
		kops := byKey[k]
		sort.Slice(kops, func(i, j int) bool { return kops[i].Start.Before(kops[j].Start) })
	}
	keys := map[int64]bool{}
	bySource := map[string]int{}
	var stale []violation
	for _, rd := range reads {
		switch rd.Status {
		case 200, 404:
		case 503:
			res.Unavailable++
			continue
		default:
			res.Errors++
			continue
		}
		res.Checked++
		keys[rd.Key] = true
		if rd.Source == "replica" {
			res.Replica++
		}
		kops := byKey[rd.Key]
		cutoff := rd.Start.Add(-bound)
		// judge decides the read against the writes acknowledged before the
		// cutoff: the nodes' acknowledgements (HTTP) only, or the stream's
		// acknowledgements of producer writes too.
		judge := func(withProducers bool) (why string, w *Op, floor int64, explained bool) {
			for i := range kops {
				op := &kops[i]
				if !op.Acked || op.End.After(cutoff) || (op.Producer && !withProducers) {
					continue
				}
				if v := minVersion(*op); w == nil || v > floor {
					w, floor = op, v
				}
			}
			if w == nil {
				return "", nil, 0, false // nothing had to be visible yet
			}
			// may lists the writes that may have been applied by the end of the
			// read and satisfy ok.
			may := func(ok func(op Op, lo, hi int64) bool) bool {
				for _, op := range kops {
					if !op.Start.Before(rd.End) || op.Superseded {
						continue
					}
					lo, hi := versionWindow(op)
					if ok(op, lo, hi) {
						return true
					}
				}
				return false
			}
			switch {
			case rd.Status == 200 && rd.Version < floor:
				why = fmt.Sprintf("v%d is older than the newest write acknowledged before the read started less the bound", rd.Version)
			case rd.Status == 200 && w.Delete && !w.Superseded:
				if may(func(op Op, lo, hi int64) bool {
					return !op.Delete && rd.Version > floor && rd.Version >= lo && rd.Version <= hi
				}) {
					return "", w, floor, true
				}
				why = fmt.Sprintf("v%d is a record, but the newest write acknowledged before the read started less the bound is a delete, and no upsert that may have been applied can have produced v%d", rd.Version, rd.Version)
			case rd.Status == 404 && !w.Delete && !w.Superseded:
				if may(func(op Op, lo, hi int64) bool { return op.Delete && hi > floor }) {
					return "", w, floor, true
				}
				why = "not found, but the newest write acknowledged before the read started less the bound is an upsert, and no delete that may have been applied can be newer"
			}
			return why, w, floor, false
		}
		why, w, floor, explained := judge(false)
		if why == "" {
			// Not stale against the nodes' acknowledgements. A producer's
			// write is acknowledged by the stream before any node applied
			// it; it is promised durable then, and visible once a node
			// applied it (the bound counts from there, which the client
			// cannot see). A read that lags one is reported, not failed.
			pwhy, _, _, pexplained := judge(true)
			switch {
			case pwhy != "":
				res.ProducerLag++
			case explained || pexplained:
				res.Explained++
			}
			continue
		}
		res.Stale++
		// The writes the answer missed: acknowledged before the cutoff and
		// newer than what was served (for a 404 or a record after a
		// delete, the newest one); how late the read was is measured from
		// the first of them.
		missed := []*Op{w}
		if rd.Status == 200 && rd.Version < floor {
			missed = missed[:0]
			for i := range kops {
				if op := &kops[i]; op.Acked && !op.End.After(cutoff) && minVersion(*op) > rd.Version {
					missed = append(missed, op)
				}
			}
		}
		first, viaHTTP := missed[0], false
		for _, op := range missed {
			if op.End.Before(first.End) {
				first = op
			}
			viaHTTP = viaHTTP || !op.Producer
		}
		lag := rd.Start.Sub(first.End)
		if viaHTTP {
			res.StaleHTTP++
			res.MaxLagHTTP = max(res.MaxLagHTTP, lag)
		}
		bySource[rd.Source+"/"+rd.Mode]++
		answer := "404"
		if rd.Status == 200 {
			answer = fmt.Sprintf("200 v%d", rd.Version)
		}
		ctx := ""
		if during != nil {
			if d := during(cutoff, rd.End); d != "" {
				ctx = "; faults between read start less the bound and read end: " + d
			}
		}
		stale = append(stale, violation{http: viaHTTP, msg: fmt.Sprintf(
			"tmdb:%d on %s: %s (source %q, mode %q) read @%s+%dms, %.2fs after the first missed write was acknowledged (%s): %s; newest acknowledged before %s: %s%s; writes around it:%s",
			rd.Key, rd.Node, answer, rd.Source, rd.Mode, rd.Start.Format("15:04:05.000"), rd.End.Sub(rd.Start).Milliseconds(), lag.Seconds(), describe(*first), why,
			cutoff.Format("15:04:05.000"), describe(*w), ctx, around(kops, w, rd))})
	}
	// The first violations reported: those that missed an HTTP write first
	// (the node itself acknowledged it), then the others, each in time order.
	sort.SliceStable(stale, func(i, j int) bool { return stale[i].http && !stale[j].http })
	for _, v := range stale {
		c.fail("%s", v.msg)
	}
	var srcs []string
	for k, n := range bySource {
		srcs = append(srcs, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(srcs)
	c.Detail = fmt.Sprintf("%d reads judged (200/404) on %d keys against the writes acknowledged %v before them: stale %d; of another kind than that write, explained by a later write (acknowledged within the bound, in flight or of unknown outcome) %d; 503 unavailable %d; from the change log %d; errors %d; behind a producer write the stream acknowledged (not a violation) %d",
		res.Checked, len(keys), bound, res.Stale, res.Explained, res.Unavailable, res.Replica, res.Errors, res.ProducerLag)
	if res.Stale > 0 {
		c.Detail += fmt.Sprintf(" [stale reads %d (latest %.2fs after the missed write's ack); by source/mode: %s]",
			res.StaleHTTP, res.MaxLagHTTP.Seconds(), strings.Join(srcs, ", "))
	}
	return res
}

type violation struct {
	http bool
	msg  string
}

// around lists the writes of a key from the newest one that had to be
// visible (w) to the end of the read rd, at most eight, for a violation.
func around(kops []Op, w *Op, rd Read) string {
	var sel []Op
	for _, op := range kops {
		if (op.End.After(w.Start) || op.Start.Equal(w.Start)) && op.Start.Before(rd.End) {
			sel = append(sel, op)
		}
	}
	more := 0
	if len(sel) > 8 {
		more = len(sel) - 8
		sel = sel[len(sel)-8:]
	}
	var b strings.Builder
	if more > 0 {
		fmt.Fprintf(&b, "\n      (%d earlier)", more)
	}
	for _, op := range sel {
		b.WriteString("\n      " + describe(op))
	}
	return b.String()
}

// FinalAnswer is one node's answer for a key after the drain.
type FinalAnswer struct {
	Node    string
	Key     int64
	Status  int // 0: a transport error (Err)
	Version int64
	Source  string
	Err     string
}

// CheckFinalReads compares the answers read from every live node after the
// drain with the table: each must be exactly the row, 200 with the row's
// version for a live row, 404 for a tombstone or no row.
func CheckFinalReads(answers []FinalAnswer, table map[int64]metastore.Version, bound time.Duration) FinalReads {
	c := newCheck(CheckServesTable)
	res := FinalReads{Check: c}
	nodes := map[string]bool{}
	for _, a := range answers {
		res.Compared++
		nodes[a.Node] = true
		row, ok := table[a.Key]
		want := "404"
		if ok && !row.Deleted {
			want = fmt.Sprintf("200 v%d", row.Version)
		}
		got := fmt.Sprintf("%d", a.Status)
		switch {
		case a.Status == 0:
			got = "error " + truncate(a.Err, 100)
		case a.Status == 200 && a.Err == "":
			got = fmt.Sprintf("200 v%d", a.Version)
		case a.Err != "":
			got += " " + truncate(a.Err, 100)
		}
		if got != want {
			res.Differing++
			c.fail("tmdb:%d on %s: %s (source %q), the table holds %s", a.Key, a.Node, got, a.Source, rowString(row, ok))
		}
	}
	c.Detail = fmt.Sprintf("%d reads (every key written, from %d live nodes, %v after the drain) compared with the table: %d differ",
		res.Compared, len(nodes), bound, res.Differing)
	return res
}
