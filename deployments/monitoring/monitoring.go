// Package monitoring holds AniVault's Prometheus alert rules (alerts.yaml,
// tested by alerts_test.yaml with promtool), its Grafana dashboard
// (dashboard.json) and a Prometheus configuration for a deployment outside
// Kubernetes (prometheus.yml); the Kubernetes PrometheusRule and PodMonitor
// are in deployments/k8s/monitoring. The Go code reads them for the tests:
// the rules, the dashboard's queries, and the metric names they use.
package monitoring

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// AlertsYAML is alerts.yaml.
//
//go:embed alerts.yaml
var AlertsYAML []byte

// DashboardJSON is dashboard.json.
//
//go:embed dashboard.json
var DashboardJSON []byte

// RuleFile is a Prometheus rule file.
type RuleFile struct {
	Groups []RuleGroup `yaml:"groups" json:"groups"`
}

// RuleGroup is one group of rules.
type RuleGroup struct {
	Name     string `yaml:"name" json:"name"`
	Interval string `yaml:"interval,omitempty" json:"interval,omitempty"`
	Rules    []Rule `yaml:"rules" json:"rules"`
}

// Rule is an alerting (or recording) rule.
type Rule struct {
	Alert       string            `yaml:"alert,omitempty" json:"alert,omitempty"`
	Record      string            `yaml:"record,omitempty" json:"record,omitempty"`
	Expr        string            `yaml:"expr" json:"expr"`
	For         string            `yaml:"for,omitempty" json:"for,omitempty"`
	Labels      map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
	Annotations map[string]string `yaml:"annotations,omitempty" json:"annotations,omitempty"`
}

// Rules parses a rule file, rejecting unknown fields.
func Rules(b []byte) (RuleFile, error) {
	var f RuleFile
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return RuleFile{}, fmt.Errorf("rule file: %w", err)
	}
	return f, nil
}

// Alerts returns the rules of alerts.yaml.
func Alerts() (RuleFile, error) { return Rules(AlertsYAML) }

// Dashboard is the part of a Grafana dashboard the tests read.
type Dashboard struct {
	Title      string  `json:"title"`
	UID        string  `json:"uid"`
	Panels     []Panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Annotations struct {
		List []struct {
			Name string `json:"name"`
			Expr string `json:"expr"`
		} `json:"list"`
	} `json:"annotations"`
}

// Panel is one dashboard panel (rows are panels of type "row").
type Panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos *struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

// LoadDashboard parses dashboard.json.
func LoadDashboard() (Dashboard, error) {
	var d Dashboard
	if err := json.Unmarshal(DashboardJSON, &d); err != nil {
		return Dashboard{}, fmt.Errorf("dashboard.json: %w", err)
	}
	return d, nil
}

// Queries returns every PromQL expression of the dashboard: panel targets
// and annotations, keyed by where they are ("panel title/refId").
func (d Dashboard) Queries() map[string]string {
	out := map[string]string{}
	for _, p := range d.Panels {
		for _, t := range p.Targets {
			out[p.Title+"/"+t.RefID] = t.Expr
		}
	}
	for _, a := range d.Annotations.List {
		if a.Expr != "" {
			out["annotation "+a.Name] = a.Expr
		}
	}
	return out
}

// VariableMetrics returns the metric names the dashboard's template
// variables query (label_values(metric, label)).
func (d Dashboard) VariableMetrics() []string {
	var out []string
	for _, v := range d.Templating.List {
		var q struct {
			Query string `json:"query"`
		}
		if json.Unmarshal(v.Query, &q) != nil {
			var s string
			if json.Unmarshal(v.Query, &s) != nil {
				continue
			}
			q.Query = s
		}
		if m := labelValues.FindStringSubmatch(q.Query); m != nil {
			out = append(out, m[1])
		}
	}
	return out
}

var labelValues = regexp.MustCompile(`^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)`)

// Grafana's variables and PromQL's clauses whose parenthesised lists hold
// label names, not series.
var (
	grafanaVar  = regexp.MustCompile(`\$\{[^}]*\}|\$[A-Za-z0-9_]+`)
	labelClause = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
)

// keywords are PromQL words that are neither metrics nor followed by "(".
var keywords = map[string]bool{
	"and": true, "or": true, "unless": true, "by": true, "without": true, "on": true, "ignoring": true,
	"group_left": true, "group_right": true, "bool": true, "offset": true, "atan2": true,
	"inf": true, "nan": true, "start": true, "end": true,
}

// MetricNames returns the metric names a PromQL expression selects, sorted
// and without repeats. It is a tokenizer, not a parser: it drops string
// literals, label matchers ({...}), ranges and subqueries ([...]), the
// label lists of by/without/on/ignoring/group_left/group_right and Grafana
// variables, then keeps every identifier that is not a keyword, a number,
// or a function or aggregation (an identifier followed by "("). It fails on
// unbalanced quotes or brackets.
func MetricNames(expr string) ([]string, error) {
	s, err := stripLiterals(expr)
	if err != nil {
		return nil, err
	}
	s = grafanaVar.ReplaceAllString(s, " ")
	if s, err = stripBlocks(s, '{', '}'); err != nil {
		return nil, err
	}
	if s, err = stripBlocks(s, '[', ']'); err != nil {
		return nil, err
	}
	s = labelClause.ReplaceAllString(s, " ")
	seen := map[string]bool{}
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case isDigit(c) || (c == '.' && i+1 < len(s) && isDigit(s[i+1])):
			// A number, a duration or a hex literal: digits, letters, dots, and a sign after an exponent.
			i++
			for i < len(s) && (isIdent(s[i]) || s[i] == '.' || ((s[i] == '+' || s[i] == '-') && (s[i-1] == 'e' || s[i-1] == 'E'))) {
				i++
			}
		case isIdentStart(c):
			j := i
			for j < len(s) && isIdent(s[j]) {
				j++
			}
			word := s[i:j]
			k := j
			for k < len(s) && (s[k] == ' ' || s[k] == '\t' || s[k] == '\n' || s[k] == '\r') {
				k++
			}
			if !(k < len(s) && s[k] == '(') && !keywords[strings.ToLower(word)] {
				seen[word] = true
			}
			i = j
		default:
			i++
		}
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, nil
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}
func isIdent(c byte) bool { return isIdentStart(c) || isDigit(c) }

// stripLiterals replaces every string literal ("...", '...', `...`) with a space.
func stripLiterals(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '"' && c != '\'' && c != '`' {
			b.WriteByte(c)
			continue
		}
		j := i + 1
		for ; j < len(s) && s[j] != c; j++ {
			if s[j] == '\\' && c != '`' {
				j++
			}
		}
		if j >= len(s) {
			return "", fmt.Errorf("unterminated string literal in %q", s)
		}
		b.WriteByte(' ')
		i = j
	}
	return b.String(), nil
}

// stripBlocks replaces every open...close block (not nested) with a space.
func stripBlocks(s string, open, close byte) (string, error) {
	var b strings.Builder
	depth := 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == open:
			if depth > 0 {
				return "", fmt.Errorf("nested %c in %q", open, s)
			}
			depth++
		case c == close:
			if depth == 0 {
				return "", fmt.Errorf("unbalanced %c in %q", close, s)
			}
			depth--
			b.WriteByte(' ')
		case depth == 0:
			b.WriteByte(c)
		}
	}
	if depth != 0 {
		return "", fmt.Errorf("unclosed %c in %q", open, s)
	}
	return b.String(), nil
}

// Families returns the metric families a series name may belong to: the
// name itself and, for a histogram's _bucket, _sum and _count series, the
// histogram.
func Families(name string) []string {
	out := []string{name}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			out = append(out, base)
		}
	}
	return out
}
