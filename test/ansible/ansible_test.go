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

	"github.com/keyarchos/kos-upgrade/test/el8"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// systemPython is Debian's Python, the one ansible-core is installed for
// (the python3 on PATH may be another).
const systemPython = "/usr/bin/python3"

// TestModules runs ansible/tests/unit (argument handling, check mode,
// idempotence, the verdict reading, the fleet report and its schema,
// ansible-doc of every module) against the collection as ansible-galaxy
// builds and installs it. The modules run under Python 3.6, the managed
// KOS host's platform-python (run directly, and by ansible-playbook as the
// hosts' ansible_python_interpreter), the controller under Debian's.
func TestModules(t *testing.T) {
	testenv.RequireTools(t, systemPython, "ansible-galaxy", "ansible-doc", el8.Python36())
	py36 := el8.Python36()
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
	// What a module runs with on the managed host: the collection and
	// ansible's module_utils (ansible-core's package, linked alone: not
	// the rest of Debian's Python 3.11 packages).
	ansiblePkg := strings.TrimSpace(testenv.Run(t, systemPython, "-c", "import ansible, os; print(os.path.dirname(ansible.__file__))"))
	modPath := filepath.Join(tmp, "module-path")
	if err := os.MkdirAll(modPath, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(ansiblePkg, filepath.Join(modPath, "ansible")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(systemPython, "-m", "unittest", "-v", "ansible_collections.kos.upgrade.tests.unit.test_modules")
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(), "PYTHONPATH="+coll, "KOS_ANSIBLE_COLLECTIONS="+coll, "PYTHONDONTWRITEBYTECODE=1",
		"KOS_MODULE_PYTHON="+py36, "KOS_MODULE_PYTHONPATH="+coll+":"+modPath, "KOS_MODULE_PYTHON_VERSION=3.6")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the module unit tests failed: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "skipped") {
		t.Fatalf("a module unit test skipped:\n%s", out)
	}
	t.Logf("module unit tests: %s", time.Since(start).Round(time.Second))
}
