package deployments_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/anivault"
	"github.com/anivault/anivault/pkg/procs"
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
		checkServerOptions(t, f, opts)
	}
	for i, f := range clusterConfs {
		opts, err := server.ProcessConfigFile(f)
		if err != nil {
			continue // reported above
		}
		if want := fmt.Sprintf("nats-%d", i+1); opts.ServerName != want {
			t.Errorf("%s: server_name %q, want %q", f, opts.ServerName, want)
		}
		checkClusterOptions(t, f, opts)
	}
}

// checkServerOptions checks what every AniVault server configuration must have.
func checkServerOptions(t *testing.T, f string, opts *server.Options) {
	t.Helper()
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

// checkClusterOptions checks a cluster member: three routes, each dialled
// with the route user's credentials, and routes accepted only with them.
func checkClusterOptions(t *testing.T, f string, opts *server.Options) {
	t.Helper()
	if opts.Cluster.Name != "anivault" || opts.Cluster.Port != 6222 || len(opts.Routes) != 3 {
		t.Errorf("%s: cluster %q port %d with %d routes, want anivault, 6222, 3 routes", f, opts.Cluster.Name, opts.Cluster.Port, len(opts.Routes))
	}
	if opts.StoreDir == "" {
		t.Errorf("%s: no JetStream store_dir", f)
	}
	if opts.Cluster.Username == "" || opts.Cluster.Password == "" {
		t.Errorf("%s: cluster { authorization } has no user and password: any host that reaches port 6222 joins the cluster and sees every account's traffic", f)
	}
	for _, r := range opts.Routes {
		pw, _ := r.User.Password()
		if r.User.Username() != opts.Cluster.Username || pw != opts.Cluster.Password {
			t.Errorf("%s: route %s does not carry the route user's credentials", f, r.Redacted())
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

func (l *serverLog) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = nil
}

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

// connect connects as user with the password of accounts.conf and the
// user's own inbox prefix (_INBOX.<user>), the only inboxes it may read.
func connect(t *testing.T, url, user string, users map[string]string, extra ...nats.Option) *nats.Conn {
	t.Helper()
	pw, ok := users[user]
	if !ok {
		t.Fatalf("no NATS user %s", user)
	}
	opts := append([]nats.Option{nats.UserInfo(user, pw), nats.Name("deployments-test-" + user),
		nats.CustomInboxPrefix(inboxPrefix(user)),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})}, // LastError keeps it
		extra...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// inboxPrefix is a role's NATS_INBOX_PREFIX in the shipped deployments.
func inboxPrefix(role string) string { return "_INBOX." + role }

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

// provisionAsAdmin makes the whole topology as the admin role, as the
// provision command does, and returns the admin's JetStream handle.
func provisionAsAdmin(t *testing.T, url string, users map[string]string, replicas int) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(connect(t, url, "admin", users))
	if err != nil {
		t.Fatal(err)
	}
	top, _ := topology.New(js, events.NewSubjects(""))
	top.Replicas = replicas
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := top.EnsureAll(ctx, topology.BufferLimits{Replicas: replicas}); err != nil {
		t.Fatalf("provision as admin: %v", err)
	}
	return js
}

// putMode writes the mode key as the recovery-manager does.
func putMode(t *testing.T, ctx context.Context, kv jetstream.KeyValue, mode events.Mode, epoch int64) {
	t.Helper()
	b, _ := json.Marshal(events.ModeChanged{Mode: mode, Epoch: epoch, Since: time.Now().UTC()})
	if _, err := kv.Put(ctx, events.KeyMode, b); err != nil {
		t.Fatalf("put mode %s as the recovery-manager: %v", mode, err)
	}
}

// A producer service pauses on cache_only with the credentials we ship: the
// Go client's Mode and WatchMode work with the producer role (and the
// operator's), through the role's own inbox, and stopping the watch (which
// deletes its consumer) is allowed too: the server logs no violation.
func TestClientFollowsTheModeWithRoleCredentials(t *testing.T) {
	srv, srvLog := startServer(t, singleConf, nil)
	url := srv.ClientURL()
	users := natsUsers(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	admin := provisionAsAdmin(t, url, users, 1)
	mjs, _ := jetstream.New(connect(t, url, "recovery-manager", users))
	kv, err := mjs.KeyValue(ctx, events.BucketName)
	if err != nil {
		t.Fatal(err)
	}
	putMode(t, ctx, kv, events.ModeNormal, 1)
	for i, role := range []string{"producer", "operator"} {
		epoch := int64(2 + 2*i)
		c, err := anivault.New(connect(t, url, role, users), anivault.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if mc, err := c.Mode(ctx); err != nil || mc.Mode != events.ModeNormal || mc.Epoch != epoch-1 {
			t.Fatalf("Mode as the %s: %+v %v", role, mc, err)
		}
		ch, err := c.WatchMode(ctx)
		if err != nil {
			t.Fatalf("WatchMode as the %s: %v", role, err)
		}
		putMode(t, ctx, kv, events.ModeCacheOnly, epoch)
		for seen := false; !seen; {
			select {
			case mc := <-ch:
				seen = mc.Mode == events.ModeCacheOnly && mc.Epoch == epoch
			case <-ctx.Done():
				t.Fatalf("the %s never saw cache_only through WatchMode", role)
			}
		}
		putMode(t, ctx, kv, events.ModeNormal, epoch+1)
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		// The watcher's consumer is deleted by the library when the watch stops.
		eventually(t, role+"'s mode watcher deleted", 20*time.Second, func() error {
			st, err := admin.Stream(ctx, "KV_"+events.BucketName)
			if err != nil {
				return err
			}
			if n := st.CachedInfo().State.Consumers; n != 0 {
				return fmt.Errorf("%d consumers left on the mode bucket", n)
			}
			return nil
		})
	}
	if v := srvLog.filter("violation"); len(v) > 0 {
		t.Fatalf("the server refused %d operations of the mode readers:\n%s", len(v), strings.Join(v, "\n"))
	}
}

// The services' roles may not make the topology: provisioning as one of them
// fails, saying why and what to do, and creates nothing; with
// NATS_PROVISION=false (CheckOnly) they wait for it, and once the admin made
// it, their checks pass with the rights they have.
func TestServiceRolesCannotProvision(t *testing.T) {
	srv, _ := startServer(t, singleConf, nil)
	url := srv.ClientURL()
	users := natsUsers(t)
	for _, role := range services {
		js, _ := jetstream.New(connect(t, url, role, users))
		top, _ := topology.New(js, events.NewSubjects(""))
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := top.EnsureAll(ctx, topology.BufferLimits{})
		cancel()
		if !errors.Is(err, nats.ErrPermissionViolation) || !strings.Contains(err.Error(), "provision command") ||
			!strings.Contains(err.Error(), "NATS_PROVISION=false") {
			t.Errorf("provisioning as %s: %v, want a permission error that names the provision command and NATS_PROVISION=false", role, err)
		}
		top.CheckOnly = true
		ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
		err = top.EnsureAll(ctx, topology.BufferLimits{})
		cancel()
		if !errors.Is(err, topology.ErrNotProvisioned) {
			t.Errorf("checking as %s before provision: %v, want ErrNotProvisioned", role, err)
		}
	}
	admin := connect(t, url, "admin", users)
	ajs, _ := jetstream.New(admin)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if names := ajs.StreamNames(ctx); names.Err() == nil {
		for n := range names.Name() {
			t.Errorf("stream %s exists after the services' roles tried to provision", n)
		}
	}
	provisionAsAdmin(t, url, users, 1)
	// What each service checks at start with NATS_PROVISION=false.
	checks := map[string]func(*topology.Topology) error{
		"cache-node": func(top *topology.Topology) error {
			if _, err := top.EnsureEvents(ctx); err != nil {
				return err
			}
			return top.EnsureWrites(ctx, topology.BufferLimits{})
		},
		"health-monitor": func(top *topology.Topology) error { return top.EnsureEventsIfMissing(ctx) },
		"recovery-manager": func(top *topology.Topology) error {
			if _, err := top.EnsureEvents(ctx); err != nil {
				return err
			}
			if err := top.EnsureWritesIfMissing(ctx, topology.BufferLimits{}); err != nil {
				return err
			}
			return top.EnsureManagerConsumers(ctx)
		},
	}
	for _, role := range services {
		nc := connect(t, url, role, users)
		js, _ := jetstream.New(nc)
		top, _ := topology.New(js, events.NewSubjects(""))
		top.CheckOnly = true
		if err := checks[role](top); err != nil {
			t.Errorf("%s's start-up check after provision: %v", role, err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := nc.LastError(); err != nil {
			t.Errorf("%s's start-up check hit %v", role, err)
		}
	}
}

// The streams, durable consumers and the mode key, as the destructive
// operations test sees them.
var (
	allStreams = []string{events.StreamBuffer, events.StreamMetadata, events.StreamEvents, events.StreamChanges, events.StreamPoison, "KV_" + events.BucketName}
	durables   = [][2]string{
		{events.StreamMetadata, events.ConsumerMetadataWriter}, {events.StreamBuffer, events.ConsumerReplay},
		{events.StreamEvents, events.ConsumerManagerDB}, {events.StreamEvents, events.ConsumerManagerReplay},
	}
)

// snapshot is what the destructive operations would change.
type snapshot struct {
	Streams   map[string]string // name -> messages, subjects and limits, or "missing"
	Consumers map[string]bool
	Mode      string // the mode key's revision and value
}

func takeSnapshot(t *testing.T, ctx context.Context, js jetstream.JetStream) snapshot {
	t.Helper()
	s := snapshot{Streams: map[string]string{}, Consumers: map[string]bool{}}
	for _, name := range allStreams {
		st, err := js.Stream(ctx, name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			s.Streams[name] = "missing"
			continue
		}
		if err != nil {
			t.Fatalf("snapshot: stream %s: %v", name, err)
		}
		i := st.CachedInfo()
		s.Streams[name] = fmt.Sprintf("msgs=%d last=%d subjects=%v max_msgs=%d max_bytes=%d", i.State.Msgs, i.State.LastSeq, i.Config.Subjects, i.Config.MaxMsgs, i.Config.MaxBytes)
	}
	for _, d := range durables {
		_, err := js.Consumer(ctx, d[0], d[1])
		s.Consumers[d[0]+"/"+d[1]] = err == nil
	}
	if kv, err := js.KeyValue(ctx, events.BucketName); err == nil {
		if e, err := kv.Get(ctx, events.KeyMode); err == nil {
			s.Mode = fmt.Sprintf("rev %d %s", e.Revision(), e.Value())
		} else {
			s.Mode = err.Error()
		}
	}
	return s
}

// TestDestructiveOperationsAreRefused tries every destructive operation with
// every role: purge, update and delete of each stream (the write buffer, the
// producers' stream, the events, the change log, the poison stream, the mode
// bucket), delete of each durable consumer, a put, delete and purge of the
// mode key, publishing mode.*, and reading another role's inbox. Each is
// refused, and what it guards is unchanged afterwards. The recovery-manager
// alone writes the mode key and publishes mode.* (its job, exercised by the
// services' run); the admin alone may do the rest, and does it at the end.
func TestDestructiveOperationsAreRefused(t *testing.T) {
	srv, _ := startServer(t, singleConf, nil)
	url := srv.ClientURL()
	users := natsUsers(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin := provisionAsAdmin(t, url, users, 1)

	// Something in every stream, each written by the role whose job it is.
	jsOf := func(role string) jetstream.JetStream {
		js, err := jetstream.New(connect(t, url, role, users))
		if err != nil {
			t.Fatal(err)
		}
		return js
	}
	for _, w := range []struct{ role, subject, body string }{
		{"producer", events.SubjectMetadataUpsert, `{"tmdb_id":1429,"title":"Attack on Titan"}`},
		{"cache-node", events.SubjectBufferWrites, `{"writes":[]}`},
		{"cache-node", "changes.1429", `{}`},
		{"cache-node", events.SubjectPoisonBuffer, `{}`},
		{"health-monitor", events.SubjectDBHealth, `{"status":"healthy"}`},
		{"recovery-manager", events.SubjectModeNormal, `{"mode":"normal","epoch":1}`},
	} {
		if _, err := jsOf(w.role).Publish(ctx, w.subject, []byte(w.body)); err != nil {
			t.Fatalf("%s cannot publish %s: %v", w.role, w.subject, err)
		}
	}
	kv, err := jsOf("recovery-manager").KeyValue(ctx, events.BucketName)
	if err != nil {
		t.Fatal(err)
	}
	putMode(t, ctx, kv, events.ModeNormal, 1)
	before := takeSnapshot(t, ctx, admin)
	for name, st := range before.Streams {
		if !strings.HasPrefix(st, "msgs=1 ") && !strings.HasPrefix(st, "msgs=2 ") {
			t.Fatalf("stream %s: %s, want the seeded messages", name, st)
		}
	}

	// Each operation is sent as the API expects it (a reply inbox, a body
	// the server would accept), so that one let through would take effect
	// and show in the snapshot.
	type op struct {
		what     string
		subject  string // publish here
		header   nats.Header
		body     []byte
		sub      bool // subscribe to subject instead
		mayWrite map[string]bool
	}
	var ops []op
	for _, s := range allStreams {
		st, err := admin.Stream(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		cfg := st.CachedInfo().Config
		cfg.MaxMsgs = 7 // a valid update: it would lower the stream's limit
		update, err := json.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		var purgers map[string]bool
		if s == events.StreamMetadata {
			// The cache-nodes trim the producers' write stream below its
			// writer consumer's ack floor (a purge up to a sequence; they may
			// delete single messages there anyway): their job, exercised by
			// TestServicesRunUnderRolePermissions.
			purgers = map[string]bool{"cache-node": true}
		}
		ops = append(ops,
			op{what: "purge " + s, subject: "$JS.API.STREAM.PURGE." + s, body: []byte(`{}`), mayWrite: purgers},
			op{what: "delete " + s, subject: "$JS.API.STREAM.DELETE." + s},
			op{what: "update " + s, subject: "$JS.API.STREAM.UPDATE." + s, body: update},
		)
	}
	for _, d := range durables {
		ops = append(ops, op{what: "delete consumer " + d[0] + "/" + d[1], subject: "$JS.API.CONSUMER.DELETE." + d[0] + "." + d[1]})
	}
	managerOnly := map[string]bool{"recovery-manager": true}
	forged := []byte(`{"mode":"cache_only","epoch":99,"reason":"forged"}`)
	ops = append(ops,
		op{what: "put the mode key", subject: "$KV.anivault.mode", body: forged, mayWrite: managerOnly},
		op{what: "delete the mode key", subject: "$KV.anivault.mode", header: nats.Header{"KV-Operation": {"DEL"}}, mayWrite: managerOnly},
		op{what: "purge the mode key", subject: "$KV.anivault.mode", header: nats.Header{"KV-Operation": {"PURGE"}, "Nats-Rollup": {"sub"}}, mayWrite: managerOnly},
		op{what: "publish mode.cache_only", subject: events.SubjectModeCacheOnly, body: forged, mayWrite: managerOnly},
		op{what: "publish mode.normal", subject: events.SubjectModeNormal, body: forged, mayWrite: managerOnly},
		op{what: "read every inbox", subject: "_INBOX.>", sub: true},
	)
	for _, other := range roles {
		ops = append(ops, op{what: "read " + other + "'s inbox", subject: inboxPrefix(other) + ".>", sub: true})
	}

	for _, role := range roles[:len(roles)-1] { // every role but the admin
		if role == "admin" {
			t.Fatal("roles must end with the admin")
		}
		t.Run(role, func(t *testing.T) {
			refused := 0
			for _, o := range ops {
				if o.mayWrite[role] {
					continue // its job: exercised by TestServicesRunUnderRolePermissions
				}
				own := o.sub && o.subject == inboxPrefix(role)+".>"
				// A fresh connection per operation: LastError belongs to it alone.
				nc := connect(t, url, role, users)
				if o.sub {
					if _, err := nc.Subscribe(o.subject, func(*nats.Msg) {}); err != nil {
						t.Fatal(err)
					}
				} else {
					msg := &nats.Msg{Subject: o.subject, Reply: nc.NewInbox(), Header: o.header, Data: o.body}
					if err := nc.PublishMsg(msg); err != nil {
						t.Fatal(err)
					}
				}
				switch v := violated(t, nc, o.subject); {
				case own && v:
					t.Errorf("%s may not read its own inbox %s", role, o.subject)
				case !own && !v:
					t.Errorf("%s may %s (%s): want it refused", role, o.what, o.subject)
				case !own:
					refused++
				}
				nc.Close()
			}
			if after := takeSnapshot(t, ctx, admin); !reflect.DeepEqual(after, before) {
				t.Errorf("after %s's attempts:\n  before %+v\n  after  %+v", role, before, after)
			} else {
				t.Logf("%s: %d destructive operations refused, nothing changed", role, refused)
			}
		})
	}

	// Only the admin may: it purges and deletes for real.
	t.Run("admin", func(t *testing.T) {
		nc := connect(t, url, "admin", users)
		for _, subject := range []string{events.SubjectModeCacheOnly, "$KV.anivault.mode"} {
			if err := nc.Publish(subject, []byte(`{}`)); err != nil {
				t.Fatal(err)
			}
			if !violated(t, nc, subject) {
				t.Errorf("the admin may publish %s: not even the admin may fake a mode change", subject)
			}
		}
		if _, err := nc.Subscribe(inboxPrefix("cache-node")+".>", func(*nats.Msg) {}); err != nil {
			t.Fatal(err)
		}
		if violated(t, nc, inboxPrefix("cache-node")+".>") {
			t.Error("the admin may not read a cache-node's inbox")
		}
		ajs, _ := jetstream.New(nc)
		for _, d := range durables {
			if err := ajs.DeleteConsumer(ctx, d[0], d[1]); err != nil {
				t.Errorf("the admin cannot delete consumer %s/%s: %v", d[0], d[1], err)
			}
		}
		for _, s := range allStreams {
			st, err := ajs.Stream(ctx, s)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Purge(ctx); err != nil {
				t.Errorf("the admin cannot purge %s: %v", s, err)
			} else if i, err := st.Info(ctx); err != nil || i.State.Msgs != 0 {
				t.Errorf("%s after the admin's purge: %+v %v", s, i.State, err)
			}
			if err := ajs.DeleteStream(ctx, s); err != nil {
				t.Errorf("the admin cannot delete %s: %v", s, err)
			}
		}
		after := takeSnapshot(t, ctx, ajs)
		for s, st := range after.Streams {
			if st != "missing" {
				t.Errorf("stream %s after the admin deleted it: %s", s, st)
			}
		}
	})
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
			pub("$JS.API.STREAM.INFO.ANIVAULT_BUFFER", false), pub("$JS.API.STREAM.MSG.GET.ANIVAULT_BUFFER", false),
			pub("$JS.API.CONSUMER.MSG.NEXT.ANIVAULT_BUFFER.cache-node-replay", false), pub("$JS.API.INFO", false),
			pub("$JS.API.STREAM.INFO.KV_anivault", true),
			pub("$JS.API.DIRECT.GET.KV_anivault.$KV.anivault.mode", true), pub("$JS.API.CONSUMER.CREATE.KV_anivault.w.$KV.anivault.mode", true),
			pub("$JS.API.CONSUMER.CREATE.KV_anivault.w.$KV.anivault.other", false), pub("$JS.API.CONSUMER.DELETE.KV_anivault.w", true),
			pub("$JS.FC.KV_anivault.w.1", true),
			sub("_INBOX.producer.abc", true), sub("_INBOX.abc", false), sub("_INBOX.cache-node.abc", false),
			sub("metadata.get", false), sub("recovery.force", false),
			sub("status.get", false), sub("mode.>", true), sub(">", false),
		},
		"health-monitor": {
			pub("db.health", true), pub("db.unhealthy", true), pub("db.recovered", true),
			pub("$JS.API.STREAM.INFO.ANIVAULT_EVENTS", true), pub("$JS.API.STREAM.INFO.KV_anivault", true),
			pub("$JS.API.DIRECT.GET.KV_anivault.$KV.anivault.mode", true),
			pub("$JS.API.STREAM.CREATE.ANIVAULT_EVENTS", false), pub("$JS.API.STREAM.UPDATE.KV_anivault", false),
			pub("$JS.API.STREAM.INFO.ANIVAULT_BUFFER", false),
			pub("mode.cache_only", false), pub("metadata.upsert", false), pub("$KV.anivault.mode", false),
			sub("_INBOX.health-monitor.abc", true), sub("_INBOX.abc", false), sub("_INBOX.recovery-manager.abc", false),
			sub("recovery.force", false), sub("status.get", false), sub("metadata.get", false),
		},
		"recovery-manager": {
			pub("mode.cache_only", true), pub("mode.recovering", true), pub("mode.normal", true),
			pub("$KV.anivault.mode", true), pub("$JS.API.CONSUMER.MSG.NEXT.ANIVAULT_EVENTS.recovery-manager-db", true),
			pub("$JS.ACK.ANIVAULT_EVENTS.recovery-manager-db.1.1.1.0.0", true), pub("poison.events", true),
			pub("$JS.API.STREAM.INFO.ANIVAULT_BUFFER", true), pub("$JS.API.STREAM.MSG.GET.ANIVAULT_EVENTS", true),
			pub("$JS.API.CONSUMER.MSG.NEXT.ANIVAULT_BUFFER.cache-node-replay", false),
			pub("$JS.ACK.ANIVAULT_BUFFER.cache-node-replay.1.1.1.0.0", false),
			pub("$JS.API.STREAM.CREATE.ANIVAULT_EVENTS", false), pub("$JS.API.CONSUMER.CREATE.ANIVAULT_EVENTS.recovery-manager-db", false),
			pub("$KV.anivault.other", false),
			pub("db.unhealthy", false), pub("metadata.upsert", false), pub("metadata.changed", false),
			pub("recovery.force", false),
			sub("recovery.force", true), qsub("recovery.cache_only.enter", "q", true), sub("status.get", true),
			sub("db.health", true), sub("node.status", true),
			sub("$SRV.PING", true), sub("$SRV.INFO.anivault-recovery-manager", true),
			sub("_INBOX.recovery-manager.abc", true), sub("_INBOX.abc", false), sub("_INBOX.operator.abc", false),
			sub("$SRV.INFO.anivault-cache-node", false), sub("metadata.get", false), sub("mode.>", false),
		},
		"cache-node": {
			pub("buffer.writes", true), pub("metadata.changed", true), pub("node.status", true),
			pub("replay.completed", true), pub("poison.metadata", true), pub("poison.buffer", true), pub("changes.1429", true),
			pub("$JS.API.STREAM.INFO.ANIVAULT_BUFFER", true),
			pub("$JS.API.CONSUMER.MSG.NEXT.ANIVAULT_BUFFER.cache-node-replay", true),
			pub("$JS.API.CONSUMER.MSG.NEXT.ANIVAULT_METADATA.cache-node-writer", true),
			pub("$JS.API.STREAM.MSG.DELETE.ANIVAULT_BUFFER", true), pub("$JS.API.STREAM.MSG.GET.ANIVAULT_CHANGES", true),
			pub("$JS.API.CONSUMER.CREATE.ANIVAULT_CHANGES.x.changes.>", true),
			pub("$JS.FC.KV_anivault.x.1", true), pub("$JS.ACK.ANIVAULT_METADATA.cache-node-writer.1.1.1.0.0", true),
			pub("$JS.API.CONSUMER.MSG.NEXT.ANIVAULT_EVENTS.recovery-manager-db", false),
			pub("$JS.API.CONSUMER.CREATE.ANIVAULT_BUFFER.x", false), pub("$JS.API.STREAM.PURGE.ANIVAULT_CHANGES", false),
			pub("$JS.API.STREAM.PURGE.ANIVAULT_METADATA", true), pub("$JS.API.STREAM.PURGE.ANIVAULT_BUFFER", false),
			pub("$JS.API.STREAM.MSG.DELETE.ANIVAULT_EVENTS", false), pub("$JS.API.STREAM.CREATE.ANIVAULT_BUFFER", false),
			pub("db.unhealthy", false), pub("db.health", false), pub("mode.cache_only", false), pub("mode.normal", false),
			pub("$KV.anivault.mode", false), pub("metadata.upsert", false), pub("recovery.force", false), pub("status.get", false),
			qsub("metadata.get", "cache-nodes", true), sub("metadata.get", false), qsub("metadata.get", "thieves", false),
			sub("metadata.changed", true), sub("db.health", true), sub("db.unhealthy", false), sub("$SRV.PING", true), sub("$SRV.STATS.anivault-cache-node", true),
			sub("$SRV.PING.anivault-recovery-manager", false),
			sub("_INBOX.cache-node.abc", true), sub("_INBOX.abc", false), sub("_INBOX.producer.abc", false),
			sub("recovery.force", false), qsub("recovery.force", "q", false), sub("status.get", false), sub("mode.>", false),
		},
		"operator": {
			pub("recovery.force", true), pub("recovery.cache_only.enter", true), pub("recovery.cache_only.exit", true),
			pub("status.get", true), pub("metadata.get", true), pub("$SRV.INFO", true),
			pub("$JS.API.STREAM.INFO.KV_anivault", true), pub("$JS.API.DIRECT.GET.KV_anivault.$KV.anivault.mode", true),
			pub("$JS.API.CONSUMER.CREATE.KV_anivault.w.$KV.anivault.>", true), pub("$JS.API.CONSUMER.INFO.ANIVAULT_BUFFER.cache-node-replay", true),
			pub("$JS.API.CONSUMER.CREATE.ANIVAULT_BUFFER.x", false),
			pub("$JS.API.CONSUMER.MSG.NEXT.ANIVAULT_BUFFER.cache-node-replay", false),
			pub("$JS.API.CONSUMER.MSG.NEXT.ANIVAULT_EVENTS.recovery-manager-db", false),
			pub("mode.normal", false), pub("db.recovered", false), pub("$KV.anivault.mode", false),
			pub("metadata.upsert", false), pub("$JS.API.STREAM.DELETE.ANIVAULT_BUFFER", false),
			pub("$JS.API.STREAM.PURGE.ANIVAULT_BUFFER", false), pub("$JS.API.CONSUMER.DELETE.ANIVAULT_BUFFER.cache-node-replay", false),
			sub("mode.>", true), sub("db.>", true), sub("_INBOX.operator.abc", true), sub("_INBOX.abc", false),
			sub("_INBOX.cache-node.abc", false), sub("_INBOX.>", false), sub(">", false),
			sub("recovery.force", false), sub("status.get", false), sub("metadata.get", false), sub("$SRV.PING", false),
		},
		"admin": {
			pub("$JS.API.STREAM.PURGE.ANIVAULT_POISON", true), pub("$JS.API.STREAM.CREATE.ANIVAULT_BUFFER", true),
			pub("mode.normal", false), pub("db.unhealthy", false), pub("$KV.anivault.mode", false),
			sub("_INBOX.cache-node.abc", true),
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
	srvs, logs := startCluster(t, clusterConfs, nil)
	var urls []string
	for _, s := range srvs {
		urls = append(urls, s.ClientURL())
	}
	users := natsUsers(t)
	js := provisionOnCluster(t, strings.Join(urls, ","), users, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, events.StreamBuffer)
	if err != nil {
		t.Fatal(err)
	}
	info := st.CachedInfo()
	if info.Config.Replicas != 3 || info.Cluster == nil || info.Cluster.Name != "anivault" {
		t.Fatalf("buffer stream: replicas %d, cluster %+v; want 3 replicas in cluster anivault", info.Config.Replicas, info.Cluster)
	}
	t.Logf("ANIVAULT_BUFFER: leader %s, replicas %d", info.Cluster.Leader, len(info.Cluster.Replicas))

	// A server that dials a route without the route user's password is refused.
	for _, cred := range []string{"", "route:wrong-password@"} {
		intruder, err := server.NewServer(&server.Options{
			ServerName: "intruder", Host: "127.0.0.1", Port: -1, NoSigs: true, NoSystemAccount: true,
			Cluster: server.ClusterOpts{Name: "anivault", Host: "127.0.0.1", Port: -1},
			Routes:  server.RoutesFromStr(fmt.Sprintf("nats-route://%s127.0.0.1:%d", cred, srvs[0].ClusterAddr().Port)),
		})
		if err != nil {
			t.Fatal(err)
		}
		go intruder.Start()
		eventually(t, "a route "+map[bool]string{true: "without credentials", false: "with a wrong password"}[cred == ""]+" refused", 20*time.Second, func() error {
			if len(logs[0].filter("authentication error")) == 0 {
				return errors.New("nats-1 logged no authentication error for the intruder's route")
			}
			return nil
		})
		if n := intruder.NumRoutes(); n != 0 {
			t.Errorf("the intruder has %d routes into the cluster", n)
		}
		if rz, err := srvs[0].Routez(nil); err == nil {
			for _, r := range rz.Routes {
				if r.RemoteName == "intruder" {
					t.Errorf("nats-1 holds a route to the intruder: %+v", r)
				}
			}
		}
		intruder.Shutdown()
		intruder.WaitForShutdown()
		logs[0].reset()
	}
}

// startCluster starts one in-process server per configuration, their client
// and route ports on loopback, each route rewritten to its loopback port with
// the configuration's own route credentials, and waits for all to be ready.
func startCluster(t *testing.T, confs []string, tweak func(i int, o *server.Options)) ([]*server.Server, []*serverLog) {
	t.Helper()
	ports := make([]int, len(confs))
	for i := range ports {
		ports[i] = freePort(t)
	}
	var srvs []*server.Server
	var logs []*serverLog
	for i, conf := range confs {
		srv, log := startServerAsync(t, conf, func(o *server.Options) {
			o.Host, o.Port, o.HTTPPort, o.HTTPSPort = "127.0.0.1", -1, 0, 0
			o.Cluster.Host, o.Cluster.Port = "127.0.0.1", ports[i]
			var routes []*url.URL
			for _, p := range ports {
				routes = append(routes, &url.URL{Scheme: "nats-route", User: url.UserPassword(o.Cluster.Username, o.Cluster.Password), Host: fmt.Sprintf("127.0.0.1:%d", p)})
			}
			o.Routes = routes
			if tweak != nil {
				tweak(i, o)
			}
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
		if !s.ReadyForConnections(20 * time.Second) {
			t.Fatalf("%s not ready", s.Name())
		}
	}
	return srvs, logs
}

// provisionOnCluster provisions as the admin, three replicas, retrying until
// the cluster has elected its meta leader (until then JetStream API requests
// go unanswered).
func provisionOnCluster(t *testing.T, url string, users map[string]string, extra []nats.Option) jetstream.JetStream {
	t.Helper()
	nc := connect(t, url, "admin", users, extra...)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	top, _ := topology.New(js, events.NewSubjects(""))
	top.Replicas = 3
	err = procs.Eventually(90*time.Second, 250*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return top.EnsureAll(ctx, topology.BufferLimits{Replicas: 3})
	})
	if err != nil {
		t.Fatalf("provision on the cluster as admin: %v", err)
	}
	return js
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
