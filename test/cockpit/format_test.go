package cockpit_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// TestFormatJS runs the unit tests of the page's pure helpers
// (format.test.mjs) with node's test runner. Needs node, not root.
func TestFormatJS(t *testing.T) {
	testenv.RequireTools(t, "node")
	cmd := exec.Command("node", "--test", "format.test.mjs")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node --test format.test.mjs: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "# ") { // the summary: # tests, # pass, # fail
			t.Log(line)
		}
	}
}
