package e2e_test

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// domainPkgs may import events: they are the anime-aware parts of pkg/.
var domainPkgs = map[string]bool{
	"github.com/anivault/anivault/pkg/metastore":  true,
	"github.com/anivault/anivault/pkg/topology":   true,
	"github.com/anivault/anivault/pkg/anivault":   true,
	"github.com/anivault/anivault/pkg/modefollow": true,
}

// TestLayering checks the README's rule with go list -deps: events imports
// only the standard library; pkg imports neither services nor events (except
// the domain packages); services do not import each other.
func TestLayering(t *testing.T) {
	t.Parallel()
	const mod = "github.com/anivault/anivault"
	out, err := exec.Command("go", "list", "-deps", "-json=ImportPath,Deps,Standard", mod+"/events/...", mod+"/pkg/...", mod+"/services/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	checked := 0
	for dec.More() {
		var p struct {
			ImportPath string
			Deps       []string
			Standard   bool
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(p.ImportPath, mod+"/") {
			continue
		}
		checked++
		rel := strings.TrimPrefix(p.ImportPath, mod+"/")
		for _, d := range p.Deps {
			switch {
			case strings.HasPrefix(rel, "events") && !isStd(d):
				t.Errorf("%s imports %s: events may import only the standard library", p.ImportPath, d)
			case strings.HasPrefix(rel, "pkg/") && strings.HasPrefix(d, mod+"/services"):
				t.Errorf("%s imports %s: pkg must not import services", p.ImportPath, d)
			case strings.HasPrefix(rel, "pkg/") && d == mod+"/events" && !domainPkgs[p.ImportPath] && !strings.HasPrefix(rel, "pkg/testutil"):
				t.Errorf("%s imports events but is not a domain package", p.ImportPath)
			case strings.HasPrefix(rel, "services/") && strings.HasPrefix(d, mod+"/services/"):
				if svc(rel) != svc(strings.TrimPrefix(d, mod+"/")) {
					t.Errorf("%s imports another service's package %s", p.ImportPath, d)
				}
			}
		}
	}
	if checked < 10 {
		t.Fatalf("only %d packages checked", checked)
	}
}

func isStd(path string) bool {
	first, _, _ := strings.Cut(path, "/")
	return !strings.Contains(first, ".")
}

func svc(rel string) string {
	parts := strings.Split(rel, "/")
	if len(parts) < 2 {
		return rel
	}
	return parts[1]
}
