package pgembed

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// procStat returns the state and parent pid of a process from
// /proc/<pid>/stat.
func procStat(pid int) (state byte, ppid int, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, false
	}
	// The command name is in parentheses and may contain spaces.
	end := bytes.LastIndexByte(b, ')')
	if end < 0 || end+2 >= len(b) {
		return 0, 0, false
	}
	fields := bytes.Fields(b[end+2:])
	if len(fields) < 2 {
		return 0, 0, false
	}
	ppid, err = strconv.Atoi(string(fields[1]))
	if err != nil {
		return 0, 0, false
	}
	return fields[0][0], ppid, true
}

// processAlive reports whether pid exists and is not a zombie. Zombies count
// as dead because orphaned children may never be reaped by a minimal init.
func processAlive(pid int) bool {
	state, _, ok := procStat(pid)
	return ok && state != 'Z' && state != 'X'
}

// descendants returns all live descendants of pid.
func descendants(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if _, ppid, ok := procStat(p); ok {
			children[ppid] = append(children[ppid], p)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		for _, c := range children[cur] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// killTree SIGKILLs pid and all its descendants and returns the pids it
// signalled. The postmaster is stopped first so it cannot fork new
// backends while its children are collected; the children must be found
// before the postmaster dies because they are then reparented. Process
// groups do not help: every postmaster child calls setsid().
func killTree(pid int) []int {
	_ = syscall.Kill(pid, syscall.SIGSTOP) // ESRCH: already gone
	pids := append(descendants(pid), pid)
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGKILL) // ESRCH: already gone
	}
	return pids
}

// releaseShm removes a SysV shared memory segment left by a killed
// postmaster if nothing is attached to it any more.
func releaseShm(id int) {
	var desc unix.SysvShmDesc
	if _, err := unix.SysvShmCtl(id, unix.IPC_STAT, &desc); err != nil {
		return
	}
	if desc.Nattch == 0 {
		_, _ = unix.SysvShmCtl(id, unix.IPC_RMID, nil) // best effort cleanup
	}
}

// portOpen reports whether 127.0.0.1:port accepts TCP connections.
func portOpen(port int) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 200*time.Millisecond)
	if err != nil {
		return !errors.Is(err, syscall.ECONNREFUSED)
	}
	_ = c.Close()
	return true
}
