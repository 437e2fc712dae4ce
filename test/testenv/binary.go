package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var (
	binOnce sync.Once
	binPath string
	binErr  string
)

// HooksTag is the build tag of the test hooks (execlog.TestHooks): every
// kos-upgrade a test runs is built with it, the product never is.
const HooksTag = "kostesthooks"

// Binary builds the kos-upgrade binary once per test process, in a
// directory every user may traverse, and returns its path. The directory
// stays until the process ends (os.TempDir is cleaned by the test runner's
// machine, not by each test).
func Binary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kos-upgrade-bin-")
		if err != nil {
			binErr = err.Error()
			return
		}
		os.Chmod(dir, 0o755)
		p := filepath.Join(dir, "kos-upgrade")
		cmd := exec.Command("go", "build", "-tags", HooksTag, "-o", p, "github.com/keyarchos/kos-upgrade/cmd/kos-upgrade")
		cmd.Dir = RepoDir(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = err.Error() + "\n" + string(out)
			return
		}
		binPath = p
	})
	if binErr != "" {
		t.Fatalf("cannot build kos-upgrade: %s", binErr)
	}
	return binPath
}
