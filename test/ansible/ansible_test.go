// Package ansible tests the Ansible collection kos.upgrade (ansible/):
// its modules' unit tests against a fake kos-upgrade, and the collection
// built with ansible-galaxy. The real fleet (QEMU guests) is in test/e2e.
package ansible

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// systemPython is Debian's Python, the one ansible-core is installed for
// (the python3 on PATH may be another).
const systemPython = "/usr/bin/python3"

// TestModules runs ansible/tests/unit (argument handling, check mode,
// idempotence, the verdict reading, the fleet report and its schema,
// ansible-doc of every module) against the collection as ansible-galaxy
// builds and installs it.
func TestModules(t *testing.T) {
	testenv.RequireTools(t, systemPython, "ansible-galaxy", "ansible-doc")
	if err := exec.Command(systemPython, "-c", "import ansible, jsonschema").Run(); err != nil {
		testenv.Skip(t, "ansible-core or python3-jsonschema is not installed for "+systemPython)
	}
	start := time.Now()
	repo := testenv.RepoDir(t)
	tmp := t.TempDir()
	testenv.Run(t, "ansible-galaxy", "collection", "build", "--output-path", tmp, filepath.Join(repo, "ansible"))
	art, _ := filepath.Glob(filepath.Join(tmp, "kos-upgrade-*.tar.gz"))
	if len(art) != 1 {
		t.Fatalf("ansible-galaxy built %v, want one kos-upgrade artifact", art)
	}
	coll := filepath.Join(tmp, "coll")
	testenv.Run(t, "ansible-galaxy", "collection", "install", "-p", coll, art[0])
	cmd := exec.Command(systemPython, "-m", "unittest", "-v", "ansible_collections.kos.upgrade.tests.unit.test_modules")
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(), "PYTHONPATH="+coll, "KOS_ANSIBLE_COLLECTIONS="+coll, "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the module unit tests failed: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "skipped") {
		t.Fatalf("a module unit test skipped:\n%s", out)
	}
	t.Logf("module unit tests: %s", time.Since(start).Round(time.Second))
}
