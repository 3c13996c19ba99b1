package e2e_test

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anivault/anivault/events"
)

// readmeNATSCommands returns the `nats ...` lines of the README's CLI section.
func readmeNATSCommands(t *testing.T) []string {
	t.Helper()
	f, err := os.Open("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cmds []string
	inSection, inBlock := false, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "## ") {
			inSection = strings.Contains(line, "nats CLI")
			continue
		}
		if !inSection {
			continue
		}
		if strings.HasPrefix(line, "```") {
			inBlock = !inBlock
			continue
		}
		if inBlock && strings.HasPrefix(line, "nats ") {
			cmd, _, _ := strings.Cut(line, " #")
			cmds = append(cmds, strings.TrimSpace(cmd))
		}
	}
	if len(cmds) < 8 {
		t.Fatalf("found only %d nats commands in the README", len(cmds))
	}
	return cmds
}

// TestREADMECommands runs every nats command of the README against a running
// system with natscli (the module's Go tool), so the README cannot rot.
func TestREADMECommands(t *testing.T) {
	t.Parallel()
	cmds := readmeNATSCommands(t)
	bin := filepath.Join(t.TempDir(), "nats")
	build := exec.Command("go", "build", "-o", bin, "github.com/nats-io/natscli/nats")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build natscli: %v\n%s", err, out)
	}
	s := NewSystem(t, Options{AutoRecovery: true})
	s.StartNode("n1", nil)
	s.StartMonitor(nil)
	s.StartManager(nil)

	run := func(ctx context.Context, line string) *exec.Cmd {
		args := append([]string{"--server", s.NATS.URL(), "--timeout", "10s"}, shellSplit(t, strings.TrimPrefix(line, "nats "))...)
		c := exec.CommandContext(ctx, bin, args...)
		c.Env = append(os.Environ(), "NATS_CONTEXT=", "HOME="+t.TempDir())
		return c
	}
	// What each command must print; sub runs in the background and must see a mode event.
	expect := map[string]string{
		"kv get":                       `"mode"`,
		"status.get":                   "is_operational",
		"recovery.force":               "attempted",
		"recovery.cache_only.enter":    "cache_only",
		"recovery.cache_only.exit":     "recovering",
		"micro ls":                     events.ServiceRecoveryManager,
		"stream info ANIVAULT_BUFFER":  "ANIVAULT_BUFFER",
		"stream info ANIVAULT_CHANGES": "ANIVAULT_CHANGES",
		"stream get ANIVAULT_CHANGES":  "Attack on Titan",
		"consumer info":                "cache-node-replay",
		"metadata.get":                 "tmdb_id",
		"pub metadata.upsert":          "Published",
	}
	var sub *exec.Cmd
	var subOut strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, line := range cmds {
		if strings.HasPrefix(line, "nats sub ") {
			sub = run(ctx, line+" --count 1")
			sub.Stdout, sub.Stderr = &subOut, &subOut
			if err := sub.Start(); err != nil {
				t.Fatal(err)
			}
			continue
		}
		out, err := run(ctx, line).CombinedOutput()
		// A producer's write is applied asynchronously: reading it back
		// right after the publish may come first, as it would for a user.
		for deadline := time.Now().Add(15 * time.Second); (strings.Contains(line, "metadata.get") && !strings.Contains(string(out), `"tmdb_id"`) ||
			strings.Contains(line, "--last-for") && err != nil) && time.Now().Before(deadline); {
			time.Sleep(200 * time.Millisecond) // the poll interval of a retried CLI command
			out, err = run(ctx, line).CombinedOutput()
		}
		if err != nil {
			t.Errorf("%s: %v\n%s", line, err, out)
			continue
		}
		for key, want := range expect {
			if strings.Contains(line, key) && !strings.Contains(string(out), want) {
				t.Errorf("%s: output lacks %q:\n%s", line, want, out)
			}
		}
	}
	if sub == nil {
		t.Fatal("the README has no nats sub command")
	}
	if err := sub.Wait(); err != nil || !strings.Contains(subOut.String(), "mode.") {
		t.Errorf("nats sub 'mode.>' saw no mode event: %v\n%s", err, subOut.String())
	}
}

// shellSplit splits a README command line, honouring single quotes.
func shellSplit(t *testing.T, s string) []string {
	t.Helper()
	var out []string
	var cur strings.Builder
	inQuote, has := false, false
	for _, r := range s {
		switch {
		case r == '\'':
			inQuote = !inQuote
			has = true
		case r == ' ' && !inQuote:
			if has {
				out = append(out, cur.String())
				cur.Reset()
				has = false
			}
		default:
			cur.WriteRune(r)
			has = true
		}
	}
	if inQuote {
		t.Fatalf("unbalanced quote in %q", s)
	}
	if has {
		out = append(out, cur.String())
	}
	return out
}
