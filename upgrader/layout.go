package upgrader

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/atomicfile"
	"github.com/keyarchos/kos-upgrade/pkg/boot"
	"github.com/keyarchos/kos-upgrade/pkg/mountinfo"
	"github.com/keyarchos/kos-upgrade/pkg/preflight"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// checkLayout refuses a snapshot-protected upgrade of a root whose
// transaction directories are partly on other filesystems: that would
// upgrade half a system "atomically". The check is check's own
// (preflight.SeparateMounts), so the two cannot drift apart.
func checkLayout(root sysroot.Root, backend string) error {
	if backend == snapshot.BackendNone {
		return nil
	}
	mounts, err := mountinfo.Read()
	if err != nil {
		return err
	}
	sep, err := preflight.SeparateMounts(root, mounts)
	if err != nil {
		return fmt.Errorf("cannot check the filesystem layout: %w", err)
	}
	if len(sep) > 0 {
		return fmt.Errorf("cannot protect the upgrade with a %s snapshot: %s are separate filesystems that the snapshot of the root would not contain, so a rollback would restore only half the system; move them into the root, or pass --snapshot none to upgrade in place without rollback", backend, strings.Join(sep, ", "))
	}
	return nil
}

// rewriteFstab points the btrfs entry of "/" in the new root's fstab at the
// new subvolume, so that the upgraded system mounts itself, not the old root.
// A missing fstab, or one that does not name a subvolume for "/", is left
// alone. It returns whether it changed the file.
func rewriteFstab(newRoot, newSubvol string) (bool, error) {
	path := filepath.Join(newRoot, "etc/fstab")
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("cannot read %s: %w", path, err)
	}
	out, changed := rewriteFstabData(b, newSubvol)
	if !changed {
		return false, nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return false, fmt.Errorf("cannot stat %s: %w", path, err)
	}
	if err := atomicfile.WriteFile(path, out, fi.Mode().Perm()); err != nil {
		return false, err
	}
	return true, nil
}

func rewriteFstabData(b []byte, newSubvol string) ([]byte, bool) {
	var buf bytes.Buffer
	changed := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) >= 4 && !strings.HasPrefix(f[0], "#") && f[1] == "/" && f[2] == "btrfs" {
			var opts []string
			touched := false
			for _, o := range strings.Split(f[3], ",") {
				switch {
				case strings.HasPrefix(o, "subvol="):
					opts = append(opts, "subvol=/"+strings.TrimPrefix(newSubvol, "/"))
					touched = true
				case strings.HasPrefix(o, "subvolid="):
					touched = true // the id of the old root: drop it
				default:
					opts = append(opts, o)
				}
			}
			if touched {
				if !strings.Contains(strings.Join(opts, ","), "subvol=") {
					opts = append(opts, "subvol=/"+strings.TrimPrefix(newSubvol, "/"))
				}
				f[3] = strings.Join(opts, ",")
				line = strings.Join(f, "\t")
				changed = true
			}
		}
		buf.WriteString(line)
		buf.WriteByte('\n')
	}
	return buf.Bytes(), changed
}

// rewriteFstabLVMFile points the "/" line of newRoot's fstab at the LV
// vg/newLV when it names vg/oldLV by path (/dev/mapper/<vg>-<lv> or
// /dev/<vg>/<lv>, in the same form). It returns whether it changed the
// file, and the source ("UUID=…") when "/" is named by something both LVs
// carry (the filesystem's UUID or label), which it leaves alone.
func rewriteFstabLVMFile(newRoot, vg, oldLV, newLV string) (bool, string, error) {
	path := filepath.Join(newRoot, "etc/fstab")
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return false, "", nil
	}
	if err != nil {
		return false, "", fmt.Errorf("cannot read %s: %w", path, err)
	}
	out, changed, ambiguous := rewriteFstabLVMData(b, vg, oldLV, newLV)
	if !changed {
		return false, ambiguous, nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return false, "", fmt.Errorf("cannot stat %s: %w", path, err)
	}
	if err := atomicfile.WriteFile(path, out, fi.Mode().Perm()); err != nil {
		return false, "", err
	}
	return true, ambiguous, nil
}

func rewriteFstabLVMData(b []byte, vg, oldLV, newLV string) ([]byte, bool, string) {
	mapper := func(lv string) string { return "/dev/mapper/" + boot.MapperName(vg, lv) }
	byPath := func(lv string) string { return "/dev/" + vg + "/" + lv }
	var buf bytes.Buffer
	changed, ambiguous := false, ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) >= 2 && !strings.HasPrefix(f[0], "#") && f[1] == "/" {
			orig := f[0]
			switch {
			case orig == mapper(oldLV):
				f[0] = mapper(newLV)
			case orig == byPath(oldLV):
				f[0] = byPath(newLV)
			case strings.HasPrefix(orig, "UUID="), strings.HasPrefix(orig, "LABEL="),
				strings.HasPrefix(orig, "/dev/disk/by-uuid/"), strings.HasPrefix(orig, "/dev/disk/by-label/"):
				ambiguous = orig
			}
			if f[0] != orig {
				line = strings.Join(f, "\t")
				changed = true
			}
		}
		buf.WriteString(line)
		buf.WriteByte('\n')
	}
	return buf.Bytes(), changed, ambiguous
}
