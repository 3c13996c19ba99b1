package chaos

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// Report is the outcome of a chaos run.
type Report struct {
	Config  Config
	Results []ScheduleResult
}

// Passed reports whether every schedule passed.
func (r Report) Passed() bool {
	for _, s := range r.Results {
		if !s.Passed() {
			return false
		}
	}
	return len(r.Results) > 0
}

// Lost is the number of acknowledged writes lost over every schedule.
func (r Report) Lost() int {
	n := 0
	for _, s := range r.Results {
		n += s.Ledger.Lost
	}
	return n
}

// Acked is the number of acknowledged writes over every schedule.
func (r Report) Acked() int64 {
	var n int64
	for _, s := range r.Results {
		n += s.Counters.Acked()
	}
	return n
}

// ReadTotals sums the read checkers' figures over every schedule.
func (r Report) ReadTotals() (reads ReadResult, final FinalReads) {
	for _, s := range r.Results {
		reads.Reads += s.Reads.Reads
		reads.Checked += s.Reads.Checked
		reads.Stale += s.Reads.Stale
		reads.Unavailable += s.Reads.Unavailable
		reads.Replica += s.Reads.Replica
		reads.Errors += s.Reads.Errors
		reads.Explained += s.Reads.Explained
		reads.ProducerLag += s.Reads.ProducerLag
		final.Compared += s.Final.Compared
		final.Differing += s.Final.Differing
	}
	reads.Bound = r.Config.StalenessBound
	return reads, final
}

// FaultsByKind counts the faults run, by kind.
func (r Report) FaultsByKind() map[Kind]int {
	m := map[Kind]int{}
	for _, s := range r.Results {
		for k, n := range s.Schedule.CountByKind() {
			m[k] += n
		}
	}
	return m
}

// LongestDetection and LongestRecovery over every schedule.
func (r Report) LongestDetection() Timing {
	var t Timing
	for _, s := range r.Results {
		if s.LongestDetection.D > t.D {
			t = s.LongestDetection
		}
	}
	return t
}

// LongestRecovery is the longest fault end -> mode.normal.
func (r Report) LongestRecovery() Timing {
	var t Timing
	for _, s := range r.Results {
		if s.LongestRecovery.D > t.D {
			t = s.LongestRecovery
		}
	}
	return t
}

func (t Timing) String() string {
	if t.D == 0 {
		return "none measured"
	}
	return fmt.Sprintf("%.2fs (seed %d, %s at +%.2fs for %.2fs)", t.D.Seconds(), t.Seed, t.Fault.Kind, t.Fault.At.Seconds(), t.Fault.Duration.Seconds())
}

// PrintResult prints one schedule's verdict and, when it failed, everything
// needed to replay and diagnose it.
func PrintResult(w io.Writer, s ScheduleResult) {
	c := s.Counters
	fmt.Fprintf(w, "---- seed %d: %s in %v ----\n", s.Seed, verdict(s), s.Elapsed.Round(time.Second))
	fmt.Fprintf(w, "  writes acknowledged %d (http committed %d, http buffered %d, producer %d); unknown outcome %d; refused by a dead node %d; rejected %d\n",
		c.Acked(), c.HTTPCommitted, c.HTTPBuffered, c.ProducerAcked, c.HTTPIndeterminate+c.ProducerIndeterminate, c.Refused, c.Rejected)
	fmt.Fprintf(w, "  reads %d (503 while uncached in an outage: %d, errors %d)\n", c.Reads, c.ReadsUnavailable, c.ReadErrors)
	fmt.Fprintf(w, "  reads checked %d (bound %v): stale %d, unavailable %d, replica %d, behind a producer write (not a violation) %d; final reads compared %d, differing %d\n",
		s.Reads.Checked, s.Reads.Bound, s.Reads.Stale, s.Reads.Unavailable, s.Reads.Replica, s.Reads.ProducerLag, s.Final.Compared, s.Final.Differing)
	if len(s.UnknownCauses) > 0 {
		type kv struct {
			k string
			n int
		}
		var causes []kv
		for k, n := range s.UnknownCauses {
			causes = append(causes, kv{k, n})
		}
		sort.Slice(causes, func(i, j int) bool {
			return causes[i].n > causes[j].n || causes[i].n == causes[j].n && causes[i].k < causes[j].k
		})
		if len(causes) > 4 {
			causes = causes[:4]
		}
		var parts []string
		for _, c := range causes {
			parts = append(parts, fmt.Sprintf("%d× %s", c.n, c.k))
		}
		fmt.Fprintf(w, "  unknown outcomes: %s\n", strings.Join(parts, " | "))
	}
	fmt.Fprintf(w, "  lost %d; outages %d; total_failures %d total_recoveries %d; longest detection %s; longest recovery %s; drain %v\n",
		s.Ledger.Lost, len(s.Outages), s.TotalFailures, s.TotalRecoveries, s.LongestDetection, s.LongestRecovery, s.DrainTime.Round(100*time.Millisecond))
	if s.Err != nil {
		fmt.Fprintf(w, "  ERROR: %v\n", s.Err)
	}
	for _, ch := range s.Checks {
		mark := "ok  "
		switch {
		case !ch.OK && ch.Warn:
			mark = "WARN"
		case !ch.OK:
			mark = "FAIL"
		case ch.Skipped:
			mark = "skip"
		}
		fmt.Fprintf(w, "  [%s] %s: %s\n", mark, ch.Name, ch.Detail)
		for _, e := range ch.Errors {
			fmt.Fprintf(w, "         %s\n", e)
		}
		if ch.errs > len(ch.Errors) {
			fmt.Fprintf(w, "         ... and %d more\n", ch.errs-len(ch.Errors))
		}
	}
	if !s.Passed() {
		fmt.Fprintf(w, "  replay with: %s\n", replayCommand(s))
		fmt.Fprintf(w, "  %s", indent(s.Schedule.String(), "  "))
		fmt.Fprintf(w, "  as executed:\n")
		for _, e := range s.Executed {
			line := fmt.Sprintf("    %-18s %-16s planned +%.2fs, injected %s, reverted %s (%.2fs)", e.Kind, e.Target, e.At.Seconds(),
				e.Start.Format("15:04:05.000"), e.End.Format("15:04:05.000"), e.End.Sub(e.Start).Seconds())
			if e.Err != "" {
				line += " ERROR " + e.Err
			}
			fmt.Fprintln(w, line)
		}
		fmt.Fprintf(w, "  outages (mode events):\n")
		for _, o := range s.Outages {
			end := "never"
			if !o.End.IsZero() {
				end = o.End.Format("15:04:05.000")
			}
			fmt.Fprintf(w, "    epoch %d cache_only %s -> normal %s (%s)\n", o.StartEpoch, o.Start.Format("15:04:05.000"), end, o.Reason)
		}
		fmt.Fprintf(w, "  service logs: %s/logs\n", s.Dir)
	}
}

func indent(s, prefix string) string {
	return strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+prefix) + "\n"
}

// Print prints the final report.
func (r Report) Print(w io.Writer) {
	passed := 0
	for _, s := range r.Results {
		if s.Passed() {
			passed++
		}
	}
	fmt.Fprintf(w, "\n==== chaos report ====\n")
	nats := "one NATS server"
	if n := r.Config.clusterSize(); n > 0 {
		nats = fmt.Sprintf("a NATS cluster of %d servers", n)
	}
	fmt.Fprintf(w, "schedules run:       %d (passed %d, failed %d), %v of load each, %d cache-nodes, %s\n",
		len(r.Results), passed, len(r.Results)-passed, r.Config.Duration, r.Config.Nodes, nats)
	if len(r.Results) > 0 {
		fmt.Fprintf(w, "seeds:               %d..%d\n", r.Results[0].Seed, r.Results[len(r.Results)-1].Seed)
	}
	byKind := r.FaultsByKind()
	var parts []string
	total := 0
	for _, k := range Kinds(true) {
		if byKind[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, byKind[k]))
			total += byKind[k]
		}
	}
	fmt.Fprintf(w, "faults by kind:      %d: %s\n", total, strings.Join(parts, ", "))
	var c Counters
	var outages int
	var failures, recoveries int64
	for _, s := range r.Results {
		c.HTTPCommitted += s.Counters.HTTPCommitted
		c.HTTPBuffered += s.Counters.HTTPBuffered
		c.ProducerAcked += s.Counters.ProducerAcked
		c.HTTPIndeterminate += s.Counters.HTTPIndeterminate
		c.ProducerIndeterminate += s.Counters.ProducerIndeterminate
		outages += len(s.Outages)
		failures += s.TotalFailures
		recoveries += s.TotalRecoveries
	}
	fmt.Fprintf(w, "writes acknowledged: %d (http committed %d, http buffered %d, producer %d); unknown outcome %d\n",
		c.Acked(), c.HTTPCommitted, c.HTTPBuffered, c.ProducerAcked, c.HTTPIndeterminate+c.ProducerIndeterminate)
	fmt.Fprintf(w, "lost:                %d\n", r.Lost())
	rd, fin := r.ReadTotals()
	fmt.Fprintf(w, "reads checked:       %d (staleness bound %v): stale %d, unavailable (503) %d, replica %d, behind a producer write (not a violation) %d\n",
		rd.Checked, rd.Bound, rd.Stale, rd.Unavailable, rd.Replica, rd.ProducerLag)
	fmt.Fprintf(w, "final reads:         %d compared with the table, %d differing\n", fin.Compared, fin.Differing)
	fmt.Fprintf(w, "outages:             %d (total_failures %d, total_recoveries %d)\n", outages, failures, recoveries)
	fmt.Fprintf(w, "longest detection:   %s\n", r.LongestDetection())
	fmt.Fprintf(w, "longest recovery:    %s\n", r.LongestRecovery())
	// Per checker: the seeds where it failed.
	failedIn := map[string][]uint64{}
	var names []string
	warn := map[string]bool{}
	for _, s := range r.Results {
		for _, ch := range s.Checks {
			if _, ok := failedIn[ch.Name]; !ok {
				failedIn[ch.Name] = nil
				names = append(names, ch.Name)
			}
			warn[ch.Name] = ch.Warn
			if !ch.OK {
				failedIn[ch.Name] = append(failedIn[ch.Name], s.Seed)
			}
		}
	}
	fmt.Fprintf(w, "checkers:\n")
	for _, n := range names {
		kind := ""
		if warn[n] {
			kind = " (advisory)"
		}
		if len(failedIn[n]) == 0 {
			fmt.Fprintf(w, "  ok    %s%s\n", n, kind)
		} else {
			fmt.Fprintf(w, "  FAIL  %s%s: %d schedules, seeds %v\n", n, kind, len(failedIn[n]), failedIn[n])
		}
	}
	for _, s := range r.Results {
		if s.Passed() {
			continue
		}
		var failed []string
		for _, ch := range s.Checks {
			if !ch.OK && (!ch.Warn || s.strict) {
				failed = append(failed, ch.Name)
			}
		}
		if s.Err != nil {
			failed = append(failed, "error: "+s.Err.Error())
		}
		fmt.Fprintf(w, "FAILED seed %d: %s (replay: %s; logs %s/logs)\n", s.Seed, strings.Join(failed, "; "), replayCommand(s), s.Dir)
	}
	if r.Config.Report != "" {
		fmt.Fprintf(w, "json report:         %s\n", r.Config.Report)
	}
}
