package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat (100 on Linux).
const clockTicks = 100

// cpuUsage is CPU time in seconds spent during a run by each side.
type cpuUsage struct {
	Bench    float64 // this process: the load generator (and the embedded NATS server)
	Server   float64 // the process under test (cache-node or ceiling server)
	Postgres float64 // every postgres process
	Machine  float64 // all CPUs busy time (from /proc/stat)
	Other    float64 // Machine minus the above: other processes on the machine (background load)
	Wall     float64
}

// pgDataDir is the private PostgreSQL's data directory: its postmaster.pid names the server process.
var pgDataDir string

// cpuWatch samples CPU times at the start and the end of a measured run.
type cpuWatch struct {
	serverPid int
	start     cpuUsage
	Result    cpuUsage
}

func newCPUWatch(serverPid int) *cpuWatch { return &cpuWatch{serverPid: serverPid} }

func (w *cpuWatch) sample() cpuUsage {
	return cpuUsage{Bench: procCPU(os.Getpid()), Server: procCPU(w.serverPid), Postgres: postgresCPU(), Machine: machineBusy()}
}

func (w *cpuWatch) begin() { w.start = w.sample() }

func (w *cpuWatch) end(wall float64) {
	e := w.sample()
	w.Result = cpuUsage{Bench: e.Bench - w.start.Bench, Server: e.Server - w.start.Server,
		Postgres: e.Postgres - w.start.Postgres, Machine: e.Machine - w.start.Machine, Wall: wall}
	w.Result.Other = max(0, w.Result.Machine-w.Result.Bench-w.Result.Server-w.Result.Postgres)
}

// procCPU returns utime+stime of pid in seconds (0 when unknown).
func procCPU(pid int) float64 { return procTimes(pid, false) }

// procTimes returns utime+stime of pid in seconds, plus cutime+cstime (the
// CPU of its children that exited and were waited for) with reaped.
func procTimes(pid int, reaped bool) float64 {
	f := statFields(pid)
	if len(f) < 15 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	if reaped {
		cut, _ := strconv.ParseFloat(f[13], 64)
		cst, _ := strconv.ParseFloat(f[14], 64)
		ut, st = ut+cut, st+cst
	}
	return (ut + st) / clockTicks
}

// statFields returns the fields of /proc/<pid>/stat after the command (which
// may hold spaces), so that f[0] is the state; nil when unknown.
func statFields(pid int) []string {
	if pid <= 0 {
		return nil
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

// postgresCPU sums the CPU time of our PostgreSQL: the postmaster, its live
// children (backends, writer, WAL writer, checkpointer) and the children that
// exited (backends of closed connections: the postmaster's cutime and
// cstime), so that the sum never goes down. Other PostgreSQL servers on the
// machine are not counted.
func postgresCPU() float64 {
	b, err := os.ReadFile(filepath.Join(pgDataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pm, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return 0
	}
	sum := procTimes(pm, true)
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, _ := strconv.Atoi(filepath.Base(d))
		if pid != pm && parentPid(pid) == pm {
			sum += procCPU(pid)
		}
	}
	return sum
}

func parentPid(pid int) int {
	f := statFields(pid)
	if len(f) < 2 {
		return 0
	}
	p, _ := strconv.Atoi(f[1])
	return p
}

// machineBusy returns the non-idle CPU seconds of all CPUs since boot.
func machineBusy() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0
	}
	var busy float64
	for i, v := range f[1:] {
		n, _ := strconv.ParseFloat(v, 64)
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i >= 8 { // guest time is already counted in user
			break
		}
		busy += n
	}
	return busy / clockTicks
}
