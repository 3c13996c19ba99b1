package e2e_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anivault/anivault/deployments/monitoring"
	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/procs"
)

// monitoredSystem is a system with one cache-node, a health-monitor and a
// recovery-manager whose admin endpoints are known, keyed by service.
type monitoredSystem struct {
	*System
	node    *Node
	targets map[string]string // service -> host:port of its /metrics
}

func startMonitored(t *testing.T, opts Options, nodeEnv map[string]string) *monitoredSystem {
	t.Helper()
	s := NewSystem(t, opts)
	n1 := s.StartNode("n1", nodeEnv)
	monAddr, mgrAddr := freeAddr(t), freeAddr(t)
	s.StartMonitor(map[string]string{"ADMIN_ADDR": monAddr})
	s.StartManager(map[string]string{"ADMIN_ADDR": mgrAddr})
	waitSchema(t, s)
	return &monitoredSystem{System: s, node: n1,
		targets: map[string]string{"cache-node": n1.Addr, "health-monitor": monAddr, "recovery-manager": mgrAddr}}
}

var typeLine = regexp.MustCompile(`^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)$`)

// families scrapes addr's /metrics and returns its metric families and their types.
func families(t *testing.T, addr string) map[string]string {
	t.Helper()
	r, err := do("GET", "http://"+addr+"/metrics", nil)
	if err != nil || r.Code != 200 {
		t.Fatalf("scrape %s: %v %d", addr, err, r.Code)
	}
	out := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(r.Body)))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if m := typeLine.FindStringSubmatch(sc.Text()); m != nil {
			out[m[1]] = m[2]
		}
	}
	return out
}

// usedMetrics returns every metric name the alert rules and the dashboard
// use, with where each is used.
func usedMetrics(t *testing.T) map[string][]string {
	t.Helper()
	used := map[string][]string{}
	rf, err := monitoring.Alerts()
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			names, err := monitoring.MetricNames(r.Expr)
			if err != nil {
				t.Fatalf("alert %s: %v", r.Alert, err)
			}
			for _, n := range names {
				used[n] = append(used[n], "alert "+r.Alert)
			}
		}
	}
	d, err := monitoring.LoadDashboard()
	if err != nil {
		t.Fatal(err)
	}
	for where, q := range d.Queries() {
		names, err := monitoring.MetricNames(q)
		if err != nil {
			t.Fatalf("dashboard %s: %v", where, err)
		}
		for _, n := range names {
			used[n] = append(used[n], "dashboard "+where)
		}
	}
	for _, n := range d.VariableMetrics() {
		used[n] = append(used[n], "dashboard variable")
	}
	return used
}

// readmeMetrics returns the anivault_ metric names the README's Metrics section lists.
func readmeMetrics(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## Metrics\n")
	if !ok {
		t.Fatal("README.md has no ## Metrics section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	out := map[string]bool{}
	for _, m := range regexp.MustCompile(`anivault_[a-z0-9_]+`).FindAllString(section, -1) {
		out[m] = true
	}
	return out
}

// Every metric an alert rule or a dashboard panel uses is one the running
// services export (a histogram's _bucket, _sum and _count belong to it), and
// the README's Metrics section lists exactly the anivault_ metrics they export.
func TestMonitoringUsesExportedMetrics(t *testing.T) {
	t.Parallel()
	// Group commit on (DB_GROUP_COMMIT_MAX above 1), so that its metrics,
	// registered only then, are exported too.
	s := startMonitored(t, Options{AutoRecovery: true}, map[string]string{"DB_GROUP_COMMIT_MAX": "2"})
	l := newLedger()
	writeAll(t, []*Node{s.node}, l, idRange(1, 3), false, "metrics", 200)
	if r, err := s.node.Get(1); err != nil || r.Code != 200 {
		t.Fatalf("get: %v %d", err, r.Code)
	}
	// The manager lists the monitor and the node once it heard from them.
	waitMetrics(t, "http://"+s.targets["recovery-manager"], "anivault_monitors_live 1", "anivault_nodes_live 1")

	exported := map[string]string{} // family -> service
	for svc, addr := range s.targets {
		for f := range families(t, addr) {
			if _, seen := exported[f]; !seen {
				exported[f] = svc
			}
		}
	}
	used := usedMetrics(t)
	if len(used) < 20 {
		t.Fatalf("only %d metric names found in the rules and the dashboard: %v", len(used), used)
	}
	names := make([]string, 0, len(used))
	for n := range used {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		found := ""
		for _, f := range monitoring.Families(n) {
			if svc, ok := exported[f]; ok {
				found = svc
				break
			}
		}
		if found == "" {
			t.Errorf("%s (used by %s) is exported by no service", n, strings.Join(used[n], ", "))
			continue
		}
		t.Logf("%-50s exported by %s", n, found)
	}

	documented := readmeMetrics(t)
	for f, svc := range exported {
		if strings.HasPrefix(f, "anivault_") && !documented[f] {
			t.Errorf("%s (exported by %s) is not in the README's Metrics section", f, svc)
		}
	}
	for f := range documented {
		if _, ok := exported[f]; !ok {
			t.Errorf("the README's Metrics section lists %s, which no service exports", f)
		}
	}
}

// promServer is a real Prometheus server (Debian's /usr/bin/prometheus)
// scraping the services and evaluating the alert rules.
type promServer struct {
	base string
	cmd  *exec.Cmd
	log  string
}

// rulesWithShortFor rewrites every `for:` of alerts.yaml to d. This is the
// only change made to the rules for the end-to-end test: their real
// thresholds are minutes long, and the promtool tests check them.
func rulesWithShortFor(d string) []byte {
	return regexp.MustCompile(`(?m)^(\s+for:\s*)\S+\s*$`).ReplaceAll(monitoring.AlertsYAML, []byte("${1}"+d))
}

func startPrometheus(t *testing.T, targets map[string]string, rules []byte) *promServer {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatalf("prometheus not found on PATH: this test runs a real Prometheus server. .ci/run installs it (Debian package prometheus: apt-get install -y prometheus): %v", err)
	}
	dir := t.TempDir()
	rulesPath := filepath.Join(dir, "alerts.yaml")
	if err := os.WriteFile(rulesPath, rules, 0o644); err != nil {
		t.Fatal(err)
	}
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files:\n  - %q\nscrape_configs:\n", rulesPath)
	svcs := make([]string, 0, len(targets))
	for svc := range targets {
		svcs = append(svcs, svc)
	}
	sort.Strings(svcs)
	for _, svc := range svcs {
		fmt.Fprintf(&cfg, "  - job_name: %q\n    static_configs:\n      - targets: [%q]\n", svc, targets[svc])
	}
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	logPath := filepath.Join(dir, "prometheus.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--storage.tsdb.retention.time=1h")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start prometheus: %v", err)
	}
	p := &promServer{base: "http://" + addr, cmd: cmd, log: logPath}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		// Only this Prometheus, by its own process.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		_ = logFile.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("---- prometheus log (tail) ----\n%s", tail(string(b), 40))
			t.Logf("---- prometheus.yml ----\n%s", cfg.String())
		}
	})
	if err := procs.Eventually(60*time.Second, 100*time.Millisecond, func() error {
		select {
		case <-exited:
			return fmt.Errorf("prometheus exited")
		default:
		}
		r, err := do("GET", p.base+"/-/ready", nil)
		if err != nil || r.Code != 200 {
			return fmt.Errorf("not ready: %v %d", err, r.Code)
		}
		return nil
	}); err != nil {
		b, _ := os.ReadFile(logPath)
		t.Fatalf("prometheus: %v\n%s", err, tail(string(b), 40))
	}
	return p
}

// get calls a Prometheus API path and decodes its data.
func (p *promServer) get(path string, q url.Values, data any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u := p.base + path
	if q != nil {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var env struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&env); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if env.Status != "success" {
		return fmt.Errorf("%s: %s %s", u, env.Status, env.Error)
	}
	return json.Unmarshal(env.Data, data)
}

type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// query runs an instant query; it answers vectors and scalars.
func (p *promServer) query(expr string) ([]promSample, error) {
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := p.get("/api/v1/query", url.Values{"query": {expr}}, &data); err != nil {
		return nil, err
	}
	switch data.ResultType {
	case "vector":
		var v []promSample
		return v, json.Unmarshal(data.Result, &v)
	case "scalar":
		var sc [2]any
		if err := json.Unmarshal(data.Result, &sc); err != nil {
			return nil, err
		}
		return []promSample{{Value: sc}}, nil
	}
	return nil, fmt.Errorf("query %q: result type %s", expr, data.ResultType)
}

type promAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	State       string            `json:"state"`
	ActiveAt    time.Time         `json:"activeAt"`
	Value       string            `json:"value"`
}

func (p *promServer) alerts() ([]promAlert, error) {
	var data struct {
		Alerts []promAlert `json:"alerts"`
	}
	err := p.get("/api/v1/alerts", nil, &data)
	return data.Alerts, err
}

// alert returns the active alert named name, if any.
func (p *promServer) alert(name string) (promAlert, bool, error) {
	as, err := p.alerts()
	if err != nil {
		return promAlert{}, false, err
	}
	for _, a := range as {
		if a.Labels["alertname"] == name {
			return a, true, nil
		}
	}
	return promAlert{}, false, nil
}

type promRule struct {
	Name           string    `json:"name"`
	State          string    `json:"state"`
	Health         string    `json:"health"`
	LastError      string    `json:"lastError"`
	LastEvaluation time.Time `json:"lastEvaluation"`
}

func (p *promServer) rules() ([]promRule, error) {
	var data struct {
		Groups []struct {
			Rules []promRule `json:"rules"`
		} `json:"groups"`
	}
	if err := p.get("/api/v1/rules", nil, &data); err != nil {
		return nil, err
	}
	var out []promRule
	for _, g := range data.Groups {
		out = append(out, g.Rules...)
	}
	return out, nil
}

// dashboardQuery makes a dashboard query runnable: Grafana's variables get
// the values Grafana would give them here.
func dashboardQuery(q string) string {
	return strings.NewReplacer("$__rate_interval", "10s", "$namespace", ".*").Replace(q)
}

// An alert fires in a real outage, evaluated by a real Prometheus on the
// data it scraped from the running services: PostgreSQL stops, the system
// enters cache-only mode, AniVaultCacheOnlyTooLong fires; PostgreSQL comes
// back, the system recovers, and the alert resolves. On the healthy system
// before, no rule is active. The rules are alerts.yaml with every `for:`
// shortened to 2s (rulesWithShortFor); expressions and everything else as
// shipped. Every dashboard query then runs on the same data and returns
// series.
func TestAlertFiresInARealOutage(t *testing.T) {
	t.Parallel()
	s := startMonitored(t, Options{PrivatePG: true, AutoRecovery: true}, nil)
	l := newLedger()
	writeAll(t, []*Node{s.node}, l, idRange(1, 10), false, "before", 200)
	t.Log("alerts.yaml is loaded with every `for:` set to 2s, the only change (its thresholds are minutes; promtool tests them)")
	prom := startPrometheus(t, s.targets, rulesWithShortFor("2s"))
	waitEveryRuleInactiveWhenHealthy(t, prom)

	// A real outage: PostgreSQL stops.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	down := time.Now()
	if err := s.PG.Stop(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	s.Events.Wait(t, events.SubjectModeCacheOnly, down, 30*time.Second, nil)
	waitNodeMode(t, s.node, events.ModeCacheOnly)
	writeAll(t, []*Node{s.node}, l, idRange(11, 10), false, "during", 202)
	waitCacheOnlyAlertFires(t, prom, down)

	// PostgreSQL back: recovery, then the alert resolves.
	back := time.Now()
	if err := s.PG.Start(ctx); err != nil {
		t.Fatal(err)
	}
	s.Events.Wait(t, events.SubjectModeNormal, back, 90*time.Second, nil)
	waitCacheOnlyAlertResolves(t, prom, back)
	got, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	l.check(t, got)

	checkDashboardQueriesReturnSeries(t, prom)
}

// waitEveryRuleInactiveWhenHealthy waits until every target is scraped in
// normal mode and every rule was evaluated on that data and is inactive.
func waitEveryRuleInactiveWhenHealthy(t *testing.T, prom *promServer) {
	t.Helper()
	// Healthy: every target scraped, every rule evaluated on that data and inactive.
	var scraped time.Time
	if err := procs.Eventually(60*time.Second, 200*time.Millisecond, func() error {
		v, err := prom.query(`anivault_mode{mode="normal"} == 1`)
		if err != nil {
			return err
		}
		if len(v) != 3 {
			return fmt.Errorf("%d processes scraped in normal mode, want 3", len(v))
		}
		scraped = time.Now()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := procs.Eventually(60*time.Second, 200*time.Millisecond, func() error {
		rules, err := prom.rules()
		if err != nil {
			return err
		}
		if len(rules) != 8 {
			return fmt.Errorf("%d rules loaded, want 8", len(rules))
		}
		for _, r := range rules {
			if r.Health != "ok" {
				return fmt.Errorf("rule %s: health %s %s", r.Name, r.Health, r.LastError)
			}
			if r.LastEvaluation.Before(scraped.Add(time.Second)) {
				return fmt.Errorf("rule %s not evaluated since the data arrived", r.Name)
			}
			if r.State != "inactive" {
				return fmt.Errorf("rule %s is %s on a healthy system", r.Name, r.State)
			}
		}
		return nil
	}); err != nil {
		as, _ := prom.alerts()
		t.Fatalf("%v; active alerts: %+v", err, as)
	}
}

// waitCacheOnlyAlertFires waits until AniVaultCacheOnlyTooLong fires and
// checks its labels and the data it fired on.
func waitCacheOnlyAlertFires(t *testing.T, prom *promServer, down time.Time) {
	t.Helper()
	var fired promAlert
	if err := procs.Eventually(60*time.Second, 200*time.Millisecond, func() error {
		a, ok, err := prom.alert("AniVaultCacheOnlyTooLong")
		if err != nil {
			return err
		}
		if !ok || a.State != "firing" {
			return fmt.Errorf("AniVaultCacheOnlyTooLong: %q", a.State)
		}
		fired = a
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("AniVaultCacheOnlyTooLong firing %v after PostgreSQL stopped: labels %v, summary %q, active since %s",
		time.Since(down).Round(100*time.Millisecond), fired.Labels, fired.Annotations["summary"], fired.ActiveAt.Format(time.RFC3339Nano))
	if fired.Labels["severity"] != "warning" || !strings.HasSuffix(fired.Annotations["runbook_url"], "README.md#troubleshooting") {
		t.Errorf("fired alert %+v lacks its severity or runbook", fired)
	}
	// The data it fired on: every process in cache_only, the monitor's verdict down.
	if err := procs.Eventually(30*time.Second, 200*time.Millisecond, func() error {
		v, err := prom.query(`anivault_mode{mode="cache_only"} == 1`)
		if err != nil || len(v) != 3 {
			return fmt.Errorf("scraped cache_only from %d processes (%v), want 3", len(v), err)
		}
		if v, err := prom.query(`anivault_health_database_up == 0`); err != nil || len(v) != 1 {
			return fmt.Errorf("the monitor's verdict as scraped: %v %v", v, err)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}

// waitCacheOnlyAlertResolves waits until AniVaultCacheOnlyTooLong is no
// longer active.
func waitCacheOnlyAlertResolves(t *testing.T, prom *promServer, back time.Time) {
	t.Helper()
	if err := procs.Eventually(60*time.Second, 200*time.Millisecond, func() error {
		a, ok, err := prom.alert("AniVaultCacheOnlyTooLong")
		if err != nil {
			return err
		}
		if ok {
			return fmt.Errorf("AniVaultCacheOnlyTooLong still %s", a.State)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("AniVaultCacheOnlyTooLong resolved %v after PostgreSQL came back", time.Since(back).Round(100*time.Millisecond))
}

// checkDashboardQueriesReturnSeries runs every dashboard query on the
// scraped data and checks it returns series.
func checkDashboardQueriesReturnSeries(t *testing.T, prom *promServer) {
	t.Helper()
	// Every dashboard query runs on the scraped data and returns series.
	d, err := monitoring.LoadDashboard()
	if err != nil {
		t.Fatal(err)
	}
	queries := d.Queries()
	keys := make([]string, 0, len(queries))
	for k := range queries {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		q := dashboardQuery(queries[k])
		if strings.HasPrefix(k, "annotation ") {
			if _, err := prom.query(q); err != nil {
				t.Errorf("dashboard %s: %v", k, err)
			}
			continue
		}
		var n int
		if err := procs.Eventually(30*time.Second, 250*time.Millisecond, func() error {
			v, err := prom.query(q)
			if err != nil {
				return err
			}
			if n = len(v); n == 0 {
				return fmt.Errorf("no series for %s", q)
			}
			return nil
		}); err != nil {
			t.Errorf("dashboard %s: %v", k, err)
			continue
		}
		t.Logf("dashboard %-45s %d series", k, n)
	}
	if !slices.Contains(keys, "Mode/A") {
		t.Errorf("dashboard queries %v lack the mode panel", keys)
	}
}
