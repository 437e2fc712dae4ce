package testenv_test

import (
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// demoTools are the programs and files `bash test/run.sh demo` (make demo:
// test/sandbox) uses: the fixture build, dnf's Python API, the btrfs
// sandbox on a loop device.
var demoTools = append([]string{
	"make", "btrfs", "mkfs.btrfs", "losetup", "mount", "umount", "findmnt",
	"/usr/bin/python3", "/usr/lib/python3/dist-packages/dnf/__init__.py",
}, fixture.Tools...)

// demoNeed reads demo_need=( … ) from test/run.sh with bash itself.
func demoNeed(t *testing.T, runSh string) []string {
	t.Helper()
	out, err := exec.Command("bash", "-c", `eval "$(grep '^demo_need=' "$1")" && printf '%s\n' "${demo_need[@]}"`, "bash", runSh).Output()
	if err != nil {
		t.Fatalf("demo_need from %s: %v", runSh, err)
	}
	return strings.Fields(string(out))
}

// TestDemoInstallsOnlyWhatItNeeds: `bash test/run.sh demo` installs the
// demo's packages, which provide every tool the demo runs, and none of the
// heavy ones only tests need (QEMU, a browser, Cockpit).
func TestDemoInstallsOnlyWhatItNeeds(t *testing.T) {
	testenv.RequireTools(t, "bash", "dpkg", "dpkg-query", "apt-cache")
	runSh := filepath.Join(testenv.RepoDir(t), "test", "run.sh")
	demo := demoNeed(t, runSh)
	if len(demo) == 0 {
		t.Fatal("no demo_need list in test/run.sh")
	}
	all := runShPackages(t, runSh)
	for _, p := range demo {
		if !slices.Contains(all, p) {
			t.Errorf("%s is in demo_need but not in need: the test suite would lack it", p)
		}
	}
	have := installedWith(t, demo)
	for p := range basePackages(t) {
		have[p] = true
	}
	for _, heavy := range []string{"qemu-system-x86", "ovmf", "chromium", "cockpit-ws", "cockpit-bridge", "nodejs", "debootstrap", "dracut"} {
		if have[heavy] {
			t.Errorf("the demo installs %s", heavy)
		}
	}
	for _, tool := range demoTools {
		p := tool
		if !filepath.IsAbs(p) {
			var err error
			if p, err = exec.LookPath(tool); err != nil {
				t.Errorf("%s is not installed here", tool)
				continue
			}
		}
		owned := false
		for _, c := range candidates(p) {
			for _, pkgs := range owners([]string{c}) {
				for _, pkg := range pkgs {
					owned = owned || have[pkg]
				}
			}
		}
		if !owned {
			t.Errorf("the demo runs %s (%s), which no package demo_need installs provides", tool, p)
		}
	}
}
