package upgrader

import (
	"context"
	"fmt"

	"github.com/keyarchos/kos-upgrade/pkg/bundle"
	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
)

// hostPackager is the part of the package backend ExportNeeds uses
// (pkgmgr.DNF).
type hostPackager interface {
	HostPackages(ctx context.Context, root, release string) (*pkgmgr.HostPackages, error)
}

// ExportNeeds writes to path what this system needs resolved on a
// connected machine for an upgrade to release to (prepare --export-needs,
// docs/iso.md): its installed packages, enabled repository ids,
// architecture, release and machine id. Nothing is changed but path.
func (e *Engine) ExportNeeds(ctx context.Context, to, path string) (*bundle.Needs, error) {
	if !ValidVersion(to) {
		return nil, fmt.Errorf("cannot export needs: %q is not a release version (for example --to 5.9)", to)
	}
	version := targetVersion(to)
	hp, ok := e.PM.(hostPackager)
	if !ok {
		return nil, fmt.Errorf("cannot export needs: the package backend cannot list the installed packages")
	}
	source, err := readRelease(e.Root.Dir)
	if err != nil {
		return nil, fmt.Errorf("cannot export needs: %w", err)
	}
	pkgs, err := hp.HostPackages(ctx, e.Root.Dir, version)
	if err != nil {
		return nil, fmt.Errorf("cannot export needs: %w", err)
	}
	n := &bundle.Needs{
		Version: bundle.NeedsVersion, CreatedAt: e.now().UTC(), MachineID: readMachineID(e.Root.Dir), Arch: pkgs.Arch,
		Release: bundle.Release{ID: source.ID, VersionID: source.VersionID, Name: source.Name},
		Target:  version, Repos: pkgs.Repos, Installed: pkgs.Installed,
	}
	if n.Repos == nil {
		n.Repos = []string{}
	}
	if err := n.Validate(); err != nil {
		return nil, fmt.Errorf("cannot export needs: %w", err)
	}
	if err := n.Write(path); err != nil {
		return nil, err
	}
	return n, nil
}
