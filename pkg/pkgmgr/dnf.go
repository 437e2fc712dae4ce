package pkgmgr

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// DNF is the Manager backed by dnf's Python API (resolution, download) and
// librpm's transaction set through rpm's Python bindings (test and offline
// transaction), both in one embedded helper run by the interpreter that
// imports dnf.
type DNF struct {
	Python string // interpreter; sysroot.Python() when empty
	Logger *slog.Logger
}

// NewDNF returns the dnf backend using the system's dnf interpreter.
func NewDNF(logger *slog.Logger) *DNF {
	return &DNF{Python: sysroot.Python(), Logger: logger}
}

var (
	_ Manager    = (*DNF)(nil)
	_ Downloader = (*DNF)(nil)
)

type resolveReq struct {
	Root     string `json:"root"`
	DBPath   string `json:"dbpath"`
	Release  string `json:"release"`
	Repos    []Repo `json:"repos"`
	CacheDir string `json:"cachedir"`
	StageDir string `json:"stagedir"`
	// Migration adds the swaps of a migration to the distro-sync.
	Migration *Migration `json:"migration,omitempty"`
}

// Resolve implements Manager.
func (d *DNF) Resolve(ctx context.Context, req ResolveRequest, sink progress.Sink) (*Resolution, error) {
	root := sysroot.Root{Dir: req.Root}
	return callHelper[Resolution](ctx, d, "resolve", "the resolution", resolveReq{
		Root: req.Root, DBPath: root.DBPathRel(), Release: req.Release, Repos: req.Repos,
		CacheDir: req.CacheDir, StageDir: req.StageDir, Migration: req.Migration,
	}, sink)
}

// Download implements Downloader: the helper's download command, dnf's
// downloader without its solver.
func (d *DNF) Download(ctx context.Context, req ResolveRequest, items []Item, sink progress.Sink) (*Resolution, error) {
	root := sysroot.Root{Dir: req.Root}
	return callHelper[Resolution](ctx, d, "download", "the downloaded transaction", downloadReq{
		resolveReq: resolveReq{Root: req.Root, DBPath: root.DBPathRel(), Release: req.Release, Repos: req.Repos,
			CacheDir: req.CacheDir, StageDir: req.StageDir},
		Items: items,
	}, sink)
}

type downloadReq struct {
	resolveReq
	Items []Item `json:"items"`
}

type tsReq struct {
	Root     string `json:"root"`
	DBPath   string `json:"dbpath"`
	StageDir string `json:"stagedir"`
	Items    []Item `json:"items"`
}

func (d *DNF) tsRequest(root, stageDir string, items []Item) tsReq {
	return tsReq{Root: root, DBPath: sysroot.Root{Dir: root}.DBPathRel(), StageDir: stageDir, Items: items}
}

// Test implements Manager.
func (d *DNF) Test(ctx context.Context, root, stageDir string, items []Item, sink progress.Sink) error {
	_, err := d.runHelper(ctx, "test", d.tsRequest(root, stageDir, items), sink)
	return err
}

// Apply implements Manager.
func (d *DNF) Apply(ctx context.Context, root, stageDir string, items []Item, sink progress.Sink) (*ApplyReport, error) {
	return callHelper[ApplyReport](ctx, d, "apply", "the transaction's result", d.tsRequest(root, stageDir, items), sink)
}

// Fingerprint implements Manager.
func (d *DNF) Fingerprint(ctx context.Context, root string) (string, error) {
	res, err := callHelper[struct {
		Fingerprint string `json:"fingerprint"`
	}](ctx, d, "fingerprint", "the rpmdb fingerprint", tsReq{Root: root, DBPath: sysroot.Root{Dir: root}.DBPathRel()}, nil)
	if err != nil {
		return "", err
	}
	if res.Fingerprint == "" {
		return "", fmt.Errorf("cannot decode the rpmdb fingerprint: the helper gave none")
	}
	return res.Fingerprint, nil
}

// Scriptlets implements Manager.
func (d *DNF) Scriptlets(ctx context.Context, root, stageDir string, items []Item) ([]PackageScriptlets, error) {
	res, err := callHelper[struct {
		Scripts []PackageScriptlets `json:"scripts"`
	}](ctx, d, "files", "the scriptlets", d.tsRequest(root, stageDir, items), nil)
	if err != nil {
		return nil, err
	}
	// Read from headers, never trusted: printable names only.
	out := res.Scripts[:0]
	for _, p := range res.Scripts {
		if p.NEVRA != "" && printable(p.NEVRA) && len(p.Scriptlets) > 0 && printable(strings.Join(p.Scriptlets, "")) {
			out = append(out, p)
		}
	}
	return out, nil
}

func printable(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// Files implements Manager.
func (d *DNF) Files(ctx context.Context, root, stageDir string, items []Item) ([]string, error) {
	res, err := callHelper[struct {
		Files []string `json:"files"`
	}](ctx, d, "files", "the file lists", d.tsRequest(root, stageDir, items), nil)
	if err != nil {
		return nil, err
	}
	out := res.Files[:0]
	for _, f := range res.Files {
		// Absolute paths only: a header is read, never trusted.
		if strings.HasPrefix(f, "/") && !strings.ContainsRune(f, 0) {
			out = append(out, f)
		}
	}
	return out, nil
}
