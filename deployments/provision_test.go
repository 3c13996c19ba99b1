package deployments_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"gopkg.in/yaml.v3"
)

// The shipped deployments run the provision step as the NATS admin, and
// every service with NATS_PROVISION=false and its own inbox prefix, the only
// one accounts.conf lets its role read.

// provisionVars are the variables the provision command reads.
func provisionVars(t *testing.T) map[string]varKind {
	t.Helper()
	m := map[string]varKind{}
	scanVars(t, filepath.Join("..", "pkg", "natsconn"), m)
	scanVars(t, filepath.Join("..", "pkg", "svckit"), m)
	scanVars(t, filepath.Join("..", "services", "provision"), m)
	for _, v := range []string{"NATS_URL", "NATS_USER", "NATS_INBOX_PREFIX", "BUFFER_REPLICAS", "SUBJECT_PREFIX", "PROVISION_TIMEOUT"} {
		if _, ok := m[v]; !ok {
			t.Fatalf("scanner: provision does not read %s (found %v)", v, sortedKeys(m))
		}
	}
	return m
}

// checkProvisionEnv reports variables the provision command does not read,
// values it would refuse, and a missing NATS_URL.
func checkProvisionEnv(t *testing.T, where string, env map[string]string) {
	t.Helper()
	known := provisionVars(t)
	for name, value := range env {
		kind, ok := known[name]
		if !ok {
			t.Errorf("%s: sets %s, which provision does not read", where, name)
			continue
		}
		if err := validValue(name, kind, value); err != nil {
			t.Errorf("%s: %s=%q would stop provision: %v", where, name, value, err)
		}
	}
	if env["NATS_URL"] == "" {
		t.Errorf("%s: no NATS_URL", where)
	}
}

// Each role may read its own inbox prefix and no other.
func TestAccountsGiveEachRoleItsOwnInbox(t *testing.T) {
	opts, err := server.ProcessConfigFile(singleConf)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range opts.Users {
		if u.Username == "sys" || u.Username == "admin" {
			continue
		}
		if u.Permissions == nil || u.Permissions.Subscribe == nil {
			t.Errorf("%s: no subscribe permissions", u.Username)
			continue
		}
		own := inboxPrefix(u.Username) + ".>"
		if !slices.Contains(u.Permissions.Subscribe.Allow, own) {
			t.Errorf("%s may not subscribe to its inbox %s", u.Username, own)
		}
		for _, a := range u.Permissions.Subscribe.Allow {
			if (strings.HasPrefix(a, "_INBOX") || a == ">" || a == "*" || a == "*.>") && a != own {
				t.Errorf("%s may subscribe to %s: other roles' inboxes", u.Username, a)
			}
		}
	}
}

func TestComposeProvisions(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("compose", "compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Services map[string]struct {
			DependsOn map[string]struct {
				Condition string `yaml:"condition"`
			} `yaml:"depends_on"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	full := loadCompose(t)
	users := natsUsers(t)
	p, ok := full.Services["provision"]
	if !ok {
		t.Fatal("compose: no provision service")
	}
	if p.Build == nil || p.Build.Args["SERVICE"] != "provision" || !strings.HasPrefix(p.Image, "anivault/provision:") {
		t.Errorf("compose provision: build with SERVICE=provision, image anivault/provision:<tag>; have %+v %s", p.Build, p.Image)
	}
	penv, err := p.env()
	if err != nil {
		t.Fatal(err)
	}
	pm := envMap(penv)
	checkProvisionEnv(t, "compose/compose.yaml service provision", pm)
	vars := serviceVars(t)
	checkNATSUser(t, "compose service provision", "admin", pm["NATS_USER"], pm["NATS_PASSWORD"], users)
	if pm["NATS_INBOX_PREFIX"] != inboxPrefix("admin") {
		t.Errorf("compose provision: NATS_INBOX_PREFIX %q, want %s", pm["NATS_INBOX_PREFIX"], inboxPrefix("admin"))
	}
	for name, s := range full.Services {
		svc := s.service()
		if svc == "" {
			continue
		}
		env, err := s.env()
		if err != nil {
			t.Fatal(err)
		}
		m := envMap(env)
		if m["NATS_PROVISION"] != "false" {
			t.Errorf("compose service %s: NATS_PROVISION %q, want false (its role may not create streams)", name, m["NATS_PROVISION"])
		}
		if m["NATS_INBOX_PREFIX"] != inboxPrefix(svc) {
			t.Errorf("compose service %s: NATS_INBOX_PREFIX %q, want %s", name, m["NATS_INBOX_PREFIX"], inboxPrefix(svc))
		}
		if d := c.Services[name].DependsOn["provision"]; d.Condition != "service_completed_successfully" {
			t.Errorf("compose service %s: depends on provision with %q, want service_completed_successfully", name, d.Condition)
		}
		for _, v := range sharedVars {
			if _, reads := vars[svc][v]; reads && m[v] != pm[v] {
				t.Errorf("compose: %s is %q for %s but %q for provision, which makes the streams", v, m[v], name, pm[v])
			}
		}
	}
}

// podEnv resolves a container's environment from its envFrom and env, with
// the ConfigMaps and Secrets (the example ones) of k8s/.
func podEnv(t *testing.T, c k8sContainer, configMaps, secrets map[string]map[string]string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			for k, v := range configMaps[ef.ConfigMapRef.Name] {
				m[k] = v
			}
		case ef.SecretRef != nil:
			s, ok := secrets[ef.SecretRef.Name]
			if !ok {
				t.Errorf("container %s: Secret %s is not in secret.example.yaml", c.Name, ef.SecretRef.Name)
			}
			for k, v := range s {
				m[k] = v
			}
		}
	}
	for _, e := range c.Env {
		switch vf := e.ValueFrom; {
		case vf == nil:
			m[e.Name] = e.Value
		case vf.ConfigMapKeyRef != nil:
			v, ok := configMaps[vf.ConfigMapKeyRef.Name][vf.ConfigMapKeyRef.Key]
			if !ok {
				t.Errorf("container %s: env %s: ConfigMap %s has no key %s", c.Name, e.Name, vf.ConfigMapKeyRef.Name, vf.ConfigMapKeyRef.Key)
			}
			m[e.Name] = v
		case vf.SecretKeyRef != nil:
			m[e.Name] = secrets[vf.SecretKeyRef.Name][vf.SecretKeyRef.Key]
		}
	}
	return m
}

func TestKubernetesProvisions(t *testing.T) {
	users := natsUsers(t)
	configMaps := map[string]map[string]string{}
	secrets := map[string]map[string]string{}
	var job *k8sObject
	deployments := map[string]k8sObject{}
	for _, o := range k8sManifests(t) {
		switch o.Kind {
		case "ConfigMap":
			configMaps[o.Metadata.Name] = decodeAs[k8sData](t, o).Data
		case "Secret":
			if filepath.Base(o.file) != "secret.example.yaml" {
				t.Errorf("%s: Secret %s outside secret.example.yaml would be deployed by kustomization.yaml", o.file, o.Metadata.Name)
			}
			secrets[o.Metadata.Name] = decodeAs[k8sData](t, o).StringData
		case "Job":
			if o.Metadata.Name == "anivault-provision" {
				job = &o
			}
		case "Deployment":
			deployments[o.Metadata.Name] = o
		}
	}
	if job == nil {
		t.Fatal("k8s: no Job anivault-provision")
	}
	var j struct {
		Spec struct {
			Template struct {
				Spec struct {
					RestartPolicy string         `yaml:"restartPolicy"`
					Containers    []k8sContainer `yaml:"containers"`
				} `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	if err := job.node.Decode(&j); err != nil {
		t.Fatal(err)
	}
	if rp := j.Spec.Template.Spec.RestartPolicy; rp != "OnFailure" && rp != "Never" {
		t.Errorf("Job anivault-provision: restartPolicy %q", rp)
	}
	if len(j.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("Job anivault-provision: want one container")
	}
	pc := j.Spec.Template.Spec.Containers[0]
	if !strings.HasPrefix(pc.Image, "anivault/provision:") {
		t.Errorf("Job anivault-provision: image %s, want anivault/provision:<tag>", pc.Image)
	}
	if sc := pc.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Error("Job anivault-provision: want readOnlyRootFilesystem, no privilege escalation and capabilities drop ALL")
	}
	pm := podEnv(t, pc, configMaps, secrets)
	checkProvisionEnv(t, "k8s Job anivault-provision", pm)
	vars := serviceVars(t)
	checkNATSUser(t, "k8s Job anivault-provision", "admin", pm["NATS_USER"], pm["NATS_PASSWORD"], users)
	if pm["NATS_INBOX_PREFIX"] != inboxPrefix("admin") {
		t.Errorf("Job anivault-provision: NATS_INBOX_PREFIX %q, want %s", pm["NATS_INBOX_PREFIX"], inboxPrefix("admin"))
	}
	for _, svc := range services {
		o, ok := deployments[svc]
		if !ok {
			continue // TestKubernetesManifests reports it
		}
		d := decodeAs[k8sDeployment](t, o)
		if len(d.Spec.Template.Spec.Containers) != 1 {
			continue
		}
		m := podEnv(t, d.Spec.Template.Spec.Containers[0], configMaps, secrets)
		if m["NATS_PROVISION"] != "false" {
			t.Errorf("Deployment %s: NATS_PROVISION %q, want false (its role may not create streams)", svc, m["NATS_PROVISION"])
		}
		if m["NATS_INBOX_PREFIX"] != inboxPrefix(svc) {
			t.Errorf("Deployment %s: NATS_INBOX_PREFIX %q, want %s", svc, m["NATS_INBOX_PREFIX"], inboxPrefix(svc))
		}
		for _, v := range sharedVars {
			if _, reads := vars[svc][v]; reads && m[v] != pm[v] {
				t.Errorf("k8s: %s is %q for %s but %q for the provision Job, which makes the streams", v, m[v], svc, pm[v])
			}
		}
	}

	b, err := os.ReadFile(filepath.Join("k8s", "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Resources []string `yaml:"resources"`
		Images    []struct {
			Name string `yaml:"name"`
		} `yaml:"images"`
	}
	if err := yaml.Unmarshal(b, &k); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(k.Resources, "provision.yaml") {
		t.Error("kustomization.yaml does not deploy provision.yaml")
	}
	if slices.Contains(k.Resources, "secret.yaml") || slices.Contains(k.Resources, "secret.example.yaml") || fileExists(filepath.Join("k8s", "secret.yaml")) {
		t.Error("kustomization.yaml must not deploy example Secrets (secret.example.yaml is to copy and change)")
	}
	if !slices.ContainsFunc(k.Images, func(i struct {
		Name string `yaml:"name"`
	}) bool {
		return i.Name == "anivault/provision"
	}) {
		t.Error("kustomization.yaml does not pin the anivault/provision image")
	}
	df, err := os.ReadFile(filepath.Join("docker", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(df), "./services/provision") {
		t.Error("the Dockerfile does not build ./services/provision")
	}
}
