package preflight_test

import (
	"context"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/pkg/preflight"
	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
	"github.com/keyarchos/kos-upgrade/test/fixture"
)

// centosFacts is a CentOS Linux 8 system assessed for a migration to KOS
// 5.9 with the built-in map's shape.
func centosFacts() *preflight.Facts {
	f := healthyFacts()
	f.Source = preflight.Release{ID: "centos", VersionID: "8", Name: "CentOS Linux"}
	f.Migration = &preflight.Migration{
		Target: "kos", TargetName: "KeyarchOS", Map: "built-in:centos-to-kos.json",
		SourceIDs: []string{"centos"}, SourceVersions: []string{"8"}, TargetEL: 8,
		Request: &pkgmgr.Migration{Swaps: []pkgmgr.Swap{{Kind: "release", From: []string{"centos-release"}, To: []string{"kos-release"}, Required: true}}},
	}
	f.Assessment.Migration = []pkgmgr.Swap{
		{Kind: "release", From: []string{"centos-release", "centos-repos"}, To: []string{"kos-release"}, Reason: "release package"},
		{Kind: "rename", From: []string{"centos-logos"}, To: []string{"kos-logos"}, Reason: "renamed to kos-logos in KeyarchOS"},
		{Kind: "remove", From: []string{"centos-only-tool"}, Reason: "a CentOS-only tool"},
	}
	return f
}

func TestMigrationChecks(t *testing.T) {
	tests := []struct {
		name      string
		mutate    func(f *preflight.Facts)
		key       string
		inhibitor bool
		contains  []string
	}{
		{name: "supported", key: preflight.KeyMigration, contains: []string{
			"CentOS Linux 8 to KeyarchOS 5.9", "rename: centos-logos → kos-logos (renamed to kos-logos in KeyarchOS)",
			"remove: centos-only-tool (a CentOS-only tool)", "release: centos-release + centos-repos → kos-release"}},
		{name: "el7 is a major-version jump", mutate: func(f *preflight.Facts) {
			f.Source = preflight.Release{ID: "centos", VersionID: "7", Name: "CentOS Linux"}
		}, key: preflight.KeyMigrationMajorVersion, inhibitor: true, contains: []string{
			"el7 → el8", "own rpm and dnf", "Leapp", "first upgrade CentOS Linux 7 to EL8", "migration.md"}},
		{name: "el7 minor version", mutate: func(f *preflight.Facts) {
			f.Source = preflight.Release{ID: "centos", VersionID: "7.9.2009", Name: "CentOS Linux"}
		}, key: preflight.KeyMigrationMajorVersion, inhibitor: true, contains: []string{"el7 → el8"}},
		{name: "el9 would downgrade", mutate: func(f *preflight.Facts) {
			f.Source = preflight.Release{ID: "centos", VersionID: "9", Name: "CentOS Stream"}
		}, key: preflight.KeyMigrationMajorVersion, inhibitor: true, contains: []string{"downgrade"}},
		{name: "distribution the map does not cover", mutate: func(f *preflight.Facts) {
			f.Source = preflight.Release{ID: "rocky", VersionID: "8.9", Name: "Rocky Linux"}
		}, key: preflight.KeyMigrationUnsupported, inhibitor: true, contains: []string{`"rocky"`, "--migration-map"}},
		{name: "no map", mutate: func(f *preflight.Facts) {
			f.Source = preflight.Release{ID: "ubuntu", VersionID: "22.04", Name: "Ubuntu"}
			f.Migration = &preflight.Migration{Target: "kos", MapError: "no migration map from ubuntu to kos"}
		}, key: preflight.KeyMigrationUnsupported, inhibitor: true, contains: []string{"no migration map from ubuntu"}},
		{name: "upgrade of another distribution", mutate: func(f *preflight.Facts) {
			f.Migration = nil
		}, key: preflight.KeyOtherDistribution, inhibitor: true, contains: []string{"CentOS Linux 8, not KOS", "kos-upgrade check --to kos-5.9"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := centosFacts()
			if tc.mutate != nil {
				tc.mutate(f)
			}
			r := evaluate(f)
			validate(t, r)
			fd := r.Finding(tc.key)
			if fd == nil {
				t.Fatalf("no %s finding; got %s", tc.key, keysOf(r))
			}
			if fd.Inhibitor() != tc.inhibitor || (r.Err() != nil) != tc.inhibitor {
				t.Errorf("%s: inhibitor %v, report error %v; want %v", tc.key, fd.Inhibitor(), r.Err(), tc.inhibitor)
			}
			var b strings.Builder
			r.WriteText(&b)
			for _, c := range tc.contains {
				if !strings.Contains(b.String(), c) {
					t.Errorf("report does not say %q:\n%s", c, b.String())
				}
			}
			// A migration is not "the same release".
			if r.Finding(preflight.KeySameRelease) != nil {
				t.Errorf("%s fired for a migration", preflight.KeySameRelease)
			}
		})
	}
}

func keysOf(r *preflight.Report) string {
	var k []string
	for _, f := range r.Findings {
		k = append(k, f.Key)
	}
	return strings.Join(k, ", ")
}

// On a real CentOS 7 root, the assessment refuses without asking dnf.
func TestCheckCentOS7Refused(t *testing.T) {
	s := newSys(t)
	if err := fixture.InstallCentOS(context.Background(), s.set, s.root); err != nil {
		t.Fatal(err)
	}
	s.write("etc/os-release", "NAME=\"CentOS Linux\"\nID=\"centos\"\nVERSION_ID=\"7\"\n")
	m := &preflight.Migration{Target: "kos", TargetName: "KeyarchOS", Map: "m", SourceIDs: []string{"centos"},
		SourceVersions: []string{"8"}, TargetEL: 8, Request: &pkgmgr.Migration{}}
	pm := &failingAssessor{t: t}
	r, f, err := preflight.Run(context.Background(), preflight.Options{
		Root: sysroot.Root{Dir: s.root}, To: "5.9", Repos: s.repos(fixture.Repo59), Migration: m, PM: pm,
		Snapshot: preflight.SnapshotFacts{Requested: "auto", Backend: "btrfs"},
		State:    preflight.StateFacts{Status: "idle"},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	validate(t, r)
	wantInhibitor(t, r, preflight.KeyMigrationMajorVersion)
	if f.Assessment != nil || f.AssessError != "" {
		t.Errorf("the unsupported migration was resolved: %+v %s", f.Assessment, f.AssessError)
	}
}

type failingAssessor struct{ t *testing.T }

func (a *failingAssessor) Assess(context.Context, pkgmgr.AssessRequest, progress.Sink) (*pkgmgr.Assessment, error) {
	a.t.Error("Assess called for a migration the checks refuse")
	return nil, nil
}
