package dbusapi_test

import (
	"strings"
	"testing"
	"time"
)

// TestPrepareJSONThroughDaemonShowsTheReport: prepare --json through the
// daemon prints the assessment that stopped it, as it does in-process and
// as check --json does (here: a downgrade, which is inhibited).
func TestPrepareJSONThroughDaemonShowsTheReport(t *testing.T) {
	s := newSystem(t)
	b := startBus(t)
	startDaemonProc(t, b, s.Root, nil)
	sigs := watchSignals(t, b.connect(t))
	out, err := cli(t, b, s.Root, "prepare", "--to", "5.7", "--json")
	if err == nil {
		t.Fatalf("prepare --to 5.7 on 5.8 succeeded:\n%s", out)
	}
	// The daemon ran it: its Finished signal says it failed.
	if ok, msg := sigs.waitFinished(t, 0, time.Minute); ok || !strings.Contains(msg, "release.downgrade") {
		t.Errorf("the daemon's prepare: finished ok=%v %q", ok, msg)
	}
	if !strings.Contains(out, `"key": "release.downgrade"`) || !strings.Contains(out, `"inhibited": true`) {
		t.Errorf("prepare --json through the daemon printed no report:\n%s", out)
	}
}
