package deployments_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/anivault"
	"github.com/anivault/anivault/pkg/topology"
)

// The NATS configurations of this directory.
var (
	clusterConfs = []string{"nats/nats-1.conf", "nats/nats-2.conf", "nats/nats-3.conf"}
	singleConf   = "nats/testdata/single.conf"
	composeConf  = "compose/nats.conf"
)

// roles are the NATS users of nats/accounts.conf.
var roles = []string{"producer", "health-monitor", "recovery-manager", "cache-node", "operator", "admin"}

// natsUsers returns the users of nats/accounts.conf (through the single-server
// config that includes it): name -> password.
func natsUsers(t *testing.T) map[string]string {
	t.Helper()
	opts, err := server.ProcessConfigFile(singleConf)
	if err != nil {
		t.Fatalf("%s: %v", singleConf, err)
	}
	users := map[string]string{}
	for _, u := range opts.Users {
		users[u.Username] = u.Password
	}
	return users
}

// checkNATSUser checks that a service connects as its own role with the
// password accounts.conf expects.
func checkNATSUser(t *testing.T, where, svc, user, password string, users map[string]string) {
	t.Helper()
	if user != svc {
		t.Errorf("%s: NATS_USER %q, want %q (each service connects with its own role's permissions)", where, user, svc)
		return
	}
	if want, ok := users[user]; !ok {
		t.Errorf("%s: NATS user %s is not in nats/accounts.conf", where, user)
	} else if password != want {
		t.Errorf("%s: NATS_PASSWORD for %s does not match nats/accounts.conf", where, user)
	}
}

func TestNATSConfigsLoad(t *testing.T) {
	all := append([]string{"nats/cluster.conf", singleConf, composeConf}, clusterConfs...)
	for _, f := range all {
		opts, err := server.ProcessConfigFile(f)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if !opts.JetStream {
			t.Errorf("%s: JetStream is not enabled", f)
		}
		if !opts.SyncAlways {
			t.Errorf("%s: want jetstream { sync_interval: always }, so an acknowledged buffered write is on disk", f)
		}
		if opts.MaxPayload != 0 && opts.MaxPayload < topology.MaxBufferMsgBytes {
			t.Errorf("%s: max_payload %d is below the buffer's %d-byte messages", f, opts.MaxPayload, topology.MaxBufferMsgBytes)
		}
		if opts.SystemAccount != "SYS" {
			t.Errorf("%s: system account %q, want SYS", f, opts.SystemAccount)
		}
		have := map[string]bool{}
		for _, u := range opts.Users {
			have[u.Username] = true
			if u.Username != "sys" && (u.Account == nil || u.Account.Name != "ANIVAULT") {
				t.Errorf("%s: user %s is not in the ANIVAULT account", f, u.Username)
			}
			if u.Username != "sys" && u.Permissions == nil {
				t.Errorf("%s: user %s has no permissions: it may publish anything", f, u.Username)
			}
		}
		for _, r := range roles {
			if !have[r] {
				t.Errorf("%s: no user %s", f, r)
			}
		}
	}
	for i, f := range clusterConfs {
		opts, err := server.ProcessConfigFile(f)
		if err != nil {
			continue // reported above
		}
		if want := fmt.Sprintf("nats-%d", i+1); opts.ServerName != want {
			t.Errorf("%s: server_name %q, want %q", f, opts.ServerName, want)
		}
		if opts.Cluster.Name != "anivault" || opts.Cluster.Port != 6222 || len(opts.Routes) != 3 {
			t.Errorf("%s: cluster %q port %d with %d routes, want anivault, 6222, 3 routes", f, opts.Cluster.Name, opts.Cluster.Port, len(opts.Routes))
		}
		if opts.StoreDir == "" {
			t.Errorf("%s: no JetStream store_dir", f)
		}
	}
}

// ---------------------------------------------------------------- an in-process server

// serverLog records what the server logs at error level (permission violations among them).
type serverLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *serverLog) add(format string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, v...))
}

func (l *serverLog) Noticef(string, ...any)    {}
func (l *serverLog) Warnf(string, ...any)      {}
func (l *serverLog) Debugf(string, ...any)     {}
func (l *serverLog) Tracef(string, ...any)     {}
func (l *serverLog) Fatalf(f string, v ...any) { l.add(f, v...) }
func (l *serverLog) Errorf(f string, v ...any) { l.add(f, v...) }

func (l *serverLog) filter(s string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range l.lines {
		if strings.Contains(strings.ToLower(line), strings.ToLower(s)) {
			out = append(out, line)
		}
	}
	return out
}

// startServer runs the single-server configuration in process with its store in t.TempDir().
func startServer(t *testing.T, conf string, tweak func(*server.Options)) (*server.Server, *serverLog) {
	t.Helper()
	srv, log := startServerAsync(t, conf, tweak)
	if !srv.ReadyForConnections(15 * time.Second) {
		t.Fatalf("%s: server not ready", conf)
	}
	return srv, log
}

// connect connects as user with the password of accounts.conf.
func connect(t *testing.T, url, user string, users map[string]string) *nats.Conn {
	t.Helper()
	pw, ok := users[user]
	if !ok {
		t.Fatalf("no NATS user %s", user)
	}
	nc, err := nats.Connect(url, nats.UserInfo(user, pw), nats.Name("deployments-test-"+user),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})) // LastError keeps it
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// violated reports whether the server refused the last operation on subject:
// permission violations arrive asynchronously, before the PONG of a Flush.
func violated(t *testing.T, nc *nats.Conn, subject string) bool {
	t.Helper()
	if err := nc.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	err := nc.LastError()
	return err != nil && errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), `"`+subject+`"`)
}

func TestWrongPasswordIsRefused(t *testing.T) {
	srv, _ := startServer(t, singleConf, nil)
	_, err := nats.Connect(srv.ClientURL(), nats.UserInfo("producer", "not-the-password"))
	if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("connect with a wrong password: %v, want an authorization violation", err)
	}
	_, err = nats.Connect(srv.ClientURL())
	if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("anonymous connect: %v, want an authorization violation", err)
	}
}

// A producer service pauses on cache_only with the credentials we ship: the
// Go client's Mode and WatchMode work with the producer role.
func TestProducerFollowsTheMode(t *testing.T) {
	srv, _ := startServer(t, singleConf, nil)
	url := srv.ClientURL()
	users := natsUsers(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mgr := connect(t, url, "recovery-manager", users)
	js, err := jetstream.New(mgr)
	if err != nil {
		t.Fatal(err)
	}
	top, _ := topology.New(js, events.NewSubjects(""))
	kv, err := top.EnsureEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	put := func(mode events.Mode, epoch int64) {
		b, _ := json.Marshal(events.ModeChanged{Mode: mode, Epoch: epoch, Since: time.Now().UTC()})
		if _, err := kv.Put(ctx, events.KeyMode, b); err != nil {
			t.Fatal(err)
		}
	}
	put(events.ModeNormal, 1)
	c, err := anivault.New(connect(t, url, "producer", users), anivault.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if mc, err := c.Mode(ctx); err != nil || mc.Mode != events.ModeNormal || mc.Epoch != 1 {
		t.Fatalf("Mode as the producer: %+v %v", mc, err)
	}
	ch, err := c.WatchMode(ctx)
	if err != nil {
		t.Fatalf("WatchMode as the producer: %v", err)
	}
	put(events.ModeCacheOnly, 2)
	for {
		select {
		case mc := <-ch:
			if mc.Mode == events.ModeCacheOnly && mc.Epoch == 2 {
				return
			}
		case <-ctx.Done():
			t.Fatal("the producer never saw cache_only through WatchMode")
		}
	}
}

// TestProducerCannotChangeTheMode is the test: a producer's
// credentials are refused when publishing mode.cache_only, and nothing
// receives or stores it, while its own subjects work.
func TestProducerCannotChangeTheMode(t *testing.T) {
	srv, _ := startServer(t, singleConf, nil)
	url := srv.ClientURL()
	users := natsUsers(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// A cache-node provisions the streams, as at start: its permissions suffice.
	node := connect(t, url, "cache-node", users)
	js, err := jetstream.New(node)
	if err != nil {
		t.Fatal(err)
	}
	top, _ := topology.New(js, events.NewSubjects(""))
	if _, err := top.EnsureEvents(ctx); err != nil {
		t.Fatalf("cache-node provisions the events stream: %v", err)
	}
	if err := top.EnsureWrites(ctx, topology.BufferLimits{}); err != nil {
		t.Fatalf("cache-node provisions the write streams: %v", err)
	}

	// An operator watches every mode event.
	op := connect(t, url, "operator", users)
	seen := make(chan *nats.Msg, 16)
	if _, err := op.ChanSubscribe("mode.>", seen); err != nil {
		t.Fatal(err)
	}
	if violated(t, op, "mode.>") {
		t.Fatal("the operator may not watch mode.>")
	}

	producer := connect(t, url, "producer", users)
	if err := producer.Publish(events.SubjectModeCacheOnly, []byte(`{"mode":"cache_only","epoch":99}`)); err != nil {
		t.Fatal(err)
	}
	if !violated(t, producer, events.SubjectModeCacheOnly) {
		t.Fatalf("publishing mode.cache_only as the producer was not refused (last error: %v)", producer.LastError())
	}
	pjs, _ := jetstream.New(producer)
	pctx, pcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	if _, err := pjs.Publish(pctx, events.SubjectModeCacheOnly, []byte(`{}`)); err == nil {
		t.Error("a JetStream publish of mode.cache_only as the producer was acknowledged")
	}
	pcancel()
	_ = op.Flush()
	select {
	case m := <-seen:
		t.Fatalf("the operator received %s published by the producer", m.Subject)
	case <-time.After(200 * time.Millisecond):
	}
	st, err := js.Stream(ctx, events.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	if n := st.CachedInfo().State.Msgs; n != 0 {
		t.Fatalf("the events stream stored %d messages from the producer", n)
	}

	// The producer's own job: a JetStream-acknowledged upsert and delete.
	ack, err := pjs.Publish(ctx, events.SubjectMetadataUpsert, []byte(`{"tmdb_id":1429,"title":"Attack on Titan"}`))
	if err != nil {
		t.Fatalf("the producer cannot publish metadata.upsert: %v", err)
	}
	if ack.Stream != events.StreamMetadata {
		t.Fatalf("metadata.upsert stored in %q, want %s", ack.Stream, events.StreamMetadata)
	}
	if _, err := pjs.Publish(ctx, events.SubjectMetadataDelete, []byte(`{"tmdb_id":1429}`)); err != nil {
		t.Fatalf("the producer cannot publish metadata.delete: %v", err)
	}

	// Only the health-monitor publishes db.*.
	if err := node.Publish(events.SubjectDBUnhealthy, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if !violated(t, node, events.SubjectDBUnhealthy) {
		t.Fatal("a cache-node may publish db.unhealthy")
	}
	monitor := connect(t, url, "health-monitor", users)
	mjs, _ := jetstream.New(monitor)
	if _, err := mjs.Publish(ctx, events.SubjectDBUnhealthy, []byte(`{"reason":"test"}`)); err != nil {
		t.Fatalf("the health-monitor cannot publish db.unhealthy: %v", err)
	}
	if violated(t, monitor, events.SubjectDBUnhealthy) {
		t.Fatal("the health-monitor was refused db.unhealthy")
	}
}

// TestPermissionMatrix checks each role's rights subject by subject.
func TestPermissionMatrix(t *testing.T) {
	srv, _ := startServer(t, singleConf, nil)
	users := natsUsers(t)
	type check struct {
		pub     bool // publish, else subscribe
		subject string
		queue   string
		allowed bool
	}
	pub := func(s string, ok bool) check { return check{pub: true, subject: s, allowed: ok} }
	sub := func(s string, ok bool) check { return check{subject: s, allowed: ok} }
	qsub := func(s, q string, ok bool) check { return check{subject: s, queue: q, allowed: ok} }
	matrix := map[string][]check{
		"producer": {
			pub("metadata.upsert", true), pub("metadata.delete", true), pub("metadata.get", true),
			pub("mode.cache_only", false), pub("mode.normal", false), pub("db.unhealthy", false),
			pub("recovery.force", false), pub("status.get", false), pub("buffer.writes", false),
			pub("metadata.changed", false), pub("$KV.anivault.mode", false), pub("$JS.API.STREAM.DELETE.ANIVAULT_BUFFER", false),
			pub("$JS.API.STREAM.PURGE.ANIVAULT_BUFFER", false), pub("$JS.API.STREAM.PURGE.KV_anivault", false),
			pub("$JS.API.STREAM.DELETE.KV_anivault", false), pub("$JS.API.CONSUMER.DELETE.ANIVAULT_BUFFER.cache-node-replay", false),
			pub("$JS.API.CONSUMER.CREATE.ANIVAULT_BUFFER.x", false), pub("changes.1429", false),
			pub("$JS.API.DIRECT.GET.KV_anivault.$KV.anivault.mode", true), pub("$JS.API.CONSUMER.CREATE.KV_anivault.w.$KV.anivault.mode", true),
			sub("_INBOX.abc", true), sub("metadata.get", false), sub("recovery.force", false),
			sub("status.get", false), sub("mode.>", true), sub(">", false),
		},
		"health-monitor": {
			pub("db.health", true), pub("db.unhealthy", true), pub("db.recovered", true),
			pub("$JS.API.STREAM.INFO.ANIVAULT_EVENTS", true),
			pub("mode.cache_only", false), pub("metadata.upsert", false), pub("$KV.anivault.mode", false),
			sub("_INBOX.abc", true), sub("recovery.force", false), sub("status.get", false), sub("metadata.get", false),
		},
		"recovery-manager": {
			pub("mode.cache_only", true), pub("mode.recovering", true), pub("mode.normal", true),
			pub("$KV.anivault.mode", true), pub("$JS.API.CONSUMER.MSG.NEXT.ANIVAULT_EVENTS.recovery-manager-db", true),
			pub("$JS.ACK.ANIVAULT_EVENTS.recovery-manager-db.1.1.1.0.0", true),
			pub("db.unhealthy", false), pub("metadata.upsert", false), pub("metadata.changed", false),
			pub("recovery.force", false),
			sub("recovery.force", true), qsub("recovery.cache_only.enter", "q", true), sub("status.get", true),
			sub("db.health", true), sub("node.status", true),
			sub("$SRV.PING", true), sub("$SRV.INFO.anivault-recovery-manager", true),
			sub("$SRV.INFO.anivault-cache-node", false), sub("metadata.get", false), sub("mode.>", false),
		},
		"cache-node": {
			pub("buffer.writes", true), pub("metadata.changed", true), pub("node.status", true),
			pub("replay.completed", true), pub("poison.metadata", true), pub("poison.buffer", true), pub("changes.1429", true),
			pub("$JS.API.STREAM.INFO.ANIVAULT_BUFFER", true),
			pub("$JS.FC.KV_anivault.x.1", true), pub("$JS.ACK.ANIVAULT_METADATA.cache-node-writer.1.1.1.0.0", true),
			pub("db.unhealthy", false), pub("db.health", false), pub("mode.cache_only", false), pub("mode.normal", false),
			pub("$KV.anivault.mode", false), pub("metadata.upsert", false), pub("recovery.force", false), pub("status.get", false),
			qsub("metadata.get", "cache-nodes", true), sub("metadata.get", false), qsub("metadata.get", "thieves", false),
			sub("metadata.changed", true), sub("db.health", true), sub("db.unhealthy", false), sub("$SRV.PING", true), sub("$SRV.STATS.anivault-cache-node", true),
			sub("$SRV.PING.anivault-recovery-manager", false),
			sub("recovery.force", false), qsub("recovery.force", "q", false), sub("status.get", false), sub("mode.>", false),
		},
		"operator": {
			pub("recovery.force", true), pub("recovery.cache_only.enter", true), pub("recovery.cache_only.exit", true),
			pub("status.get", true), pub("metadata.get", true), pub("$SRV.INFO", true),
			pub("$JS.API.STREAM.INFO.KV_anivault", true), pub("$JS.API.DIRECT.GET.KV_anivault.$KV.anivault.mode", true),
			pub("mode.normal", false), pub("db.recovered", false), pub("$KV.anivault.mode", false),
			pub("metadata.upsert", false), pub("$JS.API.STREAM.DELETE.ANIVAULT_BUFFER", false),
			pub("$JS.API.STREAM.PURGE.ANIVAULT_BUFFER", false), pub("$JS.API.CONSUMER.DELETE.ANIVAULT_BUFFER.cache-node-replay", false),
			sub("mode.>", true), sub("db.>", true), sub("_INBOX.abc", true),
			sub("recovery.force", false), sub("status.get", false), sub("metadata.get", false), sub("$SRV.PING", false),
		},
		"admin": {
			pub("$JS.API.STREAM.PURGE.ANIVAULT_POISON", true),
			pub("mode.normal", false), pub("db.unhealthy", false), pub("$KV.anivault.mode", false),
			sub("recovery.force", false), sub("status.get", false),
		},
	}
	for _, role := range roles {
		checks, ok := matrix[role]
		if !ok {
			t.Errorf("no permission checks for role %s", role)
			continue
		}
		t.Run(role, func(t *testing.T) {
			for _, c := range checks {
				// A fresh connection per check: LastError then belongs to this check alone.
				nc := connect(t, srv.ClientURL(), role, users)
				what := "publish"
				if c.pub {
					if err := nc.Publish(c.subject, []byte(`{}`)); err != nil {
						t.Fatal(err)
					}
				} else {
					what = "subscribe"
					var err error
					if c.queue != "" {
						what += " (queue " + c.queue + ")"
						_, err = nc.QueueSubscribe(c.subject, c.queue, func(*nats.Msg) {})
					} else {
						_, err = nc.Subscribe(c.subject, func(*nats.Msg) {})
					}
					if err != nil {
						t.Fatal(err)
					}
				}
				if refused := violated(t, nc, c.subject); refused == c.allowed {
					t.Errorf("%s may %s %s: got %v, want %v (last error: %v)", role, what, c.subject, !refused, c.allowed, nc.LastError())
				}
				nc.Close()
			}
		})
	}
}

// TestClusterForms starts the three servers of nats-1.conf .. nats-3.conf in
// process (routes rewritten to loopback ports) and has a cache-node create
// the write streams with BUFFER_REPLICAS=3, as k8s/configmap.yaml sets.
func TestClusterForms(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-server cluster")
	}
	ports := make([]int, len(clusterConfs))
	for i := range ports {
		ports[i] = freePort(t)
	}
	var routes []string
	for _, p := range ports {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
	}
	var srvs []*server.Server
	var logs []*serverLog
	for i, conf := range clusterConfs {
		srv, log := startServerAsync(t, conf, func(o *server.Options) {
			o.Host, o.Port, o.HTTPPort = "127.0.0.1", -1, 0
			o.Cluster.Host, o.Cluster.Port = "127.0.0.1", ports[i]
			o.Routes = server.RoutesFromStr(strings.Join(routes, ","))
		})
		srvs = append(srvs, srv)
		logs = append(logs, log)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, l := range logs {
				t.Logf("server %d errors: %v", i+1, l.filter(""))
			}
		}
	})
	for _, s := range srvs {
		if !s.ReadyForConnections(15 * time.Second) {
			t.Fatalf("%s not ready", s.Name())
		}
	}
	var urls []string
	for _, s := range srvs {
		urls = append(urls, s.ClientURL())
	}
	users := natsUsers(t)
	nc := connect(t, strings.Join(urls, ","), "cache-node", users)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	top, _ := topology.New(js, events.NewSubjects(""))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		// Until the cluster has elected its meta leader, JetStream API requests go unanswered.
		actx, acancel := context.WithTimeout(ctx, 3*time.Second)
		_, err = top.EnsureEvents(actx)
		if err == nil {
			err = top.EnsureWrites(actx, topology.BufferLimits{Replicas: 3})
		}
		acancel()
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("provision on the cluster: %v", err)
	}
	st, err := js.Stream(ctx, events.StreamBuffer)
	if err != nil {
		t.Fatal(err)
	}
	info := st.CachedInfo()
	if info.Config.Replicas != 3 || info.Cluster == nil || info.Cluster.Name != "anivault" {
		t.Fatalf("buffer stream: replicas %d, cluster %+v; want 3 replicas in cluster anivault", info.Config.Replicas, info.Cluster)
	}
	t.Logf("ANIVAULT_BUFFER: leader %s, replicas %d", info.Cluster.Leader, len(info.Cluster.Replicas))
}

// startServerAsync is startServer without waiting for readiness (cluster
// members wait for each other).
func startServerAsync(t *testing.T, conf string, tweak func(*server.Options)) (*server.Server, *serverLog) {
	t.Helper()
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("%s: %v", conf, err)
	}
	opts.StoreDir = t.TempDir()
	opts.NoSigs = true
	if tweak != nil {
		tweak(opts)
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("%s: %v", conf, err)
	}
	log := &serverLog{}
	srv.SetLoggerV2(log, false, false, false)
	go srv.Start()
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	return srv, log
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// request sends a request and decodes a JSON reply.
func request(nc *nats.Conn, subject string, body any, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	m, err := nc.Request(subject, b, 5*time.Second)
	if err != nil {
		return fmt.Errorf("%s: %w", subject, err)
	}
	if m.Header.Get("Nats-Service-Error-Code") != "" {
		return fmt.Errorf("%s: service error %s: %s", subject, m.Header.Get("Nats-Service-Error-Code"), m.Data)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(m.Data, out); err != nil {
		return fmt.Errorf("%s: %w: %s", subject, err, m.Data)
	}
	return nil
}
