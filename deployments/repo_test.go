package deployments_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// maxTrackedFile is the largest file the repository may track: fixtures and
// documents stay far below it, build outputs do not.
const maxTrackedFile = 1 << 20

// binaryMagic are the first bytes of executable and object formats.
var binaryMagic = map[string][]byte{
	"ELF":             {0x7f, 'E', 'L', 'F'},
	"Mach-O (64-bit)": {0xcf, 0xfa, 0xed, 0xfe},
	"Mach-O (32-bit)": {0xce, 0xfa, 0xed, 0xfe},
	"Mach-O (fat)":    {0xca, 0xfe, 0xba, 0xbe},
	"PE (Windows)":    {'M', 'Z'},
	"Go archive":      []byte("!<arch>\n"),
	"WebAssembly":     {0x00, 'a', 's', 'm'},
}

// No build output is committed: every tracked file is at most 1 MB and none
// is an executable or object file (a 28 MB bench binary once sat at the
// repository root).
func TestNoBinariesOrLargeFilesTracked(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	top, err := exec.CommandContext(ctx, "git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Fatalf("git rev-parse: %v (this check needs a git checkout and git on PATH)", err)
	}
	root := strings.TrimSpace(string(top))
	out, err := exec.CommandContext(ctx, "git", "-C", root, "ls-files", "-z").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	files := strings.Split(strings.TrimRight(string(out), "\x00"), "\x00")
	if len(files) < 50 {
		t.Fatalf("git ls-files listed %d files; expected the whole repository", len(files))
	}
	for _, f := range files {
		p := filepath.Join(root, f)
		fi, err := os.Lstat(p)
		if err != nil {
			if os.IsNotExist(err) {
				continue // deleted in the working tree, not yet committed
			}
			t.Errorf("%s: %v", f, err)
			continue
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		if fi.Size() > maxTrackedFile {
			t.Errorf("%s is tracked and %d bytes, over the 1 MB limit: build outputs and large data stay out of git", f, fi.Size())
		}
		if kind := binaryKind(t, p); kind != "" {
			t.Errorf("%s is tracked and is an executable or object file (%s): never commit build outputs", f, kind)
		}
	}
}

func binaryKind(t *testing.T, path string) string {
	f, err := os.Open(path)
	if err != nil {
		t.Errorf("%s: %v", path, err)
		return ""
	}
	defer f.Close()
	head := make([]byte, 8)
	n, err := io.ReadFull(f, head)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		t.Errorf("%s: %v", path, err)
		return ""
	}
	head = head[:n]
	for kind, magic := range binaryMagic {
		if bytes.HasPrefix(head, magic) {
			return kind
		}
	}
	return ""
}

// The check sees what it guards: an ELF header and a Go archive are caught,
// a text file is not.
func TestBinaryKindDetects(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{"elf": b[:64], "archive": []byte("!<arch>\n__.PKGDEF"), "text": []byte("Makefile-like text\n"), "empty": nil}
	want := map[string]bool{"elf": true, "archive": true, "text": false, "empty": false}
	for name, data := range cases {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if got := binaryKind(t, p) != ""; got != want[name] {
			t.Errorf("%s: detected %v, want %v", name, got, want[name])
		}
	}
}
