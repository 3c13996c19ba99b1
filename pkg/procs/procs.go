// Package procs runs programs as child OS processes for tests and the demo:
// built once with `go build`, started with an environment, their output kept
// in a log file and a searchable buffer, stopped with SIGTERM or killed with
// SIGKILL, and restarted with the same settings.
package procs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Build compiles the main packages pkgs (import paths or ./relative paths) into
// dir and returns the binary paths keyed by the last path element.
func Build(ctx context.Context, moduleDir, dir string, pkgs ...string) (map[string]string, error) {
	out := map[string]string{}
	args := []string{"build", "-o", dir + string(os.PathSeparator)}
	args = append(args, pkgs...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = moduleDir
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build: %w: %s", err, b)
	}
	for _, p := range pkgs {
		name := filepath.Base(p)
		out[name] = filepath.Join(dir, name)
	}
	return out, nil
}

// Proc is one child process, restartable.
type Proc struct {
	Name string
	bin  string
	env  []string
	log  string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	exitErr error
	out     bytes.Buffer
	lines   []func(string)
}

// New prepares a process named name running bin with env (added to a minimal
// inherited environment), logging to logPath. It does not start it.
func New(name, bin, logPath string, env map[string]string) *Proc {
	e := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "TMPDIR=" + os.TempDir()}
	for k, v := range env {
		e = append(e, k+"="+v)
	}
	return &Proc{Name: name, bin: bin, env: e, log: logPath}
}

// SetEnv changes one variable for the next start.
func (p *Proc) SetEnv(k, v string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	prefix := k + "="
	for i, kv := range p.env {
		if strings.HasPrefix(kv, prefix) {
			p.env[i] = prefix + v
			return
		}
	}
	p.env = append(p.env, prefix+v)
}

// OnLine registers fn to be called with every output line (from the reader goroutine).
func (p *Proc) OnLine(fn func(line string)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lines = append(p.lines, fn)
}

// Start starts the process.
func (p *Proc) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && !p.exitedLocked() {
		return fmt.Errorf("%s: already running", p.Name)
	}
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("%s log: %w", p.Name, err)
	}
	pr, pw := io.Pipe()
	cmd := exec.Command(p.bin)
	cmd.Env = p.env
	cmd.Stdout = pw
	cmd.Stderr = pw
	// Die with the parent, so a crashed test leaves no orphans.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done, p.exitErr = cmd, done, nil
	fmt.Fprintf(f, "=== start %s pid %d at %s\n", p.Name, cmd.Process.Pid, time.Now().Format(time.RFC3339Nano))
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			line := sc.Text()
			_, _ = f.WriteString(line + "\n")
			p.mu.Lock()
			p.out.WriteString(line + "\n")
			fns := append([]func(string){}, p.lines...)
			p.mu.Unlock()
			for _, fn := range fns {
				fn(line)
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	go func() {
		err := cmd.Wait()
		_ = pw.Close()
		p.mu.Lock()
		p.exitErr = err
		p.mu.Unlock()
		fmt.Fprintf(f, "=== exit %s: %v\n", p.Name, err)
		_ = f.Close()
		close(done)
	}()
	return nil
}

func (p *Proc) exitedLocked() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Running reports whether the process is alive.
func (p *Proc) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil && !p.exitedLocked()
}

// Pid returns the process id of the current run (0 when never started).
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Stop sends SIGTERM and waits up to timeout, then kills.
func (p *Proc) Stop(timeout time.Duration) error {
	return p.signal(syscall.SIGTERM, timeout)
}

// Kill sends SIGKILL and waits for the exit.
func (p *Proc) Kill() error {
	return p.signal(syscall.SIGKILL, 10*time.Second)
}

func (p *Proc) signal(sig syscall.Signal, timeout time.Duration) error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	default:
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
		return nil
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("%s did not exit within %s after %v; killed", p.Name, timeout, sig)
	}
}

// ExitErr returns the error of the last exit (nil when it exited 0 or still runs).
func (p *Proc) ExitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitErr
}

// Output returns everything the process printed across its runs.
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// WaitOutput polls until the output contains s or ctx is done.
func (p *Proc) WaitOutput(ctx context.Context, s string) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if strings.Contains(p.Output(), s) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: waiting for %q: %w", p.Name, s, ctx.Err())
		case <-t.C:
		}
	}
}

// ErrTimeout is returned by Eventually when the condition never held.
var ErrTimeout = errors.New("condition not met before the deadline")

// Eventually polls cond every interval until it returns nil or timeout passes,
// returning the last error wrapped in ErrTimeout.
func Eventually(timeout, interval time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w (%s): %v", ErrTimeout, timeout, err)
		}
		time.Sleep(interval)
	}
}
