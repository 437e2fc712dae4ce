package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// TestSandbox runs the README's first command end to end: the real binary
// upgrades a btrfs sandbox from 5.8 to 5.9, and nothing is left behind.
func TestSandbox(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping the sandbox upgrade in -short mode")
	}
	testenv.RequireRoot(t)
	testenv.RequireTools(t, append([]string{"losetup", "mkfs.btrfs", "btrfs", "mount", "umount", "findmnt", "/usr/bin/python3"}, fixture.Tools...)...)

	bin := filepath.Join(t.TempDir(), "kos-upgrade")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/keyarchos/kos-upgrade/cmd/kos-upgrade").CombinedOutput(); err != nil {
		t.Fatalf("cannot build kos-upgrade: %v\n%s", err, out)
	}
	dir := filepath.Join(t.TempDir(), "sandbox")
	var out bytes.Buffer
	err := run(context.Background(), options{Binary: bin, Dir: dir, SizeMB: 512}, &out, &out)
	t.Cleanup(func() { testenv.UnmountAll(dir) }) // only if run's own cleanup failed
	if err != nil {
		t.Fatalf("sandbox: %v\n%s", err, out.String())
	}
	t.Log(out.String())
	for _, want := range []string{
		"Upgrade to 5.9 succeeded",
		"KeyarchOS 5.9 (test fixture)",
		"sandbox upgraded 5.8 -> 5.9",
		"rollback available",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}

	// Cleaned up: no mount under dir, no loop device on the image, no image.
	mounts, err := readMounts()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		if strings.HasPrefix(m.target, dir) {
			t.Errorf("still mounted after the sandbox: %s (%s)", m.target, m.source)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "sandbox.img")); !os.IsNotExist(err) {
		t.Errorf("the image is still there: %v", err)
	}
	if lo, _ := exec.Command("losetup", "--associated", filepath.Join(dir, "sandbox.img")).Output(); len(bytes.TrimSpace(lo)) > 0 {
		t.Errorf("loop device left: %s", lo)
	}
}

func TestQuote(t *testing.T) {
	got := quote([]string{"rpm", "--qf", "%{NAME} x", "it's", ""})
	want := `rpm --qf '%{NAME} x' 'it'\''s' ''`
	if got != want {
		t.Errorf("quote = %s, want %s", got, want)
	}
	if got := unescape(`/mnt/a\040b`); got != "/mnt/a b" {
		t.Errorf("unescape = %q", got)
	}
}
