package e2e

// The QEMU tier boots a real kernel (TCG: there is no KVM on the test
// machines, about 30 s a boot) for what a container cannot show: LVM
// (device-mapper does not exist on the host), the kernel's root=, firmware
// and boot loaders.
//
// One base image per guest variant is cached next to the tarballs: the QEMU
// guest root (QemuGuestPackages: Debian, its kernel and initramfs, lvm2,
// xfsprogs) as a raw ext4 image made with mke2fs -d (no loop mount), plus
// the kernel and initramfs taken out of it, booted with -kernel/-initrd and
// root=/dev/vda. Each VM gets a qcow2 overlay on it, so the base stays
// untouched, and any number of blank scratch disks.
//
// The guest is driven through a 9p share (tag kose2e, mounted at /kos-e2e):
// kos-qemu-driver.service, in multi-user.target, mounts it, writes the boot
// number it finds in /kos-e2e/boot, runs /kos-e2e/run.sh (the scenario's
// script; it may reboot or power off itself), and powers off. The console
// (ttyS0) is captured per boot; QEMU runs with -no-reboot, so a guest reboot
// ends the QEMU process and the harness decides what boots next.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// FullEnv selects the slow scenarios: KOS_UPGRADE_E2E=full (make e2e).
// The default test run boots one QEMU scenario only.
const FullEnv = "KOS_UPGRADE_E2E"

// QemuTools lists the host commands the QEMU tier runs.
var QemuTools = []string{"qemu-system-x86_64", "qemu-img", "debootstrap", "mke2fs", "tar"}

// qemuImageVersion is mixed into the base image's cache key: bump it when
// the image preparation (prepareQemuRoot: fstab, links, ...) changes; the
// driver, its unit and the modprobe blacklist are hashed already.
const qemuImageVersion = "3"

// qemuShareTag is the 9p mount tag of the shared directory.
const qemuShareTag = "kose2e"

// RequireQemu skips unless the QEMU tier can run here: root, not -short,
// the tools (a failure under KOS_UPGRADE_REQUIRE_ALL=1).
func RequireQemu(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping QEMU boot tests in -short mode")
	}
	testenv.RequireRoot(t)
	testenv.RequireTools(t, QemuTools...)
}

// RequireFull skips a slow scenario unless KOS_UPGRADE_E2E=full. This is a
// plain skip even in CI: the default run has one QEMU scenario on purpose.
func RequireFull(t *testing.T) {
	t.Helper()
	if os.Getenv(FullEnv) != "full" {
		t.Skipf("slow QEMU scenario: runs with %s=full (make e2e)", FullEnv)
	}
}

// QemuSlotsEnv overrides how many QEMU guests one test binary runs at once
// (QemuParallel); the default is the number of CPUs the binary may use.
const QemuSlotsEnv = "KOS_UPGRADE_QEMU_SLOTS"

// qemuSlots is the test binary's semaphore of QEMU guests: a TCG guest
// keeps about one host CPU busy, so as many guests run at once as there
// are CPUs. It is the one piece of process-wide state of the harness: the
// scenarios it orders are the binary's, not a test's.
var qemuSlots slots

// QemuParallel makes a QEMU scenario run beside the binary's other QEMU
// scenarios: call it first in the test function (after RequireFull, so a
// skipped scenario does not wait), with the number of guests the scenario
// runs at the same time. It skips as RequireQemu does, calls t.Parallel,
// then waits until guests slots of the binary's QEMU semaphore are free
// (one per CPU, KOS_UPGRADE_QEMU_SLOTS overrides; a scenario wanting more
// than there are takes them all and runs alone) and holds them until the
// test ends. Guests booted one after the other (a setup boot, then the
// system) count as one. A scenario that does not call it runs alone, as
// every test without t.Parallel does.
func QemuParallel(t *testing.T, guests int) {
	t.Helper()
	RequireQemu(t)
	if guests < 1 {
		t.Fatalf("QemuParallel: %d guests", guests)
	}
	t.Parallel()
	start := time.Now()
	size := runtime.NumCPU()
	if v, err := strconv.Atoi(os.Getenv(QemuSlotsEnv)); err == nil && v > 0 {
		size = v
	}
	n, size := qemuSlots.acquire(size, guests)
	t.Logf("QEMU slots: %d of %d, after waiting %s", n, size, time.Since(start).Round(time.Second))
	t.Cleanup(func() { qemuSlots.release(n) })
}

// slots is a counting semaphore whose waiters are served in their order
// of arrival, so that a scenario wanting two slots is not starved by
// scenarios wanting one.
type slots struct {
	mu    sync.Mutex
	cond  *sync.Cond
	size  int    // slots in all; 0 until first acquired
	free  int    // slots not held
	queue []*int // waiters, first come first served
}

// acquire waits its turn, then for want slots (at most all of them),
// takes them and returns how many it took, and of how many. The first
// call sets the number of slots to size.
func (s *slots) acquire(size, want int) (int, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cond == nil {
		s.size, s.free = size, size
		s.cond = sync.NewCond(&s.mu)
	}
	want = min(want, s.size)
	me := new(int)
	s.queue = append(s.queue, me)
	for s.queue[0] != me || s.free < want {
		s.cond.Wait()
	}
	s.queue = s.queue[1:]
	s.free -= want
	s.cond.Broadcast()
	return want, s.size
}

// release gives back n slots taken by acquire.
func (s *slots) release(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.free += n
	s.cond.Broadcast()
}

// QemuBase is the cached, read-only base of every QEMU guest.
type QemuBase struct {
	Image  string // raw ext4 image of the guest root (label kos-root)
	Kernel string // the guest's /boot/vmlinuz-*
	Initrd string // the guest's /boot/initrd.img-*
}

// qemuDriver runs in every boot of a QEMU guest (see the file comment).
const qemuDriver = `#!/bin/sh
# kos-upgrade e2e QEMU driver: run the scenario's script for this boot.
mkdir -p /kos-e2e
modprobe 9pnet_virtio 2>/dev/null
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 ` + qemuShareTag + ` /kos-e2e; then
	echo "KOS-E2E: cannot mount the 9p share" >/dev/console
	systemctl poweroff
	exit 1
fi
n=$(cat /kos-e2e/boot 2>/dev/null || echo 0)
echo "KOS-E2E: boot $n driver start $(cut -d' ' -f1 /proc/uptime)" >/dev/console
cut -d' ' -f1 /proc/uptime >/kos-e2e/boot-$n.uptime
if [ -x /kos-e2e/run.sh ]; then
	/kos-e2e/run.sh "$n" >/kos-e2e/run-$n.log 2>&1
	echo $? >/kos-e2e/run-$n.rc
	echo "KOS-E2E: run.sh exited $(cat /kos-e2e/run-$n.rc)" >/dev/console
fi
sync
systemctl poweroff
`

const qemuDriverUnit = `[Unit]
Description=kos-upgrade e2e QEMU driver
After=systemd-udevd.service systemd-user-sessions.service
ConditionPathExists=!/etc/kos-e2e-no-driver

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/kos-qemu-driver
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
`

// QemuBaseImage returns the cached base image of the QEMU guest, building
// it when it is missing: the debootstrap tarball (QemuBaseTarball, a few
// minutes cold), then mke2fs -d (about a minute).
func QemuBaseImage(ctx context.Context, logf func(string, ...any)) (*QemuBase, error) {
	tarball, err := QemuBaseTarball(ctx, logf)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n%s\n%s\n", qemuImageVersion, filepath.Base(tarball), qemuDriver, qemuDriverUnit, qemuModprobeBlacklist)
	dir := filepath.Join(cacheDir(), "qemu-"+hex.EncodeToString(h.Sum(nil))[:16])
	base := &QemuBase{Image: filepath.Join(dir, "root.img"), Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd.img")}
	if fileExists(base.Image) {
		return base, nil
	}
	lf, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		return nil, err
	}
	defer syscall.Flock(int(lf.Fd()), syscall.LOCK_UN)
	if fileExists(base.Image) {
		return base, nil
	}
	tmp, err := os.MkdirTemp(cacheDir(), ".qemu-build-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	root := filepath.Join(tmp, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	logf("building the QEMU base image %s from %s", dir, tarball)
	if out, err := exec.CommandContext(ctx, "tar", "--numeric-owner", "--xattrs", "-C", root, "-xf", tarball).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("tar: %w: %s", err, out)
	}
	if err := prepareQemuRoot(root); err != nil {
		return nil, err
	}
	// A small initramfs (MODULES=list, see prepareQemuRoot): the one
	// debootstrap made has every module, which TCG takes 20 s to unpack
	// and probe.
	if err := chrootRun(ctx, root, "update-initramfs", "-u", "-k", "all"); err != nil {
		return nil, err
	}
	kernels, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	initrds, _ := filepath.Glob(filepath.Join(root, "boot", "initrd.img-*"))
	if len(kernels) != 1 || len(initrds) != 1 {
		return nil, fmt.Errorf("the QEMU guest root has kernels %v and initramfs %v, want one of each", kernels, initrds)
	}
	out := filepath.Join(tmp, "out")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, err
	}
	for src, dst := range map[string]string{kernels[0]: "vmlinuz", initrds[0]: "initrd.img"} {
		if b, err := exec.Command("cp", src, filepath.Join(out, dst)).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("cp %s: %w: %s", src, err, b)
		}
	}
	// 3 GiB sparse: the root takes about 700 MiB; scenarios install more.
	img := filepath.Join(out, "root.img")
	if b, err := exec.CommandContext(ctx, "mke2fs", "-q", "-t", "ext4", "-L", "kos-root", "-d", root, img, "3G").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mke2fs -d %s: %w: %s", root, err, b)
	}
	if err := os.Chmod(img, 0o444); err != nil {
		return nil, err
	}
	if err := os.Rename(out, dir); err != nil {
		return nil, err
	}
	return base, nil
}

// reproducibleEpoch is the SOURCE_DATE_EPOCH of what chrootRun runs:
// mkinitramfs then makes the same initramfs, byte for byte, of the same
// root (times clamped, files sorted, no parallel compression), so the EL8
// guest's kernel-core packages, cached by the contents of its kernel and
// initramfs (fixture.BuildEL8Boot), are built once, not in every run.
const reproducibleEpoch = "1700000000"

// chrootRun runs argv in root with /proc mounted.
func chrootRun(ctx context.Context, root string, argv ...string) error {
	proc := filepath.Join(root, "proc")
	if out, err := exec.CommandContext(ctx, "mount", "-t", "proc", "proc", proc).CombinedOutput(); err != nil {
		return fmt.Errorf("mount proc in %s: %w: %s", root, err, out)
	}
	defer exec.Command("umount", "-l", proc).Run()
	cmd := exec.CommandContext(ctx, "chroot", append([]string{root}, argv...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C", "SOURCE_DATE_EPOCH=" + reproducibleEpoch}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("chroot %s %s: %w: %s", root, strings.Join(argv, " "), err, tail(string(out), 20))
	}
	return nil
}

// qemuModprobeBlacklist keeps udev from loading, at every boot of a QEMU
// guest, the modules of q35 devices and CPU features that no test uses
// (the SATA controller: the disks are virtio; the watchdog, SMBus, PC
// speaker; KVM for the -cpu max guest's SVM): each costs time under TCG,
// and KVM's came in the middle of the scenario's step.
const qemuModprobeBlacklist = `# kos-upgrade e2e (test/e2e/qemu.go): devices no test uses
blacklist ahci
blacklist iTCO_wdt
blacklist iTCO_vendor_support
blacklist lpc_ich
blacklist i2c_i801
blacklist pcspkr
blacklist kvm_amd
blacklist kvm_intel
blacklist powernow_k8
`

// prepareQemuRoot configures the QEMU guest root: fstab, the driver, a
// serial console without a login prompt, an initramfs with only the
// modules the guests boot from (virtio disks; ext4, XFS, LVM roots), no
// modules for devices no test uses, no kexec-load.service (Debian's
// kexec-tools loads a kernel at every shutdown, 10 s under TCG;
// kos-upgrade reboot --kexec loads its own).
func prepareQemuRoot(root string) error {
	// btrfs's initramfs script loads btrfs and benchmarks raid6 at every
	// boot: not needed for the QEMU guests' roots.
	for _, f := range []string{"usr/share/initramfs-tools/hooks/btrfs", "usr/share/initramfs-tools/scripts/local-premount/btrfs"} {
		if err := os.Remove(filepath.Join(root, f)); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	conf := filepath.Join(root, "etc/initramfs-tools/initramfs.conf")
	b, err := os.ReadFile(conf)
	if err != nil {
		return err
	}
	if err := os.WriteFile(conf, []byte(strings.Replace(string(b), "\nMODULES=most", "\nMODULES=list", 1)), 0o644); err != nil {
		return err
	}
	files := map[string]struct {
		content string
		mode    os.FileMode
	}{
		"etc/initramfs-tools/modules":                {"virtio_pci\nvirtio_blk\next4\nxfs\ndm_mod\ndm_snapshot\ndm_thin_pool\n", 0o644},
		"etc/initramfs-tools/conf.d/resume":          {"RESUME=none\n", 0o644},
		"etc/fstab":                                  {"LABEL=kos-root / ext4 rw,errors=remount-ro 0 1\n", 0o644},
		"usr/local/sbin/kos-qemu-driver":             {qemuDriver, 0o755},
		"etc/systemd/system/kos-qemu-driver.service": {qemuDriverUnit, 0o644},
		"etc/modprobe.d/kos-e2e.conf":                {qemuModprobeBlacklist, 0o644},
	}
	for name, f := range files {
		if err := putFile(root, name, f.content, f.mode); err != nil {
			return err
		}
	}
	links := map[string]string{
		"etc/systemd/system/multi-user.target.wants/kos-qemu-driver.service": "/etc/systemd/system/kos-qemu-driver.service",
		// Nothing logs in on the console; it only shows the boot.
		"etc/systemd/system/serial-getty@ttyS0.service": "/dev/null",
		"etc/systemd/system/getty@tty1.service":         "/dev/null",
		"etc/systemd/system/e2scrub_reap.service":       "/dev/null",
		"etc/systemd/system/kexec-load.service":         "/dev/null",
	}
	for name, target := range links {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		os.Remove(p)
		if err := os.Symlink(target, p); err != nil {
			return err
		}
	}
	return os.Chmod(root, 0o755)
}

// QemuVM is one guest: a qcow2 overlay on the base image, scratch disks, a
// shared directory and a work directory, all removed at cleanup.
type QemuVM struct {
	Base   *QemuBase
	Dir    string // overlays, consoles
	Shared string // the 9p share, /kos-e2e in the guest
	Memory int    // MiB, 1024 unless set
	CPUs   int    // 2 unless set
	// Append is added to the kernel command line (direct kernel boots).
	Append string
	// UEFI boots the first disk through OVMF firmware (its boot loader
	// on the ESP) instead of the base's kernel with root=/dev/vda.
	UEFI bool
	// SSHPort, when set, gives the guest a network card on QEMU's user
	// network (restricted: no way out) with the host's 127.0.0.1:SSHPort
	// forwarded to the guest's port 22.
	SSHPort int
	vars    string // the guest's copy of OVMF's variable store
	disks   []qemuDisk
	shares  []qemuShare
	boots   int
}

type qemuDisk struct {
	path, serial, format string
	readOnly             bool
}

// qemuShare is a host directory the guest mounts over 9p by its tag.
type qemuShare struct {
	tag, path string
}

// OVMF firmware of the host's ovmf package (4 MiB variant, without
// Secure Boot), for UEFI guests.
const (
	ovmfCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	ovmfVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// QemuBoot is one boot of a QEMU guest.
type QemuBoot struct {
	N        int
	Duration time.Duration // QEMU started to QEMU exited
	Uptime   string        // the guest's /proc/uptime when the driver started ("" if it did not)
	Console  string        // the serial console
	TimedOut bool
	Cut      bool  // BootCut killed QEMU: a power cut
	Err      error // QEMU's exit error, if any
}

// NewQemuVM makes a guest on the cached base image, with its root overlay
// as the first disk (/dev/vda, serial kos-root).
func NewQemuVM(t *testing.T) *QemuVM {
	t.Helper()
	RequireQemu(t)
	start := time.Now()
	base, err := QemuBaseImage(context.Background(), t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("QEMU base image ready in %s", time.Since(start).Round(time.Millisecond))
	return newBaseVM(t, base, "")
}

// newBaseVM makes a guest booting base (name as for newQemuVM).
func newBaseVM(t *testing.T, base *QemuBase, name string) *QemuVM {
	t.Helper()
	vm := newQemuVM(t, base, name)
	overlay := filepath.Join(vm.Dir, "root.qcow2")
	testenv.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base.Image, "-F", "raw", overlay)
	vm.AttachDisk(overlay, "qcow2", "kos-root", false)
	return vm
}

// newQemuVM makes a guest without disks: its directories, the 9p share,
// the artifacts kept at cleanup (under the test's name and name, when a
// test has more than one guest).
func newQemuVM(t *testing.T, base *QemuBase, name string) *QemuVM {
	t.Helper()
	dir := t.TempDir()
	vm := &QemuVM{Base: base, Dir: dir, Shared: filepath.Join(dir, "shared")}
	if err := os.MkdirAll(vm.Shared, 0o755); err != nil {
		t.Fatal(err)
	}
	vm.shares = append(vm.shares, qemuShare{tag: qemuShareTag, path: vm.Shared})
	if a := os.Getenv(ArtifactsEnv); a != "" {
		t.Cleanup(func() {
			dst := filepath.Join(a, strings.ReplaceAll(t.Name(), "/", "_"))
			if name != "" {
				dst += "_" + name
			}
			os.RemoveAll(dst)
			os.MkdirAll(a, 0o755)
			if out, err := exec.Command("cp", "-a", vm.Shared, dst).CombinedOutput(); err != nil {
				t.Logf("cannot keep artifacts: %v: %s", err, out)
			}
		})
	}
	return vm
}

// AddDisk adds a blank qcow2 disk of sizeMB; the guest sees it as
// /dev/disk/by-id/virtio-<serial>, which it returns.
func (vm *QemuVM) AddDisk(t *testing.T, serial string, sizeMB int) string {
	t.Helper()
	p := filepath.Join(vm.Dir, serial+".qcow2")
	testenv.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", p, fmt.Sprintf("%dM", sizeMB))
	return vm.AttachDisk(p, "qcow2", serial, false)
}

// AttachDisk adds an existing image (format "raw" or "qcow2") as the next
// disk, read-only or not; the guest sees /dev/disk/by-id/virtio-<serial>,
// which it returns. The image is the caller's: it is not removed.
func (vm *QemuVM) AttachDisk(path, format, serial string, readOnly bool) string {
	vm.disks = append(vm.disks, qemuDisk{path: path, serial: serial, format: format, readOnly: readOnly})
	return "/dev/disk/by-id/virtio-" + serial
}

// Share exports the host directory path to the guest over 9p with tag.
func (vm *QemuVM) Share(tag, path string) {
	vm.shares = append(vm.shares, qemuShare{tag: tag, path: path})
}

// WriteShared writes a file into the shared directory.
func (vm *QemuVM) WriteShared(t *testing.T, name, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(vm.Shared, name), []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

// ReadShared returns a file of the shared directory, "" if it is missing.
func (vm *QemuVM) ReadShared(name string) string {
	b, _ := os.ReadFile(filepath.Join(vm.Shared, name))
	return string(b)
}

// Boot boots the guest once and returns when QEMU exits (the guest powered
// off or rebooted) or after timeout. When the file result appears in the
// shared directory, the guest gets 30 s more to power off before QEMU is
// killed; result "" waits for the exit only.
func (vm *QemuVM) Boot(t *testing.T, timeout time.Duration, result string) QemuBoot {
	t.Helper()
	return vm.boot(t, timeout, result, "")
}

// BootCut is Boot that cuts the power (kills QEMU at once) when the
// console shows the line killOn; QemuBoot.Cut says whether it did.
func (vm *QemuVM) BootCut(t *testing.T, timeout time.Duration, killOn string) QemuBoot {
	t.Helper()
	return vm.boot(t, timeout, "", killOn)
}

func (vm *QemuVM) boot(t *testing.T, timeout time.Duration, result, killOn string) QemuBoot {
	t.Helper()
	vm.boots++
	b := QemuBoot{N: vm.boots}
	vm.WriteShared(t, "boot", fmt.Sprintf("%d\n", b.N), 0o644)
	console := filepath.Join(vm.Shared, fmt.Sprintf("console-%d.log", b.N))
	args := vm.args(t, console)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("qemu-system-x86_64: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var resultSeen time.Time
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case err := <-done:
			b.Err = err
			break wait
		case <-tick.C:
			if killOn != "" && !b.Cut {
				if c, _ := os.ReadFile(console); strings.Contains(string(c), killOn) {
					t.Logf("boot %d: the console shows %q: cutting the power", b.N, killOn)
					cmd.Process.Kill()
					b.Cut = true
				}
			}
			if result == "" {
				continue
			}
			if resultSeen.IsZero() {
				if fileExists(filepath.Join(vm.Shared, result)) {
					resultSeen = time.Now()
				}
			} else if time.Since(resultSeen) > 30*time.Second {
				t.Logf("boot %d: the result is there but the guest did not power off within 30 s: killing QEMU", b.N)
				cmd.Process.Kill()
			}
		}
	}
	b.Duration = time.Since(start)
	b.TimedOut = ctx.Err() != nil
	c, _ := os.ReadFile(console)
	b.Console = string(c)
	b.Uptime = strings.TrimSpace(vm.ReadShared(fmt.Sprintf("boot-%d.uptime", b.N)))
	if s := strings.TrimSpace(stderr.String()); s != "" {
		b.Console += "\n[qemu] " + s
	}
	if b.Err != nil && !errors.Is(b.Err, context.DeadlineExceeded) && stderr.Len() > 0 {
		b.Err = fmt.Errorf("%w: %s", b.Err, strings.TrimSpace(stderr.String()))
	}
	t.Logf("QEMU boot %d: %s (guest reached the driver at uptime %ss)%s", b.N, b.Duration.Round(time.Millisecond), b.Uptime,
		map[bool]string{true: ", TIMED OUT", false: ""}[b.TimedOut])
	return b
}

// args is QEMU's command line for one boot of the guest, its serial
// console written to console.
func (vm *QemuVM) args(t *testing.T, console string) []string {
	t.Helper()
	mem, cpus := vm.Memory, vm.CPUs
	if mem == 0 {
		mem = 1024
	}
	if cpus == 0 {
		cpus = 2
	}
	args := []string{
		"-machine", "q35", "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", fmt.Sprint(cpus), "-m", fmt.Sprint(mem),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "file:" + console,
	}
	if vm.SSHPort != 0 {
		// User networking, nothing reachable but the host's 127.0.0.1
		// port forwarded to the guest's sshd.
		args = append(args, "-nic", fmt.Sprintf("user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:%d-:22", vm.SSHPort))
	} else {
		args = append(args, "-nic", "none")
	}
	if vm.UEFI {
		if vm.vars == "" {
			vm.vars = filepath.Join(vm.Dir, "OVMF_VARS.fd")
			testenv.Run(t, "cp", ovmfVars, vm.vars)
		}
		args = append(args,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+ovmfCode,
			"-drive", "if=pflash,format=raw,unit=1,file="+vm.vars)
	} else {
		args = append(args, "-kernel", vm.Base.Kernel, "-initrd", vm.Base.Initrd,
			"-append", strings.TrimSpace("root=/dev/vda rw console=ttyS0,115200 panic=-1 net.ifnames=0 systemd.show_status=1 "+vm.Append))
	}
	for _, s := range vm.shares {
		args = append(args, "-virtfs", "local,path="+s.path+",mount_tag="+s.tag+",security_model=passthrough,id="+s.tag)
	}
	for i, d := range vm.disks {
		drive := fmt.Sprintf("file=%s,format=%s,if=none,id=d%d,cache=unsafe,discard=unmap", d.path, d.format, i)
		if d.readOnly {
			drive += ",readonly=on"
		}
		args = append(args, "-drive", drive, "-device", fmt.Sprintf("virtio-blk-pci,drive=d%d,serial=%s", i, d.serial))
	}
	return args
}

// goTool returns the go command that runs this test.
func goTool() string {
	//lint:ignore SA1019 the toolchain that runs the test is the one to build with, and PATH may not name it
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	return "go"
}

// BuildTestBinary compiles the tests of pkg (relative to the module, e.g.
// "./pkg/snapshot") into a static binary at dst, for running in a guest.
func BuildTestBinary(t *testing.T, pkg, dst string) {
	t.Helper()
	start := time.Now()
	cmd := exec.Command(goTool(), "test", "-c", "-o", dst, pkg)
	cmd.Dir = repoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go test -c %s: %v\n%s", pkg, err, out)
	}
	t.Logf("built %s in %s", pkg, time.Since(start).Round(time.Millisecond))
}
