package monitoring_test

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/anivault/anivault/deployments/monitoring"
)

// promtool returns promtool's path, failing the test when it is not
// installed: the rule tests are part of the default test run.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool not found on PATH: the alert rule tests need it. .ci/run installs it (Debian package prometheus: apt-get install -y prometheus): %v", err)
	}
	return p
}

func runPromtool(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, promtool(t), args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// The rules load, their unit tests pass, and the example configuration is valid.
func TestPromtool(t *testing.T) {
	out := runPromtool(t, "check", "rules", "alerts.yaml")
	if !strings.Contains(out, "SUCCESS: 8 rules found") {
		t.Errorf("promtool check rules: %s", out)
	}
	t.Logf("promtool check rules alerts.yaml:\n%s", out)
	out = runPromtool(t, "test", "rules", "alerts_test.yaml")
	if !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool test rules: %s", out)
	}
	t.Logf("promtool test rules alerts_test.yaml:\n%s", out)
	runPromtool(t, "check", "config", "prometheus.yml")
}

// The unit tests can fail: a rule whose threshold changed fails them.
func TestPromtoolCatchesABrokenRule(t *testing.T) {
	dir := t.TempDir()
	broken := strings.Replace(string(monitoring.AlertsYAML), "for: 10m", "for: 1m", 1)
	if broken == string(monitoring.AlertsYAML) {
		t.Fatal("alerts.yaml has no `for: 10m` to change")
	}
	tests, err := os.ReadFile("alerts_test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"alerts.yaml": []byte(broken), "alerts_test.yaml": tests} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, promtool(t), "test", "rules", filepath.Join(dir, "alerts_test.yaml")).CombinedOutput()
	if err == nil {
		t.Fatalf("promtool test rules passed with AniVaultCacheOnlyTooLong firing after 1m instead of 10m:\n%s", out)
	}
	if !strings.Contains(string(out), "AniVaultCacheOnlyTooLong") {
		t.Errorf("the failure does not name the changed alert:\n%s", out)
	}
}

// The alerts the issue asks for, each with its severity, summary, description and runbook.
func TestAlertRules(t *testing.T) {
	rf, err := monitoring.Alerts()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"AniVaultCacheOnlyTooLong",           // cache-only mode lasting longer than a threshold
		"AniVaultBufferFilling",              // the buffer filling
		"AniVaultBufferOldestWriteOld",       // its oldest write getting old
		"AniVaultEpochMismatch",              // nodes disagreeing on the epoch
		"AniVaultMonitorSilent",              // a monitor gone silent
		"AniVaultWritesFailing",              // writes failing
		"AniVaultBreakerOpenDatabaseHealthy", // the breaker open while the database is healthy
		"AniVaultReplayStalled",              // replay stalled
	}
	var got []string
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			got = append(got, r.Alert)
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("%s: severity %q, want warning or critical", r.Alert, s)
			}
			for _, a := range []string{"summary", "description", "runbook_url"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("%s: no %s annotation", r.Alert, a)
				}
			}
			if u := r.Annotations["runbook_url"]; !strings.HasSuffix(u, "/README.md#troubleshooting") {
				t.Errorf("%s: runbook_url %q does not point at the README's troubleshooting section", r.Alert, u)
			}
			if r.For == "" {
				t.Errorf("%s: no `for:`, a single scrape would page", r.Alert)
			}
			names, err := monitoring.MetricNames(r.Expr)
			if err != nil || len(names) == 0 {
				t.Errorf("%s: metric names of %q: %v %v", r.Alert, r.Expr, names, err)
			}
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("alerts %v, want %v", got, want)
	}
	if !readmeHasHeading(t, "Troubleshooting") {
		t.Error("README.md has no `## Troubleshooting` section for the runbook links")
	}
}

func readmeHasHeading(t *testing.T, title string) bool {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "## "+title {
			return true
		}
	}
	return false
}

// Every alert has a promtool test in which it fires and one in which it does not.
func TestEveryAlertIsTestedBothWays(t *testing.T) {
	b, err := os.ReadFile("alerts_test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var tf struct {
		RuleFiles []string `yaml:"rule_files"`
		Tests     []struct {
			Name   string `yaml:"name"`
			Checks []struct {
				Alert string `yaml:"alertname"`
				Exp   []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(b, &tf); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(tf.RuleFiles, []string{"alerts.yaml"}) {
		t.Errorf("alerts_test.yaml tests %v, want alerts.yaml", tf.RuleFiles)
	}
	fires, silent := map[string]bool{}, map[string]bool{}
	for _, tc := range tf.Tests {
		for _, c := range tc.Checks {
			if len(c.Exp) > 0 {
				fires[c.Alert] = true
			} else {
				silent[c.Alert] = true
			}
		}
	}
	rf, err := monitoring.Alerts()
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if !fires[r.Alert] {
				t.Errorf("%s is never tested firing", r.Alert)
			}
			if !silent[r.Alert] {
				t.Errorf("%s is never tested not firing", r.Alert)
			}
		}
	}
}

// The PrometheusRule for Kubernetes holds exactly the rules of alerts.yaml.
func TestPrometheusRuleEqualsAlerts(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "k8s", "monitoring", "prometheusrule.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var pr struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
		Metadata   struct {
			Name string `yaml:"name"`
		} `yaml:"metadata"`
		Spec monitoring.RuleFile `yaml:"spec"`
	}
	if err := yaml.Unmarshal(b, &pr); err != nil {
		t.Fatal(err)
	}
	if pr.APIVersion != "monitoring.coreos.com/v1" || pr.Kind != "PrometheusRule" || pr.Metadata.Name == "" {
		t.Errorf("prometheusrule.yaml is %s %s %q", pr.APIVersion, pr.Kind, pr.Metadata.Name)
	}
	rf, err := monitoring.Alerts()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(pr.Spec, rf) {
		t.Errorf("prometheusrule.yaml's spec.groups differ from alerts.yaml:\n%+v\nwant\n%+v", pr.Spec, rf)
	}
}

// The PodMonitor scrapes a named metrics port of each of the three services' pods.
func TestPodMonitorReachesEveryService(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "k8s", "monitoring", "podmonitor.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var pm struct {
		Kind string `yaml:"kind"`
		Spec struct {
			Selector struct {
				MatchLabels map[string]string `yaml:"matchLabels"`
			} `yaml:"selector"`
			Endpoints []struct {
				Port string `yaml:"port"`
				Path string `yaml:"path"`
			} `yaml:"podMetricsEndpoints"`
		} `yaml:"spec"`
	}
	if err := yaml.Unmarshal(b, &pm); err != nil {
		t.Fatal(err)
	}
	if pm.Kind != "PodMonitor" || len(pm.Spec.Selector.MatchLabels) == 0 {
		t.Fatalf("podmonitor.yaml: kind %q, selector %v", pm.Kind, pm.Spec.Selector.MatchLabels)
	}
	ports := map[string]bool{}
	for _, e := range pm.Spec.Endpoints {
		if e.Path != "/metrics" {
			t.Errorf("endpoint %s scrapes %q, want /metrics", e.Port, e.Path)
		}
		ports[e.Port] = true
	}
	for _, svc := range []string{"cache-node", "health-monitor", "recovery-manager"} {
		type deployment struct {
			Kind string `yaml:"kind"`
			Spec struct {
				Template struct {
					Metadata struct {
						Labels map[string]string `yaml:"labels"`
					} `yaml:"metadata"`
					Spec struct {
						Containers []struct {
							Ports []struct {
								Name string `yaml:"name"`
							} `yaml:"ports"`
						} `yaml:"containers"`
					} `yaml:"spec"`
				} `yaml:"template"`
			} `yaml:"spec"`
		}
		f, err := os.ReadFile(filepath.Join("..", "k8s", svc+".yaml"))
		if err != nil {
			t.Fatal(err)
		}
		var dep deployment
		dec := yaml.NewDecoder(strings.NewReader(string(f)))
		for dep.Kind != "Deployment" {
			dep = deployment{}
			if err := dec.Decode(&dep); err != nil {
				t.Fatalf("%s.yaml: no Deployment: %v", svc, err)
			}
		}
		for k, v := range pm.Spec.Selector.MatchLabels {
			if dep.Spec.Template.Metadata.Labels[k] != v {
				t.Errorf("%s pods lack the PodMonitor's selector label %s=%s", svc, k, v)
			}
		}
		scraped := false
		for _, c := range dep.Spec.Template.Spec.Containers {
			for _, p := range c.Ports {
				scraped = scraped || ports[p.Name]
			}
		}
		if !scraped {
			t.Errorf("no PodMonitor endpoint names a port of %s's container", svc)
		}
	}
}

// The dashboard has the panels the issue asks for, each with a query.
func TestDashboard(t *testing.T) {
	d, err := monitoring.LoadDashboard()
	if err != nil {
		t.Fatal(err)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard uid %q title %q", d.UID, d.Title)
	}
	titles := map[string]bool{}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos == nil || p.GridPos.W <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: bad gridPos %+v", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		titles[p.Title] = true
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q does not use the datasource variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if names, err := monitoring.MetricNames(tg.Expr); err != nil || len(names) == 0 {
				t.Errorf("panel %q query %s: %q: %v %v", p.Title, tg.RefID, tg.Expr, names, err)
			}
		}
	}
	for _, want := range []string{"Mode", "Epoch per service", "Buffer pending writes", "Oldest buffered write", "Writes by outcome",
		"Cache hit rate", "Circuit breaker state", "Health checks", "Replay rate", "Replay duration", "HTTP latency"} {
		if !titles[want] {
			t.Errorf("the dashboard has no %q panel", want)
		}
	}
	if got := d.VariableMetrics(); !slices.Equal(got, []string{"anivault_build_info"}) {
		t.Errorf("template variables query %v", got)
	}
}

func TestMetricNames(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`anivault_mode{mode="cache_only"} == 1`, []string{"anivault_mode"}},
		{`max by (namespace) (anivault_mode{mode="cache_only"}) == 1`, []string{"anivault_mode"}},
		{`sum(rate(a_total{x=~"a|b", y!="}"}[5m])) by (le, route) / ignoring(code) group_left (service) b_info`, []string{"a_total", "b_info"}},
		{`histogram_quantile(0.95, sum by (le) (rate(x_seconds_bucket{ns=~"$namespace"}[$__rate_interval])))`, []string{"x_seconds_bucket"}},
		{`a > 1e3 and on (namespace) b < 0x1F unless c offset 5m or d[1h:1m] + Inf`, []string{"a", "b", "c", "d"}},
		{`changes(max(anivault_mode_epoch)[1m:]) > 0`, []string{"anivault_mode_epoch"}},
		{`time() - vector(1) * scalar(up)`, []string{"up"}},
		{`label_replace(m, "dst", "$1", "src", "(.*)")`, []string{"m"}},
		{`rate(x[${__interval}])`, []string{"x"}},
	} {
		got, err := monitoring.MetricNames(tc.expr)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("MetricNames(%q) = %v, %v; want %v", tc.expr, got, err, tc.want)
		}
	}
	for _, bad := range []string{`a{x="b}`, `a{x="b"`, `rate(a[5m)`} {
		if _, err := monitoring.MetricNames(bad); err == nil {
			t.Errorf("MetricNames(%q) accepted a broken expression", bad)
		}
	}
	if got := monitoring.Families("x_seconds_bucket"); !slices.Equal(got, []string{"x_seconds_bucket", "x_seconds"}) {
		t.Errorf("Families = %v", got)
	}
}
