// Package packaging tests what kos-upgrade ships: the RPM that `make rpm`
// builds from units/kos-upgrade.spec (installed into and removed from a
// fixture KOS root), and the dracut module dracut/90kos-upgrade (a real
// initramfs built with dracut, and its kos-upgrade-initrd script run against
// a fixture root). See docs/packaging.md and docs/initramfs.md.
package packaging

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

const moduleDir = "dracut/90kos-upgrade"

func repoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot find the source directory")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

func goTool(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	//lint:ignore SA1019 the toolchain that runs the test is the one to build with, and PATH may not name it
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	t.Fatal("cannot find the go command")
	return ""
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func heavy(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping real-component test in -short mode")
	}
}

// run runs argv in dir with extra environment and returns combined output;
// it fails the test unless the exit status is want.
func run(t testing.TB, dir string, env []string, want int, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	if code != want {
		t.Fatalf("%s %s: exit status %d, want %d\n%s", name, strings.Join(args, " "), code, want, out)
	}
	return string(out)
}

// --- static checks (no root, no tools beyond the shells) ---

func TestDracutScriptsSyntax(t *testing.T) {
	root := repoRoot(t)
	scripts, err := filepath.Glob(filepath.Join(root, moduleDir, "*.sh"))
	if err != nil || len(scripts) < 3 {
		t.Fatalf("dracut module scripts: %v %v", scripts, err)
	}
	for _, s := range scripts {
		if fi, err := os.Stat(s); err != nil || fi.Mode()&0o111 == 0 {
			t.Errorf("%s is not executable", s)
		}
		run(t, root, nil, 0, "bash", "-n", s)
		if filepath.Base(s) != "module-setup.sh" { // sourced by dracut's bash only
			if _, err := exec.LookPath("dash"); err == nil {
				run(t, root, nil, 0, "dash", "-n", s)
			}
		}
	}
	if _, err := exec.LookPath("shellcheck"); err != nil {
		testenv.Skip(t, "skipping shellcheck: not installed (apt-get install shellcheck)")
	}
	for _, s := range scripts {
		shell := "sh"
		if filepath.Base(s) == "module-setup.sh" {
			shell = "bash"
		}
		run(t, root, nil, 0, "shellcheck", "-s", shell, s)
	}
}

// check() must include the module only when asked for by name (255), and
// refuse (1) when the binary is missing.
func TestModuleSetupCheck(t *testing.T) {
	root := repoRoot(t)
	script := `require_binaries() { [ -x "$1" ]; }
. ` + filepath.Join(root, moduleDir, "module-setup.sh") + `
KOS_UPGRADE_BIN=/nonexistent/kos-upgrade check; echo "missing=$?"
KOS_UPGRADE_BIN=/bin/sh check; echo "present=$?"
depends; echo "depends=$?"`
	out := run(t, root, nil, 0, "bash", "-c", script)
	for _, want := range []string{"missing=1", "present=255", "depends=0"} {
		if !strings.Contains(out, want) {
			t.Errorf("module-setup.sh: want %q in\n%s", want, out)
		}
	}
}

// The initramfs unit uses only options systemd-analyze knows; verified in a
// scratch root that holds the script it starts.
func TestInitrdUnitVerify(t *testing.T) {
	testenv.RequireTools(t, "systemd-analyze")
	root := repoRoot(t)
	scratch := t.TempDir()
	unitDir := filepath.Join(scratch, "usr/lib/systemd/system")
	for _, d := range []string{unitDir, filepath.Join(scratch, "usr/sbin"), filepath.Join(scratch, "etc")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	unit, err := os.ReadFile(filepath.Join(root, moduleDir, "kos-upgrade-initrd.service"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(unitDir, "kos-upgrade-initrd.service"), unit, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(scratch, "usr/sbin/kos-upgrade-initrd"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("systemd-analyze", "verify", "--root="+scratch, "--man=no",
		filepath.Join(unitDir, "kos-upgrade-initrd.service")).CombinedOutput()
	// Units the file orders itself against (initrd.target, sysroot.mount, ...)
	// do not exist in the scratch root; anything else is a real finding.
	var bad []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l == "" || strings.Contains(l, "not found") || strings.Contains(l, "Failed to load") ||
			strings.Contains(l, "No such file") {
			continue
		}
		bad = append(bad, l)
	}
	if len(bad) > 0 {
		t.Errorf("systemd-analyze verify kos-upgrade-initrd.service (%v):\n%s", err, strings.Join(bad, "\n"))
	}
}

// The spec parses with the version `make rpm` passes, and names it.
func TestSpecParses(t *testing.T) {
	testenv.RequireTools(t, "rpmspec")
	root := repoRoot(t)
	out := run(t, root, nil, 0, "rpmspec", "-q", "--define", "version_ 9.8.7", "--qf", "%{name} %{version} %{license}\n",
		filepath.Join(root, "units/kos-upgrade.spec"))
	if !strings.Contains(out, "kos-upgrade 9.8.7 Apache-2.0") {
		t.Errorf("rpmspec -q: %s", out)
	}
	// Without the version the spec refuses, instead of building version "".
	cmd := exec.Command("rpmspec", "-q", filepath.Join(root, "units/kos-upgrade.spec"))
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("rpmspec -q without version_ succeeded:\n%s", out)
	}
}

// --- the RPM ---

// expectedFiles are paths the RPM must hold (a subset: docs and the Cockpit
// page are checked separately).
var expectedFiles = []string{
	"/usr/bin/kos-upgrade",
	"/usr/lib/systemd/system/kos-upgrade-apply.service",
	"/usr/lib/systemd/system/system-update.target.wants/kos-upgrade-apply.service",
	"/usr/lib/systemd/system/kos-upgrade-daemon.service",
	"/usr/lib/systemd/system/kos-upgrade-confirm.service",
	"/usr/lib/systemd/system/kos-upgrade-confirm.timer",
	"/usr/share/dbus-1/system-services/org.kos.Upgrade1.service",
	"/usr/share/dbus-1/system.d/org.kos.Upgrade1.conf",
	"/usr/share/dbus-1/interfaces/org.kos.Upgrade1.xml",
	"/usr/share/polkit-1/actions/org.kos.upgrade.policy",
	"/usr/lib/systemd/catalog/kos-upgrade.catalog",
	"/usr/lib/dracut/modules.d/90kos-upgrade",
	"/usr/lib/dracut/modules.d/90kos-upgrade/module-setup.sh",
	"/usr/lib/dracut/modules.d/90kos-upgrade/kos-upgrade-initrd.sh",
	"/usr/lib/dracut/modules.d/90kos-upgrade/kos-upgrade-initrd.service",
	"/usr/lib/dracut/modules.d/90kos-upgrade/kos-upgrade-pre-pivot.sh",
	"/etc/grub.d/09_kos_upgrade_trial",
	"/usr/share/kos-upgrade/migration/centos-to-kos.json",
	"/etc/kos-upgrade",
	"/var/lib/kos-upgrade",
	"/usr/share/doc/kos-upgrade/README.md",
	"/usr/share/doc/kos-upgrade/initramfs.md",
	"/usr/share/doc/kos-upgrade/packaging.md",
	"/usr/share/doc/kos-upgrade/report.schema.json",
	"/usr/share/bash-completion/completions/kos-upgrade",
	"/usr/share/zsh/site-functions/_kos-upgrade",
	"/etc/kos-upgrade/boot.conf",
	"/etc/kos-upgrade/answers.conf",
	"/etc/kos-upgrade/health.d/README",
}

// buildRPM runs `make rpm` into a scratch directory and returns the rpm.
func buildRPM(t *testing.T) string {
	t.Helper()
	testenv.RequireTools(t, "make", "git", "rpmbuild", "rpm", "tar")
	root := repoRoot(t)
	dir := t.TempDir()
	start := time.Now()
	run(t, root, nil, 0, "make", "--no-print-directory", "rpm", "GO="+goTool(t),
		"RPMTOP="+filepath.Join(dir, "rpmbuild"), "RPMOUT="+filepath.Join(dir, "out"))
	t.Logf("make rpm: %s", time.Since(start).Round(time.Millisecond))
	rpms, _ := filepath.Glob(filepath.Join(dir, "out", "kos-upgrade-*.rpm"))
	if len(rpms) != 1 {
		t.Fatalf("make rpm produced %v, want one kos-upgrade rpm", rpms)
	}
	return rpms[0]
}

func TestRPM(t *testing.T) {
	heavy(t)
	testenv.RequireRoot(t)
	rpmFile := buildRPM(t)
	root := repoRoot(t)

	// What the package holds.
	list := run(t, root, nil, 0, "rpm", "-qlp", rpmFile)
	files := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(list), "\n") {
		files[l] = true
	}
	for _, f := range expectedFiles {
		if !files[f] {
			t.Errorf("rpm -qlp: %s missing", f)
		}
	}
	if fileExists(filepath.Join(root, "cockpit/kos-upgrade/manifest.json")) && !files["/usr/share/cockpit/kos-upgrade/manifest.json"] {
		t.Errorf("rpm -qlp: the Cockpit page (/usr/share/cockpit/kos-upgrade) is missing")
	}
	info := run(t, root, nil, 0, "rpm", "-qp", "--qf", "%{name}|%{version}|%{license}|[%{requirename} ]|[%{recommendname} ]\n", rpmFile)
	for _, want := range []string{"kos-upgrade|0.", "|Apache-2.0|", "python3-dnf", "python3-rpm", "dracut", "systemd", "btrfs-progs", "lvm2"} {
		if !strings.Contains(info, want) {
			t.Errorf("rpm -qp: want %q in %s", want, info)
		}
	}
	// The .wants link is relative and the grub snippet is a config file.
	dump := run(t, root, nil, 0, "rpm", "-qp", "--dump", rpmFile)
	for _, l := range strings.Split(dump, "\n") {
		f := strings.Fields(l)
		if len(f) < 11 {
			continue
		}
		switch f[0] {
		case "/usr/lib/systemd/system/system-update.target.wants/kos-upgrade-apply.service":
			if f[10] != "../kos-upgrade-apply.service" {
				t.Errorf(".wants link points at %q", f[10])
			}
		case "/etc/grub.d/09_kos_upgrade_trial":
			if f[7] != "1" {
				t.Errorf("09_kos_upgrade_trial is not %%config: %s", l)
			}
		}
	}

	// Install into a fixture KOS 5.8 root (busybox /bin/sh, no systemd, no
	// dnf: hence --nodeps), then remove it again.
	set := fixture.MustBuild(t)
	sys := t.TempDir()
	if err := fixture.InstallBase(context.Background(), set, sys); err != nil {
		t.Fatal(err)
	}
	before := treeList(t, sys)
	db := []string{"--root", sys, "--dbpath", fixture.DBPath}
	out := run(t, root, nil, 0, "rpm", append(append([]string{}, db...), "-i", "--nodeps", "--force-debian", rpmFile)...)
	if strings.Contains(out, "scriptlet failed") || strings.Contains(out, "error") {
		t.Errorf("rpm -i printed:\n%s", out)
	}
	run(t, root, nil, 0, "rpm", append(append([]string{}, db...), "-q", "kos-upgrade")...)
	run(t, root, nil, 0, "rpm", append(append([]string{}, db...), "-V", "--nodeps", "kos-upgrade")...)
	for _, f := range expectedFiles {
		if !fileExists(filepath.Join(sys, f)) {
			t.Errorf("installed root: %s missing", f)
		}
	}
	link := filepath.Join(sys, "usr/lib/systemd/system/system-update.target.wants/kos-upgrade-apply.service")
	if target, err := os.Readlink(link); err != nil || target != "../kos-upgrade-apply.service" {
		t.Errorf("installed .wants link: %q %v", target, err)
	}
	if _, err := os.Stat(link); err != nil {
		t.Errorf("installed .wants link does not resolve: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(sys, "var/lib/kos-upgrade")); err != nil || fi.Mode().Perm() != 0o700 || !fi.IsDir() {
		t.Errorf("/var/lib/kos-upgrade: %v %v", fi, err)
	}
	if fi, err := os.Stat(filepath.Join(sys, "etc/grub.d/09_kos_upgrade_trial")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("/etc/grub.d/09_kos_upgrade_trial: %v %v", fi, err)
	}
	if out := run(t, root, nil, 0, filepath.Join(sys, "usr/bin/kos-upgrade"), "--version"); !strings.Contains(out, "0.") {
		t.Errorf("kos-upgrade --version: %s", out)
	}

	// Removal while an upgrade is armed disarms it (%preun); another tool's
	// link would be left alone (checked by the script's own condition).
	if err := os.Symlink("/var/lib/kos-upgrade", filepath.Join(sys, "system-update")); err != nil {
		t.Fatal(err)
	}
	out = run(t, root, nil, 0, "rpm", append(append([]string{}, db...), "-e", "kos-upgrade")...)
	if strings.Contains(out, "scriptlet failed") || strings.Contains(out, "error") {
		t.Errorf("rpm -e printed:\n%s", out)
	}
	if fileExists(filepath.Join(sys, "system-update")) {
		t.Errorf("rpm -e left our /system-update link behind")
	}
	run(t, root, nil, 1, "rpm", append(append([]string{}, db...), "-q", "kos-upgrade")...)
	for _, d := range []string{"var/lib/kos-upgrade", "etc/kos-upgrade", "usr/lib/dracut/modules.d/90kos-upgrade", "usr/share/doc/kos-upgrade"} {
		if fileExists(filepath.Join(sys, d)) {
			t.Errorf("rpm -e left %s behind", d)
		}
	}
	after := treeList(t, sys)
	if added, removed := diff(before, after); len(added)+len(removed) > 0 {
		t.Errorf("rpm -i then -e changed the root: added %v, removed %v", added, removed)
	}
}

// treeList lists every file and symbolic link under root except the rpm
// database. Directories are left out: rpm creates the parents a package does
// not own (/usr/share/dbus-1, /etc/grub.d, ...) and rightly keeps them.
func treeList(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "var/lib/rpm" || strings.HasPrefix(rel, "var/lib/rpm/") || rel == "usr/lib/sysimage/rpm" {
			if fi.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !fi.IsDir() {
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func diff(a, b []string) (added, removed []string) {
	in := func(s []string) map[string]bool {
		m := map[string]bool{}
		for _, x := range s {
			m[x] = true
		}
		return m
	}
	ma, mb := in(a), in(b)
	for _, x := range b {
		if !ma[x] {
			added = append(added, x)
		}
	}
	for _, x := range a {
		if !mb[x] {
			removed = append(removed, x)
		}
	}
	return added, removed
}

// --- the dracut module ---

// dracutBase makes a dracut base directory that is the system's
// /usr/lib/dracut plus our module (symbolic links), so that the test needs no
// change to the machine.
func dracutBase(t *testing.T) string {
	t.Helper()
	const sys = "/usr/lib/dracut"
	base := filepath.Join(t.TempDir(), "dracut")
	if err := os.MkdirAll(filepath.Join(base, "modules.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(sys)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() == "modules.d" {
			continue
		}
		if err := os.Symlink(filepath.Join(sys, e.Name()), filepath.Join(base, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	mods, err := os.ReadDir(filepath.Join(sys, "modules.d"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mods {
		if strings.HasSuffix(m.Name(), "kos-upgrade") {
			continue // an installed copy: test the tree's
		}
		if err := os.Symlink(filepath.Join(sys, "modules.d", m.Name()), filepath.Join(base, "modules.d", m.Name())); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(repoRoot(t), moduleDir), filepath.Join(base, "modules.d", "90kos-upgrade")); err != nil {
		t.Fatal(err)
	}
	return base
}

func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "kos-upgrade")
	cmd := exec.Command(goTool(t), "build", "-trimpath", "-o", bin, "github.com/keyarchos/kos-upgrade/cmd/kos-upgrade")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// dracutImage builds an initramfs (no kernel: /lib/modules is empty here)
// with extra dracut arguments and returns its path and lsinitrd's listing.
func dracutImage(t *testing.T, base, bin string, args ...string) (string, string) {
	t.Helper()
	dir := t.TempDir()
	img := filepath.Join(dir, "kos-upgrade-initramfs.img")
	argv := append([]string{"--no-kernel", "--no-hostonly", "--force", "--tmpdir", dir}, args...)
	argv = append(argv, img)
	env := []string{"dracutbasedir=" + base, "KOS_UPGRADE_BIN=" + bin}
	start := time.Now()
	out := run(t, dir, env, 0, "dracut", argv...)
	t.Logf("dracut %s: %s", strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
	if !strings.Contains(out, "Including module: kos-upgrade") && strings.Contains(strings.Join(args, " "), "kos-upgrade") {
		t.Errorf("dracut did not include kos-upgrade:\n%s", out)
	}
	return img, run(t, dir, env, 0, "lsinitrd", img)
}

func TestDracutModule(t *testing.T) {
	heavy(t)
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "dracut", "lsinitrd", "cpio")
	base := dracutBase(t)
	bin := buildBinary(t)

	t.Run("systemd", func(t *testing.T) {
		img, list := dracutImage(t, base, bin, "--add", "kos-upgrade")
		if !strings.Contains(list, "systemd-initrd") {
			t.Skip("dracut on this machine builds no systemd initramfs")
		}
		for _, want := range []string{
			"usr/bin/kos-upgrade",
			"usr/sbin/kos-upgrade-initrd",
			"usr/bin/unshare",
			"usr/lib/systemd/system/kos-upgrade-initrd.service",
			"usr/lib/systemd/system/initrd.target.wants/kos-upgrade-initrd.service -> ../kos-upgrade-initrd.service",
		} {
			if !strings.Contains(list, want) {
				t.Errorf("lsinitrd: %q missing", want)
			}
		}
		if strings.Contains(list, "90-kos-upgrade-pre-pivot.sh") {
			t.Errorf("systemd initramfs also carries the pre-pivot hook: the upgrade would run twice")
		}
		// The binary in the image is ours and runs.
		got := run(t, "", nil, 0, "lsinitrd", "-f", "usr/bin/kos-upgrade", img)
		exe := filepath.Join(t.TempDir(), "kos-upgrade")
		if err := os.WriteFile(exe, []byte(got), 0o755); err != nil {
			t.Fatal(err)
		}
		if out := run(t, "", nil, 0, exe, "apply", "--help"); !strings.Contains(out, "apply") {
			t.Errorf("kos-upgrade from the image: %s", out)
		}
		unit := run(t, "", nil, 0, "lsinitrd", "-f", "usr/lib/systemd/system/kos-upgrade-initrd.service", img)
		for _, want := range []string{"ConditionKernelCommandLine=kos-upgrade.apply=1", "Before=initrd.target", "FailureAction=reboot"} {
			if !strings.Contains(unit, want) {
				t.Errorf("unit in the image lacks %q", want)
			}
		}
	})

	t.Run("no-systemd", func(t *testing.T) {
		_, list := dracutImage(t, base, bin, "--add", "kos-upgrade", "--omit", "systemd systemd-initrd dracut-systemd")
		for _, want := range []string{"usr/bin/kos-upgrade", "usr/sbin/kos-upgrade-initrd", "hooks/pre-pivot/90-kos-upgrade-pre-pivot.sh"} {
			if !strings.Contains(list, want) {
				t.Errorf("lsinitrd (no systemd): %q missing", want)
			}
		}
		if strings.Contains(list, "kos-upgrade-initrd.service") {
			t.Errorf("initramfs without systemd carries the unit")
		}
	})

	t.Run("not-asked", func(t *testing.T) {
		_, list := dracutImage(t, base, bin)
		if strings.Contains(list, "usr/bin/kos-upgrade") || strings.Contains(list, "kos-upgrade-initrd") {
			t.Errorf("dracut without --add kos-upgrade included the module")
		}
	})
}

// --- kos-upgrade-initrd, run against a fixture root ---

// initrdEnv is a fixture root mounted (tmpfs) as $NEWROOT with a separate
// /boot (a bind mount listed in its fstab) holding a one-time entry.
type initrdEnv struct {
	dir, newroot, boot, cmdline, stub string
	mounts                            []string // mount points before the run
}

func mountPoints(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			out = append(out, f[1])
		}
	}
	sort.Strings(out)
	return out
}

const oneTimeID = "kos-upgrade-initramfs-5.9"

func newInitrdEnv(t *testing.T, set *fixture.Set) *initrdEnv {
	t.Helper()
	dir := t.TempDir()
	e := &initrdEnv{dir: dir, newroot: filepath.Join(dir, "sysroot"), boot: filepath.Join(dir, "bootpart"),
		cmdline: filepath.Join(dir, "cmdline"), stub: filepath.Join(dir, "kos-upgrade")}
	for _, d := range []string{e.newroot, filepath.Join(e.boot, "loader/entries")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Run(t, "mount", "-t", "tmpfs", "-o", "ro,size=256m", "kos-test-sysroot", e.newroot)
	t.Cleanup(func() { testenv.UnmountAll(e.newroot) })
	testenv.Run(t, "mount", "-o", "remount,rw", e.newroot)
	if err := fixture.InstallBase(context.Background(), set, e.newroot); err != nil {
		t.Fatal(err)
	}
	// Read-only, as the initramfs mounts the root (ro on the command line).
	testenv.Run(t, "mount", "-o", "remount,ro", e.newroot)
	write := func(p, s string, mode os.FileMode) {
		t.Helper()
		if err := os.WriteFile(p, []byte(s), mode); err != nil {
			t.Fatal(err)
		}
	}
	// fstab is in the root; write it through a writable moment.
	testenv.Run(t, "mount", "-o", "remount,rw", e.newroot)
	write(filepath.Join(e.newroot, "etc/fstab"), "# fixture\n/dev/vda2 / xfs defaults 0 0\n"+e.boot+" /boot none bind 0 0\n", 0o644)
	testenv.Run(t, "mount", "-o", "remount,ro", e.newroot)

	write(filepath.Join(e.boot, "loader/entries", oneTimeID+".conf"),
		"title KOS upgrade to 5.9\nversion 5.8.0\nlinux /vmlinuz-5.8.0\ninitrd /kos-upgrade-initramfs-5.9.img\noptions root=/dev/vda2 ro kos-upgrade.apply=1 kos-upgrade.entry="+oneTimeID+"\n", 0o644)
	write(filepath.Join(e.boot, "loader/entries", "abc-5.8.0.conf"),
		"title KOS 5.8\nversion 5.8.0\nlinux /vmlinuz-5.8.0\ninitrd /initramfs-5.8.0.img\noptions root=/dev/vda2 ro\n", 0o644)
	for _, f := range []string{"kos-upgrade-initramfs-5.9.img", "initramfs-5.8.0.img", "vmlinuz-5.8.0", "kos-upgrade-other.img"} {
		write(filepath.Join(e.boot, f), "x", 0o644)
	}
	// The stand-in for kos-upgrade records what it saw. Its /bin/sh is the
	// fixture root's busybox when the root's /usr is bind-mounted over ours.
	write(e.stub, `#!/bin/sh
out="$2/stub.out"
echo "args: $*" >"$out"
[ -x /usr/bin/busybox ] && echo "usr: root's" >>"$out"
echo "machine-id: $(cat /etc/machine-id)" >>"$out"
[ -e "$2/boot/loader/entries/`+oneTimeID+`.conf" ] || echo "entry: removed before apply" >>"$out"
[ -e "$2/boot/vmlinuz-5.8.0" ] && echo "boot: mounted" >>"$out"
exit 3
`, 0o755)
	return e
}

func (e *initrdEnv) run(t *testing.T, cmdline string, want int) string {
	t.Helper()
	if err := os.WriteFile(e.cmdline, []byte(cmdline+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.mounts = mountPoints(t)
	env := []string{
		"NEWROOT=" + e.newroot,
		"KOS_UPGRADE_INITRD_BIN=" + e.stub,
		"KOS_UPGRADE_INITRD_CMDLINE=" + e.cmdline,
		"KOS_UPGRADE_INITRD_RUNDIR=" + filepath.Join(e.dir, "run"),
		"KOS_UPGRADE_INITRD_REBOOT=no",
	}
	return run(t, e.dir, env, want, "sh", filepath.Join(repoRoot(t), moduleDir, "kos-upgrade-initrd.sh"))
}

func TestInitrdScript(t *testing.T) {
	heavy(t)
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "unshare", "mount", "umount")
	set := fixture.MustBuild(t)

	t.Run("not-armed", func(t *testing.T) {
		e := newInitrdEnv(t, set)
		out := e.run(t, "BOOT_IMAGE=/vmlinuz-5.8.0 root=/dev/vda2 ro quiet", 0)
		if out != "" {
			t.Errorf("output without kos-upgrade.apply=1: %q", out)
		}
		if fileExists(filepath.Join(e.newroot, "stub.out")) {
			t.Errorf("kos-upgrade ran without kos-upgrade.apply=1")
		}
		if !fileExists(filepath.Join(e.boot, "loader/entries", oneTimeID+".conf")) {
			t.Errorf("the entry was removed without kos-upgrade.apply=1")
		}
	})

	t.Run("apply", func(t *testing.T) {
		e := newInitrdEnv(t, set)
		out := e.run(t, "BOOT_IMAGE=/vmlinuz-5.8.0 root=/dev/vda2 ro kos-upgrade.apply=1 kos-upgrade.entry="+oneTimeID+" quiet", 3)
		t.Logf("kos-upgrade-initrd:\n%s", out)
		got, err := os.ReadFile(filepath.Join(e.newroot, "stub.out"))
		if err != nil {
			t.Fatalf("kos-upgrade did not run: %v\n%s", err, out)
		}
		for _, want := range []string{
			"args: --root " + e.newroot + " apply",
			"usr: root's",
			"machine-id: " + fixture.MachineID,
			"entry: removed before apply",
			"boot: mounted",
		} {
			if !bytes.Contains(got, []byte(want)) {
				t.Errorf("stub saw %q, want %q", got, want)
			}
		}
		if !strings.Contains(out, "failed (exit status 3)") {
			t.Errorf("the failure is not reported:\n%s", out)
		}
		for f, keep := range map[string]bool{
			"loader/entries/" + oneTimeID + ".conf": false,
			"kos-upgrade-initramfs-5.9.img":         false,
			"loader/entries/abc-5.8.0.conf":         true,
			"initramfs-5.8.0.img":                   true,
			"kos-upgrade-other.img":                 true,
		} {
			if fileExists(filepath.Join(e.boot, f)) != keep {
				t.Errorf("/boot/%s: exists=%v, want %v", f, !keep, keep)
			}
		}
		// /boot was unmounted again; the /etc and /usr bind mounts stayed in
		// their private namespace.
		if after := mountPoints(t); strings.Join(after, " ") != strings.Join(e.mounts, " ") {
			t.Errorf("mount points before %v, after %v", e.mounts, after)
		}
	})

	t.Run("foreign-entry", func(t *testing.T) {
		e := newInitrdEnv(t, set)
		e.run(t, "root=/dev/vda2 ro kos-upgrade.apply=1 kos-upgrade.entry=abc-5.8.0", 3)
		if !fileExists(filepath.Join(e.boot, "loader/entries/abc-5.8.0.conf")) {
			t.Errorf("an entry that is not kos-upgrade's was removed")
		}
	})
}
