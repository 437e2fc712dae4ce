package e2e

// Full-system QEMU guests: a disk laid out as a KOS server's, booted by
// real firmware and a real boot loader, on which a whole upgrade runs as a
// user would run it (prepare and `kos-upgrade reboot` inside the guest).
//
// The disk (built per test, in Go with go-diskfs, see boot.BuildTestDisk):
//
//	partition 1  ESP, FAT32, mounted at /boot: systemd-boot (the host's
//	             systemd-boot-efi, also as EFI/BOOT/BOOTX64.EFI, which OVMF
//	             boots with no NVRAM entry), loader.conf, one BLS entry
//	             (root=/dev/mapper/kos-root), the kernel and initramfs
//	partition 2  LVM PV of VG "kos": LV root (ext4), thin in pool "pool"
//	             (LayoutThin) or thick with free extents for the snapshot
//	             (LayoutThick)
//
// The root is the QEMU guest base (Debian, its kernel, lvm2, dnf) plus the
// fixture's KOS 5.8 RPM system and `make install` of kos-upgrade, made into
// an ext4 image on the host (mke2fs -d). device-mapper does not exist on
// the host, so one setup boot of the plain QEMU base guest makes the volume
// group on the disk and copies the image into the LV.
//
// Every boot of the system runs OVMF (a copy of its variable store per
// guest), systemd-boot, the kernel and systemd; the driver (see qemu.go)
// mounts the share and runs the scenario's run.sh with the boot number,
// which records facts (factsFunc) and does that boot's step. The fixture's
// repositories are shared read-only at the path their .repo files name.

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/boot"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// Root layouts of a full-system guest.
const (
	LayoutThin  = "thin"  // root is a thin LV: apply runs in a thin snapshot
	LayoutThick = "thick" // root is a thick LV: upgraded in place, a snapshot to merge back
	LayoutBtrfs = "btrfs" // root is subvolume @ (the default) of a btrfs partition
)

// systemBtrfsSubvol is the root subvolume of LayoutBtrfs.
const systemBtrfsSubvol = "@"

// The system's volume group, root LV and the size of the root filesystem.
const (
	systemVG       = "kos"
	systemRootLV   = "root"
	systemRootMB   = 2048
	systemDiskMB   = 4096
	systemPoolMB   = 3072
	systemReposTag = "kosrepos"
)

// sdBootEFI is systemd-boot's EFI binary on the host (systemd-boot-efi).
const sdBootEFI = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"

// systemCmdline is the kernel command line of the system's entry after
// root= and rd.lvm.lv=.
const systemCmdline = "console=ttyS0,115200 panic=-1 net.ifnames=0 systemd.show_status=1"

// systemTimeout bounds one boot of a full-system guest, prepare or the
// offline upgrade included.
const systemTimeout = 10 * time.Minute

// QemuSystem is a full KOS system in a QEMU guest (see the file comment).
type QemuSystem struct {
	*QemuVM
	Set    *fixture.Set
	Layout string
	Kernel string // the kernel version of its entry
	Entry  string // the id of its entry ("<machine-id>-<kernel>.conf")
	// CutAt[n] is a console line at which Run cuts the power of boot n.
	CutAt map[int]string
}

// SystemBoot is one boot of a full-system guest.
type SystemBoot struct {
	QemuBoot
	PoweredOff bool // the guest powered off (else it rebooted or died)
}

// RequireSystem skips unless full-system guests can run here: the QEMU
// tier's tools, the fixture's, OVMF and systemd-boot's EFI binary.
func RequireSystem(t *testing.T) {
	t.Helper()
	RequireQemu(t)
	testenv.RequireTools(t, fixture.Tools...)
	testenv.RequireTools(t, "make", "losetup", "mkfs.btrfs", "btrfs", ovmfCode, ovmfVars, sdBootEFI)
}

// SystemOptions are what a scenario adds to a full-system guest.
type SystemOptions struct {
	// SSHKey, when set, makes the guest reachable over ssh as root with
	// this public key: its openssh-server (QemuGuestPackages) enabled, a
	// static address on QEMU's user network
	// (systemd-networkd), and the key in /root/.ssh/authorized_keys. Set
	// QemuVM.SSHPort to forward a host port to it.
	SSHKey string
	// Files are written into the root (relative path → content, 0644).
	Files map[string]string
}

// NewQemuSystem builds a full-system guest with the root on layout: the
// root image and the disk on the host, then the setup boot.
func NewQemuSystem(t *testing.T, layout string) *QemuSystem {
	t.Helper()
	return NewQemuSystemWith(t, layout, SystemOptions{})
}

// guestSpec is what the roots of full-system guests differ by.
type guestSpec struct {
	// ssh makes the guest reachable over ssh as root with this public key
	// (SystemOptions.SSHKey, sshGuest): the same tarball as every guest,
	// its openssh-server enabled.
	ssh string
	// fstab is the root's /etc/fstab.
	fstab string
	// files are written into the root (relative path → content, 0644)
	// before its initramfs is made.
	files map[string]string
	// modules are added to the initramfs's module list.
	modules []string
}

// guestRoot is the root of a full-system guest on the host, before it goes
// onto the guest's disk: the QEMU guest's Debian (prepareQemuRoot), its
// initramfs made for the system's root, then the fixture's 5.8 system and
// make install of kos-upgrade (installSystem).
type guestRoot struct {
	set    *fixture.Set
	base   *QemuBase
	tree   string // make install's tree
	work   string // the test's directory for the disk and its images
	dir    string // the root, work/root
	kernel string // the version of the kernel in dir/boot
}

// newGuestRoot makes a full-system guest's root, for the fixture set, up
// to its kernel and initramfs (see guestRoot): the cached tarball
// unpacked and prepared, spec's files, the driver as a simple service
// (the health check of an upgraded system runs after multi-user.target,
// and run.sh waits for it), the initramfs rebuilt with spec's modules.
// NewQemuSystemWith and newQemuEL8System make their roots with it.
func newGuestRoot(t *testing.T, set *fixture.Set, spec guestSpec) *guestRoot {
	t.Helper()
	ctx := context.Background()
	g := &guestRoot{set: set, work: t.TempDir()}
	g.dir = filepath.Join(g.work, "root")
	var err error
	if g.base, err = QemuBaseImage(ctx, t.Logf); err != nil {
		t.Fatal(err)
	}
	tarball, err := QemuBaseTarball(ctx, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	if g.tree, err = installTree(); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(g.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "tar", "--numeric-owner", "--xattrs", "-C", g.dir, "-xf", tarball)
	if err := prepareQemuRoot(g.dir); err != nil {
		t.Fatal(err)
	}
	if len(spec.modules) > 0 {
		mods := filepath.Join(g.dir, "etc/initramfs-tools/modules")
		b, err := os.ReadFile(mods)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(mods, append(b, strings.Join(spec.modules, "\n")+"\n"...), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"etc/fstab": spec.fstab,
		"etc/systemd/system/kos-qemu-driver.service.d/system.conf": "[Service]\nType=simple\n",
	}
	maps.Copy(files, spec.files)
	for rel, content := range files {
		if err := putFile(g.dir, rel, content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if spec.ssh != "" {
		sshGuest(t, g.dir, spec.ssh)
	}
	if err := chrootRun(ctx, g.dir, "update-initramfs", "-u", "-k", "all"); err != nil {
		t.Fatal(err)
	}
	kernels, _ := filepath.Glob(filepath.Join(g.dir, "boot", "vmlinuz-*"))
	if len(kernels) != 1 {
		t.Fatalf("the guest root has kernels %v, want one", kernels)
	}
	g.kernel = strings.TrimPrefix(filepath.Base(kernels[0]), "vmlinuz-")
	return g
}

// vmlinuz and initrd are the paths of the root's kernel and initramfs.
func (g *guestRoot) vmlinuz() string { return filepath.Join(g.dir, "boot", "vmlinuz-"+g.kernel) }
func (g *guestRoot) initrd() string  { return filepath.Join(g.dir, "boot", "initrd.img-"+g.kernel) }

// installSystem installs the fixture's 5.8 system and make install's tree
// into the root. The fixture's kos-sh puts busybox applets over the
// guest's coreutils, grep and sed (a fixture system has nothing else); the
// guest's own are put back, or its dracut (GNU grep -P) breaks.
func (g *guestRoot) installSystem(t *testing.T) {
	t.Helper()
	debianBin := filepath.Join(g.work, "debian-bin")
	testenv.Run(t, "cp", "-al", filepath.Join(g.dir, "usr/bin"), debianBin)
	if err := fixture.InstallBase(context.Background(), g.set, g.dir); err != nil {
		t.Fatal(err)
	}
	restoreOverBusybox(t, filepath.Join(g.dir, "usr/bin"), debianBin)
	testenv.Run(t, "cp", "-a", g.tree+"/.", g.dir+"/")
}

// newVM removes the root, which is on disk now, and makes the guest: UEFI,
// disk attached, the fixture's repositories shared.
func (g *guestRoot) newVM(t *testing.T, disk string) *QemuVM {
	t.Helper()
	if err := os.RemoveAll(g.dir); err != nil {
		t.Fatal(err)
	}
	vm := newQemuVM(t, g.base, "")
	vm.UEFI = true
	vm.AttachDisk(disk, "raw", "kos-disk", false)
	vm.Share(systemReposTag, filepath.Join(g.set.Dir, "repos"))
	return vm
}

// NewQemuSystemWith is NewQemuSystem with the scenario's additions.
func NewQemuSystemWith(t *testing.T, layout string, opts SystemOptions) *QemuSystem {
	t.Helper()
	RequireSystem(t)
	start := time.Now()
	spec := guestSpec{
		ssh:   opts.SSHKey,
		fstab: fmt.Sprintf("/dev/mapper/%s / ext4 defaults 0 1\n", boot.MapperName(systemVG, systemRootLV)),
		files: map[string]string{
			// The upgrade initramfs of initramfs mode is host-only, as
			// on KOS (Debian's dracut defaults to a generic image that
			// does not fit the ESP).
			"etc/dracut.conf.d/kos-e2e.conf": "hostonly=\"yes\"\n",
		},
	}
	if layout == LayoutBtrfs {
		spec.fstab = "LABEL=kos-root / btrfs subvol=" + systemBtrfsSubvol + " 0 0\n"
		// The initramfs mounts a btrfs root (prepareQemuRoot drops
		// the btrfs hooks: a single device needs no scan).
		spec.modules = []string{"btrfs"}
	}
	spec.fstab += "PARTLABEL=ESP /boot vfat umask=0077 0 2\n"
	g := newGuestRoot(t, fixture.MustBuild(t), spec)
	set, base, work, root, kv := g.set, g.base, g.work, g.dir, g.kernel
	vmlinuz, err := os.ReadFile(g.vmlinuz())
	if err != nil {
		t.Fatal(err)
	}
	initrd, err := os.ReadFile(g.initrd())
	if err != nil {
		t.Fatal(err)
	}
	g.installSystem(t)
	// After make install, which ships commented examples of /etc/kos-upgrade.
	for rel, content := range opts.Files {
		if err := putFile(root, rel, content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	efi, err := os.ReadFile(sdBootEFI)
	if err != nil {
		t.Fatal(err)
	}
	entry := fixture.MachineID + "-" + kv + ".conf"
	files := map[string][]byte{
		"EFI/BOOT/BOOTX64.EFI":            efi,
		"EFI/systemd/systemd-bootx64.efi": efi,
		"loader/loader.conf":              []byte("timeout 0\ndefault " + entry + "\neditor no\n"),
		"vmlinuz-" + kv:                   vmlinuz,
		"initrd.img-" + kv:                initrd,
		"loader/entries/" + entry:         []byte(systemEntry(kv, layout)),
	}
	disk := filepath.Join(work, "disk.raw")
	if err := boot.BuildTestDisk(disk, systemDiskMB, files); err != nil {
		t.Fatal(err)
	}
	if layout == LayoutBtrfs {
		fillBtrfsPartition(t, disk, root)
	} else {
		fillLVM(t, base, layout, disk, root, work)
	}
	vm := g.newVM(t, disk)
	t.Logf("%s system ready in %s (kernel %s)", layout, time.Since(start).Round(time.Millisecond), kv)
	return &QemuSystem{QemuVM: vm, Set: set, Layout: layout, Kernel: kv, Entry: entry}
}

// restoreOverBusybox puts back the programs of saved (a hard-linked copy
// of bin made before the fixture was installed) that the fixture replaced
// in bin with symlinks to busybox.
func restoreOverBusybox(t *testing.T, bin, saved string) {
	t.Helper()
	ents, err := os.ReadDir(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		p := filepath.Join(bin, e.Name())
		if l, err := os.Readlink(p); err != nil || l != "busybox" {
			continue
		}
		if _, err := os.Lstat(filepath.Join(saved, e.Name())); err != nil {
			continue // an applet the guest has no program for
		}
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		testenv.Run(t, "cp", "-a", filepath.Join(saved, e.Name()), p)
	}
}

// fillBtrfsPartition makes the disk's root partition a btrfs filesystem
// (label kos-root) whose default subvolume @ holds root: on the host,
// through a loop device at the partition's offset.
func fillBtrfsPartition(t *testing.T, disk, root string) {
	t.Helper()
	parts, err := boot.Partitions(context.Background(), disk)
	if err != nil {
		t.Fatal(err)
	}
	p, err := boot.FindRole(parts, boot.RoleLinux)
	if err != nil || p.Index != boot.TestDiskRootIndex {
		t.Fatalf("%s has no root partition %d: %v %+v", disk, boot.TestDiskRootIndex, err, parts)
	}
	dev := strings.TrimSpace(testenv.Run(t, "losetup", "--find", "--show", "--offset", fmt.Sprint(p.Start), "--sizelimit", fmt.Sprint(p.Size), disk))
	defer exec.Command("losetup", "-d", dev).Run()
	testenv.Run(t, "mkfs.btrfs", "-q", "-f", "-L", "kos-root", dev)
	mnt := t.TempDir()
	testenv.Run(t, "mount", dev, mnt)
	defer testenv.UnmountAll(mnt)
	testenv.Run(t, "btrfs", "subvolume", "create", filepath.Join(mnt, systemBtrfsSubvol))
	testenv.Run(t, "cp", "-a", root+"/.", filepath.Join(mnt, systemBtrfsSubvol)+"/")
	testenv.Run(t, "chmod", "0755", filepath.Join(mnt, systemBtrfsSubvol))
	testenv.Run(t, "btrfs", "subvolume", "set-default", filepath.Join(mnt, systemBtrfsSubvol))
}

// fillLVM makes the volume group on the disk and copies root into the
// root LV: an ext4 image of it made on the host (mke2fs -d), copied in by
// a setup boot of the plain guest (the host has no device-mapper).
func fillLVM(t *testing.T, base *QemuBase, layout, disk, root, work string) {
	t.Helper()
	img := filepath.Join(work, "root.img")
	testenv.Run(t, "mke2fs", "-q", "-t", "ext4", "-L", "kos-root", "-d", root, img, fmt.Sprintf("%dM", systemRootMB))
	defer os.Remove(img)
	setup := newBaseVM(t, base, "setup")
	setup.AttachDisk(disk, "raw", "kos-disk", false)
	setup.AttachDisk(img, "raw", "kos-rootimg", true)
	setup.WriteShared(t, "run.sh", setupScript(layout), 0o755)
	b := setup.Boot(t, systemTimeout, "setup.rc")
	if rc := strings.TrimSpace(setup.ReadShared("setup.rc")); b.TimedOut || rc != "0" {
		t.Fatalf("setup boot: rc %q, timed out %v, qemu %v\n--- setup log:\n%s\n--- console (tail):\n%s",
			rc, b.TimedOut, b.Err, tail(setup.ReadShared("setup.log"), 60), tail(b.Console, 40))
	}
}

// systemEntry is the BLS entry of the installed system, as the distro's
// installer writes it.
func systemEntry(kv, layout string) string {
	root := fmt.Sprintf("root=/dev/mapper/%s ro rd.lvm.lv=%s/%s", boot.MapperName(systemVG, systemRootLV), systemVG, systemRootLV)
	if layout == LayoutBtrfs {
		root = "root=LABEL=kos-root ro rootflags=subvol=" + systemBtrfsSubvol
	}
	return fmt.Sprintf("title KOS 5.8 (%[1]s)\nversion %[1]s\nmachine-id %[2]s\nlinux /vmlinuz-%[1]s\ninitrd /initrd.img-%[1]s\n"+
		"options %[3]s %[4]s\n", kv, fixture.MachineID, root, systemCmdline)
}

// setupScript makes the volume group on the system disk and copies the
// root image into the root LV.
func setupScript(layout string) string {
	lv := fmt.Sprintf("lvcreate -y -L %dM -n %s %s", systemRootMB, systemRootLV, systemVG)
	if layout == LayoutThin {
		lv = fmt.Sprintf("lvcreate -y --type thin-pool -L %dM -n pool %s\nlvcreate -y -V %dM -T %s/pool -n %s",
			systemPoolMB, systemVG, systemRootMB, systemVG, systemRootLV)
	}
	return fmt.Sprintf(`#!/bin/sh
exec >/kos-e2e/setup.log 2>&1
set -ex
udevadm settle
pv=/dev/disk/by-id/virtio-kos-disk-part2
pvcreate -ff -y $pv
vgcreate %[1]s $pv
%[2]s
# Only the blocks in use: TCG makes every copied byte count.
e2image -ra /dev/disk/by-id/virtio-kos-rootimg /dev/%[1]s/%[3]s
sync
lvs -a %[1]s
vgchange -an %[1]s
echo 0 >/kos-e2e/setup.rc
`, systemVG, lv, systemRootLV)
}

// Script sets the scenario: steps["N"] is the shell code of boot N (the
// boots the driver runs in, i.e. those reaching multi-user.target), run
// after the facts of the boot are recorded into $F (/kos-e2e/boot-N). A
// system that kexecs stays in the same QEMU boot: the driver's next run
// there is "Nk" (then "Nkk"). A boot without a step powers off once its
// facts are recorded; a step that reboots must not return
// (`kos-upgrade reboot; sleep 600`).
func (s *QemuSystem) Script(t *testing.T, steps map[string]string) {
	t.Helper()
	repos := filepath.Join(s.Set.Dir, "repos")
	var b strings.Builder
	fmt.Fprintf(&b, "#!/bin/sh\n%s\nn=$1\nwhile [ -e /kos-e2e/boot-$n ]; do n=${n}k; done\nF=/kos-e2e/boot-$n\n", factsFunc)
	fmt.Fprintf(&b, "mkdir -p %[1]s && mount -t 9p -o trans=virtio,version=9p2000.L,ro %[2]s %[1]s\n", repos, systemReposTag)
	b.WriteString(`# The health check of an upgraded system decides first (it may reboot).
i=0
while [ $i -lt 300 ] && { systemctl list-jobs --no-legend 2>/dev/null | grep -q kos-upgrade-health ||
	[ "$(systemctl show -p ActiveState --value kos-upgrade-health.service)" = activating ]; }; do
	sleep 1; i=$((i+1))
done
facts $F
lvs --reportformat json -a -o lv_name,lv_attr,origin,pool_lv,lv_size,data_percent,lv_merging >$F/lvs.json 2>&1
ls /boot/loader/entries >$F/entries
cat /boot/loader/loader.conf >$F/loader.conf
f=/sys/firmware/efi/efivars/LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f
[ -e $f ] && dd if=$f bs=1 skip=4 2>/dev/null | tr -d '\000' >$F/entry-selected
journalctl -b -o short-monotonic -u kos-upgrade-health.service >$F/health.log 2>&1
set -x
case $n in
`)
	for n, step := range steps {
		fmt.Fprintf(&b, "%s)\n%s\n;;\n", n, step)
	}
	b.WriteString("esac\n")
	s.WriteShared(t, "run.sh", b.String(), 0o755)
}

// Run boots the system until it powers off, at most max times (more is a
// reboot loop and fails the test).
func (s *QemuSystem) Run(t *testing.T, max int) []SystemBoot {
	t.Helper()
	var boots []SystemBoot
	for n := 1; n <= max; n++ {
		var b SystemBoot
		if line, ok := s.CutAt[n]; ok {
			b.QemuBoot = s.BootCut(t, systemTimeout, line)
			if !b.Cut {
				t.Fatalf("boot %d ended before the console showed %q; console:\n%s", n, line, tail(b.Console, 80))
			}
		} else {
			b.QemuBoot = s.Boot(t, systemTimeout, "")
		}
		if b.TimedOut {
			t.Fatalf("boot %d did not end within %s; console:\n%s", b.N, systemTimeout, tail(b.Console, 80))
		}
		b.PoweredOff = strings.Contains(b.Console, "reboot: Power down")
		boots = append(boots, b)
		end := map[bool]string{true: "powered off", false: "rebooted"}[b.PoweredOff]
		if b.Cut {
			end = "power cut"
		}
		t.Logf("boot %d: entry %q, %s", b.N, strings.TrimSpace(s.ReadShared(fmt.Sprintf("boot-%d/entry-selected", b.N))), end)
		if b.PoweredOff {
			return boots
		}
	}
	t.Fatalf("reboot loop: the guest still reboots after %d boots; last console:\n%s", max, tail(boots[len(boots)-1].Console, 80))
	return nil
}

// Facts returns boot n's facts ("1", "3", "1k"), or nil when the driver
// did not run then.
func (s *QemuSystem) Facts(n string) *Facts { return factsIn(s.Shared, n) }

// sshGuest makes the guest root reachable over ssh as root with key: sshd
// enabled, a static address on QEMU's user network (10.0.2.15,
// systemd-networkd, no DHCP wait) and the key authorized.
func sshGuest(t *testing.T, root, key string) {
	t.Helper()
	files := map[string]struct {
		content string
		mode    os.FileMode
	}{
		"etc/systemd/network/10-eth0.network": {"[Match]\nName=eth0\n\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\n", 0o644},
		"root/.ssh/authorized_keys":           {strings.TrimSpace(key) + "\n", 0o600},
	}
	for rel, f := range files {
		if err := putFile(root, rel, f.content, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(root, "root/.ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	wants := filepath.Join(root, "etc/systemd/system/multi-user.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, unit := range []string{"systemd-networkd.service", "ssh.service"} {
		if _, err := os.Stat(filepath.Join(root, "lib/systemd/system", unit)); err != nil {
			t.Fatalf("the guest root has no %s: %v", unit, err)
		}
		os.Remove(filepath.Join(wants, unit))
		if err := os.Symlink("/lib/systemd/system/"+unit, filepath.Join(wants, unit)); err != nil {
			t.Fatal(err)
		}
	}
}
