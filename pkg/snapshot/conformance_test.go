package snapshot_test

import (
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot/snapshottest"
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
