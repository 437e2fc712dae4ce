package snapshot_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/mountinfo"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot/snapshottest"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// newBtrfsRoot makes a btrfs filesystem with a root subvolume "@", the
// default, mounted at a temporary directory with a few files in it, as an
// installed system would be.
func newBtrfsRoot(t testing.TB, sizeMB int) (fs *testenv.Btrfs, rootDir string) {
	t.Helper()
	fs = testenv.NewBtrfs(t, sizeMB)
	rootDir = filepath.Join(t.TempDir(), "sysroot")
	fs.MakeDefaultRoot(t, "@", rootDir)
	writeTree(t, rootDir)
	return fs, rootDir
}

func writeTree(t testing.TB, dir string) {
	t.Helper()
	for name, data := range map[string]string{
		"etc/os-release":        "NAME=KOS\nVERSION_ID=5.8\n",
		"usr/bin/tool":          "#!/bin/sh\n",
		"var/lib/rpm/Packages":  "rpmdb",
		"dir with space/a file": "x",
	} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// btrfsFactory binds a new Btrfs backend to rootDir at each call, with one
// work directory for all of them (as successive runs would).
func btrfsFactory(rootDir string) func(t *testing.T) (snapshot.Snapshotter, string) {
	var workDir string
	return func(t *testing.T) (snapshot.Snapshotter, string) {
		if workDir == "" {
			workDir = t.TempDir()
		}
		b, err := snapshot.NewBtrfs(context.Background(), rootDir, workDir)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b, rootDir
	}
}

func TestBtrfsConformance(t *testing.T) {
	_, rootDir := newBtrfsRoot(t, 300)
	runConformance(t, btrfsFactory(rootDir))
}

// A root mounted from the top level itself (subvolid=5): snapshots of the top
// level go to kos-upgrade/ and can be activated.
func TestBtrfsConformanceTopLevelRoot(t *testing.T) {
	fs := testenv.NewBtrfs(t, 300)
	writeTree(t, fs.Top)
	runConformance(t, btrfsFactory(fs.Top))
}

func newBtrfs(t *testing.T, rootDir string) *snapshot.Btrfs {
	t.Helper()
	b, err := snapshot.NewBtrfs(context.Background(), rootDir, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestBtrfsNotSupported(t *testing.T) {
	ctx := context.Background()
	t.Run("plain directory on the host", func(t *testing.T) {
		dir := t.TempDir()
		_, err := snapshot.NewBtrfs(ctx, dir, t.TempDir())
		if !errors.Is(err, snapshot.ErrNotSupported) {
			t.Fatalf("err = %v, want ErrNotSupported", err)
		}
		t.Log(err)
	})

	testenv.RequireRoot(t)
	t.Run("tmpfs", func(t *testing.T) {
		dir := t.TempDir()
		testenv.Run(t, "mount", "-t", "tmpfs", "kos-test", dir)
		t.Cleanup(func() { testenv.UnmountAll(dir) })
		_, err := snapshot.NewBtrfs(ctx, dir, t.TempDir())
		if !errors.Is(err, snapshot.ErrNotSupported) || !strings.Contains(err.Error(), "is on tmpfs") {
			t.Fatalf("err = %v, want ErrNotSupported saying tmpfs", err)
		}
		t.Log(err)
	})

	fs, rootDir := newBtrfsRoot(t, 300)
	t.Run("directory inside a subvolume mount", func(t *testing.T) {
		_, err := snapshot.NewBtrfs(ctx, filepath.Join(rootDir, "etc"), t.TempDir())
		if !errors.Is(err, snapshot.ErrNotSupported) || !strings.Contains(err.Error(), "not a mount point") {
			t.Fatalf("err = %v, want ErrNotSupported saying not a mount point", err)
		}
		t.Log(err)
	})
	t.Run("bind mount of a directory", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "bind")
		os.MkdirAll(dir, 0o755)
		testenv.Run(t, "mount", "--bind", filepath.Join(rootDir, "usr"), dir)
		t.Cleanup(func() { testenv.UnmountAll(dir) })
		_, err := snapshot.NewBtrfs(ctx, dir, t.TempDir())
		if !errors.Is(err, snapshot.ErrNotSupported) || !strings.Contains(err.Error(), "bind mount") {
			t.Fatalf("err = %v, want ErrNotSupported saying bind mount", err)
		}
		t.Log(err)
	})
	t.Run("something else mounted at the work directory", func(t *testing.T) {
		work := t.TempDir()
		top := filepath.Join(work, "btrfs-top")
		os.MkdirAll(top, 0o755)
		testenv.Run(t, "mount", "-t", "tmpfs", "kos-test", top)
		t.Cleanup(func() { testenv.UnmountAll(top) })
		_, err := snapshot.NewBtrfs(ctx, rootDir, work)
		if err == nil || errors.Is(err, snapshot.ErrNotSupported) || !strings.Contains(err.Error(), "tmpfs") {
			t.Fatalf("err = %v, want a refusal naming the tmpfs", err)
		}
		t.Log(err)
	})
	_ = fs
}

func countMountsAt(t *testing.T, path string) int {
	t.Helper()
	mounts, err := mountinfo.Read()
	if err != nil {
		t.Fatal(err)
	}
	p, err := filepath.EvalSymlinks(path)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, m := range mounts {
		if m.Point == p {
			n++
		}
	}
	return n
}

// A run that crashed without Close leaves the top level mounted; the next
// run reuses it instead of stacking another mount, and Close unmounts it.
func TestBtrfsReusesTopMount(t *testing.T) {
	ctx := context.Background()
	_, rootDir := newBtrfsRoot(t, 300)
	work := t.TempDir()
	top := filepath.Join(work, "btrfs-top")
	b1, err := snapshot.NewBtrfs(ctx, rootDir, work)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testenv.UnmountAll(top) })
	if _, err := b1.Create(ctx, snapshot.BtrfsName("crashed")); err != nil {
		t.Fatal(err)
	}
	// "crash": no Close.
	b2, err := snapshot.NewBtrfs(ctx, rootDir, work)
	if err != nil {
		t.Fatal(err)
	}
	if n := countMountsAt(t, top); n != 1 {
		t.Fatalf("%d mounts at %s, want 1", n, top)
	}
	if _, err := b2.Create(ctx, snapshot.BtrfsName("crashed")); !errors.Is(err, snapshot.ErrExists) {
		t.Fatalf("Create() of the leftover = %v, want ErrExists", err)
	}
	if err := b2.Delete(ctx, snapshot.BtrfsName("crashed")); err != nil {
		t.Fatal(err)
	}
	if err := b2.Close(); err != nil {
		t.Fatal(err)
	}
	if n := countMountsAt(t, top); n != 0 {
		t.Fatalf("%d mounts at %s after Close, want 0", n, top)
	}
	if err := b1.Close(); err != nil {
		t.Fatalf("Close() of the first backend after the second unmounted: %v", err)
	}
	if _, err := b1.List(ctx); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("List() after Close = %v, want an error saying closed", err)
	}
}

// The transaction may create subvolumes inside the snapshot (systemd-tmpfiles
// does for /var/lib/machines) and mount things below it (/proc for
// scriptlets): Delete removes all of it.
func TestBtrfsDeleteNestedAndMounted(t *testing.T) {
	ctx := context.Background()
	_, rootDir := newBtrfsRoot(t, 300)
	b := newBtrfs(t, rootDir)
	s, err := b.Create(ctx, snapshot.BtrfsName("nested"))
	if err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "btrfs", "subvolume", "create", filepath.Join(s.Path, "var/lib/machines"))
	testenv.Run(t, "btrfs", "subvolume", "create", filepath.Join(s.Path, "var/lib/machines/deeper"))
	testenv.Run(t, "btrfs", "subvolume", "create", filepath.Join(s.Path, "srv"))
	os.MkdirAll(filepath.Join(s.Path, "proc"), 0o755)
	testenv.Run(t, "mount", "-t", "tmpfs", "kos-test", filepath.Join(s.Path, "proc"))
	t.Cleanup(func() { testenv.UnmountAll(filepath.Join(s.Path, "proc")) })

	// Nested subvolumes are not listed as snapshots.
	list, err := b.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, sn := range list {
		if strings.HasPrefix(sn.Name, s.Name+"/") {
			t.Fatalf("List() has nested subvolume %+v", sn)
		}
	}
	if err := b.Delete(ctx, s.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.Path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s still there (stat: %v)", s.Path, err)
	}
	out := testenv.Run(t, "btrfs", "subvolume", "list", rootDir)
	if strings.Contains(out, "nested") {
		t.Fatalf("subvolumes left behind:\n%s", out)
	}
}

func TestBtrfsNames(t *testing.T) {
	ctx := context.Background()
	fs, rootDir := newBtrfsRoot(t, 300)
	b := newBtrfs(t, rootDir)
	for _, name := range []string{"", "/abs", "kos-upgrade/../@", "kos-upgrade/a/", "kos-upgrade/./a", ".", "..", "kos-upgrade", "kos-upgrade/"} {
		if _, err := b.Create(ctx, name); err == nil {
			t.Errorf("Create(%q) succeeded", name)
		}
	}
	if _, err := b.Create(ctx, "elsewhere"); err == nil || !strings.Contains(err.Error(), "kos-upgrade/") {
		t.Errorf("Create() outside kos-upgrade/ = %v, want a refusal", err)
	}
	// A subvolume kos-upgrade did not make is never deleted, nor listed.
	testenv.Run(t, "btrfs", "subvolume", "create", filepath.Join(fs.Top, "@home"))
	if err := b.Delete(ctx, "@home"); err == nil || errors.Is(err, snapshot.ErrNotFound) {
		t.Errorf("Delete(@home) = %v, want a refusal", err)
	}
	if snapshottest.Listed(t, b, "@home") {
		t.Errorf("List() has @home")
	}
	// A plain directory is not a snapshot.
	os.MkdirAll(filepath.Join(fs.Top, "kos-upgrade", "plain"), 0o755)
	if err := b.Activate(ctx, snapshot.BtrfsName("plain")); err == nil || !strings.Contains(err.Error(), "not a btrfs subvolume") {
		t.Errorf("Activate() of a directory = %v", err)
	}
	if err := b.Activate(ctx, snapshot.BtrfsName("missing")); !errors.Is(err, snapshot.ErrNotFound) {
		t.Errorf("Activate() of a missing snapshot = %v, want ErrNotFound", err)
	}
	// Names with spaces work.
	s, err := b.Create(ctx, snapshot.BtrfsName("5.9 with space"))
	if err != nil {
		t.Fatal(err)
	}
	if !snapshottest.Listed(t, b, s.Name) {
		t.Errorf("List() lacks %q", s.Name)
	}
	if s.Created == "" || s.ID == "" {
		t.Errorf("Create() = %+v, want ID and Created", s)
	}
	if err := b.Delete(ctx, s.Name); err != nil {
		t.Fatal(err)
	}
}

// Activate is durable: the default is what a fresh mount of the device
// (as the boot loader and kernel would do) gets.
func TestBtrfsActivateIsWhatBoots(t *testing.T) {
	ctx := context.Background()
	fs, rootDir := newBtrfsRoot(t, 300)
	b := newBtrfs(t, rootDir)
	s, err := b.Create(ctx, snapshot.BtrfsName("next"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.Path, "etc/os-release"), []byte("VERSION_ID=5.9\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := b.Activate(ctx, s.Name); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	testenv.Run(t, "mount", fs.Device, dir) // no subvol option: the default
	t.Cleanup(func() { testenv.UnmountAll(dir) })
	if got, _ := os.ReadFile(filepath.Join(dir, "etc/os-release")); string(got) != "VERSION_ID=5.9\n" {
		t.Fatalf("a default mount shows os-release %q", got)
	}
}

// In the initramfs the root is mounted read-only: the snapshot must still be
// writable.
func TestBtrfsReadOnlyRoot(t *testing.T) {
	ctx := context.Background()
	fs, rootDir := newBtrfsRoot(t, 300)
	testenv.Run(t, "mount", "-o", "remount,ro", rootDir)
	b := newBtrfs(t, rootDir)
	s, err := b.Create(ctx, snapshot.BtrfsName("from-ro"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.Path, "etc/os-release"), []byte("VERSION_ID=5.9\n"), 0o644); err != nil {
		t.Fatalf("the snapshot of a read-only root is not writable: %v", err)
	}
	if err := os.WriteFile(filepath.Join(rootDir, "x"), nil, 0o644); err == nil {
		t.Fatalf("the read-only root became writable")
	}
	// A snapshot mounted elsewhere (as the next root would be) is not
	// deleted from under its users.
	dir := t.TempDir()
	fs.MountSubvol(t, s.Name, dir)
	err = b.Delete(ctx, s.Name)
	if err == nil || !strings.Contains(err.Error(), "mounted at "+dir) {
		t.Fatalf("Delete() of a snapshot mounted elsewhere = %v, want a refusal naming %s", err, dir)
	}
	testenv.UnmountAll(dir)
	if err := b.Delete(ctx, s.Name); err != nil {
		t.Fatal(err)
	}
}
