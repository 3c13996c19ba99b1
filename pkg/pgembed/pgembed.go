//go:build linux

// Package pgembed runs a private PostgreSQL instance from the locally
// installed server binaries (initdb, postgres).
//
// The instance lives in its own base directory with its own data directory
// and TCP port on 127.0.0.1, trusts the "postgres" user without a password,
// and can be stopped ("fast", "immediate"), killed with SIGKILL to simulate a
// crash, and started again on the same data directory and port; PostgreSQL
// then performs crash recovery. It is meant for tests and demo runners.
//
// The postmaster runs as a direct child process (not daemonized by pg_ctl)
// so that Kill and Close are reliable and a crashed test binary takes the
// server down with it (parent-death signal). When the current process runs
// as root, initdb and postgres run as the "postgres" system user, because
// PostgreSQL refuses to run as root.
//
// The package is Linux-only: it relies on /proc and Linux process attributes.
package pgembed

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/uptrace/bun/driver/pgdriver"
)

// ErrNoBinaries reports that the PostgreSQL server binaries were not found.
var ErrNoBinaries = errors.New(`postgresql server binaries (initdb, postgres) not found: install the Debian package "postgresql" (apt-get install postgresql) or set Options.BinDir`)

// ErrNotRunning is returned by operations that need a running server.
var ErrNotRunning = errors.New("postgres instance is not running")

const (
	// defaultStartTimeout bounds start-up when ctx has no deadline.
	defaultStartTimeout = 60 * time.Second
	// killTimeout bounds the wait for killed processes to disappear.
	killTimeout = 15 * time.Second
	// systemUser is the account initdb and postgres run as under root.
	systemUser = "postgres"
	// superuser is the database superuser created by initdb.
	superuser = "postgres"
)

// Options configures a private instance.
type Options struct {
	// BinDir holds initdb and postgres. "" auto-detects: the directory of
	// initdb on PATH (symlinks resolved), else the newest
	// /usr/lib/postgresql/*/bin.
	BinDir string
	// Port is the TCP port on 127.0.0.1; 0 picks a free port once.
	Port int
	// BaseDir holds the data directory and the server log. "" creates a new
	// directory under os.TempDir() that Close removes. A caller-provided
	// BaseDir is kept by Close; only the data directory and log inside it
	// are removed.
	BaseDir string
	// ServerCertPEM and ServerKeyPEM, when both are set, turn TLS on
	// (ssl = on) with this certificate (chain) and its private key, PEM
	// encoded; they are written into the data directory, readable by the
	// server user only. Plain connections stay allowed, so DSN keeps working.
	ServerCertPEM, ServerKeyPEM []byte
	// ClientCAPEM, with a server certificate, makes every TLS connection
	// (except replication) present a client certificate signed by one of
	// these CA certificates (pg_hba: hostssl ... trust clientcert=verify-ca).
	ClientCAPEM []byte
}

// File names of the TLS material inside the data directory.
const (
	serverCertFile = "server.crt"
	serverKeyFile  = "server.key"
	clientCAFile   = "client-ca.crt"
)

// Instance is a private PostgreSQL server. It is safe for concurrent use.
type Instance struct {
	binDir   string
	baseDir  string
	dataDir  string
	logPath  string
	port     int
	ownsBase bool
	cred     *syscall.Credential // nil: run as the current user

	mu   sync.Mutex
	proc *postmaster // nil when not started by us or after exit
}

// postmaster is one run of the postgres server process.
type postmaster struct {
	pid  int
	done chan struct{} // closed once the process has been reaped
	err  error         // wait error, valid after done
}

func (p *postmaster) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Start initializes a new data directory and starts PostgreSQL on it. The
// returned instance must be closed with Close.
func Start(ctx context.Context, opts Options) (_ *Instance, err error) {
	binDir, err := findBinDir(opts.BinDir)
	if err != nil {
		return nil, fmt.Errorf("pgembed start: %w", err)
	}
	cred, err := runCredential()
	if err != nil {
		return nil, fmt.Errorf("pgembed start: %w", err)
	}
	if (len(opts.ServerCertPEM) == 0) != (len(opts.ServerKeyPEM) == 0) {
		return nil, errors.New("pgembed start: ServerCertPEM and ServerKeyPEM go together")
	}
	if len(opts.ClientCAPEM) > 0 && len(opts.ServerCertPEM) == 0 {
		return nil, errors.New("pgembed start: ClientCAPEM needs ServerCertPEM and ServerKeyPEM")
	}
	inst := &Instance{binDir: binDir, cred: cred, port: opts.Port}

	if opts.BaseDir == "" {
		inst.baseDir, err = makeBaseDir(cred)
		if err != nil {
			return nil, fmt.Errorf("pgembed start: %w", err)
		}
		inst.ownsBase = true
	} else {
		inst.baseDir, err = filepath.Abs(opts.BaseDir)
		if err != nil {
			return nil, fmt.Errorf("pgembed start: %w", err)
		}
		if err := os.MkdirAll(inst.baseDir, 0o700); err != nil {
			return nil, fmt.Errorf("pgembed start: %w", err)
		}
		if err := prepareDir(inst.baseDir, cred); err != nil {
			return nil, fmt.Errorf("pgembed start: %w", err)
		}
	}
	inst.dataDir = filepath.Join(inst.baseDir, "data")
	inst.logPath = filepath.Join(inst.baseDir, "postgres.log")
	defer func() {
		if err != nil {
			inst.removeFiles()
		}
	}()

	if inst.port == 0 {
		inst.port, err = freePort(ctx)
		if err != nil {
			return nil, fmt.Errorf("pgembed start: %w", err)
		}
	}
	if err := inst.initdb(ctx); err != nil {
		return nil, fmt.Errorf("pgembed start: %w", err)
	}
	if err := inst.writeConfig(); err != nil {
		return nil, fmt.Errorf("pgembed start: %w", err)
	}
	if len(opts.ServerCertPEM) > 0 {
		if err := inst.writeTLS(opts); err != nil {
			return nil, fmt.Errorf("pgembed start: %w", err)
		}
	}
	inst.mu.Lock()
	defer inst.mu.Unlock()
	if err := inst.startLocked(ctx); err != nil {
		return nil, fmt.Errorf("pgembed start: %w", err)
	}
	return inst, nil
}

// writeTLS writes the server's certificate, key and client CA into the data
// directory (owned by the server user, the key readable by it alone, as
// PostgreSQL demands), turns ssl on and, with a client CA, requires client
// certificates of TLS connections in pg_hba.conf.
func (i *Instance) writeTLS(opts Options) error {
	files := []struct {
		name string
		data []byte
	}{{serverCertFile, opts.ServerCertPEM}, {serverKeyFile, opts.ServerKeyPEM}}
	conf := fmt.Sprintf("\n# pgembed TLS\nssl = on\nssl_cert_file = '%s'\nssl_key_file = '%s'\n", serverCertFile, serverKeyFile)
	if len(opts.ClientCAPEM) > 0 {
		files = append(files, struct {
			name string
			data []byte
		}{clientCAFile, opts.ClientCAPEM})
		conf += fmt.Sprintf("ssl_ca_file = '%s'\n", clientCAFile)
	}
	for _, f := range files {
		path := filepath.Join(i.dataDir, f.name)
		if err := os.WriteFile(path, f.data, 0o600); err != nil {
			return fmt.Errorf("write %s: %w", f.name, err)
		}
		if i.cred != nil {
			if err := os.Chown(path, int(i.cred.Uid), int(i.cred.Gid)); err != nil {
				return fmt.Errorf("chown %s: %w", f.name, err)
			}
		}
	}
	if err := appendFile(filepath.Join(i.dataDir, "postgresql.conf"), conf); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	if len(opts.ClientCAPEM) == 0 {
		return nil
	}
	// The first matching line decides: TLS connections to any database
	// (replication excepted) need a certificate; plain ones fall through
	// to initdb's trust lines.
	hba := filepath.Join(i.dataDir, "pg_hba.conf")
	old, err := os.ReadFile(hba)
	if err != nil {
		return fmt.Errorf("read pg_hba.conf: %w", err)
	}
	rule := "hostssl all all 127.0.0.1/32 trust clientcert=verify-ca\n"
	if err := os.WriteFile(hba, append([]byte(rule), old...), 0o600); err != nil {
		return fmt.Errorf("write pg_hba.conf: %w", err)
	}
	return nil
}

// appendFile appends text to an existing file.
func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		_ = f.Close() // the write error is the one to report
		return err
	}
	return f.Close()
}

// StartReplica makes a streaming replica of the running instance i
// (pg_basebackup -R: a base backup plus primary_conninfo and standby.signal)
// in a new directory, on a free port, and starts it as a hot standby. The
// returned instance must be closed with Close.
func (i *Instance) StartReplica(ctx context.Context) (_ *Instance, err error) {
	r := &Instance{binDir: i.binDir, cred: i.cred, ownsBase: true}
	if r.baseDir, err = makeBaseDir(i.cred); err != nil {
		return nil, fmt.Errorf("pgembed replica: %w", err)
	}
	r.dataDir = filepath.Join(r.baseDir, "data")
	r.logPath = filepath.Join(r.baseDir, "postgres.log")
	defer func() {
		if err != nil {
			r.removeFiles()
		}
	}()
	if r.port, err = freePort(ctx); err != nil {
		return nil, fmt.Errorf("pgembed replica: %w", err)
	}
	cmd := r.command(ctx, "pg_basebackup", "-D", r.dataDir, "-h", "127.0.0.1", "-p", strconv.Itoa(i.port),
		"-U", superuser, "-R", "-X", "stream", "-c", "fast", "--no-sync")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("pgembed replica: pg_basebackup: %w: %s", err, strings.TrimSpace(string(out)))
	}
	// The copied configuration names the primary's port and socket
	// directory; settings appended later win.
	if err := r.writeConfig(); err != nil {
		return nil, fmt.Errorf("pgembed replica: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.startLocked(ctx); err != nil {
		return nil, fmt.Errorf("pgembed replica: %w", err)
	}
	return r, nil
}

// Promote turns a standby into a primary (pg_ctl promote) and waits until it
// takes writes.
func (i *Instance) Promote(ctx context.Context) error {
	cmd := i.command(ctx, "pg_ctl", "promote", "-w", "-D", i.dataDir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pgembed promote: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// findBinDir returns a directory containing initdb and postgres.
func findBinDir(dir string) (string, error) {
	if dir != "" {
		if !hasBinaries(dir) {
			return "", fmt.Errorf("find binaries in %s: %w", dir, ErrNoBinaries)
		}
		return dir, nil
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil && hasBinaries(filepath.Dir(real)) {
			return filepath.Dir(real), nil
		}
		if hasBinaries(filepath.Dir(p)) {
			return filepath.Dir(p), nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin") // the pattern is valid
	sort.Slice(dirs, func(i, j int) bool {
		return versionOf(dirs[i]) > versionOf(dirs[j])
	})
	for _, d := range dirs {
		if hasBinaries(d) {
			return d, nil
		}
	}
	return "", fmt.Errorf("find binaries: %w", ErrNoBinaries)
}

// versionOf extracts the numeric major version of /usr/lib/postgresql/V/bin.
func versionOf(binDir string) float64 {
	v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(binDir)), 64)
	if err != nil {
		return -1
	}
	return v
}

func hasBinaries(dir string) bool {
	for _, name := range []string{"initdb", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// runCredential returns the credential of the postgres system user when
// running as root, nil otherwise.
func runCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(systemUser)
	if err != nil {
		return nil, fmt.Errorf("lookup user %s (needed to run postgres as root): %w", systemUser, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("parse uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("parse gid %q: %w", u.Gid, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// makeBaseDir creates a fresh base directory that the server user can reach.
func makeBaseDir(cred *syscall.Credential) (string, error) {
	var lastErr error
	for _, parent := range []string{os.TempDir(), "/tmp"} {
		dir, err := os.MkdirTemp(parent, "pgembed-")
		if err != nil {
			lastErr = err
			continue
		}
		if err := prepareDir(dir, cred); err != nil {
			lastErr = err
			_ = os.RemoveAll(dir) // best effort: we just created it
			continue
		}
		return dir, nil
	}
	return "", fmt.Errorf("make base dir: %w", lastErr)
}

// prepareDir hands dir to the server user and checks that the user can
// reach it through all parent directories.
func prepareDir(dir string, cred *syscall.Credential) error {
	if cred == nil {
		return nil
	}
	if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
		return fmt.Errorf("chown %s: %w", dir, err)
	}
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("stat %s: %w", p, err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("directory %s is not reachable by user %s (mode %v)", p, systemUser, fi.Mode().Perm())
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// freePort asks the kernel for a free TCP port on 127.0.0.1.
func freePort(ctx context.Context) (int, error) {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	return port, nil
}

// command builds a command that runs as the server user.
func (i *Instance) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(i.binDir, name), args...)
	cmd.Dir = i.baseDir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: i.cred}
	return cmd
}

func (i *Instance) initdb(ctx context.Context) error {
	cmd := i.command(ctx, "initdb",
		"-D", i.dataDir, "-U", superuser, "-A", "trust", "-E", "UTF8",
		"--no-locale", "--no-sync")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (i *Instance) writeConfig() error {
	conf := fmt.Sprintf(`
# pgembed settings
listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = '%s'
fsync = on
max_connections = 200
shared_buffers = 128MB
`, i.port, strings.ReplaceAll(i.dataDir, "'", "''"))
	f, err := os.OpenFile(filepath.Join(i.dataDir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	if _, err := f.WriteString(conf); err != nil {
		_ = f.Close() // the write error is the one to report
		return fmt.Errorf("write config: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

// DSN returns the URL of the "postgres" database as the postgres superuser.
func (i *Instance) DSN() string { return i.DSNFor("postgres") }

// DSNFor returns the URL of database db as the postgres superuser.
func (i *Instance) DSNFor(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(superuser),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(i.port)),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Port returns the TCP port, stable across restarts.
func (i *Instance) Port() int { return i.port }

// DataDir returns the PostgreSQL data directory.
func (i *Instance) DataDir() string { return i.dataDir }

// LogPath returns the server log file.
func (i *Instance) LogPath() string { return i.logPath }

// Running reports whether the postmaster started by this instance is alive.
func (i *Instance) Running() bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.proc != nil && !i.proc.exited()
}

// Start starts the server again on the same data directory and port, after
// Stop or Kill. After Kill PostgreSQL performs crash recovery.
func (i *Instance) Start(ctx context.Context) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if err := i.startLocked(ctx); err != nil {
		return fmt.Errorf("pgembed start: %w", err)
	}
	return nil
}

func (i *Instance) startLocked(ctx context.Context) error {
	if i.proc != nil && !i.proc.exited() {
		return errors.New("already running")
	}
	i.proc = nil
	if err := i.removeStaleLock(); err != nil {
		return err
	}

	logFile, err := os.OpenFile(i.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	// Not CommandContext: the server outlives the start-up context.
	cmd := exec.Command(filepath.Join(i.binDir, "postgres"), "-D", i.dataDir)
	cmd.Dir = i.baseDir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: i.cred,
		Setpgid:    true,
		// Take the server down if this process dies without Close.
		Pdeathsig: syscall.SIGKILL,
	}

	p := &postmaster{done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the creating OS thread exits, so keep this
		// goroutine (and its thread) alive until the server has exited.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		p.pid = cmd.Process.Pid
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	err = <-started
	_ = logFile.Close() // the child holds its own descriptor
	if err != nil {
		return fmt.Errorf("exec postgres: %w", err)
	}
	i.proc = p

	if err := i.waitReady(ctx, p); err != nil {
		i.killLocked()
		return err
	}
	return nil
}

// waitReady polls SELECT 1 until it succeeds, the server exits, or the
// deadline passes.
func (i *Instance) waitReady(ctx context.Context, p *postmaster) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultStartTimeout)
		defer cancel()
	}
	db := sql.OpenDB(pgdriver.NewConnector(
		pgdriver.WithDSN(i.DSN()),
		pgdriver.WithDialTimeout(time.Second),
		pgdriver.WithTimeout(2*time.Second),
	))
	defer db.Close()
	db.SetMaxIdleConns(0)

	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		var one int
		lastErr = db.QueryRowContext(actx, "SELECT 1").Scan(&one)
		cancel()
		if lastErr == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("postgres exited during start-up (%v): %s", p.err, i.logTail())
		case <-ctx.Done():
			return fmt.Errorf("wait ready: %w (last error: %v): %s", ctx.Err(), lastErr, i.logTail())
		case <-tick.C:
		}
	}
}

// logTail returns the end of the server log for error messages.
func (i *Instance) logTail() string {
	f, err := os.Open(i.logPath)
	if err != nil {
		return "(no log)"
	}
	defer f.Close()
	const max = 2048
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		if _, err := f.Seek(-max, io.SeekEnd); err != nil {
			return "(unreadable log)"
		}
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return "(unreadable log)"
	}
	return "log: " + strings.TrimSpace(string(b))
}

// Stop shuts the server down and waits for it to exit. mode is "smart",
// "fast" or "immediate" with the same meaning as pg_ctl stop -m; the signal
// is sent to the postmaster directly, which is exactly what pg_ctl does.
// Stop is a no-op when the server is not running.
func (i *Instance) Stop(ctx context.Context, mode string) error {
	var sig syscall.Signal
	switch mode {
	case "smart":
		sig = syscall.SIGTERM
	case "fast":
		sig = syscall.SIGINT
	case "immediate":
		sig = syscall.SIGQUIT
	default:
		return fmt.Errorf("pgembed stop: unknown mode %q", mode)
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	p := i.proc
	if p == nil || p.exited() {
		i.proc = nil
		return nil
	}
	if err := syscall.Kill(p.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("pgembed stop: signal postmaster: %w", err)
	}
	select {
	case <-p.done:
		i.proc = nil
		return nil
	case <-ctx.Done():
		return fmt.Errorf("pgembed stop %s: %w", mode, ctx.Err())
	}
}

// Kill simulates a crash: it SIGKILLs the postmaster named in postmaster.pid
// and all its child processes, and waits until they are gone and the port
// refuses connections. The data directory is left as a crash would leave it.
func (i *Instance) Kill() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	pid := 0
	if p, err := i.lockFilePID(); err == nil && processAlive(p) && i.processInDataDir(p) {
		pid = p
	} else if i.proc != nil && !i.proc.exited() {
		pid = i.proc.pid
	}
	if pid == 0 {
		i.proc = nil
		return fmt.Errorf("pgembed kill: %w", ErrNotRunning)
	}
	killed := killTree(pid)
	if i.proc != nil && i.proc.pid != pid {
		// The lock file does not name our child; kill it too.
		killed = append(killed, killTree(i.proc.pid)...)
	}
	if err := i.waitKilled(killed); err != nil {
		return fmt.Errorf("pgembed kill: %w", err)
	}
	return nil
}

// killLocked is Kill for internal error paths; errors are ignored because
// the caller is already failing.
func (i *Instance) killLocked() {
	if i.proc == nil {
		return
	}
	_ = i.waitKilled(killTree(i.proc.pid)) // best effort on an error path
}

// waitKilled waits for our postmaster to be reaped, the killed processes to
// be gone and the port to refuse connections.
func (i *Instance) waitKilled(pids []int) error {
	deadline := time.Now().Add(killTimeout)
	if p := i.proc; p != nil {
		select {
		case <-p.done:
			i.proc = nil
		case <-time.After(killTimeout):
			return fmt.Errorf("postmaster %d not reaped after SIGKILL", p.pid)
		}
	}
	for {
		alive := -1
		for _, pid := range pids {
			if processAlive(pid) {
				alive = pid
				break
			}
		}
		open := portOpen(i.port)
		if alive < 0 && !open {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after SIGKILL: process %d alive or port %d open (%v)", alive, i.port, open)
		}
		time.Sleep(20 * time.Millisecond) // poll interval under a deadline
	}
}

// lockFilePID reads the postmaster pid from the first line of postmaster.pid.
func (i *Instance) lockFilePID() (int, error) {
	lines, err := i.lockFileLines()
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(lines[0]))
	if err != nil {
		return 0, fmt.Errorf("parse postmaster.pid: %w", err)
	}
	return pid, nil
}

func (i *Instance) lockFileLines() ([]string, error) {
	b, err := os.ReadFile(filepath.Join(i.dataDir, "postmaster.pid"))
	if err != nil {
		return nil, fmt.Errorf("read postmaster.pid: %w", err)
	}
	return strings.Split(string(b), "\n"), nil
}

// removeStaleLock removes postmaster.pid left behind by a killed server,
// after releasing the server's SysV shared memory segment. It fails if the
// pid in the file is a live process working in this data directory.
func (i *Instance) removeStaleLock() error {
	lines, err := i.lockFileLines()
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(lines[0]))
	if err == nil && processAlive(pid) && i.processInDataDir(pid) {
		return fmt.Errorf("postmaster %d is still running in %s", pid, i.dataDir)
	}
	// Line 7 is "<shm key> <shm id>".
	if len(lines) >= 7 {
		if f := strings.Fields(lines[6]); len(f) == 2 {
			if id, err := strconv.Atoi(f[1]); err == nil {
				releaseShm(id)
			}
		}
	}
	if err := os.Remove(filepath.Join(i.dataDir, "postmaster.pid")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale postmaster.pid: %w", err)
	}
	return nil
}

// processInDataDir reports whether pid's working directory is the data
// directory, which holds for a postmaster and its children.
func (i *Instance) processInDataDir(pid int) bool {
	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	if err != nil {
		// Unknown (e.g. another user's process): assume it is ours, which
		// errs on the side of not corrupting a live server.
		return !errors.Is(err, os.ErrNotExist)
	}
	want, err := filepath.EvalSymlinks(i.dataDir)
	if err != nil {
		want = i.dataDir
	}
	return cwd == want || cwd == i.dataDir
}

// Close stops the server (immediate mode, then SIGKILL if needed) and
// removes the files it created.
func (i *Instance) Close(ctx context.Context) error {
	if err := i.Stop(ctx, "immediate"); err != nil {
		if kerr := i.Kill(); kerr != nil && !errors.Is(kerr, ErrNotRunning) {
			return fmt.Errorf("pgembed close: %w", errors.Join(err, kerr))
		}
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if err := i.removeStaleLock(); err != nil {
		return fmt.Errorf("pgembed close: %w", err)
	}
	if err := i.removeFiles(); err != nil {
		return fmt.Errorf("pgembed close: %w", err)
	}
	return nil
}

func (i *Instance) removeFiles() error {
	if i.ownsBase {
		return os.RemoveAll(i.baseDir)
	}
	return errors.Join(os.RemoveAll(i.dataDir), os.RemoveAll(i.logPath))
}

// CreateDatabase creates an empty database owned by the postgres user.
func (i *Instance) CreateDatabase(ctx context.Context, name string) error {
	db := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(i.DSN())))
	defer db.Close()
	if _, err := db.ExecContext(ctx, "CREATE DATABASE "+QuoteIdent(name)); err != nil {
		return fmt.Errorf("pgembed create database %s: %w", name, err)
	}
	return nil
}

// QuoteIdent quotes a PostgreSQL identifier.
func QuoteIdent(name string) string {
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}
