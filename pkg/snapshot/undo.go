package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/keyarchos/kos-upgrade/pkg/snapshot/undojournal"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// UndoCurrent is the name of the live root for the undo backend.
const UndoCurrent = "/"

// UndoDirRel is where the undo backend keeps its journals, inside the root:
// the state directory, on the root's filesystem (reflinks do not cross
// filesystems) and never journaled itself.
const UndoDirRel = sysroot.StateDirRel + "/undo"

// UndoTrees are the directories an undo journal saves whole, whatever the
// transaction's file lists say: /etc (small, and where scriptlets write:
// useradd, alternatives), dnf's history and state (apply records the run
// there) and the rpm database (added by NewUndo, from the root's
// %_dbpath).
var UndoTrees = []string{"/etc", "/var/lib/dnf"}

// UndoCloneTrees are saved whole too when the filesystem clones files:
// /var/lib, where scriptlets write files no package lists (a %post's
// state, a database it migrates). Without reflinks they are not saved
// (copies of databases would not fit), and check says so.
var UndoCloneTrees = []string{"/var/lib"}

// Undo is the backend for roots that cannot be snapshotted (XFS or ext4
// on a partition, or on an LV whose VG has no free extents): the root is
// upgraded in place (InPlace) and the rollback point is an undo journal
// (pkg/snapshot/undojournal) made by Create in UndoDirRel: the files the
// transaction replaces, removes or adds (SetChanges), /etc and the rpm
// database, cloned with FICLONE where the filesystem shares extents (XFS
// with reflink=1, btrfs), else copied after a space check (Need).
//
// Where it departs from the Snapshotter contract, as an in-place backend:
//   - Create returns the live root as Path; the rollback point is not a
//     tree: Path of it returns the live root too (the journal only holds
//     what the transaction changes);
//   - Activate is a no-op returning nil; Default and Current are the live
//     root, called UndoCurrent;
//   - Rollback restores the root from the journal before it returns
//     (RollsBackImmediately), then removes the journal.
type Undo struct {
	rootDir string
	dbPath  string
	changes []string
}

var (
	_ Snapshotter       = (*Undo)(nil)
	_ InPlace           = (*Undo)(nil)
	_ Journaler         = (*Undo)(nil)
	_ ImmediateRollback = (*Undo)(nil)
)

// NewUndo returns the undo backend for the system mounted at rootDir ("" is
// "/"). It refuses with ErrNotSupported when the state directory is not on
// the root's filesystem.
func NewUndo(rootDir string) (*Undo, error) {
	if rootDir == "" {
		rootDir = "/"
	}
	abs, err := filepath.Abs(rootDir)
	if err != nil {
		return nil, fmt.Errorf("cannot use root %s: %w", rootDir, err)
	}
	root, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return nil, fmt.Errorf("cannot use root %s: %w", rootDir, err)
	}
	r := sysroot.Root{Dir: root}
	// The state directory, or the nearest of its parents that exists.
	state := r.StateDir()
	for state != root && state != "/" {
		if _, err := os.Lstat(state); err == nil {
			break
		}
		state = filepath.Dir(state)
	}
	var rs, ss unix.Stat_t
	if err := unix.Stat(root, &rs); err != nil {
		return nil, fmt.Errorf("cannot use root %s: %w", root, err)
	}
	if err := unix.Stat(state, &ss); err != nil {
		return nil, fmt.Errorf("cannot use root %s: %w", root, err)
	}
	if rs.Dev != ss.Dev {
		return nil, fmt.Errorf("cannot keep an undo journal for %s: %s is on another filesystem: %w", root, state, ErrNotSupported)
	}
	return &Undo{rootDir: root, dbPath: r.DBPathRel()}, nil
}

func (u *Undo) root() Snapshot { return Snapshot{Name: UndoCurrent, Path: u.rootDir, Default: true} }

func (u *Undo) journalDir(name string) (string, error) {
	if name == "" || name == UndoCurrent || strings.Contains(name, "+") || strings.Contains(name, "..") ||
		strings.HasPrefix(name, "/") || strings.ContainsAny(name, "\x00\n ") {
		return "", fmt.Errorf("cannot use %q as the name of an undo journal", name)
	}
	return filepath.Join(u.rootDir, UndoDirRel, strings.ReplaceAll(name, "/", "+")), nil
}

func (u *Undo) spec(dir string) undojournal.Spec {
	return undojournal.Spec{
		Root:       u.rootDir,
		Dir:        dir,
		Paths:      u.changes,
		Trees:      append(append([]string(nil), UndoTrees...), u.dbPath),
		CloneTrees: UndoCloneTrees,
		Exclude:    []string{sysroot.StateDirRel},
		// rpm rewrites its database in place, page by page: a clone
		// would make each write a copy on write.
		Copy: []string{u.dbPath},
	}
}

// Backend implements Snapshotter.
func (u *Undo) Backend() string { return BackendUndo }

// UpgradesInPlace implements InPlace: always.
func (u *Undo) UpgradesInPlace() bool { return true }

// RollsBackImmediately implements ImmediateRollback: always.
func (u *Undo) RollsBackImmediately() bool { return true }

// SetChanges implements Journaler.
func (u *Undo) SetChanges(paths []string) { u.changes = append([]string(nil), paths...) }

// Need says what the journal of the changes set by SetChanges needs on the
// root's filesystem, and refuses (undojournal.ErrNoSpace) when it does not
// fit: without reflinks it copies every file.
func (u *Undo) Need(ctx context.Context) (undojournal.Need, error) {
	return undojournal.Check(ctx, u.spec(filepath.Join(u.rootDir, UndoDirRel, "check")))
}

// Current implements Snapshotter: the live root.
func (u *Undo) Current(context.Context) (Snapshot, error) { return u.root(), nil }

// Default implements Snapshotter: the live root.
func (u *Undo) Default(context.Context) (Snapshot, error) { return u.root(), nil }

// Create makes the undo journal called name for the changes set by
// SetChanges, complete and synced when it returns, and returns the live
// root as the place of the transaction. A complete journal of that name
// is ErrExists; a cut-short one is replaced.
func (u *Undo) Create(ctx context.Context, name string) (Snapshot, error) {
	dir, err := u.journalDir(name)
	if err != nil {
		return Snapshot{}, err
	}
	if undojournal.Complete(dir) {
		return Snapshot{}, fmt.Errorf("cannot create the undo journal %s: %w", name, ErrExists)
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return Snapshot{}, fmt.Errorf("cannot create the undo journal %s: %w", name, err)
	}
	if _, err := undojournal.Create(ctx, u.spec(dir)); err != nil {
		return Snapshot{}, fmt.Errorf("cannot create the undo journal %s: %w", name, err)
	}
	return Snapshot{Name: name, Path: u.rootDir}, nil
}

// Stats describes the complete journal called name (its size on disk
// against the size of the files it covers).
func (u *Undo) Stats(name string) (undojournal.Stats, error) {
	dir, err := u.journalDir(name)
	if err != nil {
		return undojournal.Stats{}, err
	}
	if !undojournal.Complete(dir) {
		return undojournal.Stats{}, fmt.Errorf("cannot find the undo journal %s: %w", name, ErrNotFound)
	}
	return undojournal.Read(dir)
}

// Delete removes the journal called name (the rollback point is gone).
// It refuses the live root; a missing journal is ErrNotFound.
func (u *Undo) Delete(_ context.Context, name string) error {
	if name == UndoCurrent {
		return fmt.Errorf("cannot delete the live root")
	}
	dir, err := u.journalDir(name)
	if err != nil {
		return err
	}
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("cannot find the undo journal %s: %w", name, ErrNotFound)
	}
	return undojournal.Remove(dir)
}

// Activate does nothing and returns nil: the live root boots.
func (u *Undo) Activate(context.Context, string) error { return nil }

// Path returns the live root, for it and for every complete journal;
// ErrNotFound for any other name.
func (u *Undo) Path(_ context.Context, name string) (string, error) {
	if name == UndoCurrent {
		return u.rootDir, nil
	}
	dir, err := u.journalDir(name)
	if err != nil {
		return "", fmt.Errorf("cannot find snapshot %q: %w", name, ErrNotFound)
	}
	if !undojournal.Complete(dir) {
		return "", fmt.Errorf("cannot find the undo journal %s: %w", name, ErrNotFound)
	}
	return u.rootDir, nil
}

// List returns the live root and the complete journals.
func (u *Undo) List(context.Context) ([]Snapshot, error) {
	out := []Snapshot{u.root()}
	ents, err := os.ReadDir(filepath.Join(u.rootDir, UndoDirRel))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("cannot list the undo journals: %w", err)
	}
	var names []string
	for _, e := range ents {
		if e.IsDir() && undojournal.Complete(filepath.Join(u.rootDir, UndoDirRel, e.Name())) {
			names = append(names, strings.ReplaceAll(e.Name(), "+", "/"))
		}
	}
	sort.Strings(names)
	for _, n := range names {
		out = append(out, Snapshot{Name: n, Path: u.rootDir})
	}
	return out, nil
}

// Rollback implements InPlace: it restores the root from the journal
// called name (undojournal.Restore) and removes the journal. The root is
// as it was when the journal was made when it returns nil; a crash in it
// leaves the journal, and calling it again restores again. A missing
// journal is ErrNotFound; a cut-short one is refused (the transaction
// cannot have begun).
func (u *Undo) Rollback(ctx context.Context, name string) error {
	dir, err := u.journalDir(name)
	if err != nil {
		return err
	}
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("cannot find the undo journal %s: %w", name, ErrNotFound)
	}
	if err := undojournal.Restore(ctx, dir, u.rootDir); err != nil {
		return err
	}
	return undojournal.Remove(dir)
}

// Close does nothing.
func (u *Undo) Close() error { return nil }
