package el8_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/test/el8"
)

// TestRPM checks the built rpm 4.14.3: the program, a Berkeley DB rpmdb it
// initialises, and both flavours of the Python bindings imported isolated.
func TestRPM(t *testing.T) {
	r := el8.MustRPM(t)
	out, err := exec.Command(r.Bin("rpm"), "--version").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "RPM version 4.14.3" {
		t.Fatalf("rpm --version: %v: %s", err, out)
	}
	root := t.TempDir()
	if out, err := exec.Command(r.Bin("rpm"), "--root", root, "--initdb").CombinedOutput(); err != nil {
		t.Fatalf("rpm --initdb: %v: %s", err, out)
	}
	if out, err := exec.Command("db5.3_dump", "-p", root+"/var/lib/rpm/Packages").CombinedOutput(); err != nil {
		t.Errorf("the rpmdb is not Berkeley DB: %v: %s", err, out)
	}
	for _, f := range el8.Flavours {
		t.Run(string(f), func(t *testing.T) {
			out, err := exec.Command(r.Python(f), "-I", "-c", `import rpm, sys
ts = rpm.TransactionSet(sys.argv[1])
print(rpm.__version__, len(list(ts.dbMatch())))`, root).CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != "4.14.3 0" {
				t.Errorf("python (%s): %v: %s", f, err, out)
			}
		})
	}
}
