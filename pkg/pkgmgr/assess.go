package pkgmgr

import (
	"context"

	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// AssessRequest asks what an upgrade of Root to Release would do, without
// downloading anything.
type AssessRequest struct {
	Root     string
	Release  string
	Repos    []Repo // replace the system's repository configuration when not empty
	CacheDir string // dnf's metadata cache
	// Migration adds the swaps of a migration to the distro-sync.
	Migration *Migration
}

// RepoInfo is an enabled repository of the target release.
type RepoInfo struct {
	ID       string   `json:"id"`
	Name     string   `json:"name,omitempty"`
	GPGCheck bool     `json:"gpgcheck"`
	GPGKeys  []string `json:"gpgkey,omitempty"`
	BaseURLs []string `json:"baseurl,omitempty"`
}

// KernelInfo describes the kernel the upgraded system boots.
type KernelInfo struct {
	NEVRA        string `json:"nevra"`
	Name         string `json:"name"`
	Version      string `json:"version"` // version-release.arch, the /lib/modules directory name
	DownloadSize int64  `json:"download_size"`
	// Installed is true when the system has this very kernel already.
	Installed bool `json:"installed"`
	// InTransaction is true when the upgrade installs it.
	InTransaction bool `json:"in_transaction"`
	// FilesKnown is false when the repository metadata gave no file list
	// (filelists not loaded): Modules is then empty and means nothing.
	FilesKnown bool     `json:"files_known"`
	Modules    []string `json:"modules,omitempty"` // module files under /lib/modules
}

// Assessment is dnf's view of the upgrade, resolved but not downloaded.
type Assessment struct {
	// Items is the transaction, as Resolution.Items but without File and
	// SHA256; Size is the package's download size. Empty when Problems
	// is not.
	Items []Item `json:"items"`
	// Problems are dnf's dependency problems, one per line, when the
	// upgrade cannot be resolved.
	Problems []string   `json:"problems"`
	Repos    []RepoInfo `json:"repos"`
	GPGKeys  []string   `json:"gpg_keys"`
	// Unavailable names installed packages that no enabled repository of
	// the target release has (by name).
	Unavailable  []string    `json:"unavailable"`
	DownloadSize int64       `json:"download_size"`
	InstallSize  int64       `json:"install_size"` // unpacked size of every package installed
	EraseSize    int64       `json:"erase_size"`   // installed size of every package erased or replaced
	Kernel       *KernelInfo `json:"kernel"`
	// Migration lists the swaps that applied (as Resolution.Migration).
	Migration []Swap `json:"migration,omitempty"`
}

// Assess runs the helper's assess command: dnf's solver on a distro-sync of
// req.Root to req.Release, metadata only. It changes nothing in req.Root and
// downloads no package; dependency problems are data, not an error.
func (d *DNF) Assess(ctx context.Context, req AssessRequest, sink progress.Sink) (*Assessment, error) {
	root := sysroot.Root{Dir: req.Root}
	return callHelper[Assessment](ctx, d, "assess", "the assessment", resolveReq{
		Root: req.Root, DBPath: root.DBPathRel(), Release: req.Release, Repos: req.Repos, CacheDir: req.CacheDir,
		Migration: req.Migration,
	}, sink)
}
