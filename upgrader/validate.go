package upgrader

// Every document kos-upgrade reads back (state.json, plan.json, history
// records) may have been written by someone else: it is opened without
// following links or blocking, size-capped, and every name and path in it
// is validated when it is loaded, before any side effect uses it. A
// document that fails is refused as damaged, with its path.

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/safefile"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
)

// bootBackupTop is the directory of /boot backups in the state directory.
const bootBackupTop = "boot-backup"

// Size caps of the documents read back.
const (
	maxStateSize   = 4 << 20
	maxPlanSize    = 256 << 20
	maxHistorySize = 1 << 20
)

// readDoc reads the regular file at path, at most max bytes
// (safefile.Read: no link, no FIFO, no larger file). A missing file is an
// error satisfying os.IsNotExist.
func readDoc(path string, max int64) ([]byte, error) { return safefile.Read(path, max) }

// idRE is a plan id, a run id or another name kos-upgrade makes up and
// uses as a file name: no "/", not "." or "..".
var idRE = regexp.MustCompile(`^[0-9A-Za-z][0-9A-Za-z._+:-]{0,199}$`)

func validID(s string) bool { return idRE.MatchString(s) }

// validStep is an apply step's name (the step table may grow).
var stepRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,63}$`)

// validFileName is one path component: not empty, no "/" or NUL, not "."
// or "..".
func validFileName(s string) bool {
	return s != "" && s != "." && s != ".." && len(s) <= 255 && !strings.ContainsAny(s, "/\x00")
}

// validRel is a clean relative path that stays below its directory.
func validRel(s string) bool {
	return s != "" && filepath.IsLocal(s) && filepath.Clean(s) == s && !strings.ContainsRune(s, 0)
}

// validRootPath is an absolute, clean path inside a root ("/boot"), not the
// root itself.
func validRootPath(s string) bool {
	return strings.HasPrefix(s, "/") && s != "/" && validRel(s[1:])
}

// validSnapshotName is a snapshot or root name as the backends use them.
func validSnapshotName(s string) bool {
	return s == snapshot.BtrfsTopLevel || validRel(s)
}

var validStatuses = map[Status]bool{
	StatusIdle: true, StatusPrepared: true, StatusArmed: true, StatusApplying: true,
	StatusSucceeded: true, StatusFailed: true, StatusRolledBack: true,
}

// validate checks every field of a state document that names a file, a
// snapshot, a boot entry or a state.
func (st *State) validate() error {
	switch {
	case st.Version < 1 || st.Version > StateVersion:
		return fmt.Errorf("version %d is not one this kos-upgrade understands (1 to %d)", st.Version, StateVersion)
	case !validStatuses[st.Status]:
		return fmt.Errorf("status %q is unknown", st.Status)
	case st.Step != "" && !stepRE.MatchString(st.Step):
		return fmt.Errorf("step %q is not a step name", st.Step)
	case st.PlanID != "" && !validID(st.PlanID):
		return fmt.Errorf("plan_id %q is not a plan id", st.PlanID)
	case st.RunID != "" && !validID(st.RunID):
		return fmt.Errorf("run_id %q is not a run id", st.RunID)
	case st.Target != "" && !ValidVersion(st.Target):
		return fmt.Errorf("target %q is not a release version", st.Target)
	case st.Backend != "" && !validID(st.Backend):
		return fmt.Errorf("backend %q is not a backend name", st.Backend)
	case st.Snapshot != "" && !validSnapshotName(st.Snapshot):
		return fmt.Errorf("snapshot %q is not a clean relative name", st.Snapshot)
	case st.Previous != "" && !validSnapshotName(st.Previous):
		return fmt.Errorf("previous %q is not a clean relative name", st.Previous)
	}
	if err := st.Boot.validate(); err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	if err := st.Initramfs.validate(); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if err := st.Stage.validate(); err != nil {
		return fmt.Errorf("stage: %w", err)
	}
	if st.LastResult != nil {
		if err := st.LastResult.validate(); err != nil {
			return fmt.Errorf("last_result: %w", err)
		}
	}
	return nil
}

func (bs *BootState) validate() error {
	if bs == nil {
		return nil
	}
	for i, b := range bs.Backups {
		parts := strings.Split(b.Path, "/")
		switch {
		case !validRootPath(b.Dir):
			return fmt.Errorf("backup %d: dir %q is not an absolute clean path below the root", i, b.Dir)
		case !validRel(b.Path) || len(parts) != 3 || parts[0] != bootBackupTop || !validID(parts[1]) || !validFileName(parts[2]):
			return fmt.Errorf("backup %d: path %q is not %s/<run id>/<name>", i, b.Path, bootBackupTop)
		}
	}
	for _, e := range append([]string{bs.Previous, bs.Pinned, bs.Entry}, bs.Entries...) {
		if e != "" && !validFileName(e) {
			return fmt.Errorf("entry %q is not a boot entry id", e)
		}
	}
	if bs.Tries < 0 {
		return fmt.Errorf("tries %d is negative", bs.Tries)
	}
	return nil
}

func (is *InitramfsState) validate() error {
	if is == nil {
		return nil
	}
	switch {
	case is.Entry != "" && !validFileName(is.Entry):
		return fmt.Errorf("entry %q is not a boot entry id", is.Entry)
	case is.Image != "" && (!validRootPath(is.Image) || !strings.HasPrefix(filepath.Base(is.Image), InitramfsImagePrefix)):
		return fmt.Errorf("image %q is not an absolute clean path to a %s* file", is.Image, InitramfsImagePrefix)
	case is.Step != "" && !stepRE.MatchString(is.Step):
		return fmt.Errorf("step %q is not a step name", is.Step)
	}
	return nil
}

func (r *Result) validate() error {
	switch {
	case r.RunID != "" && !validID(r.RunID):
		return fmt.Errorf("run_id %q is not a run id", r.RunID)
	case r.Status != "" && !validStatuses[r.Status]:
		return fmt.Errorf("status %q is unknown", r.Status)
	case r.Snapshot != "" && !validSnapshotName(r.Snapshot):
		return fmt.Errorf("snapshot %q is not a clean relative name", r.Snapshot)
	case r.Previous != "" && !validSnapshotName(r.Previous):
		return fmt.Errorf("previous %q is not a clean relative name", r.Previous)
	}
	return nil
}

// ensurePrivateDir makes dir (and its parents) if needed and leaves it a
// directory only root can read, 0700: the state directory and what kos-upgrade
// makes in it (a directory an older version made 0755 is tightened). A
// symbolic link or another file at dir is refused.
func ensurePrivateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory (%s)", dir, fi.Mode().Type())
	}
	if fi.Mode().Perm() != 0o700 {
		return os.Chmod(dir, 0o700)
	}
	return nil
}
