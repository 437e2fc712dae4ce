// Package e2e boots real systems through a whole upgrade: the fast tier
// boots a Debian guest root that carries the KOS fixture system with
// systemd-nspawn, on btrfs on a loop device, and plays the boot loader
// between boots (it boots the filesystem's default subvolume, as a kernel
// without rootflags=subvol= would).
//
// The guest: a minimal Debian root made with debootstrap (systemd, dbus,
// udev, btrfs-progs, rpm, python3-rpm), cached as a tarball under
// /var/cache/kos-upgrade-e2e, plus the fixture's 5.8 RPM system installed with
// rpm --root into the same root (so /etc/os-release is KOS's), plus
// `make install DESTDIR=` of kos-upgrade (binary and units). Prepare runs on
// the host against the guest's root (--root), which keeps dnf out of the
// guest; everything from `kos-upgrade reboot` on runs inside the guest under
// systemd as PID 1.
//
// The guest is driven by kos-e2e.service (in multi-user.target.wants, so it
// never runs in the offline boot): it records facts of the booted system
// into the shared directory (bound at /kos-e2e), runs the scenario's script
// for that boot if there is one, and powers off otherwise. nspawn's exit
// code tells the harness what the guest did: 0 powered off, 133 rebooted.
package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// CacheEnv overrides the directory of the cached guest tarballs.
const CacheEnv = "KOS_UPGRADE_E2E_CACHE"

// MirrorEnv overrides the Debian mirror debootstrap uses (default: the first
// Debian mirror of the host's apt sources).
const MirrorEnv = "KOS_UPGRADE_E2E_MIRROR"

// GuestPackages is what debootstrap adds to the minbase variant. rpm and
// python3-rpm are all that `kos-upgrade apply` needs (the helper's apply
// path imports rpm only); dnf stays on the host, where prepare runs.
var GuestPackages = []string{"systemd", "systemd-sysv", "dbus", "udev", "btrfs-progs", "rpm", "python3-rpm", "util-linux"}

// baseVersion is mixed into the cache key: bump it when the preparation of
// the base changes.
const baseVersion = "2"

// Tools lists the host commands the nspawn tier runs.
var Tools = []string{"debootstrap", "systemd-nspawn", "tar", "btrfs", "mkfs.btrfs", "losetup", "mount", "umount", "make"}

func cacheDir() string {
	if d := os.Getenv(CacheEnv); d != "" {
		return d
	}
	return "/var/cache/kos-upgrade-e2e"
}

// hostSuite returns the host's Debian codename (the guest uses the same, so
// the host's rpm and the guest's agree on the rpmdb format).
func hostSuite() string {
	b, err := os.ReadFile("/etc/os-release")
	if err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VERSION_CODENAME="); ok && v != "" {
				return strings.Trim(v, `"`)
			}
		}
	}
	return "bookworm"
}

// Mirror returns the Debian mirror for debootstrap: $KOS_UPGRADE_E2E_MIRROR,
// else the first URI of the host's apt sources that serves suite (one-line
// sources.list and deb822 .sources files), else deb.debian.org.
func Mirror(suite string) string {
	if m := os.Getenv(MirrorEnv); m != "" {
		return m
	}
	files := []string{"/etc/apt/sources.list"}
	more, _ := filepath.Glob("/etc/apt/sources.list.d/*")
	files = append(files, more...)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if m := mirrorIn(string(b), suite, strings.HasSuffix(f, ".sources")); m != "" {
			return m
		}
	}
	return "http://deb.debian.org/debian"
}

// mirrorIn finds a URI serving suite in one apt sources file.
func mirrorIn(text, suite string, deb822 bool) string {
	if !deb822 {
		for _, l := range strings.Split(text, "\n") {
			f := strings.Fields(l)
			if len(f) < 3 || f[0] != "deb" {
				continue
			}
			f = f[1:]
			if strings.HasPrefix(f[0], "[") { // [arch=amd64 signed-by=...]
				for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
					f = f[1:]
				}
				if len(f) > 0 {
					f = f[1:]
				}
			}
			if len(f) >= 2 && f[1] == suite {
				return f[0]
			}
		}
		return ""
	}
	for _, stanza := range strings.Split(text, "\n\n") {
		var uris, suites []string
		isDeb := false
		for _, l := range strings.Split(stanza, "\n") {
			k, v, ok := strings.Cut(l, ":")
			if !ok || strings.HasPrefix(strings.TrimSpace(l), "#") {
				continue
			}
			switch strings.ToLower(strings.TrimSpace(k)) {
			case "types":
				isDeb = strings.Contains(" "+v+" ", " deb ")
			case "uris":
				uris = strings.Fields(v)
			case "suites":
				suites = strings.Fields(v)
			}
		}
		if !isDeb || len(uris) == 0 {
			continue
		}
		for _, s := range suites {
			if s == suite {
				return uris[0]
			}
		}
	}
	return ""
}

// BaseTarball returns the cached tarball of the debootstrapped guest base,
// building it (about a minute) when it is missing. The key covers the suite,
// the package list and baseVersion; the mirror is not part of it (any
// mirror of the suite gives the same system).
func BaseTarball(ctx context.Context, logf func(string, ...any)) (string, error) {
	return buildTarball(ctx, logf, "", baseVersion, GuestPackages)
}

// QemuGuestPackages is what the QEMU tier's guest adds to GuestPackages: a
// kernel (its initramfs built by initramfs-tools inside debootstrap), LVM
// with thin provisioning, and XFS, the common KOS root layout; dnf, so that
// the full-system scenarios run prepare inside the guest as a user would;
// kexec-tools for `kos-upgrade reboot --kexec`; dracut-core (next to
// initramfs-tools, which still makes the guest's own initramfs) for the
// upgrade initramfs of initramfs mode, systemd-boot for bootctl, which
// arms its one-time boot, and openssh-server for the fleet scenario
// (fleet_test.go), disabled unless a guest asks for it (SystemOptions.SSHKey):
// one debootstrap for every QEMU guest.
var QemuGuestPackages = append(append([]string(nil), GuestPackages...),
	"linux-image-amd64", "initramfs-tools", "kmod", "lvm2", "thin-provisioning-tools", "xfsprogs", "e2fsprogs",
	"python3-dnf", "kexec-tools", "dracut-core", "systemd-boot", "openssh-server")

// qemuBaseVersion is mixed into the QEMU variant's cache key.
const qemuBaseVersion = "qemu-2"

// QemuBaseTarball is BaseTarball for the QEMU tier's guest
// (QemuGuestPackages), cached under its own key next to the nspawn one.
func QemuBaseTarball(ctx context.Context, logf func(string, ...any)) (string, error) {
	return buildTarball(ctx, logf, "qemu-", qemuBaseVersion, QemuGuestPackages)
}

// buildTarball returns the cached tarball of one variant of the guest base
// (prefix in its file name, version and packages in its key), building it
// when it is missing.
func buildTarball(ctx context.Context, logf func(string, ...any), prefix, version string, pkgs []string) (string, error) {
	suite := hostSuite()
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n", version, suite, strings.Join(pkgs, ","))
	key := hex.EncodeToString(h.Sum(nil))[:16]
	dir := cacheDir()
	final := filepath.Join(dir, fmt.Sprintf("debian-%s%s-%s.tar", prefix, suite, key))
	if _, err := os.Stat(final); err == nil {
		return final, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	lf, err := os.OpenFile(final+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		return "", err
	}
	defer syscall.Flock(int(lf.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(final); err == nil {
		return final, nil // built by another process while we waited
	}
	tmp, err := os.MkdirTemp(dir, ".build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	root := filepath.Join(tmp, "root")
	mirror := Mirror(suite)
	logf("debootstrap %s from %s into %s (cached afterwards in %s)", suite, mirror, root, final)
	args := []string{"--variant=minbase", "--include=" + strings.Join(pkgs, ","), suite, root, mirror}
	if out, err := exec.CommandContext(ctx, "debootstrap", args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("debootstrap %s: %w\n%s", strings.Join(args, " "), err, tail(string(out), 40))
	}
	if err := trimBase(root); err != nil {
		return "", err
	}
	// The tarball's "./" carries the mode of /: debootstrap made root in
	// a 0700 temporary directory, and a 0700 / locks every system user out.
	if err := os.Chmod(root, 0o755); err != nil {
		return "", err
	}
	part := filepath.Join(tmp, "base.tar")
	if out, err := exec.CommandContext(ctx, "tar", "--numeric-owner", "--xattrs", "-C", root, "-cf", part, ".").CombinedOutput(); err != nil {
		return "", fmt.Errorf("tar: %w: %s", err, out)
	}
	if err := os.Rename(part, final); err != nil {
		return "", err
	}
	return final, nil
}

// trimBase drops what a test guest does not need and configures what every
// guest shares.
func trimBase(root string) error {
	for _, g := range []string{"usr/share/doc/*", "usr/share/man/*", "usr/share/locale/*", "usr/share/info/*",
		"var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_Packages",
		// sshd runs only in the guests that ask for it (sshGuest).
		"etc/systemd/system/multi-user.target.wants/ssh.service", "etc/systemd/system/sshd.service"} {
		m, _ := filepath.Glob(filepath.Join(root, g))
		for _, p := range m {
			if err := os.RemoveAll(p); err != nil {
				return err
			}
		}
	}
	files := map[string]string{
		"etc/hostname": "kos-e2e\n",
		// Persistent journal: the next boot can read the offline boot's log.
		"etc/systemd/journald.conf.d/kos-e2e.conf": "[Journal]\nStorage=persistent\n",
		// Quick shutdowns: a hung unit must not stall a test for 90 s.
		"etc/systemd/system.conf.d/kos-e2e.conf": "[Manager]\nDefaultTimeoutStopSec=20s\nShowStatus=yes\n",
	}
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// putFile writes content to rel below root with mode, creating its
// directory: how both tiers configure a guest root.
func putFile(root, rel, content string, mode os.FileMode) error {
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, []byte(content), mode)
}

func tail(s string, n int) string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
