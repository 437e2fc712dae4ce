package snapshot_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
)

// runConformance checks the Snapshotter contract against one backend.
// newBackend returns a backend bound to one root and the root's directory;
// it is called again after Close (a restart after a crash) and must then
// bind a new backend to the same root. The root is writable and holds at
// least the files the caller put there; the suite adds its own.
//
// The none backend departs from the contract on purpose (it makes no copy,
// see snapshot.None): where it does, the suite checks its documented
// behaviour instead. So for backends that upgrade in place with a rollback
// point (snapshot.InPlace, LVM thick): Create returns the live root as Path
// and a real snapshot, Activate changes nothing, Default stays the current
// root.
func runConformance(t *testing.T, newBackend func(t *testing.T) (s snapshot.Snapshotter, rootDir string)) {
	ctx := context.Background()
	s, rootDir := newBackend(t)
	none := s.Backend() == "none"
	ip, ok := s.(snapshot.InPlace)
	rollbackPoint := ok && ip.UpgradesInPlace() // in place, with a real snapshot
	inPlace := none || rollbackPoint
	name := func(label string) string {
		switch s.Backend() {
		case "btrfs":
			return snapshot.BtrfsName(label)
		case "lvm":
			return snapshot.LVMName(label)
		}
		return label
	}
	resolvedRoot, err := filepath.EvalSymlinks(rootDir)
	if err != nil {
		t.Fatal(err)
	}
	seed := filepath.Join(rootDir, "conformance-seed")
	if err := os.WriteFile(seed, []byte("seed"), 0o644); err != nil {
		t.Fatal(err)
	}

	var cur, def0, a snapshot.Snapshot
	t.Run("current is stable", func(t *testing.T) {
		c1, err := s.Current(ctx)
		if err != nil {
			t.Fatal(err)
		}
		c2, err := s.Current(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if c1 != c2 {
			t.Fatalf("Current() = %+v, then %+v", c1, c2)
		}
		if c1.Name == "" {
			t.Fatalf("Current() has no name: %+v", c1)
		}
		if p, _ := filepath.EvalSymlinks(c1.Path); p != resolvedRoot {
			t.Fatalf("Current().Path = %q, want the root %q", c1.Path, rootDir)
		}
		cur = c1
		if def0, err = s.Default(ctx); err != nil {
			t.Fatal(err)
		}
		if !def0.Default {
			t.Fatalf("Default() has Default false: %+v", def0)
		}
		if (def0.Name == cur.Name) != cur.Default {
			t.Fatalf("Current().Default = %v, but Default() is %q and Current() is %q", cur.Default, def0.Name, cur.Name)
		}
		requireListed(t, s, cur.Name)
	})

	t.Run("create gives a writable copy", func(t *testing.T) {
		var err error
		a, err = s.Create(ctx, name("conformance-a"))
		if err != nil {
			t.Fatal(err)
		}
		if a.Name == "" || a.Path == "" {
			t.Fatalf("Create() = %+v, want a name and a path", a)
		}
		got, err := os.ReadFile(filepath.Join(a.Path, "conformance-seed"))
		if err != nil || string(got) != "seed" {
			t.Fatalf("the snapshot lacks the root's file: %q, %v", got, err)
		}
		if err := os.WriteFile(filepath.Join(a.Path, "conformance-new"), []byte("new"), 0o644); err != nil {
			t.Fatalf("the snapshot is not writable: %v", err)
		}
		if err := os.WriteFile(filepath.Join(a.Path, "conformance-seed"), []byte("changed"), 0o644); err != nil {
			t.Fatal(err)
		}
		if inPlace {
			if p, _ := filepath.EvalSymlinks(a.Path); p != resolvedRoot {
				t.Fatalf("in-place Create().Path = %q, want the root %q", a.Path, rootDir)
			}
			if rollbackPoint {
				if a.Default {
					t.Fatalf("Create() = %+v: a rollback point must not be the default", a)
				}
				// The rollback point kept the root as it was.
				p, err := s.Path(ctx, a.Name)
				if err != nil {
					t.Fatalf("Path() of the rollback point: %v", err)
				}
				if got, err := os.ReadFile(filepath.Join(p, "conformance-seed")); err != nil || string(got) != "seed" {
					t.Fatalf("the rollback point has %q, %v; want the root's content before the change", got, err)
				}
				if _, err := os.Stat(filepath.Join(p, "conformance-new")); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("a file written in the root after Create shows in the rollback point (stat: %v)", err)
				}
			}
			if err := os.WriteFile(seed, []byte("seed"), 0o644); err != nil {
				t.Fatal(err)
			}
			os.Remove(filepath.Join(rootDir, "conformance-new"))
			return
		}
		if a.Default {
			t.Fatalf("Create() = %+v: a new snapshot must not be the default", a)
		}
		if _, err := os.Stat(filepath.Join(rootDir, "conformance-new")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("a file written in the snapshot shows in the root (stat: %v)", err)
		}
		if got, _ := os.ReadFile(seed); string(got) != "seed" {
			t.Fatalf("a change in the snapshot changed the root: %q", got)
		}
	})
	if a.Name == "" {
		t.FailNow()
	}

	t.Run("create twice", func(t *testing.T) {
		again, err := s.Create(ctx, name("conformance-a"))
		if none {
			if err != nil || again != a {
				t.Fatalf("in-place Create() again = %+v, %v; want %+v, nil", again, err, a)
			}
			return
		}
		if !errors.Is(err, snapshot.ErrExists) {
			t.Fatalf("Create() again: err = %v, want ErrExists", err)
		}
		// The existing snapshot is untouched.
		if inPlace {
			return
		}
		if got, _ := os.ReadFile(filepath.Join(a.Path, "conformance-new")); string(got) != "new" {
			t.Fatalf("Create() again changed the existing snapshot")
		}
	})

	t.Run("create does not change what boots", func(t *testing.T) {
		d, err := s.Default(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if d.Name != def0.Name {
			t.Fatalf("Default() = %q after Create, was %q", d.Name, def0.Name)
		}
		c, err := s.Current(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if c.Name != cur.Name || c.Path != cur.Path {
			t.Fatalf("Current() = %+v after Create, was %+v", c, cur)
		}
		requireListed(t, s, cur.Name, a.Name)
	})

	t.Run("activate", func(t *testing.T) {
		if err := s.Activate(ctx, a.Name); err != nil {
			t.Fatal(err)
		}
		d, err := s.Default(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := a.Name
		if rollbackPoint {
			want = cur.Name // the upgraded root boots; the snapshot stays the rollback point
		}
		if d.Name != want || !d.Default {
			t.Fatalf("Default() = %+v after Activate(%q), want %q", d, a.Name, want)
		}
		if err := s.Activate(ctx, a.Name); err != nil {
			t.Fatalf("Activate() of the default: %v, want nil", err)
		}
		if c, err := s.Current(ctx); err != nil || c.Name != cur.Name {
			t.Fatalf("Current() = %+v, %v after Activate, want %q", c, err, cur.Name)
		}
		list := requireListed(t, s, cur.Name, a.Name)
		defaults := 0
		for _, sn := range list {
			if sn.Default {
				defaults++
				if sn.Name != want {
					t.Errorf("List() marks %q as default, want %q", sn.Name, want)
				}
			}
		}
		if defaults != 1 {
			t.Errorf("List() has %d defaults, want 1: %+v", defaults, list)
		}
	})

	t.Run("delete refuses the current root and the default", func(t *testing.T) {
		refuse := []string{cur.Name, a.Name}
		if rollbackPoint {
			refuse = refuse[:1] // a rollback point is neither current nor default
		}
		for _, n := range refuse {
			err := s.Delete(ctx, n)
			if none {
				if err != nil {
					t.Fatalf("in-place Delete(%q) = %v, want nil", n, err)
				}
				continue
			}
			if err == nil || errors.Is(err, snapshot.ErrNotFound) {
				t.Fatalf("Delete(%q) = %v, want a refusal", n, err)
			}
			t.Logf("Delete(%q): %v", n, err)
		}
		if got, _ := os.ReadFile(seed); string(got) != "seed" {
			t.Fatalf("the root lost its files: %q", got)
		}
		requireListed(t, s, cur.Name, a.Name)
	})

	t.Run("path", func(t *testing.T) {
		p, err := s.Path(ctx, cur.Name)
		if err != nil {
			t.Fatalf("Path(current) = %v", err)
		}
		if rp, _ := filepath.EvalSymlinks(p); rp != resolvedRoot {
			t.Errorf("Path(current) = %s, want the root %s", p, rootDir)
		}
		if none {
			return
		}
		p, err = s.Path(ctx, a.Name)
		if err != nil {
			t.Fatalf("Path(%s) = %v", a.Name, err)
		}
		if p != a.Path && !rollbackPoint {
			t.Errorf("Path(%s) = %s, Create said %s", a.Name, p, a.Path)
		}
		if _, err := s.Path(ctx, name("conformance-missing")); !errors.Is(err, snapshot.ErrNotFound) {
			t.Errorf("Path(missing) = %v, want ErrNotFound", err)
		}
	})

	t.Run("delete missing", func(t *testing.T) {
		err := s.Delete(ctx, name("conformance-missing"))
		if none {
			if err != nil {
				t.Fatalf("in-place Delete() = %v, want nil", err)
			}
			return
		}
		if !errors.Is(err, snapshot.ErrNotFound) {
			t.Fatalf("Delete() of a missing snapshot = %v, want ErrNotFound", err)
		}
	})

	t.Run("create and delete", func(t *testing.T) {
		b, err := s.Create(ctx, name("conformance-b"))
		if err != nil {
			t.Fatal(err)
		}
		requireListed(t, s, b.Name)
		if err := s.Delete(ctx, b.Name); err != nil {
			t.Fatal(err)
		}
		if none {
			return
		}
		if _, err := os.Stat(b.Path); !rollbackPoint && !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s still there after Delete (stat: %v)", b.Path, err)
		}
		if listed(t, s, b.Name) {
			t.Fatalf("List() still has %q after Delete", b.Name)
		}
		if err := s.Delete(ctx, b.Name); !errors.Is(err, snapshot.ErrNotFound) {
			t.Fatalf("Delete() again = %v, want ErrNotFound", err)
		}
		// The name can be used again.
		b2, err := s.Create(ctx, name("conformance-b"))
		if err != nil {
			t.Fatalf("Create() after Delete: %v", err)
		}
		if err := s.Delete(ctx, b2.Name); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("close twice", func(t *testing.T) {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("Close() again: %v", err)
		}
	})

	t.Run("a new backend sees the same snapshots", func(t *testing.T) {
		s2, root2 := newBackend(t)
		defer s2.Close()
		if root2 != rootDir {
			t.Fatalf("newBackend bound %q, then %q", rootDir, root2)
		}
		c, err := s2.Current(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if c.Name != cur.Name || c.ID != cur.ID {
			t.Fatalf("Current() = %+v, was %+v", c, cur)
		}
		requireListed(t, s2, cur.Name, a.Name)
		wantDef := a.Name
		if rollbackPoint {
			wantDef = cur.Name
		}
		if d, err := s2.Default(ctx); err != nil || d.Name != wantDef {
			t.Fatalf("Default() = %+v, %v; want %q", d, err, wantDef)
		}
		// Roll back, then clean up.
		if err := s2.Activate(ctx, cur.Name); err != nil {
			t.Fatal(err)
		}
		if d, err := s2.Default(ctx); err != nil || d.Name != cur.Name {
			t.Fatalf("Default() = %+v, %v after Activate(%q)", d, err, cur.Name)
		}
		if err := s2.Delete(ctx, a.Name); err != nil {
			t.Fatalf("Delete() of a snapshot that is no longer the default: %v", err)
		}
		if !none && listed(t, s2, a.Name) {
			t.Fatalf("List() still has %q after Delete", a.Name)
		}
		if err := s2.Close(); err != nil {
			t.Fatal(err)
		}
	})
}

// requireListed fails t unless List has every name; it returns the list.
func requireListed(t *testing.T, s snapshot.Snapshotter, names ...string) []snapshot.Snapshot {
	t.Helper()
	list, err := s.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		found := false
		for _, sn := range list {
			found = found || sn.Name == n
		}
		if !found {
			t.Fatalf("List() = %+v, lacks %q", list, n)
		}
	}
	return list
}

func listed(t *testing.T, s snapshot.Snapshotter, name string) bool {
	t.Helper()
	list, err := s.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, sn := range list {
		if sn.Name == name {
			return true
		}
	}
	return false
}

func TestNoneConformance(t *testing.T) {
	root := t.TempDir()
	runConformance(t, func(t *testing.T) (snapshot.Snapshotter, string) {
		return snapshot.NewNone(root), root
	})
}
