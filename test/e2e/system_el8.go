package e2e

// EL8 grub2 guests: the full-system guest of system.go booted as an EL8
// UEFI server boots, by EL8's own grub2 (test/el8, rhel-8-main):
//
//	partition 1  ESP, FAT32, mounted at /boot/efi: EFI/BOOT/BOOTX64.EFI and
//	             EFI/kos/grubx64.efi (grub2-mkimage with grub2.spec's x86_64
//	             EFI modules, prefix /EFI/kos), EFI/kos/grub.cfg, grubenv
//	partition 2  LVM PV of VG "kos", the root on a thin LV (LayoutThin)
//	partition 3  /boot, ext4 (XFS in system_undo.go's layout):
//	             loader/entries, the kernels, initramfs images,
//	             grub2/grubenv -> ../efi/EFI/kos/grubenv
//
// The root carries EL8's boot tools (fixture.RepoEL8: grub2-tools with
// /etc/grub.d and kos-upgrade's 09_kos_upgrade_trial from make install,
// kernel-install and its plugins, 50-dracut.install) and kernel-core 5.8.0
// of fixture.RepoEL8Boot58, a package carrying the guest's real kernel and
// initramfs: its %posttrans ran kernel-install when the root was made, so
// the kernel's BLS entry (options $kernelopts) and saved_entry are
// kernel-install's own. /bin/sh is bash, as on EL8. grub.cfg starts as a
// minimal one (load_env, next_entry/saved_entry, blscfg); the scenario
// regenerates it with grub2-mkconfig inside the guest.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/boot"
	"github.com/keyarchos/kos-upgrade/test/el8"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// EL8 guest layout.
const (
	el8Vendor     = "kos"
	el8BootMB     = 384
	el8BootLabel  = "kosboot"
	el8KernelsTag = "kosel8kernels"
)

// el8Cmdline is GRUB_CMDLINE_LINUX of the guest: what grub2-mkconfig puts
// into kernelopts after root= and ro.
var el8Cmdline = fmt.Sprintf("rd.lvm.lv=%s/%s %s", systemVG, systemRootLV, systemCmdline)

// el8BootstrapCfg is the grub.cfg the guest first boots with: the parts of
// EL8's 00_header and 10_linux that choose and list the entries.
const el8BootstrapCfg = `set timeout=1
function load_video {
  insmod all_video
}
load_env -f ${config_directory}/grubenv
if [ "${next_entry}" ] ; then
   set default="${next_entry}"
   set next_entry=
   save_env -f ${config_directory}/grubenv next_entry
else
   set default="${saved_entry}"
fi
insmod part_gpt
insmod ext2
insmod xfs
search --no-floppy --label --set=root ` + el8BootLabel + `
insmod blscfg
blscfg
`

// QemuEL8System is a full-system guest booted by EL8's grub2.
type QemuEL8System struct {
	*QemuSystem
	Grub *el8.Grub2
	// KernelRepo is the repository of the new kernel-core (5.9.0), shared
	// at the same path in the guest.
	KernelRepo string
}

// el8Disk is what differs between EL8 guests' disks: the layout of the
// root (QemuSystem.Layout), the file systems of the root and of /boot
// ("ext4" or "xfs"), more fstab lines, and fillRoot, which puts the root
// tree onto the volume group of the disk's partition 2.
type el8Disk struct {
	layout         string
	rootFS, bootFS string
	fstab          string
	fillRoot       func(t *testing.T, base *QemuBase, disk, root, work string)
}

// NewQemuEL8System builds it (see the file comment) with the root on a
// thin LV.
func NewQemuEL8System(t *testing.T) *QemuEL8System {
	t.Helper()
	return newQemuEL8System(t, el8Disk{layout: LayoutThin, rootFS: "ext4", bootFS: "ext4",
		fillRoot: func(t *testing.T, base *QemuBase, disk, root, work string) {
			fillLVM(t, base, LayoutThin, disk, root, work)
		}})
}

// newQemuEL8System builds an EL8 guest whose disk is laid out as d says.
func newQemuEL8System(t *testing.T, d el8Disk) *QemuEL8System {
	t.Helper()
	RequireSystem(t)
	ctx := context.Background()
	start := time.Now()
	set := fixture.MustBuild(t)
	fixture.MustBuildEL8(t, set)
	grub := el8.MustGrub2(t)
	g := newGuestRoot(t, set, guestSpec{
		fstab: fmt.Sprintf("/dev/mapper/%s / %s defaults 0 1\nLABEL=%s /boot %s defaults 0 2\nPARTLABEL=ESP /boot/efi vfat umask=0077 0 2\n%s",
			boot.MapperName(systemVG, systemRootLV), d.rootFS, el8BootLabel, d.bootFS, d.fstab),
	})
	base, work, root, kv := g.base, g.work, g.dir, g.kernel
	// The guest's kernel and initramfs, as kernel-core packages.
	kdir := filepath.Join(work, "kernel")
	testenv.Run(t, "mkdir", "-p", kdir)
	testenv.Run(t, "cp", g.vmlinuz(), filepath.Join(kdir, "vmlinuz"))
	testenv.Run(t, "cp", g.initrd(), filepath.Join(kdir, "initrd"))
	if err := fixture.BuildEL8Boot(ctx, set, filepath.Join(kdir, "vmlinuz"), filepath.Join(kdir, "initrd")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"vmlinuz-" + kv, "initrd.img-" + kv, "config-" + kv, "System.map-" + kv} {
		os.Remove(filepath.Join(root, "boot", p))
	}
	g.installSystem(t)
	// EL8's /bin/sh is bash (grub2-get-kernel-settings needs it).
	os.Remove(filepath.Join(root, "usr/bin/sh"))
	if err := os.Symlink("bash", filepath.Join(root, "usr/bin/sh")); err != nil {
		t.Fatal(err)
	}

	// /boot as EL8 lays it out, then EL8's boot tools and kernel-core,
	// whose %posttrans writes the entry and saved_entry. /boot is a
	// filesystem of its own meanwhile (a tmpfs), as on the disk, so that
	// 20-grub.install's grub2-mkrelpath gives the entry paths relative to it.
	testenv.Run(t, "mount", "-t", "tmpfs", "-o", "mode=0755", "kosboot", filepath.Join(root, "boot"))
	t.Cleanup(func() { testenv.UnmountAll(filepath.Join(root, "boot")) })
	esp := filepath.Join(root, "boot/efi/EFI", el8Vendor)
	if err := os.MkdirAll(esp, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "boot/grub2"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "boot/loader/entries"), 0o700); err != nil {
		t.Fatal(err)
	}
	editenv := grub.Tool("grub2-editenv")
	testenv.Run(t, editenv, filepath.Join(esp, "grubenv"), "create")
	testenv.Run(t, editenv, filepath.Join(esp, "grubenv"), "set",
		fmt.Sprintf("kernelopts=root=/dev/mapper/%s ro %s", boot.MapperName(systemVG, systemRootLV), el8Cmdline))
	if err := os.Symlink("../efi/EFI/"+el8Vendor+"/grubenv", filepath.Join(root, "boot/grub2/grubenv")); err != nil {
		t.Fatal(err)
	}
	var pkgs []string
	for _, name := range []string{"grub2-tools", "systemd-udev", "dracut"} {
		m, _ := filepath.Glob(filepath.Join(set.Repos[fixture.RepoEL8], "Packages", name+"-8-*.rpm"))
		pkgs = append(pkgs, m...)
	}
	k58, _ := set.Packages(fixture.RepoEL8Boot58)
	pkgs = append(pkgs, k58...)
	if len(pkgs) != 4 {
		t.Fatalf("EL8 packages for the guest: %v", pkgs)
	}
	// Debian's bash, libc, kmod and dracut stay: the fixture's stand-ins
	// are for busybox roots.
	testenv.Run(t, "rpm", append([]string{"--root", root, "--dbpath", fixture.DBPath, "-i", "--nodeps", "--force-debian",
		"--define", "_pkgverify_level signature", "--excludepath", "/usr/bin/dracut"}, pkgs...)...)
	if err := putFile(root, "etc/default/grub", fmt.Sprintf(`GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR="KOS"
GRUB_DEFAULT=saved
GRUB_DISABLE_SUBMENU=true
GRUB_TERMINAL_OUTPUT="console"
GRUB_CMDLINE_LINUX="%s"
GRUB_DISABLE_RECOVERY="true"
GRUB_ENABLE_BLSCFG=true
`, el8Cmdline), 0o644); err != nil {
		t.Fatal(err)
	}
	entry := fixture.MachineID + "-" + fixture.EL8Kernel58
	if b, err := os.ReadFile(filepath.Join(root, "boot/loader/entries", entry+".conf")); err != nil || !strings.Contains(string(b), "options $kernelopts") {
		t.Fatalf("kernel-install's entry of kernel-core 5.8.0: %v\n%s", err, b)
	}
	if out := testenv.Run(t, editenv, filepath.Join(esp, "grubenv"), "list"); !strings.Contains(out, "saved_entry="+entry+"\n") {
		t.Fatalf("20-grub.install did not make %s the default:\n%s", entry, out)
	}
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}

	// The ESP: grub and its configuration, the grubenv kernel-install wrote.
	img := filepath.Join(work, "grubx64.efi")
	if err := grub.MkImage(ctx, img, el8Vendor); err != nil {
		t.Fatal(err)
	}
	efi, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	env, err := os.ReadFile(filepath.Join(esp, "grubenv"))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		"EFI/BOOT/BOOTX64.EFI":              efi,
		"EFI/" + el8Vendor + "/grubx64.efi": efi,
		"EFI/" + el8Vendor + "/grub.cfg":    []byte(el8BootstrapCfg),
		"EFI/" + el8Vendor + "/grubenv":     env,
	}
	disk := filepath.Join(work, "disk.raw")
	if err := boot.BuildTestDiskWithBoot(disk, systemDiskMB+el8BootMB, el8BootMB, files); err != nil {
		t.Fatal(err)
	}
	bootDir := filepath.Join(work, "boot")
	testenv.Run(t, "cp", "-a", filepath.Join(root, "boot"), bootDir)
	testenv.UnmountAll(filepath.Join(root, "boot"))
	testenv.Run(t, "rm", "-rf", filepath.Join(bootDir, "efi/EFI"))
	fillBootPartition(t, disk, bootDir, d.bootFS)
	if err := os.MkdirAll(filepath.Join(root, "boot/efi"), 0o755); err != nil {
		t.Fatal(err)
	}
	d.fillRoot(t, base, disk, root, work)
	vm := g.newVM(t, disk)
	krepo := set.Repos[fixture.RepoEL8Boot59]
	vm.Share(el8KernelsTag, filepath.Dir(krepo))
	t.Logf("EL8 grub2 system ready in %s (kernel %s as kernel-core %s)", time.Since(start).Round(time.Millisecond), kv, fixture.EL8Kernel58)
	return &QemuEL8System{
		QemuSystem: &QemuSystem{QemuVM: vm, Set: set, Layout: d.layout, Kernel: fixture.EL8Kernel58, Entry: entry},
		Grub:       grub, KernelRepo: krepo,
	}
}

// fillBootPartition makes partition 3 of disk a filesystem fs (label
// el8BootLabel) holding dir: for ext4 mke2fs -d into an image, copied in
// at the partition's offset; for xfs fillXFSPartition.
func fillBootPartition(t *testing.T, disk, dir, fs string) {
	t.Helper()
	parts, err := boot.Partitions(context.Background(), disk)
	if err != nil {
		t.Fatal(err)
	}
	var p *boot.Partition
	for i := range parts {
		if parts[i].Index == boot.TestDiskBootIndex {
			p = &parts[i]
		}
	}
	if p == nil {
		t.Fatalf("%s has no /boot partition: %+v", disk, parts)
	}
	if fs == "xfs" {
		fillXFSPartition(t, disk, *p, el8BootLabel, dir)
		return
	}
	img := filepath.Join(t.TempDir(), "boot.img")
	testenv.Run(t, "mke2fs", "-q", "-t", "ext4", "-L", el8BootLabel, "-d", dir, img, fmt.Sprintf("%dk", p.Size/1024))
	cmd := exec.Command("dd", "if="+img, "of="+disk, "bs=1M", "conv=notrunc,sparse", "oflag=seek_bytes", fmt.Sprintf("seek=%d", p.Start))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("dd: %v\n%s", err, out)
	}
}

// Script is QemuSystem.Script with the new kernel's repository mounted
// and grub's view recorded (grub2-editenv list, the grub.cfg) first.
func (s *QemuEL8System) Script(t *testing.T, steps map[string]string) {
	t.Helper()
	pre := fmt.Sprintf(`mkdir -p %[1]s && mount -t 9p -o trans=virtio,version=9p2000.L,ro %[2]s %[1]s
grub2-editenv list >$F/grubenv 2>&1
cp /boot/efi/EFI/%[3]s/grub.cfg $F/grub.cfg
`, filepath.Dir(s.KernelRepo), el8KernelsTag, el8Vendor)
	all := map[string]string{}
	for n, step := range steps {
		all[n] = pre + step
	}
	s.QemuSystem.Script(t, all)
}
