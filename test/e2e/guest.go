package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// Exit codes of systemd-nspawn -b.
const (
	exitPoweroff = 0
	exitReboot   = 133
)

// ArtifactsEnv names a directory where each test's shared directory (the
// guest's consoles, facts and step logs) is copied at the end.
const ArtifactsEnv = "KOS_UPGRADE_E2E_ARTIFACTS"

// bootTimeout bounds one boot of the guest, offline upgrade included.
const bootTimeout = 3 * time.Minute

// Guest is a KOS fixture system on a Debian base, in subvolume @ (the
// default) of a btrfs filesystem on a loop device.
type Guest struct {
	Set    *fixture.Set
	FS     *testenv.Btrfs
	Root   string // subvolume @, mounted on the host (prepare runs here)
	Shared string // bound at /kos-e2e in the guest: step scripts, facts, consoles
	Binary string // the host's copy of the installed kos-upgrade (for --root)
	dir    string
}

// Boot is one boot of the guest.
type Boot struct {
	N        int
	Subvol   string // the default subvolume the "boot loader" booted
	Exit     int    // nspawn's exit code: 0 poweroff, 133 reboot
	Duration time.Duration
	Console  string // everything the guest wrote to its console
}

// Require skips unless the nspawn tier can run here: root, not -short, the
// tools.
func Require(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping boot tests (systemd-nspawn guests) in -short mode")
	}
	testenv.RequireRoot(t)
	testenv.RequireTools(t, Tools...)
	testenv.RequireTools(t, fixture.Tools...)
}

var (
	installOnce sync.Once
	installDir  string
	installErr  error
)

// repoRoot is the module's top directory.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// installTree runs `make install DESTDIR=` once per test process and
// returns the tree, which every guest gets a copy of.
func installTree() (string, error) {
	installOnce.Do(func() {
		installDir, installErr = os.MkdirTemp("", "kos-upgrade-e2e-install-")
		if installErr != nil {
			return
		}
		if installErr = os.Chmod(installDir, 0o755); installErr != nil {
			return
		}
		goTool := "go"
		//lint:ignore SA1019 the toolchain that runs the test is the one to build with, and PATH may not name it
		if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
			goTool = p
		}
		cmd := exec.Command("make", "-s", "-C", repoRoot(), "install", "DESTDIR="+installDir, "GO="+goTool, "GOTAGS="+testenv.HooksTag)
		if out, err := cmd.CombinedOutput(); err != nil {
			installErr = fmt.Errorf("make install DESTDIR=%s: %w\n%s", installDir, err, out)
		}
	})
	return installDir, installErr
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// NewGuest makes a fresh guest: a 3 GiB sparse btrfs image with @ as the
// default subvolume, the cached Debian base, the fixture's 5.8 system, the
// installed kos-upgrade and the scenario driver unit. Everything is undone at
// cleanup.
func NewGuest(t *testing.T) *Guest {
	t.Helper()
	Require(t)
	ctx := context.Background()
	start := time.Now()
	set := fixture.MustBuild(t)
	tarball, err := BaseTarball(ctx, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	tree, err := installTree()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	g := &Guest{Set: set, dir: dir, Root: filepath.Join(dir, "root"), Shared: filepath.Join(dir, "shared"),
		Binary: filepath.Join(tree, "usr/bin/kos-upgrade")}
	g.FS = testenv.NewBtrfs(t, 3072)
	g.FS.MakeDefaultRoot(t, "@", g.Root)
	testenv.Run(t, "tar", "--numeric-owner", "--xattrs", "-C", g.Root, "-xf", tarball)
	if err := fixture.InstallBase(ctx, set, g.Root); err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "cp", "-a", tree+"/.", g.Root+"/")
	// / must be 0755 whatever the copies above carried: a 0700 / locks every
	// system user (messagebus) out and the guest never reaches multi-user.
	if err := os.Chmod(g.Root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(g.Shared, 0o755); err != nil {
		t.Fatal(err)
	}
	if a := os.Getenv(ArtifactsEnv); a != "" {
		t.Cleanup(func() {
			dst := filepath.Join(a, strings.ReplaceAll(t.Name(), "/", "_"))
			os.RemoveAll(dst)
			os.MkdirAll(a, 0o755)
			if out, err := exec.Command("cp", "-a", g.Shared, dst).CombinedOutput(); err != nil {
				t.Logf("cannot keep the artifacts: %v %s", err, out)
			}
		})
	}
	g.WriteFile(t, "etc/systemd/system/kos-e2e.service", driverUnit, 0o644)
	g.Symlink(t, "../kos-e2e.service", "etc/systemd/system/multi-user.target.wants/kos-e2e.service")
	if err := os.WriteFile(filepath.Join(g.Shared, "driver.sh"), []byte(driverScript), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("guest ready in %s (%s)", time.Since(start).Round(time.Millisecond), g.Root)
	return g
}

// WriteFile writes a file into the guest's root (@).
func (g *Guest) WriteFile(t *testing.T, rel, content string, mode os.FileMode) {
	t.Helper()
	if err := putFile(g.Root, rel, content, mode); err != nil {
		t.Fatal(err)
	}
}

// Symlink makes a symlink in the guest's root (@).
func (g *Guest) Symlink(t *testing.T, target, rel string) {
	t.Helper()
	p := filepath.Join(g.Root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}

// Step makes script run (with /bin/sh, as root) in boot n, once the guest
// reached multi-user.target; its first argument is the boot's facts
// directory. The script decides how the boot ends (reboot, poweroff); if it
// exits non-zero the driver powers off. Boots without a step power off.
func (g *Guest) Step(t *testing.T, n int, script string) {
	t.Helper()
	p := filepath.Join(g.Shared, fmt.Sprintf("step-%d.sh", n))
	if err := os.WriteFile(p, []byte("set -x\n"+script), 0o755); err != nil {
		t.Fatal(err)
	}
}

// Kos runs the host's copy of the installed kos-upgrade against the guest's
// root (--root) and returns its stdout; it fails the test on error.
func (g *Guest) Kos(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(g.Binary, append([]string{"--root", g.Root}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kos-upgrade --root %s %s: %v\n%s%s", g.Root, strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// DefaultSubvol returns the path of the default subvolume.
func (g *Guest) DefaultSubvol(t *testing.T) string {
	t.Helper()
	out := testenv.Run(t, "btrfs", "subvolume", "get-default", g.FS.Top)
	i := strings.Index(out, " path ")
	if i < 0 {
		t.Fatalf("cannot parse btrfs subvolume get-default: %q", out)
	}
	return strings.TrimSpace(out[i+len(" path "):])
}

// Subvols lists every subvolume's path.
func (g *Guest) Subvols(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(testenv.Run(t, "btrfs", "subvolume", "list", g.FS.Top), "\n") {
		if i := strings.Index(l, " path "); i >= 0 {
			out = append(out, strings.TrimSpace(l[i+len(" path "):]))
		}
	}
	return out
}

// Run boots the guest until it powers off, at most max times; each boot
// starts the filesystem's default subvolume, mounted without subvol= as a
// kernel without rootflags would mount it. More than max boots is a reboot
// loop and fails the test.
func (g *Guest) Run(t *testing.T, max int) []Boot {
	t.Helper()
	var boots []Boot
	for n := 1; n <= max; n++ {
		b := g.boot(t, n)
		boots = append(boots, b)
		t.Logf("boot %d: %s, exit %d after %s", n, b.Subvol, b.Exit, b.Duration.Round(time.Millisecond))
		switch b.Exit {
		case exitPoweroff:
			return boots
		case exitReboot:
		default:
			t.Fatalf("boot %d of %s: systemd-nspawn exited %d; console:\n%s", n, b.Subvol, b.Exit, tail(b.Console, 60))
		}
	}
	t.Fatalf("reboot loop: the guest still reboots after %d boots (%s); last console:\n%s",
		max, describe(boots), tail(boots[len(boots)-1].Console, 60))
	return nil
}

func describe(boots []Boot) string {
	var s []string
	for _, b := range boots {
		s = append(s, fmt.Sprintf("%d:%s:%d", b.N, b.Subvol, b.Exit))
	}
	return strings.Join(s, " ")
}

func (g *Guest) boot(t *testing.T, n int) Boot {
	t.Helper()
	b := Boot{N: n, Subvol: g.DefaultSubvol(t)}
	mnt := filepath.Join(g.dir, fmt.Sprintf("boot-%d", n))
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "mount", g.FS.Device, mnt)
	defer testenv.UnmountAll(mnt)
	if err := os.WriteFile(filepath.Join(g.Shared, "boot"), []byte(fmt.Sprintf("%d\n", n)), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "systemd-nspawn", "--quiet", "--boot", "--directory", mnt,
		"--register=no", "--keep-unit", "--private-network", "--machine", "kos-e2e",
		"--bind="+g.Shared+":/kos-e2e", "--bind="+g.FS.Device)
	cmd.Env = append(os.Environ(), "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1")
	cmd.Stdin = nil
	start := time.Now()
	out, err := cmd.CombinedOutput()
	b.Duration = time.Since(start)
	b.Console = string(out)
	_ = os.WriteFile(filepath.Join(g.Shared, fmt.Sprintf("console-%d.log", n)), out, 0o644)
	var ee *exec.ExitError
	switch {
	case err == nil:
		b.Exit = 0
	case ctx.Err() != nil:
		t.Fatalf("boot %d of %s did not end within %s; console:\n%s", n, b.Subvol, bootTimeout, tail(b.Console, 60))
	case errors.As(err, &ee):
		b.Exit = ee.ExitCode()
	default:
		t.Fatalf("systemd-nspawn: %v", err)
	}
	return b
}

// Facts are what the driver recorded in boot n (nil when the driver did
// not run in that boot, e.g. the offline boot).
type Facts struct {
	dir string
}

// Facts returns boot n's facts, or nil.
func (g *Guest) Facts(n int) *Facts { return factsIn(g.Shared, fmt.Sprint(n)) }

// factsIn returns the facts of boot n recorded in the shared directory
// (boot-<n>), or nil when the driver did not run in that boot.
func factsIn(shared, n string) *Facts {
	d := filepath.Join(shared, "boot-"+n)
	if !fileExists(d) {
		return nil
	}
	return &Facts{dir: d}
}

// String lists the facts, for failure messages.
func (f *Facts) String() string {
	if f == nil {
		return "(none: the driver did not run in that boot)"
	}
	var b strings.Builder
	ents, _ := os.ReadDir(f.dir)
	for _, e := range ents {
		fmt.Fprintf(&b, "\n--- %s:\n%s", e.Name(), strings.TrimSpace(f.File(e.Name())))
	}
	return b.String()
}

// File returns one fact file's content, "" when missing.
func (f *Facts) File(name string) string {
	b, _ := os.ReadFile(filepath.Join(f.dir, name))
	return string(b)
}

// OSRelease returns a key of the booted /etc/os-release.
func (f *Facts) OSRelease(key string) string {
	for _, l := range strings.Split(f.File("os-release"), "\n") {
		if v, ok := strings.CutPrefix(l, key+"="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}

// Packages returns rpm -qa of the booted system (NAME-VERSION-RELEASE.ARCH).
func (f *Facts) Packages() []string { return strings.Fields(f.File("rpm-qa")) }

// Status is the part of `kos-upgrade status --json` the scenarios check;
// the last result and the boot state are the engine's own records.
type Status struct {
	State struct {
		Status     string              `json:"status"`
		Step       string              `json:"step"`
		Snapshot   string              `json:"snapshot"`
		LastResult *upgrader.Result    `json:"last_result"`
		Boot       *upgrader.BootState `json:"boot"`
	} `json:"state"`
	Armed         bool   `json:"armed"`
	ForeignUpdate string `json:"foreign_update"`
}

// Status decodes the booted system's `kos-upgrade status --json`.
func (f *Facts) Status(t *testing.T) Status {
	t.Helper()
	var s Status
	if err := json.Unmarshal([]byte(f.File("status.json")), &s); err != nil {
		t.Fatalf("kos-upgrade status --json in the guest: %v\nstdout: %s\nstderr: %s", err, f.File("status.json"), f.File("status.err"))
	}
	return s
}

// driverUnit runs the scenario driver once the guest reached
// multi-user.target (never in the offline boot, whose default target is
// system-update.target).
const driverUnit = `[Unit]
Description=kos-upgrade e2e scenario driver
After=multi-user.target

[Service]
Type=simple
ExecStart=/bin/sh /kos-e2e/driver.sh
StandardOutput=journal+console
`

// factsFunc defines the shell function facts DIR, which records the facts
// of the booted system into DIR: both tiers' drivers use it.
const factsFunc = `facts() {
	d=$1
	mkdir -p $d
	cp /etc/os-release $d/os-release
	# /usr/bin/rpm: the fixture's /bin/sh is busybox-static, whose shell prefers its own rpm applet
	/usr/bin/rpm --dbpath /var/lib/rpm -qa --qf '%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}\n' | sort > $d/rpm-qa
	kos-upgrade --json status > $d/status.json 2> $d/status.err; echo $? > $d/status.rc
	kos-upgrade --json history > $d/history.json 2>&1
	if [ -L /system-update ]; then readlink /system-update > $d/system-update
	elif [ -e /system-update ]; then echo "(not a symlink)" > $d/system-update; fi
	findmnt -n -o SOURCE,FSROOT,OPTIONS / > $d/root-mount
	ls /var/lib/kos-upgrade > $d/state-dir 2>&1
	cat /proc/cmdline > $d/cmdline
}
`

// driverScript records the facts of the booted system, then runs this
// boot's step or powers off.
const driverScript = `#!/bin/sh
` + factsFunc + `
n=$(cat /kos-e2e/boot)
d=/kos-e2e/boot-$n
echo "kos-e2e: boot $n reached multi-user.target"
facts $d
if [ -f /kos-e2e/step-$n.sh ]; then
	sh /kos-e2e/step-$n.sh $d > $d/step.log 2>&1
	rc=$?
	echo $rc > $d/step.rc
	[ $rc -eq 0 ] && exit 0
	echo "kos-e2e: step $n failed ($rc), powering off"
fi
systemctl --no-block poweroff
`
