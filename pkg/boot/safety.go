package boot

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/mountinfo"
)

// EnvCheck says where to look when deciding whether grub can write its
// environment block at boot. The zero value uses the running system.
type EnvCheck struct {
	MountInfo string // mount table; default mountinfo.DefaultPath
	SysDir    string // sysfs; default "/sys"
}

// CheckEnvWritable returns nil when grub can rewrite the block at path at
// boot (save_env, used to clear next_entry and count tries), and an error
// wrapping ErrUnsafeEnv saying why not otherwise. Grub's save_env refuses
// btrfs and ZFS (copy-on-write: the block list is not stable) and anything
// on device-mapper (LVM, dm-crypt) or MD RAID ("diskfilter writes are not
// supported"). The directory holding the file is looked up in the mount
// table, and its device in sysfs.
func (c EnvCheck) CheckEnvWritable(path string) error {
	mi := c.MountInfo
	if mi == "" {
		mi = mountinfo.DefaultPath
	}
	sys := c.SysDir
	if sys == "" {
		sys = "/sys"
	}
	f, err := os.Open(mi)
	if err != nil {
		return fmt.Errorf("cannot check where %s lives: %w", path, err)
	}
	defer f.Close()
	mounts, err := mountinfo.Parse(f)
	if err != nil {
		return fmt.Errorf("cannot check where %s lives: %w", path, err)
	}
	m, err := mountinfo.Lookup(mounts, filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("cannot check where %s lives: %w", path, err)
	}
	switch m.FSType {
	case "btrfs", "zfs":
		return fmt.Errorf("%s is on %s (%s mounted at %s): grub does not write its environment on %s, "+
			"so a one-time or trial boot would never be cleared by the boot loader: %w",
			path, m.FSType, m.Source, m.Point, m.FSType, ErrUnsafeEnv)
	}
	if m.Major == 0 {
		return nil // not a block device (tmpfs, overlay in tests): nothing to say
	}
	link, err := os.Readlink(filepath.Join(sys, "dev/block", fmt.Sprintf("%d:%d", m.Major, m.Minor)))
	if err != nil {
		return nil // no sysfs entry: cannot tell, as for a plain partition
	}
	parts := strings.Split(filepath.ToSlash(link), "/")
	for _, p := range parts {
		var what string
		switch {
		case strings.HasPrefix(p, "dm-"):
			what = "device-mapper"
			uuid, _ := os.ReadFile(filepath.Join(sys, "dev/block", fmt.Sprintf("%d:%d", m.Major, m.Minor), "dm/uuid"))
			switch u := string(uuid); {
			case strings.HasPrefix(u, "LVM-"):
				what = "an LVM logical volume"
			case strings.HasPrefix(u, "CRYPT-"):
				what = "dm-crypt"
			}
		case len(p) > 2 && strings.HasPrefix(p, "md") && p[2] >= '0' && p[2] <= '9':
			what = "MD RAID"
		}
		if what != "" {
			return fmt.Errorf("%s is on %s (%s, %s mounted at %s): grub cannot write to it at boot, "+
				"so a one-time or trial boot would never be cleared by the boot loader: %w",
				path, what, p, m.Source, m.Point, ErrUnsafeEnv)
		}
	}
	return nil
}
