package pkgmgr

import (
	"context"

	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// Installed is one installed package of a host.
type Installed struct {
	Name  string `json:"name"`
	NEVRA string `json:"nevra"`
	Arch  string `json:"arch"`
}

// HostPackages is what a host needs resolved elsewhere: its installed
// packages, the ids of its enabled repositories and its base architecture.
type HostPackages struct {
	Installed []Installed `json:"installed"`
	Repos     []string    `json:"repos"`
	Arch      string      `json:"arch"`
}

// HostPackages reads root's installed packages (from its rpmdb) and the ids
// of the repositories its configuration enables for release (no metadata,
// no network).
func (d *DNF) HostPackages(ctx context.Context, root, release string) (*HostPackages, error) {
	return callHelper[HostPackages](ctx, d, "needs", "the installed packages",
		resolveReq{Root: root, DBPath: sysroot.Root{Dir: root}.DBPathRel(), Release: release}, nil)
}

// BundleRequest asks what a host with the Installed packages needs for its
// upgrade to Release from Repos.
type BundleRequest struct {
	// Scratch is an empty directory dnf may use as its installroot.
	Scratch   string
	Release   string
	Repos     []Repo
	Installed []Installed
	CacheDir  string
	StageDir  string
}

// BundleResolution is the packages a host needs (downloaded into the
// staging directory, sha256 and size recorded) and the installed packages
// no target repository has (kept by the upgrade, as distro-sync keeps them).
type BundleResolution struct {
	Items   []Item   `json:"items"`
	Missing []string `json:"missing"`
}

type bundleReq struct {
	resolveReq
	Installed []Installed `json:"installed"`
}

// BundleResolve resolves with dnf's solver, on the target repositories
// alone, every package of req.Installed (or what obsoletes it) at the target
// version with its dependencies, leaves out what the host has in exactly
// that version, and downloads the rest into req.StageDir (re-using files
// there: a package several hosts need is downloaded once).
func (d *DNF) BundleResolve(ctx context.Context, req BundleRequest, sink progress.Sink) (*BundleResolution, error) {
	return callHelper[BundleResolution](ctx, d, "bundle-resolve", "the bundle resolution", bundleReq{
		resolveReq: resolveReq{Root: req.Scratch, DBPath: "/var/lib/rpm", Release: req.Release, Repos: req.Repos,
			CacheDir: req.CacheDir, StageDir: req.StageDir},
		Installed: req.Installed,
	}, sink)
}
