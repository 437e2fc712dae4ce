package preflight_test

import (
	"context"
	"slices"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/preflight"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
	"github.com/keyarchos/kos-upgrade/test/el8"
	"github.com/keyarchos/kos-upgrade/test/fixture"
)

// TestCheckPlatformEL8RPMDB runs the platform checks on real rpm databases:
// the fixture's 5.8 system installed by EL8's rpm 4.14.3 (Berkeley DB) and
// by this machine's rpm (sqlite), with the helper's interpreter being
// Debian's python3 (rpm 4.18) or EL8's rpm 4.14.3 bindings under Python 3.6
// (KOS_UPGRADE_PYTHON, as sysroot.Python reads it).
func TestCheckPlatformEL8RPMDB(t *testing.T) {
	bdb := newSys(t)
	r := el8.MustRPM(t)
	if err := fixture.InstallBaseWithRPM(context.Background(), bdb.set, bdb.root, r.Bin("rpm")); err != nil {
		t.Fatal(err)
	}
	sqlite := newSys(t).install()
	for _, tc := range []struct {
		name    string
		root    *sys
		python  string // "" keeps the default helper interpreter
		backend string // the root's, as collected
		// key must fire with severity (and inhibit or not); quiet must not
		// fire above info.
		key       string
		severity  preflight.Severity
		inhibitor bool
		quiet     []string
	}{
		{name: "Berkeley DB, Debian's rpm: read-only", root: bdb, backend: "bdb",
			key: preflight.KeyRPMDBReadOnly, severity: preflight.Medium, quiet: []string{preflight.KeyRPMDBUnsupported}},
		{name: "Berkeley DB, EL8's rpm (bytes)", root: bdb, python: r.Python(el8.Bytes), backend: "bdb",
			key: preflight.KeyRPMDB, severity: preflight.Info, quiet: []string{preflight.KeyRPMDBUnsupported, preflight.KeyRPMDBReadOnly}},
		{name: "Berkeley DB, EL8's rpm (str)", root: bdb, python: r.Python(el8.Str), backend: "bdb",
			key: preflight.KeyRPMDB, severity: preflight.Info, quiet: []string{preflight.KeyRPMDBUnsupported, preflight.KeyRPMDBReadOnly}},
		{name: "sqlite, EL8's rpm: cannot open it", root: sqlite, python: r.Python(el8.Bytes), backend: "sqlite",
			key: preflight.KeyRPMDBUnsupported, severity: preflight.High, inhibitor: true},
		{name: "sqlite, Debian's rpm", root: sqlite, backend: "sqlite",
			key: preflight.KeyRPMDB, severity: preflight.Info, quiet: []string{preflight.KeyRPMDBUnsupported, preflight.KeyRPMDBReadOnly}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.python != "" {
				t.Setenv("KOS_UPGRADE_PYTHON", tc.python)
			}
			a, err := preflight.ParseAnswerFlags(nil)
			if err != nil {
				t.Fatal(err)
			}
			rep, f, err := preflight.Run(context.Background(), preflight.Options{
				Root: sysroot.Root{Dir: tc.root.root}, Snapshot: preflight.SnapshotFacts{Requested: "auto", Backend: "btrfs"},
				State: preflight.StateFacts{Status: "idle"},
			}, a)
			if err != nil {
				t.Fatal(err)
			}
			validate(t, rep)
			db := f.Platform.RPMDB
			if !slices.Equal(db.Backends, []string{tc.backend}) {
				t.Errorf("backends %v, want %s (files %v)", db.Backends, tc.backend, db.Files)
			}
			if tc.python != "" && (db.Helper != tc.python || db.HelperRPM != "4.14.3" || db.HelperBackend != "bdb") {
				t.Errorf("helper %s: rpm %q backend %q, want 4.14.3 bdb (%v)", db.Helper, db.HelperRPM, db.HelperBackend, f.Errors)
			}
			fd := rep.Finding(tc.key)
			if fd == nil || fd.Severity != tc.severity || fd.Inhibitor() != tc.inhibitor {
				t.Errorf("%s = %+v, want %s inhibitor %v; report %s", tc.key, fd, tc.severity, tc.inhibitor, keys(rep))
			}
			for _, k := range tc.quiet {
				wantQuiet(t, rep, k)
			}
		})
	}
}
