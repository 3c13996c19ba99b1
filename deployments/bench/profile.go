package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Profile is one profile quoted in the report.
type Profile struct {
	Goal    string
	Title   string
	Command string
	Text    string
}

// perfProfile samples the whole machine with perf for d while load(d) runs,
// and returns the CPU split by command, then the top of the process pid by
// symbol (self time) and the inclusive time of the functions that tell where
// its time goes. The services have no pprof endpoint; perf reads the Go
// symbols from the binaries.
func (r *runner) perfProfile(ctx context.Context, pid int, d time.Duration, load func(time.Duration)) string {
	if _, err := exec.LookPath("perf"); err != nil {
		return "(perf not installed: no profile of the service process)"
	}
	data := filepath.Join(r.cfg.dir, fmt.Sprintf("perf-%d-%d.data", pid, time.Now().UnixNano()))
	args := []string{"record", "-F", "499", "-g", "-a", "-o", data, "--", "sleep", fmt.Sprintf("%.1f", d.Seconds())}
	rec := exec.CommandContext(ctx, "perf", args...)
	errOut := &strings.Builder{}
	rec.Stderr = errOut
	if err := rec.Start(); err != nil {
		return "(perf record failed: " + err.Error() + ")"
	}
	time.Sleep(200 * time.Millisecond)
	load(d - 400*time.Millisecond)
	if err := rec.Wait(); err != nil {
		return fmt.Sprintf("(perf record failed: %v: %s)", err, errOut)
	}
	defer os.Remove(data)
	report := func(args ...string) []string {
		b, err := exec.CommandContext(ctx, "perf", append([]string{"report", "-i", data, "--stdio", "-g", "none"}, args...)...).CombinedOutput()
		if err != nil {
			return []string{"(perf report failed: " + err.Error() + ": " + string(b) + ")"}
		}
		var lines []string
		for _, l := range strings.Split(string(b), "\n") {
			l = strings.TrimRight(l, " ")
			if l == "" || strings.HasPrefix(l, "#") && !strings.Contains(l, "Samples") || strings.HasPrefix(l, "# ...") {
				continue
			}
			lines = append(lines, l)
		}
		return lines
	}
	var out strings.Builder
	fmt.Fprintf(&out, "$ perf %s\n", strings.Join(args, " "))
	fmt.Fprintf(&out, "$ perf report --stdio --no-children --sort comm   (whole machine, by command)\n%s\n\n",
		strings.Join(head(report("--no-children", "--sort", "comm", "--percent-limit", "1"), 16), "\n"))
	p := fmt.Sprint(pid)
	fmt.Fprintf(&out, "$ perf report --stdio --no-children --pid %s --percentage relative --sort sym --percent-limit 1   (the process alone, self time)\n%s\n\n", p,
		strings.Join(head(report("--no-children", "--pid", p, "--percentage", "relative", "--sort", "sym", "--percent-limit", "1"), 30), "\n"))
	// Inclusive time of the functions that tell where the time goes.
	var incl []string
	for _, l := range report("--children", "--pid", p, "--percentage", "relative", "--sort", "sym", "--percent-limit", "2") {
		for _, k := range []string{"node.(*Node)", "node.(*buffer)", "node.(*metrics)", "node.decodeBatch", "events.", "net/http.(*conn).serve", "net/http.(*response)", "net/http.(*conn).readRequest",
			"encoding/json.Marshal", "encoding/json.Unmarshal", "encoding/json.(*Decoder).Decode", "encoding/json.(*Encoder).Encode",
			"runtime.gcBgMarkWorker", "runtime.mallocgc ", "runtime.mallocgc\n", "syscall.Syscall", "internal/poll.(*FD).Write", "internal/poll.(*FD).Read",
			"nats.(*Conn).", "jetstream.", "watermill", "bun.(*InsertQuery)", "bun.(*SelectQuery)", "pgdriver.", "prometheus.", "cache.(*Cache", "Samples"} {
			if strings.Contains(l+"\n", k) {
				incl = append(incl, l)
				break
			}
		}
	}
	fmt.Fprintf(&out, "$ perf report --stdio --children --pid %s --percentage relative --sort sym   (the process alone, inclusive time, selected functions)\n%s", p, strings.Join(head(incl, 40), "\n"))
	return out.String()
}

func head(l []string, n int) []string {
	if len(l) > n {
		return l[:n]
	}
	return l
}

// nodePkg holds the cache-node's in-process benchmarks.
const nodePkg = "./services/cache-node/internal/node"

// goProfile runs one Go benchmark of pkg with -cpuprofile (or -memprofile)
// and returns the top of `go tool pprof -top`.
func (r *runner) goProfile(ctx context.Context, pkg, kind, bench, benchtime string, env ...string) (string, string) {
	name := strings.Map(func(c rune) rune {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			return c
		}
		return -1
	}, bench)
	prof := filepath.Join(r.cfg.out, kind+"-"+name+".pprof")
	testBin := filepath.Join(r.cfg.dir, "bench.test")
	args := []string{"test", "-run=^$", "-bench=" + bench, "-benchtime=" + benchtime, "-benchmem", "-count=1",
		"-" + kind + "profile=" + prof, "-o", testBin, pkg}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = r.cfg.moduleDir
	cmd.Env = append(os.Environ(), env...)
	b, err := cmd.CombinedOutput()
	command := "go " + strings.Join(args, " ")
	if err != nil {
		return command, fmt.Sprintf("(failed: %v)\n%s", err, b)
	}
	pargs := []string{"tool", "pprof", "-top", "-nodecount=35"}
	if kind == "mem" {
		pargs = append(pargs, "-sample_index=inuse_space")
	} else {
		pargs = append(pargs, "-cum")
	}
	top := exec.CommandContext(ctx, "go", append(pargs, testBin, prof)...)
	top.Dir = r.cfg.moduleDir
	t, err := top.CombinedOutput()
	if err != nil {
		return command, fmt.Sprintf("(pprof failed: %v)\n%s", err, t)
	}
	return command + "\n$ go " + strings.Join(pargs, " ") + " " + filepath.Base(testBin) + " " + filepath.Base(prof),
		strings.TrimSpace(string(b)) + "\n\n" + strings.TrimSpace(string(t))
}

// phaseMicro runs the Go micro-benchmarks of the hot paths, benchstat-friendly.
func (r *runner) phaseMicro(ctx context.Context) error {
	args := []string{"test", "-run=^$", "-bench=.", "-benchmem", "-count=5"}
	if r.cfg.benchtime != "" {
		args = append(args, "-benchtime="+r.cfg.benchtime)
	}
	args = append(args, "./pkg/cache", "./pkg/hlc", "./pkg/resilience", "./pkg/metastore", nodePkg, "./deployments/bench/...")
	r.say("go %s", strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = r.cfg.moduleDir
	b, err := cmd.CombinedOutput()
	r.rep.MicroCommand = "go " + strings.Join(args, " ")
	r.rep.Micro = string(b)
	_ = writeFile(r.cfg.out, "micro-bench.txt", b)
	if err != nil {
		return fmt.Errorf("go test -bench: %w", err)
	}
	return nil
}

// profiles captures a CPU profile (pprof) of an in-process equivalent of
// every path whose goal was not met.
func (r *runner) profiles(ctx context.Context) {
	rep := r.rep
	add := func(goal, title, kind, bench, benchtime string, env ...string) {
		r.say("profile: %s", title)
		cmd, text := r.goProfile(ctx, nodePkg, kind, bench, benchtime, append(env, "BENCH_EQUIV=1")...)
		rep.Profiles = append(rep.Profiles, Profile{Goal: goal, Title: title, Command: cmd, Text: text})
	}
	if rd := rep.Reads; rd != nil && rd.HitsOverCeiling < readGoalRatio {
		add("reads", "read path on a cache hit, in process (the node's mux, metrics middleware, mode lock, request context, cache lookup) beside the bare handler",
			"cpu", "^BenchmarkReadPath$/^node$", "3s")
	}
	if w := rep.Writes; w != nil {
		add("writes", "CPU of one PUT on the node besides I/O, in process (decode + validate, buffered-write encoding, cache encoding, metadata.changed encoding)",
			"cpu", "^BenchmarkWritePathCPU$", "2s")
	}
	if rp := rep.Replay; rp != nil && rp.BestRatio < 0.5 {
		add("replay", "replay's CPU on the node for one fetched batch, in process (decode the buffer messages; building the statement is BenchmarkApplyBatchStatement among the micro-benchmarks)",
			"cpu", "^BenchmarkReplayDecode$", "2s")
	}
	if m := rep.Memory; m != nil && len(m.Runs) > 0 && !m.Runs[0].WithinBound {
		add("memory", "heap of a full 100 MiB cache of ~2 KiB records, in process (the node's entry, accounted by entry.size); memory profile, in-use bytes",
			"mem", "^BenchmarkCacheFull2KiB$", "1x", "BENCH_HEAVY=1")
	}
}
