package upgrader

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// dropRPMDBEnvironment makes the rpm database of the root the transaction
// is about to run in safe for rpm, before anything opens it. A Berkeley DB
// rpmdb (EL8's rpm 4.14) keeps its environment in __db.001… next to the
// database: shared memory regions with the locks of every process that
// has the database open. A snapshot of a running system captures that
// environment with the locks of processes that do not exist in the copy;
// the first write to the copy then waits for them for good (a futex wait
// that SIGTERM does not end), and after a SIGKILL the database needs
// recovery (DB_RUNRECOVERY). The environment holds no data: rpm makes a
// new one when it finds none (docs/architecture.md; the measurements are in
// ../shared/el8/README.md). Called on the target of every backend, the
// in-place ones included: nothing else runs rpm during the offline apply. A
// sqlite or ndb rpmdb has no such files, and then this does nothing.
func dropRPMDBEnvironment(root string) error {
	dir := sysroot.Root{Dir: root}.Path(sysroot.Root{Dir: root}.DBPathRel())
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cannot read the rpm database directory %s: %w", dir, err)
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "__db.") || e.IsDir() {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("cannot remove the Berkeley DB environment of the copied rpm database: %w", err)
		}
	}
	return nil
}
