package upgrader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/keyarchos/kos-upgrade/pkg/mountinfo"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// chrootMounts are mounts made inside the snapshot being upgraded:
//
//   - /boot (recursively, so /boot/efi comes along) and /efi when it is a
//     separate mount: the real ones, writable, so that kernel-install (run
//     by kernel-core's %posttrans) writes the new kernel, initramfs and BLS
//     entry where the boot loader reads them, not into the snapshot's copy;
//   - with api: /proc (a fresh proc mount), /sys and /dev (bind mounts of
//     the running system's, remounted read-only where the kernel lets us;
//     device nodes stay usable: writing /dev/null works), for dracut.
//
// The API filesystems are NOT mounted during the rpm transaction: packages
// own those directories (EL8's filesystem package: /proc, /sys, /dev), and
// rpm sets their mode, owner and times when it upgrades them, which fails
// on a read-only bind (the transaction aborts: "cannot unpack") and on a
// writable one would change the running system's /sys and /dev. A kernel
// scriptlet's dracut that fails without them is made up for in the boot
// step, which builds a missing initramfs with them mounted.
//
// A directory missing in the snapshot is skipped (the API mounts) or
// created (/boot).
type chrootMounts struct {
	points []string // mounted, in mount order
}

// mountChroot mounts what scriptlets need into target, a snapshot of root.
// withBoot adds the real /boot (and /efi). Call unmount when done, also on
// failure; a crash leaves them mounted and settle removes them
// (unmountBelow) before the snapshot is deleted.
func mountChroot(root sysroot.Root, target string, api, withBoot bool) (*chrootMounts, error) {
	m := &chrootMounts{}
	if filepath.Clean(target) == filepath.Clean(root.Dir) {
		return m, nil // in-place upgrade: the root has what it has
	}
	fail := func(err error) (*chrootMounts, error) {
		return nil, errors.Join(err, m.unmount())
	}
	isDir := func(p string) bool {
		fi, err := os.Lstat(p)
		return err == nil && fi.IsDir()
	}
	if p := filepath.Join(target, "proc"); api && isDir(p) {
		if err := unix.Mount("proc", p, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fail(fmt.Errorf("cannot mount /proc in %s for the scriptlets: %w", target, err))
		}
		m.points = append(m.points, p)
	}
	for _, d := range []string{"/sys", "/dev"} {
		p := filepath.Join(target, d)
		if !api || !isDir(p) {
			continue
		}
		if err := unix.Mount(d, p, "", unix.MS_BIND, ""); err != nil {
			return fail(fmt.Errorf("cannot bind %s into %s for the scriptlets: %w", d, target, err))
		}
		m.points = append(m.points, p)
		// Read-only where possible; a kernel that refuses the remount
		// (locked flags in a user namespace) leaves it writable.
		_ = unix.Mount("", p, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID, "")
	}
	if !withBoot {
		return m, nil
	}
	src := root.Path("/boot")
	dst := filepath.Join(target, "boot")
	if fi, err := os.Lstat(dst); err == nil && !fi.IsDir() {
		return fail(fmt.Errorf("cannot mount /boot into %s: it is not a directory there", target))
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return fail(fmt.Errorf("cannot mount /boot into %s: %w", target, err))
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fail(fmt.Errorf("cannot bind %s into %s: %w", src, dst, err))
	}
	m.points = append(m.points, dst)
	if err := slave(dst); err != nil {
		return fail(err)
	}
	if efi := root.Path("/efi"); isMountPoint(efi) && isDir(filepath.Join(target, "efi")) {
		p := filepath.Join(target, "efi")
		if err := unix.Mount(efi, p, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fail(fmt.Errorf("cannot bind %s into %s: %w", efi, p, err))
		}
		m.points = append(m.points, p)
		if err := slave(p); err != nil {
			return fail(err)
		}
	}
	return m, nil
}

// slave makes the bind mount at p and every mount below it a slave of the
// running system's: under systemd every mount is shared, and the copy of
// /boot/efi inside a bind of /boot is a peer of the real one, so unmounting
// the copy would unmount the running system's ESP too (found by the EL8
// QEMU scenario: /boot/efi was gone after the transaction).
func slave(p string) error {
	if err := unix.Mount("", p, "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("cannot make %s a slave mount: %w", p, err)
	}
	return nil
}

// unmount undoes mountChroot, last mount first. Detached (lazy) so that a
// process a scriptlet left behind cannot keep them busy; safe to call twice.
func (m *chrootMounts) unmount() error {
	if m == nil {
		return nil
	}
	var errs []error
	for i := len(m.points) - 1; i >= 0; i-- {
		if err := detach(m.points[i]); err != nil {
			errs = append(errs, err)
		}
	}
	m.points = nil
	return errors.Join(errs...)
}

// isMountPoint reports whether p is the mount point of a mount.
func isMountPoint(p string) bool {
	mounts, err := mountinfo.Read()
	if err != nil {
		return false
	}
	r, err := filepath.EvalSymlinks(p)
	if err != nil {
		return false
	}
	for _, m := range mounts {
		if m.Point == r {
			return true
		}
	}
	return false
}

// unmountBelow detaches every mount strictly below dir (what a crashed
// run's mountChroot left), last mounted first. dir itself stays mounted.
func unmountBelow(dir string) error {
	return mountinfo.UnmountBelow(dir, false, detach)
}

// detach lazily unmounts p; a p that is not (or no longer) a mount point
// is fine.
func detach(p string) error {
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("cannot unmount %s: %w", p, err)
	}
	return nil
}
