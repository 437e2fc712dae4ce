package snapshot

import (
	"context"
	"fmt"
	"path/filepath"
)

// NoneName is the name of the only "snapshot" of the none backend: the live
// root itself.
const NoneName = "/"

// None is the backend for roots that cannot be snapshotted: there is no
// safety net, the transaction runs on the live root. Every method succeeds
// and describes the root itself; the caller is expected to have told the user
// (and to have required consent) before choosing it.
//
// Where it departs from the Snapshotter contract, by design:
//   - Create makes no copy: it returns the root (Name NoneName, Path the
//     root directory), and calling it again with the same name, or another,
//     returns the same thing instead of ErrExists, so a retried apply works;
//   - Delete of any name is a no-op returning nil (there is nothing to
//     delete, and never the root);
//   - Activate of any name is a no-op returning nil.
type None struct {
	rootDir string
}

var _ Snapshotter = (*None)(nil)

// NewNone returns the none backend for the system mounted at rootDir ("" is
// "/").
func NewNone(rootDir string) *None {
	if rootDir == "" {
		rootDir = "/"
	}
	if abs, err := filepath.Abs(rootDir); err == nil {
		rootDir = abs
	}
	return &None{rootDir: rootDir}
}

func (n *None) root() Snapshot {
	return Snapshot{Name: NoneName, Path: n.rootDir, Default: true}
}

// Backend implements Snapshotter.
func (n *None) Backend() string { return BackendNone }

// Current implements Snapshotter: the live root.
func (n *None) Current(context.Context) (Snapshot, error) { return n.root(), nil }

// Default implements Snapshotter: the live root.
func (n *None) Default(context.Context) (Snapshot, error) { return n.root(), nil }

// Create returns the live root, whatever the name, as often as it is called.
func (n *None) Create(context.Context, string) (Snapshot, error) { return n.root(), nil }

// Delete does nothing and returns nil.
func (n *None) Delete(context.Context, string) error { return nil }

// Activate does nothing and returns nil.
func (n *None) Activate(context.Context, string) error { return nil }

// Path returns the root's directory for the one snapshot there is.
func (n *None) Path(_ context.Context, name string) (string, error) {
	if name != NoneName {
		return "", fmt.Errorf("cannot find snapshot %q: %w", name, ErrNotFound)
	}
	return n.rootDir, nil
}

// List returns the live root.
func (n *None) List(context.Context) ([]Snapshot, error) { return []Snapshot{n.root()}, nil }

// Close does nothing.
func (n *None) Close() error { return nil }
