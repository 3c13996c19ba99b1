package deployments_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/deployments/launch"
	"github.com/anivault/anivault/deployments/launch/launchtest"
	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/anivault"
	"github.com/anivault/anivault/pkg/modefollow"
	"github.com/anivault/anivault/pkg/procs"
)

// TestServicesRunUnderRolePermissions runs the real services as in the
// shipped deployments: the provision command makes the topology as the NATS
// admin, and every service connects as its own role of nats/accounts.conf
// (two recovery-managers and two cache-nodes, as in k8s/) with
// NATS_PROVISION=false and its own inbox prefix. Started before provision,
// the services wait for it; then a producer writes and reads back, an
// operator puts the system in cache_only (a write is buffered, 202) and out
// again (the buffer is replayed), and a database outage is detected and
// recovered, with a producer following the mode through the Go client. Any
// permission violation, in the server's log or a service's, fails it: the
// permissions must not only forbid, they must let every role do its job.
func TestServicesRunUnderRolePermissions(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the services against PostgreSQL")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	srv, srvLog := startServer(t, singleConf, nil)
	url := srv.ClientURL()
	users := natsUsers(t)
	sys := launchtest.Start(t, launch.Options{Dir: t.TempDir(), ModuleDir: "..", Packages: []string{"./services/provision"}, NATSURL: url}, 40)
	pg := sys.PG
	t.Cleanup(func() {
		if v := srvLog.filter("violation"); t.Failed() && len(v) > 0 {
			t.Logf("the NATS server refused:\n%s", strings.Join(v, "\n"))
		}
	})

	var all []*procs.Proc
	start := func(name, svc string, extra map[string]string) *procs.Proc {
		p := sys.NewProc(name, svc, launch.MergeEnv(map[string]string{
			"NATS_USER": svc, "NATS_PASSWORD": users[svc],
			"NATS_PROVISION": "false", "NATS_INBOX_PREFIX": inboxPrefix(svc),
			"NODE_ID": name, "LOG_LEVEL": "debug",
			"HEALTH_CHECK_INTERVAL": "200ms", "HEALTH_CHECK_TIMEOUT": "1s",
		}, extra))
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		all = append(all, p)
		return p
	}
	nodeAddr := map[string]string{}
	for _, id := range []string{"cache-node-a", "cache-node-b"} {
		addr, err := launch.FreeAddr()
		if err != nil {
			t.Fatal(err)
		}
		nodeAddr[id] = addr
		start(id, "cache-node", map[string]string{
			"HTTP_ADDR": nodeAddr[id], "NODE_STATUS_INTERVAL": "200ms", "DB_TIMEOUT": "1500ms",
			"BREAKER_OPEN_TIMEOUT": "500ms", "RETRY_BASE_DELAY": "20ms", "RETRY_MAX_DELAY": "200ms",
			"REPLAY_BATCH_INTERVAL": "0",
		})
	}
	start("health-monitor", "health-monitor", map[string]string{"HEALTH_FAILURE_THRESHOLD": "2", "HEALTH_RECOVERY_THRESHOLD": "2"})
	for _, id := range []string{"recovery-manager-1", "recovery-manager-2"} {
		start(id, "recovery-manager", map[string]string{
			"RECOVERY_CHECK_INTERVAL": "1s", "NODE_TIMEOUT": "2s", "MODE_EVAL_INTERVAL": "100ms",
		})
	}
	// Nothing is provisioned yet: every service says so and waits.
	for _, p := range all {
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		err := p.WaitOutput(wctx, "JetStream topology not provisioned")
		wcancel()
		if err != nil {
			t.Fatalf("%s does not say it waits for the provision step: %v\n%s", p.Name, err, launch.Tail(p.Output(), 20))
		}
	}
	if code, _ := httpDo(http.MethodGet, "http://"+nodeAddr["cache-node-a"]+"/readyz", ""); code == http.StatusOK {
		t.Fatal("a cache-node is ready before the topology exists")
	}

	// provision as a service's role is refused, clearly, and makes nothing;
	// as the admin it makes everything.
	runProvision := func(name, role string) *procs.Proc {
		p := sys.Command(name, "provision", map[string]string{
			"NATS_URL": url, "NATS_USER": role, "NATS_PASSWORD": users[role], "NATS_INBOX_PREFIX": inboxPrefix(role),
			"PROVISION_TIMEOUT": "30s", "LOG_FORMAT": "text",
		})
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		eventually(t, name+" exits", 60*time.Second, func() error {
			if p.Running() {
				return errors.New("still running")
			}
			return nil
		})
		return p
	}
	if p := runProvision("provision-as-cache-node", "cache-node"); p.ExitErr() == nil || !strings.Contains(p.Output(), "may not publish to $JS.API.STREAM.CREATE.") {
		t.Fatalf("provision as the cache-node role: exit %v, want a failure naming the refused API subject:\n%s", p.ExitErr(), launch.Tail(p.Output(), 10))
	}
	srvLog.reset() // the refusals just provoked, on purpose
	if p := runProvision("provision", "admin"); p.ExitErr() != nil || !strings.Contains(p.Output(), "JetStream topology provisioned") {
		t.Fatalf("provision as the admin: exit %v:\n%s", p.ExitErr(), launch.Tail(p.Output(), 20))
	}
	for id, addr := range nodeAddr {
		waitHTTP(t, id, "http://"+addr+"/readyz", 200, 30*time.Second)
	}

	op := connect(t, url, "operator", users)
	producer := connect(t, url, "producer", users)
	// A producer service follows the mode with the Go client.
	client, err := anivault.New(producer, anivault.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	modes, err := client.WatchMode(ctx)
	if err != nil {
		t.Fatalf("the producer's WatchMode: %v", err)
	}
	waitMode := func(want events.Mode) {
		t.Helper()
		for {
			select {
			case m := <-modes:
				if m.Mode == want {
					return
				}
			case <-time.After(60 * time.Second):
				t.Fatalf("the producer's WatchMode never delivered %s", want)
			}
		}
	}

	// The operator: status.get, `nats micro ls`, `nats kv get anivault mode`.
	eventually(t, "status.get answers the operator", 30*time.Second, func() error {
		var st events.SystemStatus
		if err := request(op, events.SubjectStatusGet, struct{}{}, &st); err != nil {
			return err
		}
		if st.Mode != events.ModeNormal || len(st.Nodes) != 2 {
			return fmt.Errorf("mode %s with %d nodes", st.Mode, len(st.Nodes))
		}
		return nil
	})
	if names := microServices(t, op); names[events.ServiceCacheNode] != 2 || names[events.ServiceRecoveryManager] != 2 {
		t.Fatalf("micro services seen by the operator: %v, want 2 of each", names)
	}
	if mode := kvMode(t, op); mode.Mode != events.ModeNormal {
		t.Fatalf("kv mode %+v, want normal", mode)
	}
	var force events.ForceRecoveryReply
	if err := request(op, events.SubjectRecoveryForce, struct{}{}, &force); err != nil {
		t.Fatalf("operator recovery.force: %v", err)
	}

	// The producer: a JetStream-acknowledged upsert, applied by a cache-node,
	// read back with metadata.get.
	pjs, _ := jetstream.New(producer)
	rec := `{"tmdb_id":1429,"title":"Attack on Titan","original_title":"進撃の巨人","genres":["Animation"]}`
	if _, err := pjs.Publish(ctx, events.SubjectMetadataUpsert, []byte(rec)); err != nil {
		t.Fatalf("producer metadata.upsert: %v", err)
	}
	eventually(t, "the producer reads its record back", 20*time.Second, func() error {
		var got struct {
			Title   string `json:"title"`
			Version int64  `json:"version"`
		}
		if err := request(producer, events.SubjectMetadataGet, map[string]int{"tmdb_id": 1429}, &got); err != nil {
			return err
		}
		if got.Title != "Attack on Titan" || got.Version <= 0 {
			return fmt.Errorf("got %+v", got)
		}
		return nil
	})
	// The cache-nodes trim the applied write from the producers' stream
	// (a purge below the writer consumer's ack floor, under their role).
	ajs, err := jetstream.New(connect(t, url, "admin", users))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the cache-nodes trim the producers' write stream", 20*time.Second, func() error {
		info, err := ajs.Stream(ctx, events.StreamMetadata)
		if err != nil {
			return err
		}
		if st := info.CachedInfo().State; st.Msgs != 0 || st.LastSeq == 0 {
			return fmt.Errorf("stream %s: %d messages, last seq %d", events.StreamMetadata, st.Msgs, st.LastSeq)
		}
		return nil
	})

	// Maintenance by the operator: cache_only, a write buffered (202), then
	// out through recovering: the buffer is replayed into the database.
	if err := request(op, events.SubjectCacheOnlyEnter, map[string]string{"reason": "role permissions test"}, nil); err != nil {
		t.Fatalf("operator recovery.cache_only.enter: %v", err)
	}
	waitMode(events.ModeCacheOnly)
	eventually(t, "a write buffered in maintenance", 20*time.Second, func() error {
		code, body := httpDo(http.MethodPut, "http://"+nodeAddr["cache-node-a"]+"/v1/anime/1535", `{"tmdb_id":1535,"title":"Death Note"}`)
		if code != http.StatusAccepted {
			return fmt.Errorf("PUT %d %s", code, body)
		}
		return nil
	})
	if n := bufferDepth(t, op); n == 0 {
		t.Fatal("the buffered write is not in ANIVAULT_BUFFER")
	}
	if err := request(op, events.SubjectCacheOnlyExit, struct{}{}, nil); err != nil {
		t.Fatalf("operator recovery.cache_only.exit: %v", err)
	}
	waitMode(events.ModeNormal)
	if n := bufferDepth(t, op); n != 0 {
		t.Fatalf("normal mode with %d messages left in the buffer", n)
	}
	eventually(t, "the replayed write in the database", 20*time.Second, func() error {
		var got struct {
			Title string `json:"title"`
		}
		if err := request(producer, events.SubjectMetadataGet, map[string]int{"tmdb_id": 1535}, &got); err != nil {
			return err
		}
		if got.Title != "Death Note" {
			return fmt.Errorf("got %+v", got)
		}
		return nil
	})
	if code, body := httpDo(http.MethodGet, "http://"+nodeAddr["cache-node-b"]+"/v1/anime/1535", ""); code != http.StatusOK || !strings.Contains(body, "Death Note") {
		t.Fatalf("the other node after the replay: %d %s", code, body)
	}

	// An outage: the health-monitor publishes db.unhealthy, a manager moves
	// the mode (mode.cache_only, KV), the nodes buffer writes.
	if err := pg.Stop(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "cache-only mode", 20*time.Second, func() error {
		if m := kvMode(t, op); m.Mode != events.ModeCacheOnly {
			return fmt.Errorf("mode %s", m.Mode)
		}
		return nil
	})
	eventually(t, "a buffered write", 20*time.Second, func() error {
		code, body := httpDo(http.MethodPut, "http://"+nodeAddr["cache-node-a"]+"/v1/anime/5114", `{"tmdb_id":5114,"title":"Fullmetal Alchemist: Brotherhood"}`)
		if code != http.StatusAccepted {
			return fmt.Errorf("PUT %d %s", code, body)
		}
		return nil
	})

	// Recovery: db.recovered, mode.recovering, the nodes replay the buffer
	// (replay.completed), mode.normal; the buffered write is in the database.
	if err := pg.Start(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "normal mode after recovery", 60*time.Second, func() error {
		if m := kvMode(t, op); m.Mode != events.ModeNormal || m.Epoch < 3 {
			return fmt.Errorf("mode %s epoch %d", m.Mode, m.Epoch)
		}
		return nil
	})
	waitHTTP(t, "cache-node-b", "http://"+nodeAddr["cache-node-b"]+"/v1/anime/5114", 200, 20*time.Second)
	waitMode(events.ModeNormal)

	for _, p := range all {
		if !p.Running() {
			t.Errorf("%s exited: %v", p.Name, p.ExitErr())
		}
		if out := strings.ToLower(p.Output()); strings.Contains(out, "permissions violation") || strings.Contains(out, "authorization violation") {
			t.Errorf("%s hit a NATS permission error:\n%s", p.Name, grepLines(p.Output(), "iolation"))
		}
	}
	if v := srvLog.filter("violation"); len(v) > 0 {
		t.Errorf("the NATS server refused %d operations:\n%s", len(v), strings.Join(v, "\n"))
	}
}

// bufferDepth does what `nats stream info ANIVAULT_BUFFER` does: the
// messages the write buffer holds.
func bufferDepth(t *testing.T, nc *nats.Conn) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	js, _ := jetstream.New(nc)
	st, err := js.Stream(ctx, events.StreamBuffer)
	if err != nil {
		t.Fatalf("stream info %s: %v", events.StreamBuffer, err)
	}
	return st.CachedInfo().State.Msgs
}

// microServices does what `nats micro ls` does: $SRV.INFO, collecting replies.
func microServices(t *testing.T, nc *nats.Conn) map[string]int {
	t.Helper()
	inbox := nc.NewInbox() // under the connection's own prefix, the only inboxes a role may read
	ch := make(chan *nats.Msg, 64)
	sub, err := nc.ChanSubscribe(inbox, ch)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest("$SRV.INFO", inbox, nil); err != nil {
		t.Fatal(err)
	}
	names := map[string]int{}
	timeout := time.After(time.Second)
	for {
		select {
		case m := <-ch:
			var info struct {
				Name string `json:"name"`
			}
			if json.Unmarshal(m.Data, &info) == nil {
				names[info.Name]++
			}
		case <-timeout:
			return names
		}
	}
}

// kvMode does what `nats kv get anivault mode` does.
func kvMode(t *testing.T, nc *nats.Conn) events.ModeChanged {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	js, _ := jetstream.New(nc)
	m, rev, err := modefollow.NewBucket(js, events.NewSubjects("")).Read(ctx)
	if err != nil {
		t.Fatalf("operator: kv get %s %s: %v", events.BucketName, events.KeyMode, err)
	}
	if rev == 0 {
		t.Fatalf("operator: kv get %s %s: %v", events.BucketName, events.KeyMode, jetstream.ErrKeyNotFound)
	}
	return m
}

func eventually(t *testing.T, what string, timeout time.Duration, cond func() error) {
	t.Helper()
	if err := procs.Eventually(timeout, 50*time.Millisecond, cond); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func waitHTTP(t *testing.T, what, url string, want int, timeout time.Duration) {
	t.Helper()
	eventually(t, what+": GET "+url, timeout, func() error {
		if code, body := httpDo(http.MethodGet, url, ""); code != want {
			return fmt.Errorf("status %d %s", code, body)
		}
		return nil
	})
}

func httpDo(method, url, body string) (int, string) {
	req, err := http.NewRequest(method, url, bytes.NewBufferString(body))
	if err != nil {
		return 0, err.Error()
	}
	req.Header.Set("Content-Type", "application/json")
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
