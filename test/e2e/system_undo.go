package e2e

// The EL8 installer's layout, where no snapshot fits (issue 13, the undo
// backend): the EL8 grub2 guest of system_el8.go with
//
//	partition 2  LVM PV of VG "kos", full: LV root (XFS, reflink=1, the
//	             size of the other layouts' root), LV swap, LV home (XFS,
//	             every extent left): no free extents for a snapshot
//	partition 3  /boot, XFS
//
// as Anaconda lays out a server's disk by default. The root tree is made
// into an XFS image on the host (a loop device), which the setup boot of
// the plain guest copies into the root LV with xfs_copy (the used blocks
// only) after making the volume group.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/boot"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// LayoutFullVG is a root on a thick LV of a volume group with no free
// extents (NewQemuEL8UndoSystem): kos-upgrade's auto picks the undo
// journal.
const LayoutFullVG = "full-vg"

// The swap and home LVs of LayoutFullVG; home takes what is left.
const (
	fullVGSwapLV = "swap"
	fullVGHomeLV = "home"
	fullVGSwapMB = 256
)

// NewQemuEL8UndoSystem builds an EL8 grub2 guest (NewQemuEL8System) on
// the EL8 installer's layout (see the file comment).
func NewQemuEL8UndoSystem(t *testing.T) *QemuEL8System {
	t.Helper()
	testenv.RequireTools(t, "mkfs.xfs", "losetup")
	fstab := fmt.Sprintf("/dev/mapper/%s none swap defaults 0 0\n/dev/mapper/%s /home xfs defaults 0 0\n",
		boot.MapperName(systemVG, fullVGSwapLV), boot.MapperName(systemVG, fullVGHomeLV))
	return newQemuEL8System(t, el8Disk{layout: LayoutFullVG, rootFS: "xfs", bootFS: "xfs", fstab: fstab, fillRoot: fillFullVG})
}

// fillXFSPartition makes partition p of disk an XFS filesystem (reflink=1,
// EL8's mkfs.xfs default) labelled label holding dir: on the host, through
// a loop device at the partition's offset.
func fillXFSPartition(t *testing.T, disk string, p boot.Partition, label, dir string) {
	t.Helper()
	dev := strings.TrimSpace(testenv.Run(t, "losetup", "--find", "--show", "--offset", fmt.Sprint(p.Start), "--sizelimit", fmt.Sprint(p.Size), disk))
	defer exec.Command("losetup", "-d", dev).Run()
	fillXFS(t, dev, label, dir)
}

// fillXFS makes dev an XFS filesystem with reflinks, labelled label,
// holding a copy of dir (its root directory 0755).
func fillXFS(t *testing.T, dev, label, dir string) {
	t.Helper()
	testenv.Run(t, "mkfs.xfs", "-q", "-f", "-m", "reflink=1", "-L", label, dev)
	mnt := t.TempDir()
	testenv.Run(t, "mount", dev, mnt)
	defer testenv.UnmountAll(mnt)
	testenv.Run(t, "cp", "-a", dir+"/.", mnt+"/")
	testenv.Run(t, "chmod", "0755", mnt)
	testenv.Run(t, "umount", mnt)
}

// fillFullVG makes the full volume group on the disk and copies root into
// its root LV: an XFS image of it made on the host, copied in by a setup
// boot of the plain guest (the host has no device-mapper).
func fillFullVG(t *testing.T, base *QemuBase, disk, root, work string) {
	t.Helper()
	img := filepath.Join(work, "root.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(int64(systemRootMB) << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	defer os.Remove(img)
	dev := strings.TrimSpace(testenv.Run(t, "losetup", "--find", "--show", img))
	func() {
		defer exec.Command("losetup", "-d", dev).Run()
		fillXFS(t, dev, "kos-root", root)
	}()
	setup := newBaseVM(t, base, "setup")
	setup.AttachDisk(disk, "raw", "kos-disk", false)
	setup.AttachDisk(img, "raw", "kos-rootimg", true)
	setup.WriteShared(t, "run.sh", fmt.Sprintf(`#!/bin/sh
exec >/kos-e2e/setup.log 2>&1
set -ex
udevadm settle
pv=/dev/disk/by-id/virtio-kos-disk-part2
pvcreate -ff -y $pv
vgcreate %[1]s $pv
lvcreate -y -L %[4]dM -n %[2]s %[1]s
lvcreate -y -L %[5]dM -n %[3]s %[1]s
lvcreate -y -l 100%%FREE -n %[6]s %[1]s
# Only the blocks in use: TCG makes every copied byte count.
xfs_copy -d /dev/disk/by-id/virtio-kos-rootimg /dev/%[1]s/%[2]s
mkswap /dev/%[1]s/%[3]s
mkfs.xfs -q -m reflink=1 /dev/%[1]s/%[6]s
sync
vgs -o vg_name,vg_size,vg_free,vg_free_count %[1]s
[ "$(vgs --noheadings -o vg_free_count %[1]s | tr -d ' ')" = 0 ]
lvs -a %[1]s
vgchange -an %[1]s
echo 0 >/kos-e2e/setup.rc
`, systemVG, systemRootLV, fullVGSwapLV, systemRootMB, fullVGSwapMB, fullVGHomeLV), 0o755)
	b := setup.Boot(t, systemTimeout, "setup.rc")
	if rc := strings.TrimSpace(setup.ReadShared("setup.rc")); b.TimedOut || rc != "0" {
		t.Fatalf("setup boot: rc %q, timed out %v, qemu %v\n--- setup log:\n%s\n--- console (tail):\n%s",
			rc, b.TimedOut, b.Err, tail(setup.ReadShared("setup.log"), 60), tail(b.Console, 40))
	}
	t.Logf("full volume group:\n%s", setup.ReadShared("setup.log"))
}
