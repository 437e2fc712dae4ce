package ansible

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// fingerprintPy prints the module utils' rpmdb fingerprint of the root in
// argv[1], run with the real rpm.
const fingerprintPy = `
import shutil, subprocess, sys
from ansible_collections.kos.upgrade.plugins.module_utils.kos_upgrade import rpmdb_fingerprint

class Module(object):
    def get_bin_path(self, name, required=False, opt_dirs=None):
        return shutil.which(name)

    def run_command(self, argv, environ_update=None):
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
        return p.returncode, p.stdout, p.stderr

print(rpmdb_fingerprint(Module(), sys.argv[1]))
`

// TestFingerprintMatchesHelper checks that kos_upgrade_prepare's idempotence
// reads the rpmdb as kos-upgrade does: the module utils' fingerprint (rpm
// -qa) of a fixture system equals the helper's (librpm), gpg-pubkey
// packages (no arch) included.
func TestFingerprintMatchesHelper(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, systemPython, "rpm")
	set := fixture.MustBuild(t)
	ctx := context.Background()
	root := t.TempDir()
	if err := fixture.InstallBase(ctx, set, root); err != nil {
		t.Fatal(err)
	}
	want, err := pkgmgr.NewDNF(nil).Fingerprint(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	// The collection as Python finds it: ansible_collections/kos/upgrade.
	path := t.TempDir()
	if err := os.MkdirAll(filepath.Join(path, "ansible_collections", "kos"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(testenv.RepoDir(t), "ansible"), filepath.Join(path, "ansible_collections", "kos", "upgrade")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(systemPython, "-c", fingerprintPy, root)
	cmd.Env = append(os.Environ(), "PYTHONPATH="+path, "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("module utils' fingerprint: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != want {
		t.Errorf("the modules' rpmdb fingerprint is %s, kos-upgrade's %s", got, want)
	}
	if qa := testenv.Run(t, "rpm", "--root", root, "--dbpath", "/var/lib/rpm", "-q", "gpg-pubkey"); !strings.HasPrefix(qa, "gpg-pubkey") {
		t.Errorf("the fixture system has no gpg-pubkey package to check the no-arch case with: %s", qa)
	}
}
