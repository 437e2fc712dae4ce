package upgrader_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// resolveOnly is the dnf backend without its Downloader and Assessor
// sides: prepare as it was before the assessment's transaction was
// reused (preflight assesses with a dnf of its own, resolve resolves).
type resolveOnly struct{ pkgmgr.Manager }

// Prepare runs dnf's solver once: the transaction the assessment resolved
// is downloaded for the plan, not resolved again, and the plan is the one
// prepare made when it resolved twice.
func TestPrepareResolvesOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping real-component test in -short mode")
	}
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "rpm", "rpmkeys", "/usr/bin/python3")
	ctx := context.Background()
	set := fixture.MustBuild(t)
	root := t.TempDir()
	if err := fixture.InstallBase(ctx, set, root); err != nil {
		t.Fatal(err)
	}
	r, err := sysroot.New(root)
	if err != nil {
		t.Fatal(err)
	}
	plans := map[string]*upgrader.Plan{}
	for _, tc := range []struct {
		name        string
		pm          func() pkgmgr.Manager
		resolutions int
		downloads   int
	}{
		// First: the stage directory is empty, the download is real.
		{name: "reused", pm: func() pkgmgr.Manager { return pkgmgr.NewDNF(nil) }, resolutions: 1, downloads: 1},
		{name: "resolved again", pm: func() pkgmgr.Manager { return resolveOnly{pkgmgr.NewDNF(nil)} }, resolutions: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sink := &recordingSink{}
			e := upgrader.New(r, sink, nil)
			e.PM = tc.pm()
			p, err := e.Prepare(ctx, upgrader.PrepareOptions{To: "5.9", Snapshot: "none"})
			if err != nil {
				t.Fatalf("prepare: %v", err)
			}
			resolutions, downloads := 0, 0
			for _, ev := range sink.events {
				if ev.Step == "resolve" && strings.HasPrefix(ev.Message, "resolving the upgrade with dnf") {
					resolutions++
				}
				if ev.Step == "resolve" && strings.HasPrefix(ev.Message, "downloading the transaction the assessment resolved") {
					downloads++
				}
			}
			if resolutions != tc.resolutions || downloads != tc.downloads {
				t.Errorf("dnf resolved %d times and downloaded a resolved transaction %d times, want %d and %d",
					resolutions, downloads, tc.resolutions, tc.downloads)
			}
			// The staged files are the plan's (checksums): arm checks them.
			if _, err := e.Arm(ctx); err != nil {
				t.Fatalf("arm: %v", err)
			}
			if err := e.Cancel(ctx); err != nil {
				t.Fatalf("cancel: %v", err)
			}
			plans[tc.name] = p
		})
	}
	a, b := plans["reused"], plans["resolved again"]
	if a == nil || b == nil {
		t.Fatal("a prepare failed")
	}
	if len(a.Transaction) == 0 {
		t.Fatal("empty transaction")
	}
	t.Logf("plan: %v", a.Counts())
	// The same plan but for its id, its time and its report's time.
	for _, p := range []*upgrader.Plan{a, b} {
		p.ID, p.CreatedAt, p.Report = "", time.Time{}, nil
	}
	ja, _ := json.MarshalIndent(a, "", " ")
	jb, _ := json.MarshalIndent(b, "", " ")
	if string(ja) != string(jb) {
		t.Errorf("the plan with the assessment's transaction differs from the one resolved again:\n%s\nwant\n%s", ja, jb)
	}
}
