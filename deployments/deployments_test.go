package deployments_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/anivault/anivault/pkg/envconfig"
	"github.com/anivault/anivault/pkg/svckit"
)

// The three services, by the name of their directory under services/, which is
// also their container name in k8s/, their build argument SERVICE and their
// NATS user.
var services = []string{"cache-node", "health-monitor", "recovery-manager"}

// requiredVars are the contract's variables every deployment must set for
// every service: the defaults (127.0.0.1) are only right on a laptop.
var requiredVars = []string{"NATS_URL", "DATABASE_URL"}

// sharedVars shape JetStream streams that several services create with
// CreateOrUpdateStream: a deployment must give them one value everywhere, or
// the services keep rewriting each other's stream configuration.
var sharedVars = []string{"BUFFER_REPLICAS", "BUFFER_MAX_MSGS", "BUFFER_MAX_BYTES", "SUBJECT_PREFIX"}

// ---------------------------------------------------------------- YAML

func yamlFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// decodeAll decodes every document of a YAML stream into nodes.
func decodeAll(path string) ([]*yaml.Node, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var docs []*yaml.Node
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", len(docs)+1, err)
		}
		// Decode into any as well: that resolves anchors, aliases and merge keys.
		var v any
		if err := n.Decode(&v); err != nil {
			return nil, fmt.Errorf("document %d: %w", len(docs)+1, err)
		}
		if v != nil {
			docs = append(docs, &n)
		}
	}
}

func TestYAMLFilesParse(t *testing.T) {
	files := yamlFiles(t)
	for _, want := range []string{"compose/compose.yaml", "k8s/kustomization.yaml", "k8s/cache-node.yaml"} {
		if !slices.Contains(files, filepath.FromSlash(want)) {
			t.Errorf("%s is missing", want)
		}
	}
	for _, f := range files {
		docs, err := decodeAll(f)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if len(docs) == 0 {
			t.Errorf("%s: no YAML document", f)
		}
	}
}

// ---------------------------------------------------------------- variables the services read

// varKind is how a service parses a variable: the envconfig.Reader method it
// calls (String, Duration, Int, Bool), or String for a plain lookup.
type varKind string

var envName = regexp.MustCompile(`^[A-Z][A-Z0-9_]*$`)

// readerMethods are envconfig.Reader's reading methods.
var readerMethods = map[string]varKind{"String": "String", "Duration": "Duration", "Int": "Int", "Bool": "Bool"}

// scanVars collects, from the non-test Go files under dir, the variable names
// passed as string literals to envconfig.Reader's reading methods (LoadConfig,
// natsconn.FromEnv) and to plain environment lookups (svckit's envOr for
// LOG_LEVEL and LOG_FORMAT, os.Getenv, os.LookupEnv).
func scanVars(t *testing.T, dir string, into map[string]varKind) {
	t.Helper()
	fset := token.NewFileSet()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) == 0 {
				return true
			}
			lit, ok := call.Args[0].(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			name, err := strconv.Unquote(lit.Value)
			if err != nil || !envName.MatchString(name) {
				return true
			}
			kind := varKind("")
			switch fn := call.Fun.(type) {
			case *ast.SelectorExpr:
				if k, ok := readerMethods[fn.Sel.Name]; ok {
					kind = k
				}
				if x, ok := fn.X.(*ast.Ident); ok && x.Name == "os" && (fn.Sel.Name == "Getenv" || fn.Sel.Name == "LookupEnv") {
					kind = "String"
				}
			case *ast.Ident:
				if fn.Name == "envOr" {
					kind = "String"
				}
			}
			if kind != "" {
				into[name] = kind
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatalf("scan %s: %v", dir, err)
	}
}

// serviceVars returns, for each service, the variables it reads: its own
// package tree plus pkg/natsconn (NATS_*) and pkg/svckit (LOG_*). It reads the
// source rather than calling LoadConfig because the services' packages are
// internal to services/ and this package may not import them.
func serviceVars(t *testing.T) map[string]map[string]varKind {
	t.Helper()
	common := map[string]varKind{}
	scanVars(t, filepath.Join("..", "pkg", "natsconn"), common)
	scanVars(t, filepath.Join("..", "pkg", "svckit"), common)
	out := map[string]map[string]varKind{}
	for _, svc := range services {
		m := map[string]varKind{}
		for k, v := range common {
			m[k] = v
		}
		scanVars(t, filepath.Join("..", "services", svc), m)
		out[svc] = m
	}
	return out
}

func TestServiceVarsScanner(t *testing.T) {
	vars := serviceVars(t)
	// A scanner that finds nothing would make every other check pass: pin what it must see.
	want := map[string][]string{
		"cache-node":       {"NATS_URL", "NATS_USER", "NATS_PASSWORD", "NATS_CREDS", "DATABASE_URL", "HTTP_ADDR", "NODE_ID", "CACHE_MAX_SIZE", "BUFFER_REPLICAS", "LOG_LEVEL", "LOG_FORMAT"},
		"health-monitor":   {"NATS_URL", "DATABASE_URL", "HEALTH_CHECK_INTERVAL", "HEALTH_CHECK_TIMEOUT", "HEALTH_FAILURE_THRESHOLD", "HEALTH_RECOVERY_THRESHOLD", "NODE_ID", "LOG_LEVEL"},
		"recovery-manager": {"NATS_URL", "DATABASE_URL", "AUTO_RECOVERY_ENABLED", "RECOVERY_CHECK_INTERVAL", "NODE_ID", "BUFFER_REPLICAS", "LOG_FORMAT"},
	}
	for svc, names := range want {
		for _, n := range names {
			if _, ok := vars[svc][n]; !ok {
				t.Errorf("%s: scanner did not find %s (found %v)", svc, n, sortedKeys(vars[svc]))
			}
		}
	}
	if vars["cache-node"]["HEALTH_CHECK_INTERVAL"] != "" {
		t.Error("cache-node does not read HEALTH_CHECK_INTERVAL; the scanner mixes services up")
	}
	if k := vars["health-monitor"]["HEALTH_CHECK_INTERVAL"]; k != "Duration" {
		t.Errorf("HEALTH_CHECK_INTERVAL kind = %q, want Duration", k)
	}
	for _, svc := range services {
		t.Logf("%s reads %d variables: %s", svc, len(vars[svc]), strings.Join(sortedKeys(vars[svc]), " "))
	}
}

// envVar is one variable a deployment sets for a service, and where.
type envVar struct {
	name, value, from string
	// computed is true when the value comes from the platform (downward API, secretKeyRef).
	computed bool
}

// checkEnv reports variables the service does not read, values it would
// refuse at start, and required variables that are missing.
func checkEnv(t *testing.T, where, svc string, known map[string]varKind, env []envVar) {
	t.Helper()
	set := map[string]envVar{}
	for _, e := range env {
		set[e.name] = e
		kind, ok := known[e.name]
		if !ok {
			t.Errorf("%s: %s sets %s (from %s), which %s does not read", where, svc, e.name, e.from, svc)
			continue
		}
		if e.computed {
			continue
		}
		if err := validValue(e.name, kind, e.value); err != nil {
			t.Errorf("%s: %s: %s=%q (from %s) would stop the service: %v", where, svc, e.name, e.value, e.from, err)
		}
	}
	for _, r := range requiredVars {
		if _, ok := set[r]; !ok {
			t.Errorf("%s: %s does not set %s (the default only works on a laptop)", where, svc, r)
		}
	}
}

// validValue parses a value the way the service will.
func validValue(name string, kind varKind, value string) error {
	r := envconfig.FromMap(map[string]string{name: value})
	switch kind {
	case "Duration":
		r.Duration(name, 0)
	case "Int":
		r.Int(name, 0, -1<<62, 1<<62)
	case "Bool":
		r.Bool(name, false)
	}
	if err := r.Err(); err != nil {
		return err
	}
	switch name {
	case "LOG_LEVEL":
		_, err := svckit.NewLogger(io.Discard, value, "json")
		return err
	case "LOG_FORMAT":
		_, err := svckit.NewLogger(io.Discard, "info", value)
		return err
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// ---------------------------------------------------------------- compose

type composeFile struct {
	Services map[string]composeService `yaml:"services"`
}

type composeService struct {
	Image string `yaml:"image"`
	Build *struct {
		Context    string            `yaml:"context"`
		Dockerfile string            `yaml:"dockerfile"`
		Args       map[string]string `yaml:"args"`
	} `yaml:"build"`
	Environment any      `yaml:"environment"`
	Ports       []string `yaml:"ports"`
	Restart     string   `yaml:"restart"`
	Healthcheck *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
	Volumes []string `yaml:"volumes"`
	Command []string `yaml:"command"`
}

// service returns which AniVault service a compose service runs, or "".
func (s composeService) service() string {
	if s.Build != nil && slices.Contains(services, s.Build.Args["SERVICE"]) {
		return s.Build.Args["SERVICE"]
	}
	for _, svc := range services {
		if strings.HasPrefix(s.Image, "anivault/"+svc+":") {
			return svc
		}
	}
	return ""
}

// env returns the service's environment, given as a map or as a KEY=VALUE list.
func (s composeService) env() ([]envVar, error) {
	var out []envVar
	switch e := s.Environment.(type) {
	case nil:
	case map[string]any:
		for k, v := range e {
			val := ""
			if v != nil {
				val = fmt.Sprint(v)
			}
			out = append(out, envVar{name: k, value: val, from: "environment"})
		}
	case []any:
		for _, item := range e {
			k, v, _ := strings.Cut(fmt.Sprint(item), "=")
			out = append(out, envVar{name: k, value: v, from: "environment"})
		}
	default:
		return nil, fmt.Errorf("environment: unexpected %T", e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("compose", "compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	return c
}

func envMap(env []envVar) map[string]string {
	m := map[string]string{}
	for _, e := range env {
		m[e.name] = e.value
	}
	return m
}

func TestComposeEnvironment(t *testing.T) {
	vars := serviceVars(t)
	users := natsUsers(t)
	c := loadCompose(t)
	count := map[string]int{}
	nodeIDs := map[string]string{}
	shared := map[string]map[string]string{} // variable -> value -> compose service
	for name, s := range c.Services {
		svc := s.service()
		if svc == "" {
			continue
		}
		count[svc]++
		if s.Build == nil || s.Build.Args["SERVICE"] != svc {
			t.Errorf("compose service %s: build it with args SERVICE=%s", name, svc)
		} else if df := filepath.Join("compose", s.Build.Context, s.Build.Dockerfile); !fileExists(df) {
			t.Errorf("compose service %s: Dockerfile %s does not exist", name, df)
		}
		if s.Restart == "" || s.Restart == "no" {
			t.Errorf("compose service %s: no restart policy", name)
		}
		env, err := s.env()
		if err != nil {
			t.Fatalf("compose service %s: %v", name, err)
		}
		checkEnv(t, "compose/compose.yaml service "+name, svc, vars[svc], env)
		m := envMap(env)
		checkNATSUser(t, "compose service "+name, svc, m["NATS_USER"], m["NATS_PASSWORD"], users)
		if id := m["NODE_ID"]; id == "" {
			t.Errorf("compose service %s: NODE_ID not set (the default is the container's random host name)", name)
		} else if other, dup := nodeIDs[id]; dup {
			t.Errorf("compose services %s and %s share NODE_ID %s", name, other, id)
		} else {
			nodeIDs[id] = name
		}
		for _, v := range sharedVars {
			if _, ok := vars[svc][v]; !ok {
				continue
			}
			if shared[v] == nil {
				shared[v] = map[string]string{}
			}
			shared[v][m[v]] = name
		}
		if svc == "cache-node" {
			if s.Healthcheck == nil || !strings.Contains(strings.Join(s.Healthcheck.Test, " "), "/readyz") {
				t.Errorf("compose service %s: no healthcheck on /readyz", name)
			}
			if len(s.Ports) != 1 || !strings.HasSuffix(s.Ports[0], ":8080") {
				t.Errorf("compose service %s: ports %v, want one host port mapped to 8080", name, s.Ports)
			}
		}
	}
	for v, values := range shared {
		if len(values) > 1 {
			t.Errorf("compose: %s differs between services %v; the services that read it create the same streams", v, values)
		}
	}
	want := map[string]int{"cache-node": 2, "health-monitor": 1, "recovery-manager": 1}
	for svc, n := range want {
		if count[svc] != n {
			t.Errorf("compose runs %d %s, want %d", count[svc], svc, n)
		}
	}
	var ports []string
	for _, s := range c.Services {
		if s.service() == "cache-node" {
			ports = append(ports, s.Ports...)
		}
	}
	sort.Strings(ports)
	if !slices.Equal(ports, []string{"8081:8080", "8082:8080"}) {
		t.Errorf("cache-node ports %v, want 8081:8080 and 8082:8080", ports)
	}

	nats, ok := c.Services["nats"]
	if !ok {
		t.Fatal("compose: no nats service")
	}
	cmd := strings.Join(nats.Command, " ")
	for _, want := range []string{"-js", "-c /etc/nats/compose/nats.conf"} {
		if !strings.Contains(cmd, want) {
			t.Errorf("compose nats command %q lacks %q", cmd, want)
		}
	}
	// The mounted files exist, at paths that keep nats.conf's relative include working.
	for _, v := range nats.Volumes {
		src, dst, ok := strings.Cut(v, ":")
		if !ok || !strings.HasPrefix(src, ".") {
			continue
		}
		if !fileExists(filepath.Join("compose", src)) {
			t.Errorf("compose nats volume %s: %s does not exist", v, src)
		}
		_ = dst
	}
	if pg, ok := c.Services["postgres"]; !ok || !strings.HasPrefix(pg.Image, "postgres:15") {
		t.Errorf("compose: want a postgres:15 service, have %+v", pg.Image)
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// ---------------------------------------------------------------- Kubernetes

type k8sHead struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name   string            `yaml:"name"`
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
}

type k8sData struct {
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
}

type k8sProbe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
}

type k8sContainer struct {
	Name  string `yaml:"name"`
	Image string `yaml:"image"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	Env []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			FieldRef *struct {
				FieldPath string `yaml:"fieldPath"`
			} `yaml:"fieldRef"`
			SecretKeyRef    *struct{ Name, Key string } `yaml:"secretKeyRef"`
			ConfigMapKeyRef *struct{ Name, Key string } `yaml:"configMapKeyRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	EnvFrom []struct {
		Prefix       string `yaml:"prefix"`
		ConfigMapRef *struct {
			Name string `yaml:"name"`
		} `yaml:"configMapRef"`
		SecretRef *struct {
			Name string `yaml:"name"`
		} `yaml:"secretRef"`
	} `yaml:"envFrom"`
	LivenessProbe  *k8sProbe `yaml:"livenessProbe"`
	ReadinessProbe *k8sProbe `yaml:"readinessProbe"`
	Resources      struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext *struct {
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
		RunAsNonRoot             *bool `yaml:"runAsNonRoot"`
		Capabilities             struct {
			Drop []string `yaml:"drop"`
		} `yaml:"capabilities"`
	} `yaml:"securityContext"`
}

type k8sDeployment struct {
	Spec struct {
		Replicas *int `yaml:"replicas"`
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec struct {
				SecurityContext *struct {
					RunAsNonRoot *bool `yaml:"runAsNonRoot"`
					RunAsUser    *int  `yaml:"runAsUser"`
				} `yaml:"securityContext"`
				Containers []k8sContainer `yaml:"containers"`
				Volumes    []struct {
					Name   string `yaml:"name"`
					Secret *struct {
						SecretName string `yaml:"secretName"`
					} `yaml:"secret"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type k8sService struct {
	Spec struct {
		Selector map[string]string `yaml:"selector"`
		Ports    []struct {
			Name       string `yaml:"name"`
			Port       int    `yaml:"port"`
			TargetPort any    `yaml:"targetPort"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

type k8sPDB struct {
	Spec struct {
		MinAvailable any `yaml:"minAvailable"`
		Selector     struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
	} `yaml:"spec"`
}

type k8sObject struct {
	k8sHead
	file string
	node *yaml.Node
}

// k8sManifests reads every document under k8s/ except the kustomization.
func k8sManifests(t *testing.T) []k8sObject {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("k8s", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var out []k8sObject
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		docs, err := decodeAll(f)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for i, d := range docs {
			var h k8sHead
			if err := d.Decode(&h); err != nil {
				t.Fatalf("%s document %d: %v", f, i+1, err)
			}
			if h.APIVersion == "" || h.Kind == "" || h.Metadata.Name == "" {
				t.Errorf("%s document %d: apiVersion, kind and metadata.name are required", f, i+1)
			}
			out = append(out, k8sObject{k8sHead: h, file: f, node: d})
		}
	}
	return out
}

func decodeAs[T any](t *testing.T, o k8sObject) T {
	t.Helper()
	var v T
	if err := o.node.Decode(&v); err != nil {
		t.Fatalf("%s %s/%s: %v", o.file, o.Kind, o.Metadata.Name, err)
	}
	return v
}

func TestKustomizationListsEveryManifest(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("k8s", "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Resources []string `yaml:"resources"`
	}
	if err := yaml.Unmarshal(b, &k); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join("k8s", "*.yaml"))
	for _, f := range files {
		base := filepath.Base(f)
		if strings.HasSuffix(base, ".example.yaml") {
			// Examples to copy and change (the Secrets): never deployed as they are.
			if slices.Contains(k.Resources, base) {
				t.Errorf("kustomization.yaml deploys %s, an example with example passwords", base)
			}
			continue
		}
		if base != "kustomization.yaml" && !slices.Contains(k.Resources, base) {
			t.Errorf("kustomization.yaml does not list %s", base)
		}
	}
	for _, r := range k.Resources {
		if !fileExists(filepath.Join("k8s", r)) {
			t.Errorf("kustomization.yaml lists %s, which does not exist", r)
		}
	}
}

func TestKubernetesManifests(t *testing.T) {
	vars := serviceVars(t)
	users := natsUsers(t)
	objs := k8sManifests(t)
	configMaps := map[string]map[string]string{}
	secrets := map[string]map[string]string{}
	byKind := map[string]map[string]k8sObject{}
	for _, o := range objs {
		if byKind[o.Kind] == nil {
			byKind[o.Kind] = map[string]k8sObject{}
		}
		if _, dup := byKind[o.Kind][o.Metadata.Name]; dup {
			t.Errorf("%s %s is defined twice", o.Kind, o.Metadata.Name)
		}
		byKind[o.Kind][o.Metadata.Name] = o
		switch o.Kind {
		case "ConfigMap":
			configMaps[o.Metadata.Name] = decodeAs[k8sData](t, o).Data
		case "Secret":
			d := decodeAs[k8sData](t, o)
			m := map[string]string{}
			for k, v := range d.Data {
				b, err := base64.StdEncoding.DecodeString(v)
				if err != nil {
					t.Errorf("Secret %s: data.%s is not base64: %v", o.Metadata.Name, k, err)
				}
				m[k] = string(b)
			}
			for k, v := range d.StringData {
				m[k] = v
			}
			secrets[o.Metadata.Name] = m
		}
	}

	wantReplicas := map[string]int{"cache-node": 3, "recovery-manager": 2, "health-monitor": 1}
	shared := map[string]map[string]string{}
	for _, svc := range services {
		o, ok := byKind["Deployment"][svc]
		if !ok {
			t.Errorf("no Deployment %s", svc)
			continue
		}
		d := decodeAs[k8sDeployment](t, o)
		if d.Spec.Replicas == nil || *d.Spec.Replicas != wantReplicas[svc] {
			t.Errorf("Deployment %s: replicas %v, want %d", svc, d.Spec.Replicas, wantReplicas[svc])
		}
		if !labelsMatch(d.Spec.Selector.MatchLabels, d.Spec.Template.Metadata.Labels) {
			t.Errorf("Deployment %s: selector %v does not select its pods %v", svc, d.Spec.Selector.MatchLabels, d.Spec.Template.Metadata.Labels)
		}
		psc := d.Spec.Template.Spec.SecurityContext
		if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
			t.Errorf("Deployment %s: the pod must run as a non-root user (runAsNonRoot, runAsUser != 0)", svc)
		}
		if len(d.Spec.Template.Spec.Containers) != 1 || d.Spec.Template.Spec.Containers[0].Name != svc {
			t.Errorf("Deployment %s: want one container named %s", svc, svc)
			continue
		}
		c := d.Spec.Template.Spec.Containers[0]
		where := fmt.Sprintf("%s Deployment %s", o.file, svc)
		if !strings.HasPrefix(c.Image, "anivault/"+svc+":") {
			t.Errorf("%s: image %s, want anivault/%s:<tag>", where, c.Image, svc)
		}

		// The container's whole environment, from env and envFrom.
		var env []envVar
		for _, ef := range c.EnvFrom {
			if ef.Prefix != "" {
				t.Errorf("%s: envFrom prefix %q renames variables", where, ef.Prefix)
			}
			switch {
			case ef.ConfigMapRef != nil:
				data, ok := configMaps[ef.ConfigMapRef.Name]
				if !ok {
					t.Errorf("%s: envFrom ConfigMap %s does not exist", where, ef.ConfigMapRef.Name)
				}
				for k, v := range data {
					env = append(env, envVar{name: k, value: v, from: "ConfigMap " + ef.ConfigMapRef.Name})
				}
			case ef.SecretRef != nil:
				data, ok := secrets[ef.SecretRef.Name]
				if !ok {
					t.Errorf("%s: envFrom Secret %s does not exist", where, ef.SecretRef.Name)
				}
				for k, v := range data {
					env = append(env, envVar{name: k, value: v, from: "Secret " + ef.SecretRef.Name})
				}
			}
		}
		nodeIDFromPod := false
		for _, e := range c.Env {
			v := envVar{name: e.Name, value: e.Value, from: "env"}
			if vf := e.ValueFrom; vf != nil {
				v.computed = true
				switch {
				case vf.FieldRef != nil:
					v.from = "downward API " + vf.FieldRef.FieldPath
					if e.Name == "NODE_ID" && vf.FieldRef.FieldPath == "metadata.name" {
						nodeIDFromPod = true
					}
				case vf.SecretKeyRef != nil:
					v.from = "Secret " + vf.SecretKeyRef.Name
					if s, ok := secrets[vf.SecretKeyRef.Name]; !ok {
						t.Errorf("%s: env %s: Secret %s does not exist", where, e.Name, vf.SecretKeyRef.Name)
					} else if val, ok := s[vf.SecretKeyRef.Key]; !ok {
						t.Errorf("%s: env %s: Secret %s has no key %s", where, e.Name, vf.SecretKeyRef.Name, vf.SecretKeyRef.Key)
					} else {
						v.value, v.computed = val, false
					}
				case vf.ConfigMapKeyRef != nil:
					v.from = "ConfigMap " + vf.ConfigMapKeyRef.Name
					if m, ok := configMaps[vf.ConfigMapKeyRef.Name]; !ok {
						t.Errorf("%s: env %s: ConfigMap %s does not exist", where, e.Name, vf.ConfigMapKeyRef.Name)
					} else if val, ok := m[vf.ConfigMapKeyRef.Key]; !ok {
						t.Errorf("%s: env %s: ConfigMap %s has no key %s", where, e.Name, vf.ConfigMapKeyRef.Name, vf.ConfigMapKeyRef.Key)
					} else {
						v.value, v.computed = val, false
					}
				}
			}
			env = append(env, v)
		}
		seen := map[string]string{}
		for _, e := range env {
			if prev, dup := seen[e.name]; dup && prev != e.from {
				t.Errorf("%s: %s is set twice (%s and %s): one silently wins", where, e.name, prev, e.from)
			}
			seen[e.name] = e.from
		}
		checkEnv(t, where, svc, vars[svc], env)
		if !nodeIDFromPod {
			t.Errorf("%s: NODE_ID must come from the pod name (valueFrom.fieldRef.fieldPath: metadata.name)", where)
		}
		m := envMap(env)
		checkNATSUser(t, where, svc, m["NATS_USER"], m["NATS_PASSWORD"], users)
		for _, v := range sharedVars {
			if _, ok := vars[svc][v]; ok {
				if shared[v] == nil {
					shared[v] = map[string]string{}
				}
				shared[v][m[v]] = svc
			}
		}

		// Resources and hardening.
		if c.Resources.Requests["cpu"] == "" || c.Resources.Requests["memory"] == "" || c.Resources.Limits["memory"] == "" {
			t.Errorf("%s: want cpu and memory requests and a memory limit, have %+v", where, c.Resources)
		}
		sc := c.SecurityContext
		if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			t.Errorf("%s: want readOnlyRootFilesystem, no privilege escalation and capabilities drop ALL", where)
		}

		if svc == "health-monitor" || svc == "recovery-manager" {
			if len(c.Ports) != 1 || c.Ports[0].ContainerPort != 9090 || m["ADMIN_ADDR"] != ":9090" {
				t.Errorf("%s: want ADMIN_ADDR :9090 and container port 9090, have %q %+v", where, m["ADMIN_ADDR"], c.Ports)
			}
			if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" ||
				c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
				t.Errorf("%s: want probes GET /healthz and /readyz on the admin port", where)
			}
		}
		if svc == "cache-node" {
			if len(c.Ports) != 1 || c.Ports[0].ContainerPort != 8080 {
				t.Errorf("%s: want container port 8080, have %+v", where, c.Ports)
			}
			if m["HTTP_ADDR"] != ":8080" {
				t.Errorf("%s: HTTP_ADDR %q, want :8080 (the probes' and Service's port)", where, m["HTTP_ADDR"])
			}
			if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" {
				t.Errorf("%s: want a liveness probe GET /healthz", where)
			}
			if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
				t.Errorf("%s: want a readiness probe GET /readyz", where)
			}
		}
	}
	for v, values := range shared {
		if len(values) > 1 {
			t.Errorf("k8s: %s differs between services %v; the services that read it create the same streams", v, values)
		}
	}

	// Every ConfigMap and Secret is used by some Deployment or Job (the
	// provision Job alone uses the NATS admin's Secret).
	used := map[string]bool{}
	for _, o := range append(slices.Collect(maps.Values(byKind["Deployment"])), slices.Collect(maps.Values(byKind["Job"]))...) {
		d := decodeAs[k8sDeployment](t, o)
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Secret != nil {
				used["Secret/"+v.Secret.SecretName] = true
			}
		}
		for _, c := range d.Spec.Template.Spec.Containers {
			for _, ef := range c.EnvFrom {
				if ef.ConfigMapRef != nil {
					used["ConfigMap/"+ef.ConfigMapRef.Name] = true
				}
				if ef.SecretRef != nil {
					used["Secret/"+ef.SecretRef.Name] = true
				}
			}
		}
	}
	for _, kind := range []string{"ConfigMap", "Secret"} {
		for name := range byKind[kind] {
			if !used[kind+"/"+name] {
				t.Errorf("%s %s is not used by any Deployment", kind, name)
			}
		}
	}

	// The cache-node Service and the disruption budgets.
	if o, ok := byKind["Service"]["cache-node"]; !ok {
		t.Error("no Service cache-node")
	} else {
		s := decodeAs[k8sService](t, o)
		dep := decodeAs[k8sDeployment](t, byKind["Deployment"]["cache-node"])
		if len(s.Spec.Selector) == 0 || !labelsMatch(s.Spec.Selector, dep.Spec.Template.Metadata.Labels) {
			t.Errorf("Service cache-node: selector %v does not select the cache-node pods", s.Spec.Selector)
		}
		if len(s.Spec.Ports) != 1 || s.Spec.Ports[0].Port != 8080 {
			t.Errorf("Service cache-node: want port 8080, have %+v", s.Spec.Ports)
		}
	}
	wantPDB := map[string]int{"cache-node": 2, "recovery-manager": 1}
	for name, min := range wantPDB {
		o, ok := byKind["PodDisruptionBudget"][name]
		if !ok {
			t.Errorf("no PodDisruptionBudget %s", name)
			continue
		}
		p := decodeAs[k8sPDB](t, o)
		if fmt.Sprint(p.Spec.MinAvailable) != strconv.Itoa(min) {
			t.Errorf("PodDisruptionBudget %s: minAvailable %v, want %d", name, p.Spec.MinAvailable, min)
		}
		dep := decodeAs[k8sDeployment](t, byKind["Deployment"][name])
		if !labelsMatch(p.Spec.Selector.MatchLabels, dep.Spec.Template.Metadata.Labels) {
			t.Errorf("PodDisruptionBudget %s: selector %v does not select the pods", name, p.Spec.Selector.MatchLabels)
		}
		if dep.Spec.Replicas != nil && *dep.Spec.Replicas <= min {
			t.Errorf("PodDisruptionBudget %s: minAvailable %d with %d replicas blocks every drain", name, min, *dep.Spec.Replicas)
		}
	}
}

// labelsMatch reports whether selector selects labels.
func labelsMatch(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// ---------------------------------------------------------------- Dockerfile

func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("docker", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var froms, users []string
	text := string(b)
	for _, line := range strings.Split(text, "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		switch strings.ToUpper(fields[0]) {
		case "FROM":
			froms = append(froms, strings.Join(fields[1:], " "))
		case "USER":
			users = append(users, fields[1])
		}
	}
	if len(froms) < 2 {
		t.Fatalf("want a multi-stage build, have FROM %v", froms)
	}
	if !strings.HasPrefix(froms[0], "golang:") {
		t.Errorf("the first stage is %q, want a golang builder", froms[0])
	}
	final := froms[len(froms)-1]
	if !strings.HasPrefix(final, "gcr.io/distroless/static") && !strings.HasPrefix(final, "scratch") {
		t.Errorf("the final stage is %q, want distroless static or scratch", final)
	}
	if len(users) == 0 {
		t.Fatal("no USER: the image would run as root")
	}
	last, _, _ := strings.Cut(users[len(users)-1], ":")
	if last == "root" || last == "0" {
		t.Errorf("the final USER is %s, want non-root", users[len(users)-1])
	}
	if _, err := strconv.Atoi(last); err != nil {
		t.Errorf("USER %s: use a numeric uid so that Kubernetes' runAsNonRoot can verify it", last)
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "COPY --from=build", "ARG SERVICE"} {
		if !strings.Contains(text, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	for _, svc := range services {
		if !strings.Contains(text, "./services/"+svc) {
			t.Errorf("Dockerfile does not build ./services/%s", svc)
		}
		if !fileExists(filepath.Join("..", "services", svc, "main.go")) {
			t.Errorf("services/%s/main.go does not exist", svc)
		}
	}
	if !strings.Contains(text, "./deployments/docker/httpcheck") || !fileExists(filepath.Join("docker", "httpcheck", "main.go")) {
		t.Error("Dockerfile must build the httpcheck probe the compose healthchecks run")
	}
}
