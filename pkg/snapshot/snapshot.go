// Package snapshot defines how kos-upgrade protects the root filesystem
// during an upgrade, and its backends (btrfs, lvm, none).
//
// The preferred model is "apply into the snapshot, switch on success": Create
// makes a writable copy of the root and mounts it, the transaction runs inside
// that copy, and only when it succeeded does Activate make the copy the root
// that boots next. The booted root is never modified, so a crash at any point
// leaves the old system bootable as it was.
package snapshot

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/keyarchos/kos-upgrade/pkg/mountinfo"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot/undojournal"
)

// Sentinel errors, wrapped with %w by the backends.
var (
	ErrNotFound     = errors.New("snapshot not found")
	ErrExists       = errors.New("snapshot already exists")
	ErrNotSupported = errors.New("root cannot be snapshotted by this backend")
)

// Backend names: what Snapshotter.Backend returns, the plan's and the
// state's "snapshot"/"backend" fields and the --snapshot values. Compare
// with these, never with literals; ParseBackend checks a user's choice.
const (
	// BackendAuto picks btrfs or LVM from the root's device (a choice,
	// never a Snapshotter's name).
	BackendAuto  = "auto"
	BackendBtrfs = "btrfs"
	BackendLVM   = "lvm"
	// BackendNone upgrades the root in place without a rollback point.
	BackendNone = "none"
	// BackendUndo upgrades the root in place with an undo journal as the
	// rollback point (Undo); auto picks it when neither btrfs nor an LVM
	// snapshot fits.
	BackendUndo = "undo"
)

// ParseBackend checks a backend choice (--snapshot, the D-Bus option): one
// of the Backend names; "" means BackendAuto. The error says what is
// accepted.
func ParseBackend(s string) (string, error) {
	switch s {
	case "":
		return BackendAuto, nil
	case BackendAuto, BackendBtrfs, BackendLVM, BackendUndo, BackendNone:
		return s, nil
	}
	return "", fmt.Errorf("cannot use snapshot backend %q: choose auto, btrfs, lvm, undo or none", s)
}

// Protects reports whether a snapshot of backend (a Backend name as
// recorded in a plan or state) is a rollback point: false for "none" and
// for "" (no snapshot made).
func Protects(backend string) bool { return backend != "" && backend != BackendNone }

// Snapshot names one root snapshot.
type Snapshot struct {
	// Name is the backend's stable name for the snapshot, unique per root
	// (btrfs: subvolume path relative to the top level).
	Name string `json:"name"`
	// ID is the backend's identifier (btrfs: subvolume id), informational.
	ID string `json:"id,omitempty"`
	// Path is where the snapshot is mounted, writable, while the upgrade runs;
	// empty when it is not mounted.
	Path string `json:"path,omitempty"`
	// Default is true for the snapshot that boots next.
	Default bool `json:"default,omitempty"`
	// Created is an RFC 3339 time, when the backend knows it.
	Created string `json:"created,omitempty"`
}

// Snapshotter is one backend bound to one root filesystem.
type Snapshotter interface {
	// Backend returns the backend name: BackendBtrfs, BackendLVM or
	// BackendNone.
	Backend() string

	// Current returns the snapshot (subvolume, LV) the root is mounted from.
	// Calling it twice gives the same answer.
	Current(ctx context.Context) (Snapshot, error)

	// Create makes a writable snapshot of the current root called name and
	// mounts it; the returned Path is where the transaction must run.
	// It returns ErrExists if name exists already (the caller deletes
	// leftovers of an interrupted run first). It never changes what boots.
	Create(ctx context.Context, name string) (Snapshot, error)

	// Delete unmounts and removes the snapshot called name. It refuses to
	// delete the current root or the default. Deleting a snapshot that does
	// not exist returns ErrNotFound, so a caller retrying after a crash can
	// treat that as done.
	Delete(ctx context.Context, name string) error

	// Activate makes name the root that boots next (btrfs: default
	// subvolume). Activating the snapshot that is already the default is a
	// no-op returning nil. The change is durable when Activate returns.
	Activate(ctx context.Context, name string) error

	// Path returns a directory where the files of the snapshot called name
	// can be read and written (the root's own directory for the current
	// one), without changing what boots. It returns ErrNotFound if name does
	// not exist. The path stays valid until Close.
	Path(ctx context.Context, name string) (string, error)

	// Default returns the snapshot that boots next.
	Default(ctx context.Context) (Snapshot, error)

	// List returns every snapshot of this root the backend can see,
	// including the current one.
	List(ctx context.Context) ([]Snapshot, error)

	// Close unmounts what the backend mounted for its own work. Calling it
	// twice is harmless.
	Close() error
}

// InPlace is implemented by backends that, depending on the root, may not
// copy the root for the transaction but run it on the live root and keep the
// snapshot as the rollback point (LVM thick snapshots: "snapshot is the
// rollback point, upgrade the origin"). A caller holding a Snapshotter checks
//
//	ip, ok := s.(snapshot.InPlace); inPlace := ok && ip.UpgradesInPlace()
//
// and, when inPlace is true, departs from the apply-into-snapshot flow so:
//   - Create(name) makes the rollback point and returns Path = the live root:
//     the transaction runs there, changing the running system;
//   - on success there is nothing to switch: Activate is a no-op returning
//     nil and Default stays the current root; the rollback point is kept
//     (it is the pre-upgrade system: record it as the rollback target);
//   - on failure, and for `kos-upgrade rollback`, the caller calls
//     Rollback(name) and reboots, instead of Delete(name) or
//     Activate(previous);
//   - Delete(name) drops a rollback point that is no longer wanted (clean).
type InPlace interface {
	// UpgradesInPlace reports whether Create returns the live root as
	// the place of the transaction. It does not change over the life of
	// the backend.
	UpgradesInPlace() bool

	// Rollback makes the root what it was when the rollback point called
	// name was created, discarding every change made since, and consumes
	// the rollback point. For a mounted root (always, in practice) the
	// change takes effect at the next boot, and the caller must reboot
	// without writing anything to the root that it wants to keep. Once it
	// returned nil it cannot be undone; calling it again for the same
	// name is a no-op returning nil until the rollback has completed,
	// ErrNotFound afterwards. An overflowed (invalid) rollback point is
	// refused with an error saying so.
	Rollback(ctx context.Context, name string) error
}

// UpgradesInPlace reports whether s upgrades the live root (s implements
// InPlace and says so).
func UpgradesInPlace(s Snapshotter) bool {
	ip, ok := s.(InPlace)
	return ok && ip.UpgradesInPlace()
}

// ImmediateRollback is implemented by InPlace backends whose Rollback puts
// the root back before it returns (Undo), where LVM's merge waits for the
// next boot: no reboot is pending after it (the caller still reboots out
// of a root whose running programs were replaced twice).
type ImmediateRollback interface {
	// RollsBackImmediately reports whether Rollback has put the root
	// back when it returns. It does not change over the life of the
	// backend.
	RollsBackImmediately() bool
}

// RollsBackImmediately reports whether s is an in-place backend whose
// Rollback takes effect before it returns.
func RollsBackImmediately(s Snapshotter) bool {
	ir, ok := s.(ImmediateRollback)
	return ok && ir.RollsBackImmediately() && UpgradesInPlace(s)
}

// Journaler is implemented by backends whose rollback point holds only
// what the transaction changes (Undo): the caller says what that is
// before Create.
type Journaler interface {
	// SetChanges says which paths, absolute inside the root, the next
	// transaction may replace, remove or create (the file lists of the
	// packages it erases, upgrades and installs). Calling it again
	// replaces the list.
	SetChanges(paths []string)
	// Need says what the journal of the changes set by SetChanges needs
	// on the root's filesystem, and refuses (undojournal.ErrNoSpace)
	// when it does not fit. It changes nothing.
	Need(ctx context.Context) (undojournal.Need, error)
	// Stats describes the complete journal called name (its size on
	// disk against the size of the files it covers); an error when
	// there is no complete journal of that name.
	Stats(name string) (undojournal.Stats, error)
}

// ChangeSizer is implemented by backends whose snapshots get a fixed size
// when created (LVM thick snapshots: copy on write into a preallocated
// volume).
type ChangeSizer interface {
	// SetChangeSize says how many bytes the transaction is expected to
	// write to the root, before Create sizes the next snapshot from it.
	// Calling it again replaces the value; backends whose snapshots are
	// not preallocated ignore it.
	SetChangeSize(bytes int64)
}

// Volumes is implemented by backends whose snapshots are logical volumes
// of one volume group (LVM), which boot entries and fstab name by path.
type Volumes interface {
	// VG returns the root's volume group; the same for every snapshot.
	VG() string
	// LV returns the logical volume of the snapshot called name, whether
	// it exists or not; an error when name cannot be a snapshot name.
	LV(name string) (string, error)
}

// rootMount resolves rootDir (absolute, symlinks followed) and finds the
// mount it lives on, for the backends' constructors.
func rootMount(rootDir string) (string, []mountinfo.Mount, mountinfo.Mount, error) {
	abs, err := filepath.Abs(rootDir)
	if err != nil {
		return "", nil, mountinfo.Mount{}, fmt.Errorf("cannot use root %s: %w", rootDir, err)
	}
	root, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", nil, mountinfo.Mount{}, fmt.Errorf("cannot use root %s: %w", rootDir, err)
	}
	mounts, err := mountinfo.Read()
	if err != nil {
		return "", nil, mountinfo.Mount{}, err
	}
	m, err := mountinfo.Lookup(mounts, root)
	if err != nil {
		return "", nil, mountinfo.Mount{}, fmt.Errorf("cannot find the filesystem of root %s: %w", rootDir, err)
	}
	return root, mounts, m, nil
}
