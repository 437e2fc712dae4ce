// Package testenv gates real-component tests on root and on the tools they
// need, and sets up real resources (btrfs on a loop device) for them.
//
// A test that cannot run here is skipped with a message naming what is
// missing, unless KOS_UPGRADE_REQUIRE_ALL=1 (set by .ci/run), which turns every
// such skip into a failure: in CI nothing may skip.
package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// RequireAllEnv is the variable that turns skips into failures.
const RequireAllEnv = "KOS_UPGRADE_REQUIRE_ALL"

// Skip skips t with msg, or fails it when RequireAllEnv is set.
func Skip(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv(RequireAllEnv) == "1" {
		t.Fatalf("%s (and %s=1 forbids skipping)", msg, RequireAllEnv)
	}
	t.Skip(msg)
}

// RequireRoot skips the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "skipping: this test needs root (run make test as root)")
	}
}

// RequireTools skips the test unless every tool is on PATH (or is an
// existing absolute path).
func RequireTools(t testing.TB, tools ...string) {
	t.Helper()
	var missing []string
	for _, tool := range tools {
		if filepath.IsAbs(tool) {
			if _, err := os.Stat(tool); err != nil {
				missing = append(missing, tool)
			}
			continue
		}
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		Skip(t, "skipping: missing tools "+strings.Join(missing, ", ")+" (apt-get install rpm dnf python3-dnf createrepo-c btrfs-progs)")
	}
}

// Run runs a command and fails the test with its output if it fails.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Btrfs is a btrfs filesystem on a loop device.
type Btrfs struct {
	Image  string // backing file
	Device string // /dev/loopN
	Top    string // where the top level (subvolid=5) is mounted
}

// NewBtrfs makes a sparse image of sizeMB, a btrfs filesystem on a loop
// device and mounts its top level; everything is undone at cleanup.
func NewBtrfs(t testing.TB, sizeMB int) *Btrfs {
	t.Helper()
	RequireRoot(t)
	RequireTools(t, "mkfs.btrfs", "btrfs", "losetup", "mount", "umount")
	dir := t.TempDir()
	b := &Btrfs{Image: filepath.Join(dir, "btrfs.img"), Top: filepath.Join(dir, "top")}
	f, err := os.Create(b.Image)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(int64(sizeMB) << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	b.Device = strings.TrimSpace(Run(t, "losetup", "--find", "--show", b.Image))
	t.Cleanup(func() { exec.Command("losetup", "-d", b.Device).Run() })
	Run(t, "mkfs.btrfs", "-q", "-f", b.Device)
	if err := os.MkdirAll(b.Top, 0o755); err != nil {
		t.Fatal(err)
	}
	Run(t, "mount", "-o", "subvolid=5", b.Device, b.Top)
	t.Cleanup(func() { UnmountAll(b.Top) })
	return b
}

// MountSubvol mounts subvolume path sub (relative to the top level) at dir.
func (b *Btrfs) MountSubvol(t testing.TB, sub, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	Run(t, "mount", "-o", "subvol="+sub, b.Device, dir)
	t.Cleanup(func() { UnmountAll(dir) })
}

// MakeDefaultRoot creates subvolume name, makes it the default subvolume
// (what a boot loader without subvol= boots) and mounts it at dir, as the
// root of an installed system.
func (b *Btrfs) MakeDefaultRoot(t testing.TB, name, dir string) {
	t.Helper()
	Run(t, "btrfs", "subvolume", "create", filepath.Join(b.Top, name))
	Run(t, "btrfs", "subvolume", "set-default", filepath.Join(b.Top, name))
	b.MountSubvol(t, name, dir)
}

// UnmountAll lazily unmounts dir and everything below it; errors are ignored
// (cleanup only).
func UnmountAll(dir string) {
	exec.Command("umount", "-R", "-l", dir).Run()
}

// NewLoopFS makes a sparse image of sizeMB, a filesystem on a loop device
// with mkfs (the command and its options; the device is added last) and
// mounts it at a temporary directory, which it returns; everything is
// undone at cleanup. mkfs is mkfs.xfs or mkfs.ext4.
func NewLoopFS(t testing.TB, sizeMB int, mkfs ...string) string {
	t.Helper()
	RequireRoot(t)
	RequireTools(t, "mkfs.xfs", "mkfs.ext4", "losetup", "mount", "umount")
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(int64(sizeMB) << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	dev := strings.TrimSpace(Run(t, "losetup", "--find", "--show", img))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	Run(t, mkfs[0], append(mkfs[1:], dev)...)
	mnt := filepath.Join(dir, "mnt")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	Run(t, "mount", dev, mnt)
	t.Cleanup(func() { UnmountAll(mnt) })
	return mnt
}
