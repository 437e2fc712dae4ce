package snapshot_test

import (
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot/snapshottest"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// runConformance runs the conformance suite (pkg/snapshot/snapshottest)
// against the backends newBackend makes, with the backend's own names.
func runConformance(t *testing.T, newBackend snapshottest.Factory) {
	s, _ := newBackend(t)
	backend := s.Backend()
	s.Close()
	var names snapshottest.Names
	switch backend {
	case snapshot.BackendBtrfs:
		names = snapshot.BtrfsName
	case snapshot.BackendLVM:
		names = snapshot.LVMName
	}
	snapshottest.Run(t, newBackend, names)
}

func TestNoneConformance(t *testing.T) {
	root := t.TempDir()
	runConformance(t, func(t *testing.T) (snapshot.Snapshotter, string) {
		return snapshot.NewNone(root), root
	})
}

// The undo backend on XFS with reflinks (the EL8 installer's default) and
// on ext4 (copies).
func TestUndoConformance(t *testing.T) {
	for _, tc := range []struct {
		name string
		mkfs []string
	}{
		{"xfs-reflink", []string{"mkfs.xfs", "-q", "-f", "-m", "reflink=1"}},
		{"ext4", []string{"mkfs.ext4", "-q", "-F"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := testenv.NewLoopFS(t, 320, tc.mkfs...)
			writeTree(t, root)
			runConformance(t, func(t *testing.T) (snapshot.Snapshotter, string) {
				u, err := snapshot.NewUndo(root)
				if err != nil {
					t.Fatal(err)
				}
				return u, root
			})
		})
	}
}
