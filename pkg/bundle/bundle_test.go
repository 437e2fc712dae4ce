package bundle_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/bundle"
	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
)

func goodNeeds() *bundle.Needs {
	return &bundle.Needs{
		Version: bundle.NeedsVersion, MachineID: "0123456789abcdef0123456789abcdef", Arch: "x86_64",
		Release: bundle.Release{ID: "kos", VersionID: "5.8"}, Target: "5.9", Repos: []string{"kos"},
		Installed: []pkgmgr.Installed{{Name: "app", NEVRA: "app-0:1.0-1.noarch", Arch: "noarch"}},
	}
}

// TestReadNeeds: a needs file comes from another host; what a bundle
// relies on is checked, and a file written by Write reads back.
func TestReadNeeds(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(n *bundle.Needs)
		raw    string // instead of the needs
		want   string // in the error; "" for none
	}{
		{name: "good", mutate: func(*bundle.Needs) {}},
		{name: "newer version", mutate: func(n *bundle.Needs) { n.Version = 2 }, want: "needs version 2"},
		{name: "no machine id", mutate: func(n *bundle.Needs) { n.MachineID = "" }, want: "machine id"},
		{name: "target not a version", mutate: func(n *bundle.Needs) { n.Target = "5.9; rm" }, want: "not a release version"},
		{name: "no package", mutate: func(n *bundle.Needs) { n.Installed = nil }, want: "no installed package"},
		{name: "package name with a slash", mutate: func(n *bundle.Needs) {
			n.Installed = []pkgmgr.Installed{{Name: "../x", NEVRA: "../x-0:1-1.noarch", Arch: "noarch"}}
		}, want: "not a package NEVRA"},
		{name: "NEVRA of another name", mutate: func(n *bundle.Needs) {
			n.Installed = []pkgmgr.Installed{{Name: "app", NEVRA: "evil-0:1-1.noarch", Arch: "noarch"}}
		}, want: "not a package NEVRA"},
		{name: "unknown field", raw: `{"version": 1, "secret": "x"}`, want: "unknown field"},
		{name: "not JSON", raw: "needs", want: "cannot read needs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "needs.json")
			if tc.raw != "" {
				os.WriteFile(p, []byte(tc.raw), 0o644)
			} else {
				n := goodNeeds()
				tc.mutate(n)
				if err := n.Write(p); err != nil {
					t.Fatal(err)
				}
			}
			n, err := bundle.ReadNeeds(p)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("read: %v", err)
			case tc.want == "" && n.Installed[0].NEVRA != "app-0:1.0-1.noarch":
				t.Errorf("read back %+v", n)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
}

// TestBuildRefusals: what Build refuses before resolving anything.
func TestBuildRefusals(t *testing.T) {
	repo := []pkgmgr.Repo{{ID: "kos", BaseURL: "file:///srv/kos"}}
	other := goodNeeds()
	other.Target = "6.0"
	for _, tc := range []struct {
		name string
		opts bundle.Options
		want string
	}{
		{name: "no needs", opts: bundle.Options{Repos: repo}, want: "no needs file"},
		{name: "no repository", opts: bundle.Options{Needs: []*bundle.Needs{goodNeeds()}}, want: "no target repository"},
		{name: "different targets", opts: bundle.Options{Needs: []*bundle.Needs{goodNeeds(), other}, Repos: repo}, want: "different releases"},
		{name: "one host twice", opts: bundle.Options{Needs: []*bundle.Needs{goodNeeds(), goodNeeds()}, Repos: repo}, want: "given twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Out = filepath.Join(t.TempDir(), "b.iso")
			if _, err := bundle.Build(context.Background(), tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
			if _, err := os.Stat(tc.opts.Out); !os.IsNotExist(err) {
				t.Errorf("an image was written")
			}
		})
	}
}
