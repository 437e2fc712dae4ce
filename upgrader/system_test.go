package upgrader_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// system is a fixture 5.8 system installed in subvolume @ of a btrfs
// filesystem on a loop device, mounted at Root, with @ as the default.
type system struct {
	Set   *fixture.Set
	FS    *testenv.Btrfs
	Root  string
	Sink  *recordingSink
	Engin *upgrader.Engine
}

type recordingSink struct{ events []progress.Event }

func (r *recordingSink) Report(e progress.Event) { r.events = append(r.events, e) }

func newSystem(t *testing.T) *system {
	t.Helper()
	return newSystemSized(t, 1024)
}

// newSystemSized is newSystem on a filesystem of sizeMB.
func newSystemSized(t *testing.T, sizeMB int) *system {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping real-component test in -short mode")
	}
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "rpm", "rpmkeys", "btrfs", "/usr/bin/python3")
	set := fixture.MustBuild(t)
	fs := testenv.NewBtrfs(t, sizeMB)
	root := filepath.Join(t.TempDir(), "root")
	fs.MakeDefaultRoot(t, "@", root)
	if err := fixture.InstallBase(context.Background(), set, root); err != nil {
		t.Fatal(err)
	}
	s := &system{Set: set, FS: fs, Root: root, Sink: &recordingSink{}}
	s.Engin = s.engine(t)
	return s
}

func (s *system) engine(t *testing.T) *upgrader.Engine {
	r, err := sysroot.New(s.Root)
	if err != nil {
		t.Fatal(err)
	}
	return upgrader.New(r, s.Sink, nil)
}

// defaultSubvol returns the path of the default subvolume, relative to the
// top level.
func (s *system) defaultSubvol(t *testing.T) string {
	t.Helper()
	out := testenv.Run(t, "btrfs", "subvolume", "get-default", s.FS.Top)
	// "ID 256 gen 10 top level 5 path @"
	i := strings.Index(out, " path ")
	if i < 0 {
		t.Fatalf("cannot parse get-default output %q", out)
	}
	return strings.TrimSpace(out[i+len(" path "):])
}

// subvols lists the subvolumes kos-upgrade made.
func (s *system) subvols(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(testenv.Run(t, "btrfs", "subvolume", "list", s.FS.Top), "\n") {
		if i := strings.Index(l, " path "); i >= 0 {
			p := strings.TrimSpace(l[i+len(" path "):])
			if strings.HasPrefix(p, "kos-upgrade/") {
				out = append(out, p)
			}
		}
	}
	return out
}

func rpmQA(t *testing.T, root string) []string {
	t.Helper()
	out := testenv.Run(t, "rpm", "--root", root, "--dbpath", "/var/lib/rpm", "-qa", "--qf", "%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}\n")
	lines := strings.Fields(out)
	sort.Strings(lines)
	return lines
}

// treeDigest hashes every file, directory and link under root (mode, size,
// content, target), except the paths in skip (relative).
func treeDigest(t *testing.T, root string, skip ...string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		for _, s := range skip {
			if rel == s || strings.HasPrefix(rel, s+"/") {
				if fi.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
		}
		d := fi.Mode().String()
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			d += " -> " + l
		case fi.Mode().IsRegular():
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			h := sha256.New()
			io.Copy(h, f)
			f.Close()
			d += " " + hex.EncodeToString(h.Sum(nil))
		}
		m[rel] = d
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func diffDigest(a, b map[string]string) []string {
	var d []string
	for k, v := range a {
		if b[k] != v {
			d = append(d, k+": "+v+" != "+b[k])
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			d = append(d, k+": new")
		}
	}
	sort.Strings(d)
	return d
}

// kosUpgrade runs the built binary against the system.
func (s *system) kosUpgrade(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	bin := binary(t)
	cmd := exec.Command(bin, append([]string{"--root", s.Root}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

var builtBinary string

func binary(t *testing.T) string {
	t.Helper()
	if builtBinary != "" {
		return builtBinary
	}
	dir, err := os.MkdirTemp("", "kos-upgrade-bin-")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "kos-upgrade")
	out, err := exec.Command("go", "build", "-tags", testenv.HooksTag, "-o", bin, "github.com/keyarchos/kos-upgrade/cmd/kos-upgrade").CombinedOutput()
	if err != nil {
		t.Fatalf("cannot build kos-upgrade: %v\n%s", err, out)
	}
	builtBinary = bin
	return bin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtBinary != "" {
		os.RemoveAll(filepath.Dir(builtBinary))
	}
	os.Exit(code)
}
