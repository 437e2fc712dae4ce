// Package snapshottest is the conformance suite of snapshot.Snapshotter:
// one check per property of the interface's contract, run against every
// backend (btrfs and None on loop devices and temporary directories, LVM in
// the QEMU guest, and the engine tests' stand-in for a thick LV), the way
// containerd's snapshots/testsuite checks its snapshotters.
//
// Each check opens its own backend, makes its own snapshots and removes them
// again (the default set back to the current root), so the checks depend
// neither on each other nor on their order, and any one can run alone
// (go test -run 'Conformance/activate').
//
// The None backend departs from the contract on purpose (it makes no copy,
// see snapshot.None): where it does, the checks hold it to its documented
// behaviour instead. So for backends that upgrade in place with a rollback
// point (snapshot.InPlace, LVM thick): Create returns the live root as Path
// and a real snapshot, Activate changes nothing, Default stays the current
// root. A rollback point that is not a tree (snapshot.ImmediateRollback, an
// undo journal) is checked by rolling back to it.
package snapshottest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
)

// Factory returns a backend bound to one root and the root's directory. It
// is called once per check, and again within a check after Close (a
// restart after a crash): each call binds a new backend to the same root.
// The root is writable; the suite adds and removes files of its own
// (conformance-*).
type Factory func(t *testing.T) (s snapshot.Snapshotter, rootDir string)

// Names turns a label into a snapshot name the backend accepts
// (snapshot.BtrfsName, snapshot.LVMName); nil keeps the label.
type Names func(label string) string

// Check is one property of the contract.
type Check struct {
	Name string
	Run  func(t *testing.T, h *Harness)
}

// Checks are the properties the suite checks, in the order Run runs them
// (any order works).
var Checks = []Check{
	{"current is stable", checkCurrentStable},
	{"create gives a writable copy", checkCreateCopy},
	{"create twice", checkCreateTwice},
	{"create does not change what boots", checkCreateKeepsDefault},
	{"activate", checkActivate},
	{"delete refuses the current root and the default", checkDeleteRefuses},
	{"path", checkPath},
	{"delete missing", checkDeleteMissing},
	{"create and delete", checkCreateDelete},
	{"close twice", checkCloseTwice},
	{"a new backend sees the same snapshots", checkNewBackend},
}

// Run runs every check against the backends newBackend makes, each as a
// subtest. names maps labels to snapshot names (nil: the label).
func Run(t *testing.T, newBackend Factory, names Names) {
	for _, c := range Checks {
		t.Run(c.Name, func(t *testing.T) {
			c.Run(t, NewHarness(t, newBackend, names))
		})
	}
}

// Harness is what a check works with: a fresh backend on the root, what
// kind of backend it is, and the root as it was before the check.
type Harness struct {
	Ctx      context.Context
	S        snapshot.Snapshotter
	Root     string // as newBackend said
	Resolved string // Root with symbolic links resolved
	Cur      snapshot.Snapshot
	Default  snapshot.Snapshot
	None     bool // snapshot.None: no copies at all
	Rollback bool // in place with a real rollback point (snapshot.InPlace)
	InPlace  bool // None or Rollback: Create's Path is the live root
	// Immediate: the rollback point is not a tree but is restored by
	// Rollback at once (snapshot.ImmediateRollback: undo journals); the
	// suite checks it by rolling back.
	Immediate  bool
	newBackend Factory
	names      Names
}

// NewHarness opens a backend with newBackend, writes the seed file
// conformance-seed ("seed") into the root and reads the current root and
// the default. The backend is closed when the test ends.
func NewHarness(t *testing.T, newBackend Factory, names Names) *Harness {
	t.Helper()
	s, root := newBackend(t)
	t.Cleanup(func() { s.Close() })
	h := &Harness{Ctx: context.Background(), S: s, Root: root, newBackend: newBackend, names: names}
	h.None = s.Backend() == snapshot.BackendNone
	h.Rollback = snapshot.UpgradesInPlace(s)
	h.InPlace = h.None || h.Rollback
	h.Immediate = snapshot.RollsBackImmediately(s)
	if j, ok := s.(snapshot.Journaler); ok {
		// What the checks change: all an undo journal needs to save.
		j.SetChanges([]string{"/conformance-seed", "/conformance-new"})
	}
	var err error
	if h.Resolved, err = filepath.EvalSymlinks(root); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.Seed(), []byte("seed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if h.Cur, err = s.Current(h.Ctx); err != nil {
		t.Fatal(err)
	}
	if h.Default, err = s.Default(h.Ctx); err != nil {
		t.Fatal(err)
	}
	return h
}

// Seed is the root's seed file.
func (h *Harness) Seed() string { return filepath.Join(h.Root, "conformance-seed") }

// Name is the snapshot name of label.
func (h *Harness) Name(label string) string {
	if h.names == nil {
		return label
	}
	return h.names(label)
}

// Create makes the snapshot of label and, when the test ends, makes the
// current root the default again, removes the snapshot and puts the seed
// file back.
func (h *Harness) Create(t *testing.T, label string) snapshot.Snapshot {
	t.Helper()
	sn, err := h.S.Create(h.Ctx, h.Name(label))
	if err != nil {
		t.Fatalf("Create(%q): %v", h.Name(label), err)
	}
	t.Cleanup(func() { h.cleanup(t, sn.Name) })
	return sn
}

func (h *Harness) cleanup(t *testing.T, name string) {
	s, _ := h.newBackend(t)
	defer s.Close()
	if err := s.Activate(h.Ctx, h.Cur.Name); err != nil {
		t.Errorf("cleanup: Activate(%q): %v", h.Cur.Name, err)
	}
	if err := s.Delete(h.Ctx, name); err != nil && !errors.Is(err, snapshot.ErrNotFound) && !h.None {
		t.Errorf("cleanup: Delete(%q): %v", name, err)
	}
	os.WriteFile(h.Seed(), []byte("seed"), 0o644)
	os.Remove(filepath.Join(h.Root, "conformance-new"))
}

// RequireListed fails t unless List has every name; it returns the list.
func RequireListed(t *testing.T, s snapshot.Snapshotter, names ...string) []snapshot.Snapshot {
	t.Helper()
	list, err := s.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if !has(list, n) {
			t.Fatalf("List() = %+v, lacks %q", list, n)
		}
	}
	return list
}

// Listed reports whether List has name.
func Listed(t *testing.T, s snapshot.Snapshotter, name string) bool {
	t.Helper()
	list, err := s.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return has(list, name)
}

func has(list []snapshot.Snapshot, name string) bool {
	for _, sn := range list {
		if sn.Name == name {
			return true
		}
	}
	return false
}
