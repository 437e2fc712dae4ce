package snapshottest

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
)

// checkCurrentStable: Current gives the same answer twice, names the root,
// agrees with Default, and List has it.
func checkCurrentStable(t *testing.T, h *Harness) {
	c2, err := h.S.Current(h.Ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h.Cur != c2 {
		t.Fatalf("Current() = %+v, then %+v", h.Cur, c2)
	}
	if h.Cur.Name == "" {
		t.Fatalf("Current() has no name: %+v", h.Cur)
	}
	if p, _ := filepath.EvalSymlinks(h.Cur.Path); p != h.Resolved {
		t.Fatalf("Current().Path = %q, want the root %q", h.Cur.Path, h.Root)
	}
	if !h.Default.Default {
		t.Fatalf("Default() has Default false: %+v", h.Default)
	}
	if (h.Default.Name == h.Cur.Name) != h.Cur.Default {
		t.Fatalf("Current().Default = %v, but Default() is %q and Current() is %q", h.Cur.Default, h.Default.Name, h.Cur.Name)
	}
	RequireListed(t, h.S, h.Cur.Name)
}

// checkCreateCopy: Create returns a writable copy of the root that the root
// does not see changes of; in place, the live root, and a rollback point
// that keeps the root as it was.
func checkCreateCopy(t *testing.T, h *Harness) {
	a := h.Create(t, "conformance-a")
	if a.Name == "" || a.Path == "" {
		t.Fatalf("Create() = %+v, want a name and a path", a)
	}
	if got, err := os.ReadFile(filepath.Join(a.Path, "conformance-seed")); err != nil || string(got) != "seed" {
		t.Fatalf("the snapshot lacks the root's file: %q, %v", got, err)
	}
	if err := os.WriteFile(filepath.Join(a.Path, "conformance-new"), []byte("new"), 0o644); err != nil {
		t.Fatalf("the snapshot is not writable: %v", err)
	}
	if err := os.WriteFile(filepath.Join(a.Path, "conformance-seed"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if h.InPlace {
		if p, _ := filepath.EvalSymlinks(a.Path); p != h.Resolved {
			t.Fatalf("in-place Create().Path = %q, want the root %q", a.Path, h.Root)
		}
		if h.Rollback {
			checkRollbackPoint(t, h, a)
		}
		return
	}
	if a.Default {
		t.Fatalf("Create() = %+v: a new snapshot must not be the default", a)
	}
	if _, err := os.Stat(filepath.Join(h.Root, "conformance-new")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a file written in the snapshot shows in the root (stat: %v)", err)
	}
	if got, _ := os.ReadFile(h.Seed()); string(got) != "seed" {
		t.Fatalf("a change in the snapshot changed the root: %q", got)
	}
}

// checkRollbackPoint: the rollback point a made is not the default and kept
// the root as it was before the changes made after Create.
func checkRollbackPoint(t *testing.T, h *Harness, a snapshot.Snapshot) {
	if a.Default {
		t.Fatalf("Create() = %+v: a rollback point must not be the default", a)
	}
	if h.Immediate {
		checkImmediateRollback(t, h, a)
		return
	}
	p, err := h.S.Path(h.Ctx, a.Name)
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

// checkImmediateRollback: Rollback to a, which restores the root at once,
// undoes the changes made after Create and consumes a.
func checkImmediateRollback(t *testing.T, h *Harness, a snapshot.Snapshot) {
	ip := h.S.(snapshot.InPlace)
	if err := ip.Rollback(h.Ctx, a.Name); err != nil {
		t.Fatalf("Rollback(%q): %v", a.Name, err)
	}
	if got, err := os.ReadFile(h.Seed()); err != nil || string(got) != "seed" {
		t.Fatalf("after Rollback the root has %q, %v; want the content before the change", got, err)
	}
	if _, err := os.Stat(filepath.Join(h.Root, "conformance-new")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a file added after Create survived Rollback (stat: %v)", err)
	}
	if Listed(t, h.S, a.Name) {
		t.Fatalf("List() still has %q after Rollback consumed it", a.Name)
	}
	if err := ip.Rollback(h.Ctx, a.Name); !errors.Is(err, snapshot.ErrNotFound) {
		t.Fatalf("Rollback() again = %v, want ErrNotFound", err)
	}
}

// checkCreateTwice: creating an existing name is ErrExists and leaves the
// snapshot alone (None: the same answer again).
func checkCreateTwice(t *testing.T, h *Harness) {
	a := h.Create(t, "conformance-a")
	if !h.InPlace {
		if err := os.WriteFile(filepath.Join(a.Path, "conformance-new"), []byte("new"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	again, err := h.S.Create(h.Ctx, a.Name)
	if h.None {
		if err != nil || again != a {
			t.Fatalf("in-place Create() again = %+v, %v; want %+v, nil", again, err, a)
		}
		return
	}
	if !errors.Is(err, snapshot.ErrExists) {
		t.Fatalf("Create() again: err = %v, want ErrExists", err)
	}
	if h.InPlace {
		return
	}
	if got, _ := os.ReadFile(filepath.Join(a.Path, "conformance-new")); string(got) != "new" {
		t.Fatalf("Create() again changed the existing snapshot")
	}
}

// checkCreateKeepsDefault: Create changes neither the default nor the
// current root, and List has the new snapshot.
func checkCreateKeepsDefault(t *testing.T, h *Harness) {
	a := h.Create(t, "conformance-a")
	d, err := h.S.Default(h.Ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != h.Default.Name {
		t.Fatalf("Default() = %q after Create, was %q", d.Name, h.Default.Name)
	}
	c, err := h.S.Current(h.Ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != h.Cur.Name || c.Path != h.Cur.Path {
		t.Fatalf("Current() = %+v after Create, was %+v", c, h.Cur)
	}
	RequireListed(t, h.S, h.Cur.Name, a.Name)
}

// activated is what Default is after Activate(a): a, or in place with a
// rollback point the current root (the upgraded root boots).
func (h *Harness) activated(a snapshot.Snapshot) string {
	if h.Rollback {
		return h.Cur.Name
	}
	return a.Name
}

// checkActivate: Activate makes the snapshot the default, again is a no-op,
// the current root stays, List marks exactly one default.
func checkActivate(t *testing.T, h *Harness) {
	a := h.Create(t, "conformance-a")
	if err := h.S.Activate(h.Ctx, a.Name); err != nil {
		t.Fatal(err)
	}
	want := h.activated(a)
	d, err := h.S.Default(h.Ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != want || !d.Default {
		t.Fatalf("Default() = %+v after Activate(%q), want %q", d, a.Name, want)
	}
	if err := h.S.Activate(h.Ctx, a.Name); err != nil {
		t.Fatalf("Activate() of the default: %v, want nil", err)
	}
	if c, err := h.S.Current(h.Ctx); err != nil || c.Name != h.Cur.Name {
		t.Fatalf("Current() = %+v, %v after Activate, want %q", c, err, h.Cur.Name)
	}
	defaults := 0
	for _, sn := range RequireListed(t, h.S, h.Cur.Name, a.Name) {
		if sn.Default {
			defaults++
			if sn.Name != want {
				t.Errorf("List() marks %q as default, want %q", sn.Name, want)
			}
		}
	}
	if defaults != 1 {
		t.Errorf("List() has %d defaults, want 1", defaults)
	}
}

// checkDeleteRefuses: Delete refuses the current root and the default (a
// rollback point is neither; None deletes nothing and says nil).
func checkDeleteRefuses(t *testing.T, h *Harness) {
	a := h.Create(t, "conformance-a")
	if err := h.S.Activate(h.Ctx, a.Name); err != nil {
		t.Fatal(err)
	}
	refuse := []string{h.Cur.Name, a.Name}
	if h.Rollback {
		refuse = refuse[:1]
	}
	for _, n := range refuse {
		err := h.S.Delete(h.Ctx, n)
		if h.None {
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
	if got, _ := os.ReadFile(h.Seed()); string(got) != "seed" {
		t.Fatalf("the root lost its files: %q", got)
	}
	RequireListed(t, h.S, h.Cur.Name, a.Name)
}

// checkPath: Path of the current root is the root, of a snapshot where
// Create put it, of a missing one ErrNotFound.
func checkPath(t *testing.T, h *Harness) {
	p, err := h.S.Path(h.Ctx, h.Cur.Name)
	if err != nil {
		t.Fatalf("Path(current) = %v", err)
	}
	if rp, _ := filepath.EvalSymlinks(p); rp != h.Resolved {
		t.Errorf("Path(current) = %s, want the root %s", p, h.Root)
	}
	if h.None {
		return
	}
	a := h.Create(t, "conformance-a")
	p, err = h.S.Path(h.Ctx, a.Name)
	if err != nil {
		t.Fatalf("Path(%s) = %v", a.Name, err)
	}
	if p != a.Path && !h.Rollback {
		t.Errorf("Path(%s) = %s, Create said %s", a.Name, p, a.Path)
	}
	if _, err := h.S.Path(h.Ctx, h.Name("conformance-missing")); !errors.Is(err, snapshot.ErrNotFound) {
		t.Errorf("Path(missing) = %v, want ErrNotFound", err)
	}
}

// checkDeleteMissing: deleting a snapshot that does not exist is
// ErrNotFound (None: nil).
func checkDeleteMissing(t *testing.T, h *Harness) {
	err := h.S.Delete(h.Ctx, h.Name("conformance-missing"))
	if h.None {
		if err != nil {
			t.Fatalf("in-place Delete() = %v, want nil", err)
		}
		return
	}
	if !errors.Is(err, snapshot.ErrNotFound) {
		t.Fatalf("Delete() of a missing snapshot = %v, want ErrNotFound", err)
	}
}

// checkCreateDelete: a deleted snapshot is gone (its files, from List,
// Delete again is ErrNotFound) and its name can be used again.
func checkCreateDelete(t *testing.T, h *Harness) {
	b := h.Create(t, "conformance-b")
	RequireListed(t, h.S, b.Name)
	if err := h.S.Delete(h.Ctx, b.Name); err != nil {
		t.Fatal(err)
	}
	if h.None {
		return
	}
	if _, err := os.Stat(b.Path); !h.Rollback && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s still there after Delete (stat: %v)", b.Path, err)
	}
	if Listed(t, h.S, b.Name) {
		t.Fatalf("List() still has %q after Delete", b.Name)
	}
	if err := h.S.Delete(h.Ctx, b.Name); !errors.Is(err, snapshot.ErrNotFound) {
		t.Fatalf("Delete() again = %v, want ErrNotFound", err)
	}
	h.Create(t, "conformance-b")
}

// checkCloseTwice: Close again is harmless.
func checkCloseTwice(t *testing.T, h *Harness) {
	if err := h.S.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.S.Close(); err != nil {
		t.Fatalf("Close() again: %v", err)
	}
}

// checkNewBackend: after Close, a new backend on the same root (a restart)
// sees the same current root, the snapshot and the default, can activate
// the old root again and delete the snapshot that is no longer the
// default.
func checkNewBackend(t *testing.T, h *Harness) {
	a := h.Create(t, "conformance-a")
	if err := h.S.Activate(h.Ctx, a.Name); err != nil {
		t.Fatal(err)
	}
	if err := h.S.Close(); err != nil {
		t.Fatal(err)
	}
	s2, root2 := h.newBackend(t)
	defer s2.Close()
	if root2 != h.Root {
		t.Fatalf("newBackend bound %q, then %q", h.Root, root2)
	}
	c, err := s2.Current(h.Ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != h.Cur.Name || c.ID != h.Cur.ID {
		t.Fatalf("Current() = %+v, was %+v", c, h.Cur)
	}
	RequireListed(t, s2, h.Cur.Name, a.Name)
	if d, err := s2.Default(h.Ctx); err != nil || d.Name != h.activated(a) {
		t.Fatalf("Default() = %+v, %v; want %q", d, err, h.activated(a))
	}
	if err := s2.Activate(h.Ctx, h.Cur.Name); err != nil {
		t.Fatal(err)
	}
	if d, err := s2.Default(h.Ctx); err != nil || d.Name != h.Cur.Name {
		t.Fatalf("Default() = %+v, %v after Activate(%q)", d, err, h.Cur.Name)
	}
	if err := s2.Delete(h.Ctx, a.Name); err != nil {
		t.Fatalf("Delete() of a snapshot that is no longer the default: %v", err)
	}
	if !h.None && Listed(t, s2, a.Name) {
		t.Fatalf("List() still has %q after Delete", a.Name)
	}
}
