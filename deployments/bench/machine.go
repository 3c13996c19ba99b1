package main

import (
	"bufio"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Machine describes where the run happened.
type Machine struct {
	CPUModel        string
	Cores           int
	MemTotalGiB     float64
	Kernel          string
	GoVersion       string
	GOMAXPROCS      int
	PostgresVersion string
	NATSVersion     string
	FsyncMicros     float64 // mean latency of a 4 KiB write + fdatasync in the work directory
	Virtualized     string
	LoadAvgStart    string // /proc/loadavg when the run started and when it ended: other jobs on the machine
	LoadAvgEnd      string
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func machineInfo(dir string) Machine {
	m := Machine{Cores: runtime.NumCPU(), GoVersion: runtime.Version(), GOMAXPROCS: runtime.GOMAXPROCS(0), LoadAvgStart: loadAvg()}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ":")
			if !ok {
				continue
			}
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			switch {
			case k == "model name" && m.CPUModel == "":
				m.CPUModel = v
			case k == "flags" && strings.Contains(" "+v+" ", " hypervisor "):
				m.Virtualized = "yes (hypervisor flag)"
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "MemTotal:") {
				fs := strings.Fields(line)
				if len(fs) >= 2 {
					kb, _ := strconv.ParseFloat(fs[1], 64)
					m.MemTotalGiB = kb / (1 << 20)
				}
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// measureFsync times 200 small appends each followed by fdatasync: the cost
// that caps one-fsync-per-write durability on this disk.
func measureFsync(dir string) float64 {
	p := filepath.Join(dir, "fsync-probe")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return 0
	}
	defer os.Remove(p)
	defer f.Close()
	buf := make([]byte, 4096)
	const n = 200
	t0 := time.Now()
	for range n {
		if _, err := f.Write(buf); err != nil {
			return 0
		}
		if err := fdatasync(f); err != nil {
			return 0
		}
	}
	return float64(time.Since(t0).Microseconds()) / n
}
