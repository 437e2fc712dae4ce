// Package pkgmgr is the package backend of kos-upgrade: it resolves an
// upgrade with dnf's own solver, stages and verifies the packages, tests the
// transaction and, offline, runs exactly the planned transaction from the
// staged files.
package pkgmgr

import (
	"context"
	"fmt"
	"regexp"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/progress"
)

// Actions of a transaction item.
const (
	ActionInstall   = "install"   // new package
	ActionUpgrade   = "upgrade"   // replaces an older version of itself
	ActionDowngrade = "downgrade" // replaces a newer version of itself
	ActionReinstall = "reinstall"
	ActionRemove    = "remove"    // erased, nothing replaces it
	ActionObsoleted = "obsoleted" // erased because an installed package obsoletes it
)

// Item is one element of the transaction.
type Item struct {
	Action string `json:"action"`
	// NEVRA of the package installed (install/upgrade/...) or erased.
	NEVRA string `json:"nevra"`
	Name  string `json:"name"`
	Arch  string `json:"arch,omitempty"`
	// Replaces lists the installed NEVRAs this item replaces (upgrade,
	// downgrade, obsoletes), informational.
	Replaces []string `json:"replaces,omitempty"`
	// ObsoletedBy names the package that obsoletes an erased one.
	ObsoletedBy string `json:"obsoleted_by,omitempty"`
	// Reason says why a package is removed, in words.
	Reason string `json:"reason,omitempty"`
	// Repo is the repository the package comes from (installs only).
	Repo string `json:"repo,omitempty"`
	// File is the staged package, relative to the staging directory
	// (installs only).
	File string `json:"file,omitempty"`
	// SHA256 and Size of the staged file (installs only).
	SHA256 string `json:"sha256,omitempty"`
	Size   int64  `json:"size,omitempty"`
	// InstallSize is the unpacked size in bytes (installs only).
	InstallSize int64 `json:"install_size,omitempty"`
}

// Installs reports whether the item brings a package file.
func (it Item) Installs() bool {
	switch it.Action {
	case ActionInstall, ActionUpgrade, ActionDowngrade, ActionReinstall:
		return true
	}
	return false
}

// Repo is a repository given on the command line.
type Repo struct {
	ID      string `json:"id"`
	BaseURL string `json:"baseurl"`
	// GPGKey are the repository's key URLs (a migration map's
	// repositories name them; --repo gives none).
	GPGKey []string `json:"gpgkey,omitempty"`
	// NoProxy makes dnf reach the repository directly, whatever proxy
	// the system configures (the loopback server of an --iso image).
	NoProxy bool `json:"no_proxy,omitempty"`
	// RepoGPGCheck makes dnf verify the signature of the repository's
	// metadata (repodata/repomd.xml.asc) with the GPGKey files.
	RepoGPGCheck bool `json:"repo_gpgcheck,omitempty"`
}

// Swap is one goal operation of a migration to another distribution: when
// at least one of From is installed, dnf is asked to install every package
// of To and to remove the installed ones of From, in the same goal as the
// distro-sync. Kind is the map's (release, rename, split, merge, remove);
// Reason says why, in words, and becomes the reason of the removals.
type Swap struct {
	Kind   string   `json:"kind"`
	From   []string `json:"from"`
	To     []string `json:"to,omitempty"`
	Reason string   `json:"reason,omitempty"`
	// Required swaps must apply: the resolution fails when none of From
	// is installed (the release swap: the map does not fit the system).
	Required bool `json:"required,omitempty"`
}

// Migration asks the resolution to move the system to another
// distribution: the swaps are dnf goal operations (install the new names,
// remove the old ones) resolved together with the distro-sync, erasing
// allowed, by dnf's own solver.
type Migration struct {
	Swaps []Swap `json:"swaps"`
}

// ParseRepo parses a repository given as ID=URL (the --repo flag and the
// D-Bus repos option); ID=/path (a directory mirror) means file:///path.
func ParseRepo(spec string) (Repo, error) {
	id, url, ok := strings.Cut(spec, "=")
	if !ok || id == "" || url == "" || strings.ContainsAny(id, " /") {
		return Repo{}, fmt.Errorf("repository %q: want ID=URL, for example kos=file:///srv/kos/5.9", spec)
	}
	if strings.HasPrefix(url, "/") {
		url = "file://" + url
	}
	if !urlSchemeRE.MatchString(url) {
		// dnf could not use it, and RedactText would not find its
		// credentials (found by FuzzParseRepo: "x=://user:token@host").
		return Repo{}, fmt.Errorf("repository %q: the URL has no scheme: want ID=URL (https://, http://, ftp://, file://) or ID=/path", spec)
	}
	return Repo{ID: id, BaseURL: url}, nil
}

// urlSchemeRE is the beginning of a URL as credentialsRE reads it.
var urlSchemeRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*://`)

// ResolveRequest asks for an upgrade of Root to Release.
type ResolveRequest struct {
	// Root is the system to upgrade (absolute path).
	Root string
	// Release is the target release version ($releasever).
	Release string
	// Repos replaces the system's repository configuration when not empty.
	Repos []Repo
	// CacheDir holds dnf's metadata cache; StageDir receives the packages.
	CacheDir string
	StageDir string
	// Migration, when set, adds its swaps to the distro-sync.
	Migration *Migration
}

// Resolution is dnf's answer: the transaction, with every installed package
// downloaded to the staging directory and its sha256 recorded.
type Resolution struct {
	Items []Item `json:"items"`
	// GPGKeys lists the gpgkey URLs
	// configured for the repositories the packages come from.
	GPGKeys []string `json:"gpg_keys,omitempty"`
	// Migration lists the swaps that applied (From trimmed to the
	// installed packages); empty unless the request had a Migration.
	Migration []Swap `json:"migration,omitempty"`
}

// ApplyReport is what a completed transaction has to say.
type ApplyReport struct {
	// Warnings are the failures rpm only warns about, as sentences ("the
	// %posttrans scriptlet of kernel-core-… failed …"): the packages are
	// installed, but something their scriptlets do may be missing.
	Warnings []string `json:"warnings,omitempty"`
}

// Manager is the package backend.
type Manager interface {
	// Resolve runs dnf's solver for a distro-sync of req.Root to
	// req.Release (erasing allowed), downloads every package to install into
	// req.StageDir and records its sha256 and size. It changes nothing in
	// req.Root. Calling it again re-uses packages already downloaded.
	Resolve(ctx context.Context, req ResolveRequest, sink progress.Sink) (*Resolution, error)

	// Verify checks the GPG signature of every staged package against the
	// keys in keys (armored public key files) and the keys installed in
	// root's rpmdb. It returns a *VerifyError naming each package that is
	// unsigned or badly signed.
	Verify(ctx context.Context, root, stageDir string, items []Item, keys []string, sink progress.Sink) error

	// Test runs the transaction in rpm's test mode against root: no file
	// and no rpmdb entry is changed.
	Test(ctx context.Context, root, stageDir string, items []Item, sink progress.Sink) error

	// Apply runs exactly items on root from the staged files in stageDir,
	// with no network and no re-resolution, reporting per-package progress.
	// It fails where rpm fails (a failing %pre or %preun, a package not
	// unpacked, a transaction rpm stops); what rpm only warns about (a
	// failing %post, %posttrans or trigger scriptlet) comes back in the
	// report of a transaction that completed.
	Apply(ctx context.Context, root, stageDir string, items []Item, sink progress.Sink) (*ApplyReport, error)

	// Fingerprint returns a digest of root's installed package set; any
	// install, erase or upgrade changes it.
	Fingerprint(ctx context.Context, root string) (string, error)

	// Files returns the paths items change in root, absolute inside it:
	// every file (%config ones included) of the installed packages they
	// upgrade, downgrade, reinstall, obsolete or erase, and every file of
	// the staged packages they install, sorted, without duplicates. It
	// changes nothing. Files that scriptlets write are not in it.
	Files(ctx context.Context, root, stageDir string, items []Item) ([]string, error)

	// Scriptlets returns the packages of items whose scriptlets the
	// transaction runs, sorted by NEVRA: the staged packages it installs
	// (%pretrans, %pre, %post, %posttrans), the installed packages it
	// removes or replaces (%preun, %postun), and the triggers of both.
	// What those write is not in Files. It changes nothing.
	Scriptlets(ctx context.Context, root, stageDir string, items []Item) ([]PackageScriptlets, error)
}

// PackageScriptlets names a package whose scriptlets a transaction runs,
// and which: "%pre", "%post", "%preun", "triggers", ...
type PackageScriptlets struct {
	NEVRA      string   `json:"nevra"`
	Scriptlets []string `json:"scriptlets"`
}

// Downloader is a Manager that can stage a transaction resolved before
// (an Assessment's Items) instead of running dnf's solver again: prepare
// uses it when nothing the resolution depends on changed since the
// assessment (the same root, release, repositories and migration, and the
// same rpmdb fingerprint).
type Downloader interface {
	// Download downloads every package items install (found by NEVRA in
	// its repository among req.Repos, metadata as req.CacheDir holds it)
	// into req.StageDir and returns the Resolution that Resolve returns
	// for the same transaction: items in the same order, with File,
	// SHA256 and Size set; GPGKeys of the enabled repositories (Migration
	// is left empty: the swaps that applied are the assessment's). It runs
	// no solver, changes nothing in req.Root, and fails when an item is
	// no longer in its repository (the metadata changed: resolve again).
	// Calling it again re-uses packages already downloaded.
	Download(ctx context.Context, req ResolveRequest, items []Item, sink progress.Sink) (*Resolution, error)
}

// credentialsRE matches the user information of a URL in any text:
// "scheme://user:token@".
var credentialsRE = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s"'<>]*@`)

// RedactURL returns u without credentials, for anything shown to a person
// or an unprivileged caller: "https://user:token@host/x" becomes
// "https://***@host/x".
func RedactURL(u string) string { return RedactText(u) }

// RedactText replaces the credentials of every URL in s by "***" (a
// message, a JSON document).
func RedactText(s string) string {
	if !strings.Contains(s, "@") {
		return s
	}
	return credentialsRE.ReplaceAllString(s, "${1}***@")
}

// String is the repository as ID=URL, credentials redacted (RedactURL).
func (r Repo) String() string { return r.ID + "=" + RedactURL(r.BaseURL) }
