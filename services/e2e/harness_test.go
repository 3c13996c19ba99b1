package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/deployments/launch"
	"github.com/anivault/anivault/deployments/launch/launchtest"
	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/faultproxy"
	"github.com/anivault/anivault/pkg/metastore"
	"github.com/anivault/anivault/pkg/natsembed"
	"github.com/anivault/anivault/pkg/pgdb"
	"github.com/anivault/anivault/pkg/pgembed"
	"github.com/anivault/anivault/pkg/procs"
	"github.com/anivault/anivault/pkg/testutil/pgtest"
)

// binDir holds the service binaries, built once in TestMain.
var binDir string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		// The inner loop (go test -short ./...) leaves out the tests that
		// build and run the services as processes; go tool task test and CI
		// run them all.
		fmt.Println("services/e2e: the end-to-end tests do not run with -short")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "anivault-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	_, err = procs.Build(ctx, "../..", dir, "./services/cache-node", "./services/health-monitor", "./services/recovery-manager")
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// bins are the binaries TestMain built, for launch.Options.Bins.
func bins() map[string]string {
	out := map[string]string{}
	for _, b := range []string{"cache-node", "health-monitor", "recovery-manager"} {
		out[b] = filepath.Join(binDir, b)
	}
	return out
}

// Options shape a System.
type Options struct {
	// PrivatePG starts a private PostgreSQL instance the test may stop and kill.
	PrivatePG        bool
	MonitorInterval  time.Duration
	MonitorTimeout   time.Duration
	FailureThreshold int
	RecoveryThresh   int
	AutoRecovery     bool
	RecoveryCheck    time.Duration
	Prefix           string
	// DatabaseURL overrides the DSN the services use (for a fault proxy in front of PostgreSQL).
	DatabaseURL string
	Env         map[string]string
	// NATSCluster, when above 1, runs NATS as an in-process JetStream
	// cluster of that many servers; the services get every server's URL.
	NATSCluster int
}

// System is one running AniVault: NATS, PostgreSQL and the service
// processes, started by the launcher (deployments/launch).
type System struct {
	t    *testing.T
	opts Options
	sys  *launch.System
	NATS *natsembed.Server
	// Cluster holds every server when Options.NATSCluster is set (NATS is the first).
	Cluster []*natsembed.Server
	PG      *pgembed.Instance
	DSN     string
	Nodes   []*Node
	Monitor *procs.Proc
	Manager *procs.Proc
	NC      *nats.Conn
	JS      jetstream.JetStream
	Events  *Recorder
	store   *metastore.Store
}

// Node is one cache-node process.
type Node struct {
	*launch.Node
}

func NewSystem(t *testing.T, opts Options) *System {
	t.Helper()
	if opts.MonitorInterval == 0 {
		opts.MonitorInterval = 200 * time.Millisecond
	}
	if opts.MonitorTimeout == 0 {
		opts.MonitorTimeout = time.Second
	}
	if opts.FailureThreshold == 0 {
		opts.FailureThreshold = 2
	}
	if opts.RecoveryThresh == 0 {
		opts.RecoveryThresh = 2
	}
	if opts.RecoveryCheck == 0 {
		opts.RecoveryCheck = time.Minute
	}
	lopts := launch.Options{Dir: t.TempDir(), Bins: bins(), NATSCluster: opts.NATSCluster, OnProc: func(p *procs.Proc) { keepLog(t, p) }}
	if !opts.PrivatePG {
		lopts.DatabaseURL = pgtest.NewDatabase(t)
	}
	sys := launchtest.Start(t, lopts, 60)
	s := &System{t: t, opts: opts, sys: sys, NATS: sys.NATS, Cluster: sys.Cluster, PG: sys.PG, DSN: sys.DSN}
	nc, err := nats.Connect(sys.NATSURL(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	s.NC = nc
	s.JS, err = jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s.Events = NewRecorder(t, nc, events.NewSubjects(opts.Prefix))
	db, err := pgdb.Open(pgdb.Config{DSN: s.DSN, DialTimeout: 2 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	s.store, _ = metastore.New(db)
	return s
}

// keepLog copies the output of p into $ANIVAULT_E2E_LOGS/<test>/ when the
// test failed (after launchtest has stopped p).
func keepLog(t *testing.T, p *procs.Proc) {
	t.Cleanup(func() {
		dir := os.Getenv("ANIVAULT_E2E_LOGS")
		if !t.Failed() || dir == "" {
			return
		}
		d := filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_"))
		_ = os.MkdirAll(d, 0o755)
		_ = os.WriteFile(filepath.Join(d, p.Name+".log"), []byte(p.Output()), 0o644)
	})
}

func (s *System) dbURL() string {
	if s.opts.DatabaseURL != "" {
		return s.opts.DatabaseURL
	}
	return s.DSN
}

// layers is the environment the tests add to the launcher's common one:
// theirs, then Options.Env, then extra.
func (s *System) layers(extra map[string]string) map[string]string {
	e := map[string]string{
		"DATABASE_URL":          s.dbURL(),
		"SUBJECT_PREFIX":        s.opts.Prefix,
		"LOG_LEVEL":             "debug",
		"HEALTH_CHECK_INTERVAL": s.opts.MonitorInterval.String(),
		"HEALTH_CHECK_TIMEOUT":  s.opts.MonitorTimeout.String(),
	}
	return launch.MergeEnv(launch.MergeEnv(e, s.opts.Env), extra)
}

func tail(s string, n int) string { return launch.Tail(s, n) }

func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := launch.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// StartNode starts a cache-node and waits until it is ready.
func (s *System) StartNode(id string, extra map[string]string) *Node {
	s.t.Helper()
	n := s.NewNode(id, extra)
	if err := n.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.WaitReady(n)
	return n
}

// NewNode prepares a cache-node process without starting it.
func (s *System) NewNode(id string, extra map[string]string) *Node {
	s.t.Helper()
	addr := freeAddr(s.t)
	ln, err := s.sys.NewNode(id, addr, s.layers(launch.MergeEnv(map[string]string{
		"NODE_ID": id, "HTTP_ADDR": addr, "NODE_STATUS_INTERVAL": "200ms",
		"DB_TIMEOUT": "1500ms", "BREAKER_OPEN_TIMEOUT": "500ms", "BREAKER_FAILURE_THRESHOLD": "3",
		"RETRY_BASE_DELAY": "20ms", "RETRY_MAX_DELAY": "200ms", "REPLAY_BATCH_INTERVAL": "0",
		"CACHE_MAX_SIZE": "20000", "SHUTDOWN_DELAY": "0",
	}, extra)))
	if err != nil {
		s.t.Fatal(err)
	}
	n := &Node{Node: ln}
	s.Nodes = append(s.Nodes, n)
	return n
}

// WaitReady polls /readyz until 200.
func (s *System) WaitReady(n *Node) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := launch.WaitReady(ctx, n.Node); err != nil {
		s.t.Fatalf("node %s not ready: %v\n%s", n.ID, err, tail(n.Output(), 30))
	}
}

// StartMonitor starts the health-monitor.
func (s *System) StartMonitor(extra map[string]string) *procs.Proc {
	s.t.Helper()
	if err := s.NewMonitor(extra).Start(); err != nil {
		s.t.Fatal(err)
	}
	return s.Monitor
}

// NewMonitor prepares the health-monitor process without starting it.
func (s *System) NewMonitor(extra map[string]string) *procs.Proc {
	s.t.Helper()
	name := "health-monitor"
	if id := extra["NODE_ID"]; id != "" {
		name += "-" + id
	}
	p, err := s.sys.NewMonitor(name, s.layers(launch.MergeEnv(map[string]string{
		"ADMIN_ADDR":                freeAddr(s.t),
		"NODE_ID":                   "monitor",
		"HEALTH_FAILURE_THRESHOLD":  fmt.Sprint(s.opts.FailureThreshold),
		"HEALTH_RECOVERY_THRESHOLD": fmt.Sprint(s.opts.RecoveryThresh),
	}, extra)))
	if err != nil {
		s.t.Fatal(err)
	}
	s.Monitor = p
	return s.Monitor
}

// StartManager starts the recovery-manager and waits until its endpoints answer.
func (s *System) StartManager(extra map[string]string) *procs.Proc {
	s.t.Helper()
	if err := s.NewManager(extra).Start(); err != nil {
		s.t.Fatal(err)
	}
	s.WaitManager()
	return s.Manager
}

// NewManager prepares the recovery-manager process (once) without starting it.
func (s *System) NewManager(extra map[string]string) *procs.Proc {
	s.t.Helper()
	if s.Manager != nil {
		return s.Manager
	}
	p, err := s.sys.NewManager("recovery-manager", s.layers(launch.MergeEnv(map[string]string{
		"ADMIN_ADDR":              freeAddr(s.t),
		"NODE_ID":                 "manager",
		"AUTO_RECOVERY_ENABLED":   fmt.Sprint(s.opts.AutoRecovery),
		"RECOVERY_CHECK_INTERVAL": s.opts.RecoveryCheck.String(),
		"NODE_TIMEOUT":            "2s",
		"MODE_EVAL_INTERVAL":      "100ms",
	}, extra)))
	if err != nil {
		s.t.Fatal(err)
	}
	s.Manager = p
	return s.Manager
}

// WaitManager waits until status.get answers.
func (s *System) WaitManager() {
	s.t.Helper()
	err := procs.Eventually(30*time.Second, 100*time.Millisecond, func() error {
		_, err := s.Status()
		return err
	})
	if err != nil {
		s.t.Fatalf("manager not answering: %v", err)
	}
}

func (s *System) subject(base string) string { return events.NewSubjects(s.opts.Prefix).Of(base) }

// Request sends a NATS request and decodes the reply into out.
func (s *System) Request(subject string, body any, out any) error {
	b, _ := json.Marshal(body)
	msg, err := s.NC.Request(s.subject(subject), b, 10*time.Second)
	if err != nil {
		return err
	}
	var e events.ErrorReply
	if json.Unmarshal(msg.Data, &e) == nil && e.Error != "" {
		return fmt.Errorf("error reply %d: %s", e.Code, e.Error)
	}
	if out != nil {
		return json.Unmarshal(msg.Data, out)
	}
	return nil
}

// Status asks the manager for the system status.
func (s *System) Status() (events.SystemStatus, error) {
	var st events.SystemStatus
	err := s.Request(events.SubjectStatusGet, map[string]any{}, &st)
	return st, err
}

// ModeKV reads the mode from KV.
func (s *System) ModeKV() (events.ModeChanged, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := s.JS.KeyValue(ctx, events.NewSubjects(s.opts.Prefix).Name(events.BucketName))
	if err != nil {
		return events.ModeChanged{}, err
	}
	e, err := kv.Get(ctx, events.KeyMode)
	if err != nil {
		return events.ModeChanged{}, err
	}
	var mc events.ModeChanged
	return mc, json.Unmarshal(e.Value(), &mc)
}

// Versions returns the table's versions, retrying once on a fresh connection
// (after a restart of PostgreSQL the pooled ones are dead).
func (s *System) Versions() (map[int64]metastore.Version, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := s.store.Versions(ctx)
	if err != nil {
		pgdb.DropIdle(s.store.DB(), 2)
		v, err = s.store.Versions(ctx)
	}
	return v, err
}

// HTTP helpers.

var client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

// Resp is a decoded HTTP response.
type Resp struct {
	Code   int
	Body   []byte
	Header http.Header
}

// JSON decodes the body.
func (r Resp) JSON(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("decode %s: %v", r.Body, err)
	}
}

func do(method, url string, body []byte) (Resp, error) {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return Resp{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return Resp{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return Resp{Code: resp.StatusCode, Body: b, Header: resp.Header}, err
}

func (n *Node) Get(id int64) (Resp, error) {
	return do("GET", fmt.Sprintf("%s/v1/anime/%d", n.URL(), id), nil)
}

func (n *Node) Put(rec map[string]any) (Resp, error) {
	b, _ := json.Marshal(rec)
	return do("PUT", fmt.Sprintf("%s/v1/anime/%v", n.URL(), rec["tmdb_id"]), b)
}

func (n *Node) PutRaw(path string, body []byte) (Resp, error) {
	return do("PUT", n.URL()+path, body)
}

func (n *Node) Delete(id int64) (Resp, error) {
	return do("DELETE", fmt.Sprintf("%s/v1/anime/%d", n.URL(), id), nil)
}

// WriteResult is a PUT/DELETE answer.
type WriteResult struct {
	Status  string `json:"status"`
	Version int64  `json:"version"`
}

func anime(id int64, title string) map[string]any {
	return map[string]any{
		"tmdb_id": id, "title": title, "original_title": "進撃の巨人", "korean_title": "진격의 거인",
		"overview": "Humanity fights titans.", "first_air_date": "2013-04-07", "status": "Ended",
		"vote_average": 8.7, "vote_count": 6100, "popularity": 151.2, "number_of_seasons": 4,
		"genres": []string{"Animation", "Action & Adventure"}, "networks": []string{"MBS"},
		"raw_data": map[string]any{"id": id, "nested": map[string]any{"seasons": []int{1, 2, 3, 4}}},
	}
}

// Recorder keeps every db.*, mode.*, replay.* event seen on NATS.
type Recorder struct {
	mu   sync.Mutex
	evs  []Event
	subj events.Subjects
}

// Event is one recorded event.
type Event struct {
	Subject string
	Data    []byte
	At      time.Time
}

func NewRecorder(t *testing.T, nc *nats.Conn, subj events.Subjects) *Recorder {
	r := &Recorder{subj: subj}
	for _, p := range []string{"db.unhealthy", "db.recovered", "mode.>", "replay.>"} {
		sub, err := nc.Subscribe(subj.Of(p), func(m *nats.Msg) {
			r.mu.Lock()
			r.evs = append(r.evs, Event{Subject: subj.Base(m.Subject), Data: m.Data, At: time.Now()})
			r.mu.Unlock()
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return r
}

// All returns the events recorded so far.
func (r *Recorder) All() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.evs...)
}

// Wait returns the first event on subject after `after` satisfying match.
func (r *Recorder) Wait(t *testing.T, subject string, after time.Time, timeout time.Duration, match func(Event) bool) Event {
	t.Helper()
	var found Event
	err := procs.Eventually(timeout, 10*time.Millisecond, func() error {
		for _, e := range r.All() {
			if e.Subject == subject && !e.At.Before(after) && (match == nil || match(e)) {
				found = e
				return nil
			}
		}
		return fmt.Errorf("no %s yet", subject)
	})
	if err != nil {
		t.Fatalf("waiting for %s: %v; seen: %s", subject, err, r.summary())
	}
	return found
}

func (r *Recorder) summary() string {
	var b strings.Builder
	for _, e := range r.All() {
		fmt.Fprintf(&b, "\n  %s %s %s", e.At.Format("15:04:05.000"), e.Subject, e.Data)
	}
	return b.String()
}

// ModeEvent decodes a mode event.
func (e Event) Mode() events.ModeChanged {
	var mc events.ModeChanged
	_ = json.Unmarshal(e.Data, &mc)
	return mc
}

// streamName is the name of one of the system's streams under its prefix.
func (s *System) streamName(base string) string { return events.NewSubjects(s.opts.Prefix).Name(base) }

// streamEmpty returns the state of the stream named name, and an error while
// it holds messages: a condition for procs.Eventually.
func (s *System) streamEmpty(name string) (jetstream.StreamState, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := s.JS.Stream(ctx, name)
	if err != nil {
		return jetstream.StreamState{}, err
	}
	state := st.CachedInfo().State
	if state.Msgs != 0 {
		return state, fmt.Errorf("stream %s still holds %d messages", name, state.Msgs)
	}
	return state, nil
}

// EnterMaintenance asks the manager for cache-only mode (planned
// maintenance) and waits until every node given knows it.
func (s *System) EnterMaintenance(reason string, nodes ...*Node) events.ModeReply {
	s.t.Helper()
	var mr events.ModeReply
	if err := s.Request(events.SubjectCacheOnlyEnter, events.CacheOnlyEnterRequest{Reason: reason}, &mr); err != nil {
		s.t.Fatal(err)
	}
	for _, n := range nodes {
		waitNodeMode(s.t, n, events.ModeCacheOnly)
	}
	return mr
}

// ExitMaintenance leaves cache-only mode and waits for mode.normal.
func (s *System) ExitMaintenance() Event {
	s.t.Helper()
	at := time.Now()
	var mr events.ModeReply
	if err := s.Request(events.SubjectCacheOnlyExit, map[string]any{}, &mr); err != nil {
		s.t.Fatal(err)
	}
	return s.Events.Wait(s.t, events.SubjectModeNormal, at, 2*time.Minute, nil)
}

// ProxyDatabase puts a fault proxy in front of the private PostgreSQL and
// returns it with the DSN through it; the test's own store keeps the
// direct DSN.
func (s *System) ProxyDatabase() (*faultproxy.Proxy, string) {
	s.t.Helper()
	proxy, dsn, err := s.sys.ProxyDatabase()
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(proxy.Close)
	return proxy, dsn
}
