package chaos

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"time"
)

// JSONReportFormat is the version of the JSON report's layout.
const JSONReportFormat = 1

// JSONReport is the machine-readable report of a chaos run (--report, by
// default <dir>/report.json). Run rewrites it atomically (a temporary file
// renamed over it) before the first schedule and after every schedule, so
// that an interrupted run still leaves a report of the schedules it
// finished. Durations are in seconds, instants in RFC 3339.
type JSONReport struct {
	Format  int       `json:"format"`
	Started time.Time `json:"started"`
	Updated time.Time `json:"updated"`
	// Finished is false while the run goes on, and stays false when it was
	// interrupted (Interrupted then says why).
	Finished    bool           `json:"finished"`
	Interrupted string         `json:"interrupted,omitempty"`
	Passed      bool           `json:"passed"`
	Parameters  JSONParameters `json:"parameters"`
	Schedules   []JSONSchedule `json:"schedules"`
	Totals      JSONTotals     `json:"totals"`
}

// JSONParameters are the run's settings.
type JSONParameters struct {
	FirstSeed         uint64   `json:"first_seed"`
	Schedules         int      `json:"schedules"` // planned; the seeds are first_seed .. first_seed+schedules-1
	DurationSeconds   float64  `json:"duration_seconds"`
	Nodes             int      `json:"nodes"`
	NATSCluster       int      `json:"nats_cluster"` // 0: one NATS server
	StalenessBoundSec float64  `json:"staleness_bound_seconds"`
	HTTPWriters       int      `json:"http_writers"`
	Producers         int      `json:"producers"`
	Readers           int      `json:"readers"`
	PauseSeconds      float64  `json:"pause_seconds"`
	MinFaultSeconds   float64  `json:"min_fault_seconds"`
	MaxFaultSeconds   float64  `json:"max_fault_seconds"`
	MinGapSeconds     float64  `json:"min_gap_seconds"`
	MaxGapSeconds     float64  `json:"max_gap_seconds"`
	ProcessFaults     int      `json:"process_faults"` // 0: one per 10 s, at least 2
	HealthInterval    float64  `json:"health_check_interval_seconds"`
	HealthTimeout     float64  `json:"health_check_timeout_seconds"`
	FailureThreshold  int      `json:"health_failure_threshold"`
	PGMaxConnections  int      `json:"pg_max_connections,omitempty"`
	Strict            bool     `json:"strict"`
	Dir               string   `json:"dir"`
	FaultKinds        []string `json:"fault_kinds"` // the kinds a schedule may hold
}

// JSONFault is one planned fault.
type JSONFault struct {
	Kind            Kind    `json:"kind"`
	AtSeconds       float64 `json:"at_seconds"` // from the start of the load
	DurationSeconds float64 `json:"duration_seconds"`
	Target          string  `json:"target"`
	Param           int     `json:"param,omitempty"` // latency ms, toxicity %, or the fallback server
}

// JSONExecuted is a fault as it was really injected and reverted.
type JSONExecuted struct {
	JSONFault
	Injected time.Time `json:"injected"`
	Reverted time.Time `json:"reverted"`
	Error    string    `json:"error,omitempty"`
}

// JSONCheck is one checker's verdict.
type JSONCheck struct {
	Name     string `json:"name"`
	OK       bool   `json:"ok"`
	Skipped  bool   `json:"skipped,omitempty"`
	Advisory bool   `json:"advisory,omitempty"`
	Detail   string `json:"detail"`
	// Violations are the first ones (as printed); ViolationCount all of them.
	Violations     []string `json:"violations,omitempty"`
	ViolationCount int      `json:"violation_count"`
}

// JSONTiming is one detection (fault start -> mode.cache_only) or recovery
// (fault end -> mode.normal).
type JSONTiming struct {
	Seconds float64   `json:"seconds"`
	Seed    uint64    `json:"seed"`
	Fault   JSONFault `json:"fault"`
}

// JSONOutage is one outage as the mode events tell it.
type JSONOutage struct {
	Start  time.Time  `json:"start"`
	End    *time.Time `json:"end"` // null: never back to normal
	Epoch  int64      `json:"epoch"`
	Reason string     `json:"reason"`
}

// JSONFigures are a schedule's (or the run's) measured figures.
type JSONFigures struct {
	WritesAcknowledged int64 `json:"writes_acknowledged"`
	HTTPCommitted      int64 `json:"http_committed"`
	HTTPBuffered       int64 `json:"http_buffered"`
	ProducerAcked      int64 `json:"producer_acked"`
	UnknownOutcome     int64 `json:"unknown_outcome"`
	Refused            int64 `json:"refused"`
	Rejected           int64 `json:"rejected"`
	Lost               int   `json:"lost"`
	Reads              int64 `json:"reads"`
	ReadsUnavailable   int64 `json:"reads_unavailable"`
	ReadErrors         int64 `json:"read_errors"`
	ReadsChecked       int   `json:"reads_checked"`
	StaleReads         int   `json:"stale_reads"`
	ReplicaReads       int   `json:"replica_reads"`
	ProducerLagReads   int   `json:"producer_lag_reads"`
	FinalCompared      int   `json:"final_reads_compared"`
	FinalDiffering     int   `json:"final_reads_differing"`
	Outages            int   `json:"outages"`
	TotalFailures      int64 `json:"total_failures"`
	TotalRecoveries    int64 `json:"total_recoveries"`
}

// JSONSchedule is one schedule's outcome.
type JSONSchedule struct {
	Seed           uint64         `json:"seed"`
	Verdict        string         `json:"verdict"` // PASS or FAIL, as printed
	Error          string         `json:"error,omitempty"`
	ElapsedSeconds float64        `json:"elapsed_seconds"`
	Dir            string         `json:"dir"` // kept (with the service logs) when the schedule failed or --keep
	Replay         string         `json:"replay"`
	Faults         []JSONFault    `json:"faults"`
	Executed       []JSONExecuted `json:"executed"`
	Checks         []JSONCheck    `json:"checks"`
	Figures        JSONFigures    `json:"figures"`
	Detections     []JSONTiming   `json:"detections"`
	Recoveries     []JSONTiming   `json:"recoveries"`
	// LongestDetection and LongestRecovery are null when none was measured.
	LongestDetection *JSONTiming    `json:"longest_detection"`
	LongestRecovery  *JSONTiming    `json:"longest_recovery"`
	DrainSeconds     float64        `json:"drain_seconds"`
	BufferAccepted   int64          `json:"buffer_accepted"`
	BufferReplayed   int64          `json:"buffer_replayed"`
	BufferStale      int64          `json:"buffer_skipped_stale"`
	ReplayEventsSum  int64          `json:"replay_events_sum"`
	Outages          []JSONOutage   `json:"outages"`
	UnknownCauses    map[string]int `json:"unknown_causes,omitempty"`
}

// JSONCheckerTotal is one checker over the run.
type JSONCheckerTotal struct {
	Name        string   `json:"name"`
	Advisory    bool     `json:"advisory,omitempty"`
	FailedSeeds []uint64 `json:"failed_seeds"`
}

// JSONTotals sum the schedules run so far.
type JSONTotals struct {
	SchedulesRun     int                `json:"schedules_run"`
	Passed           int                `json:"passed"`
	Failed           int                `json:"failed"`
	FailedSeeds      []uint64           `json:"failed_seeds"`
	Faults           int                `json:"faults"`
	FaultsByKind     map[Kind]int       `json:"faults_by_kind"`
	Figures          JSONFigures        `json:"figures"`
	LongestDetection *JSONTiming        `json:"longest_detection"`
	LongestRecovery  *JSONTiming        `json:"longest_recovery"`
	Checkers         []JSONCheckerTotal `json:"checkers"`
}

// secs is d in seconds, to the millisecond.
func secs(d time.Duration) float64 { return math.Round(float64(d)/float64(time.Millisecond)) / 1000 }

func jsonFault(f Fault) JSONFault {
	return JSONFault{Kind: f.Kind, AtSeconds: secs(f.At), DurationSeconds: secs(f.Duration), Target: f.Target, Param: f.Param}
}

func jsonTiming(t Timing) *JSONTiming {
	if t.D == 0 {
		return nil
	}
	return &JSONTiming{Seconds: secs(t.D), Seed: t.Seed, Fault: jsonFault(t.Fault)}
}

func jsonTimings(ts []Timing) []JSONTiming {
	out := make([]JSONTiming, 0, len(ts))
	for _, t := range ts {
		out = append(out, JSONTiming{Seconds: secs(t.D), Seed: t.Seed, Fault: jsonFault(t.Fault)})
	}
	return out
}

// figures are one schedule's figures.
func figures(s ScheduleResult) JSONFigures {
	c := s.Counters
	return JSONFigures{
		WritesAcknowledged: c.Acked(), HTTPCommitted: c.HTTPCommitted, HTTPBuffered: c.HTTPBuffered, ProducerAcked: c.ProducerAcked,
		UnknownOutcome: c.HTTPIndeterminate + c.ProducerIndeterminate, Refused: c.Refused, Rejected: c.Rejected,
		Lost: s.Ledger.Lost, Reads: c.Reads, ReadsUnavailable: c.ReadsUnavailable, ReadErrors: c.ReadErrors,
		ReadsChecked: s.Reads.Checked, StaleReads: s.Reads.Stale, ReplicaReads: s.Reads.Replica, ProducerLagReads: s.Reads.ProducerLag,
		FinalCompared: s.Final.Compared, FinalDiffering: s.Final.Differing,
		Outages: len(s.Outages), TotalFailures: s.TotalFailures, TotalRecoveries: s.TotalRecoveries,
	}
}

func (f *JSONFigures) add(g JSONFigures) {
	f.WritesAcknowledged += g.WritesAcknowledged
	f.HTTPCommitted += g.HTTPCommitted
	f.HTTPBuffered += g.HTTPBuffered
	f.ProducerAcked += g.ProducerAcked
	f.UnknownOutcome += g.UnknownOutcome
	f.Refused += g.Refused
	f.Rejected += g.Rejected
	f.Lost += g.Lost
	f.Reads += g.Reads
	f.ReadsUnavailable += g.ReadsUnavailable
	f.ReadErrors += g.ReadErrors
	f.ReadsChecked += g.ReadsChecked
	f.StaleReads += g.StaleReads
	f.ReplicaReads += g.ReplicaReads
	f.ProducerLagReads += g.ProducerLagReads
	f.FinalCompared += g.FinalCompared
	f.FinalDiffering += g.FinalDiffering
	f.Outages += g.Outages
	f.TotalFailures += g.TotalFailures
	f.TotalRecoveries += g.TotalRecoveries
}

func verdict(s ScheduleResult) string {
	if s.Passed() {
		return "PASS"
	}
	return "FAIL"
}

func replayCommand(s ScheduleResult) string {
	return fmt.Sprintf("go run ./deployments/chaos --seed %d --schedules 1 --duration %v --nodes %d%s", s.Seed, s.Schedule.Duration, s.Schedule.Nodes, s.Schedule.clusterFlag())
}

func jsonSchedule(s ScheduleResult) JSONSchedule {
	js := JSONSchedule{
		Seed: s.Seed, Verdict: verdict(s), ElapsedSeconds: secs(s.Elapsed), Dir: s.Dir, Replay: replayCommand(s),
		Faults: []JSONFault{}, Executed: []JSONExecuted{}, Checks: []JSONCheck{}, Outages: []JSONOutage{},
		Figures: figures(s), Detections: jsonTimings(s.Detections), Recoveries: jsonTimings(s.Recoveries),
		LongestDetection: jsonTiming(s.LongestDetection), LongestRecovery: jsonTiming(s.LongestRecovery),
		DrainSeconds: secs(s.DrainTime), BufferAccepted: s.Accepted, BufferReplayed: s.Replayed, BufferStale: s.Stale,
		ReplayEventsSum: s.ReplayEventsSum, UnknownCauses: s.UnknownCauses,
	}
	if s.Err != nil {
		js.Error = s.Err.Error()
	}
	for _, f := range s.Schedule.Faults {
		js.Faults = append(js.Faults, jsonFault(f))
	}
	for _, e := range s.Executed {
		js.Executed = append(js.Executed, JSONExecuted{JSONFault: jsonFault(e.Fault), Injected: e.Start, Reverted: e.End, Error: e.Err})
	}
	for _, c := range s.Checks {
		js.Checks = append(js.Checks, JSONCheck{Name: c.Name, OK: c.OK, Skipped: c.Skipped, Advisory: c.Warn, Detail: c.Detail,
			Violations: c.Errors, ViolationCount: max(c.errs, len(c.Errors))})
	}
	for _, o := range s.Outages {
		jo := JSONOutage{Start: o.Start, Epoch: o.StartEpoch, Reason: o.Reason}
		if !o.End.IsZero() {
			end := o.End
			jo.End = &end
		}
		js.Outages = append(js.Outages, jo)
	}
	return js
}

// JSON returns the report as the JSON document --report writes. started is
// when the run began; finished says whether it ran to its end, and
// interrupted (when it did not) why.
func (r Report) JSON(started time.Time, finished bool, interrupted string) JSONReport {
	c := r.Config
	out := JSONReport{
		Format: JSONReportFormat, Started: started, Updated: time.Now(), Finished: finished, Interrupted: interrupted,
		Passed: r.Passed(), Schedules: []JSONSchedule{},
		Parameters: JSONParameters{
			FirstSeed: c.Seed, Schedules: c.Schedules, DurationSeconds: secs(c.Duration), Nodes: c.Nodes, NATSCluster: c.clusterSize(),
			StalenessBoundSec: secs(c.StalenessBound), HTTPWriters: c.HTTPWriters, Producers: c.Producers, Readers: c.Readers,
			PauseSeconds: secs(c.Pause), MinFaultSeconds: secs(c.MinFault), MaxFaultSeconds: secs(c.MaxFault),
			MinGapSeconds: secs(c.MinGap), MaxGapSeconds: secs(c.MaxGap), ProcessFaults: c.ProcessFaults,
			HealthInterval: secs(c.HealthInterval), HealthTimeout: secs(c.HealthTimeout), FailureThreshold: c.FailureThreshold,
			PGMaxConnections: c.PGMaxConnections, Strict: c.Strict, Dir: c.Dir,
		},
		Totals: JSONTotals{FailedSeeds: []uint64{}, FaultsByKind: map[Kind]int{}, Checkers: []JSONCheckerTotal{},
			LongestDetection: jsonTiming(r.LongestDetection()), LongestRecovery: jsonTiming(r.LongestRecovery())},
	}
	for _, k := range Kinds(c.clusterSize() > 0) {
		out.Parameters.FaultKinds = append(out.Parameters.FaultKinds, string(k))
	}
	checker := map[string]int{}
	for _, s := range r.Results {
		js := jsonSchedule(s)
		out.Schedules = append(out.Schedules, js)
		t := &out.Totals
		t.SchedulesRun++
		if s.Passed() {
			t.Passed++
		} else {
			t.Failed++
			t.FailedSeeds = append(t.FailedSeeds, s.Seed)
		}
		t.Figures.add(js.Figures)
		for _, ch := range s.Checks {
			i, ok := checker[ch.Name]
			if !ok {
				i = len(t.Checkers)
				checker[ch.Name] = i
				t.Checkers = append(t.Checkers, JSONCheckerTotal{Name: ch.Name, FailedSeeds: []uint64{}})
			}
			t.Checkers[i].Advisory = ch.Warn
			if !ch.OK {
				t.Checkers[i].FailedSeeds = append(t.Checkers[i].FailedSeeds, s.Seed)
			}
		}
	}
	for k, n := range r.FaultsByKind() {
		out.Totals.FaultsByKind[k] = n
		out.Totals.Faults += n
	}
	return out
}

// WriteJSON writes the report to path atomically: a temporary file in the
// same directory, synced, then renamed over path. A reader never sees half
// a report, and a crash leaves the previous one.
func WriteJSON(path string, rep JSONReport) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return fmt.Errorf("chaos report: %w", err)
	}
	b = append(b, '\n')
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("chaos report: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("chaos report: %w", err)
	}
	tmp := f.Name()
	_, werr := f.Write(b)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Chmod(tmp, 0o644)
	}
	if werr == nil {
		werr = os.Rename(tmp, path)
	}
	if werr != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("chaos report %s: %w", path, werr)
	}
	return nil
}

// ReadJSON reads a report written by WriteJSON.
func ReadJSON(path string) (JSONReport, error) {
	var rep JSONReport
	b, err := os.ReadFile(path)
	if err != nil {
		return rep, fmt.Errorf("chaos report: %w", err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		return rep, fmt.Errorf("chaos report %s: %w", path, err)
	}
	return rep, nil
}
