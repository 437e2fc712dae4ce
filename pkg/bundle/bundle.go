// Package bundle is the needs round trip of air-gapped sites (docs/iso.md):
// an isolated host writes what it needs resolved (Needs, needs.json); a
// connected machine resolves the upgrade of each host with dnf, downloads the
// union of their packages once and writes them as one repository
// (createrepo_c metadata), with a manifest of which host needs what, into an
// ISO 9660 image (Build); each host then prepares from that image with
// prepare --iso.
package bundle

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/atomicfile"
	"github.com/keyarchos/kos-upgrade/pkg/execlog"
	"github.com/keyarchos/kos-upgrade/pkg/iso"
	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/pkg/progress"
)

// NeedsVersion is the needs format this build writes and reads.
const NeedsVersion = 1

// ManifestVersion is the manifest format this build writes.
const ManifestVersion = 1

// Release is an os-release identity.
type Release struct {
	ID        string `json:"id"`
	VersionID string `json:"version_id"`
	Name      string `json:"name,omitempty"`
}

// Needs is what an isolated host needs resolved (prepare --export-needs),
// nothing secret: its installed packages, enabled repository ids,
// architecture, release and target, machine id. Documented in docs/iso.md.
type Needs struct {
	Version   int                `json:"version"`
	CreatedAt time.Time          `json:"created_at"`
	MachineID string             `json:"machine_id"`
	Arch      string             `json:"arch"`
	Release   Release            `json:"release"`
	Target    string             `json:"target"`
	Repos     []string           `json:"repos"`
	Installed []pkgmgr.Installed `json:"installed"`
}

var (
	machineIDRe = regexp.MustCompile(`^[0-9a-f]{32}$`)
	versionRe   = regexp.MustCompile(`^[0-9]+(\.[0-9]+)*$`)
	nameRe      = regexp.MustCompile(`^[A-Za-z0-9_.+-]+$`)
)

// maxNeeds bounds a needs file (a host with 20000 packages is ~2 MiB).
const maxNeeds = 64 << 20

// ReadNeeds reads and checks a needs file.
func ReadNeeds(path string) (*Needs, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read needs: %w", err)
	}
	defer f.Close()
	dec := json.NewDecoder(io.LimitReader(f, maxNeeds))
	dec.DisallowUnknownFields()
	var n Needs
	if err := dec.Decode(&n); err != nil {
		return nil, fmt.Errorf("cannot read needs %s: %w", path, err)
	}
	if err := n.Validate(); err != nil {
		return nil, fmt.Errorf("cannot use needs %s: %w", path, err)
	}
	return &n, nil
}

// Validate checks the fields a bundle relies on.
func (n *Needs) Validate() error {
	switch {
	case n.Version != NeedsVersion:
		return fmt.Errorf("needs version %d, this kos-upgrade reads %d", n.Version, NeedsVersion)
	case !machineIDRe.MatchString(n.MachineID):
		return fmt.Errorf("machine id %q is not 32 hex digits", n.MachineID)
	case !versionRe.MatchString(n.Target):
		return fmt.Errorf("target %q is not a release version", n.Target)
	case !nameRe.MatchString(n.Arch):
		return fmt.Errorf("architecture %q", n.Arch)
	case len(n.Installed) == 0:
		return errors.New("no installed package")
	}
	for _, p := range n.Installed {
		if !nameRe.MatchString(p.Name) || !nameRe.MatchString(p.Arch) || !strings.HasPrefix(p.NEVRA, p.Name+"-") || strings.ContainsAny(p.NEVRA, " /\n") {
			return fmt.Errorf("installed package %q (%s) is not a package NEVRA", p.NEVRA, p.Name)
		}
	}
	return nil
}

// Write writes the needs atomically to path.
func (n *Needs) Write(path string) error {
	b, err := json.MarshalIndent(n, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("cannot write needs: %w", err)
	}
	return nil
}

// Manifest says what the bundle holds and which host needs what
// (manifest.json at the top of the image; manifest.json.asc when signed).
type Manifest struct {
	Version   int       `json:"version"`
	CreatedAt time.Time `json:"created_at"`
	Target    string    `json:"target"`
	Hosts     []Host    `json:"hosts"`
	// Packages holds each package once, however many hosts need it.
	Packages []Package `json:"packages"`
	// BundleSize is the sum of the packages' sizes; HostsDownload the sum
	// of each host's own download (what per-host downloads would fetch).
	BundleSize    int64 `json:"bundle_size"`
	HostsDownload int64 `json:"hosts_download"`
	// Signed names the key that signed the manifest and repomd.xml.
	Signed string `json:"signed,omitempty"`
}

// Host is one host of the bundle.
type Host struct {
	MachineID string   `json:"machine_id"`
	Arch      string   `json:"arch"`
	Release   Release  `json:"release"`
	Repos     []string `json:"repos"`
	// Packages are the NEVRAs this host needs from the bundle.
	Packages []string `json:"packages"`
	Download int64    `json:"download"`
	// Kept are installed packages no target repository has (the
	// upgrade keeps them).
	Kept []string `json:"kept,omitempty"`
}

// Package is one package of the bundle.
type Package struct {
	NEVRA  string `json:"nevra"`
	File   string `json:"file"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// Resolver is what Build asks of the package backend (pkgmgr.DNF).
type Resolver interface {
	// BundleResolve resolves one host's upgrade on the target
	// repositories and downloads its packages into req.StageDir,
	// re-using files already there.
	BundleResolve(ctx context.Context, req pkgmgr.BundleRequest, sink progress.Sink) (*pkgmgr.BundleResolution, error)
}

// Options are Build's inputs.
type Options struct {
	Needs []*Needs
	// Repos are the target repositories (ID=URL, directories, or the
	// repositories of an image).
	Repos []pkgmgr.Repo
	// Out is the image to write; Label its volume label.
	Out   string
	Label string
	// SignKey, when set, is the gpg key (id or user id) that signs the
	// manifest and repodata/repomd.xml, from GPGHome.
	SignKey string
	GPGHome string
	// WorkDir holds the tree while it is built (large: the packages).
	WorkDir string
	PM      Resolver
	Sink    progress.Sink
	Log     *slog.Logger
}

// Build resolves every host's upgrade, downloads the union of the packages
// once, writes the repository metadata (createrepo_c), .treeinfo and the
// manifest (signed when SignKey is set) and writes the image.
func Build(ctx context.Context, o Options) (*Manifest, error) {
	if len(o.Needs) == 0 {
		return nil, errors.New("cannot build a bundle: no needs file")
	}
	if len(o.Repos) == 0 {
		return nil, errors.New("cannot build a bundle: no target repository (give --repo or --iso)")
	}
	target := o.Needs[0].Target
	for _, n := range o.Needs[1:] {
		if n.Target != target {
			return nil, fmt.Errorf("cannot build a bundle: hosts want different releases (%s and %s)", target, n.Target)
		}
	}
	seen := map[string]bool{}
	for _, n := range o.Needs {
		if seen[n.MachineID] {
			return nil, fmt.Errorf("cannot build a bundle: host %s is given twice", n.MachineID)
		}
		seen[n.MachineID] = true
	}
	work, err := os.MkdirTemp(o.WorkDir, "kos-upgrade-bundle-")
	if err != nil {
		return nil, fmt.Errorf("cannot build a bundle: %w", err)
	}
	defer os.RemoveAll(work)
	tree := filepath.Join(work, "tree")
	stage := filepath.Join(tree, "Packages")
	for _, d := range []string{stage, filepath.Join(work, "cache"), filepath.Join(work, "scratch")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("cannot build a bundle: %w", err)
		}
	}
	m := &Manifest{Version: ManifestVersion, CreatedAt: time.Now().UTC(), Target: target}
	pkgs := map[string]Package{}
	for _, n := range o.Needs {
		report(o.Sink, fmt.Sprintf("resolving the upgrade of host %s (%d packages installed)", n.MachineID, len(n.Installed)))
		res, err := o.PM.BundleResolve(ctx, pkgmgr.BundleRequest{
			Scratch: filepath.Join(work, "scratch"), Release: target, Repos: o.Repos, Installed: n.Installed,
			CacheDir: filepath.Join(work, "cache"), StageDir: stage,
		}, o.Sink)
		if err != nil {
			return nil, fmt.Errorf("cannot resolve the upgrade of host %s: %w", n.MachineID, err)
		}
		h := Host{MachineID: n.MachineID, Arch: n.Arch, Release: n.Release, Repos: n.Repos, Kept: res.Missing, Packages: []string{}}
		for _, it := range res.Items {
			h.Packages = append(h.Packages, it.NEVRA)
			h.Download += it.Size
			pkgs[it.NEVRA] = Package{NEVRA: it.NEVRA, File: "Packages/" + it.File, SHA256: it.SHA256, Size: it.Size}
		}
		m.HostsDownload += h.Download
		m.Hosts = append(m.Hosts, h)
	}
	for _, p := range pkgs {
		m.Packages = append(m.Packages, p)
		m.BundleSize += p.Size
	}
	sort.Slice(m.Packages, func(i, j int) bool { return m.Packages[i].NEVRA < m.Packages[j].NEVRA })
	if err := keepOnly(stage, m.Packages); err != nil {
		return nil, err
	}
	run := execlog.Runner{Log: o.Log}
	report(o.Sink, fmt.Sprintf("writing the repository metadata of %d packages", len(m.Packages)))
	if _, err := run.Run(ctx, "write the bundle's repository metadata", "createrepo_c", "--quiet", "--no-database", tree); err != nil {
		return nil, err
	}
	treeinfo := fmt.Sprintf("[header]\ntype = productmd.treeinfo\nversion = 1.2\n\n[release]\nname = KOS\nshort = KOS\nversion = %s\n\n[tree]\narch = %s\nvariants = bundle\n",
		target, o.Needs[0].Arch)
	if err := os.WriteFile(filepath.Join(tree, ".treeinfo"), []byte(treeinfo), 0o644); err != nil {
		return nil, fmt.Errorf("cannot build a bundle: %w", err)
	}
	if o.SignKey != "" {
		m.Signed = o.SignKey
	}
	mb, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(tree, "manifest.json"), append(mb, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("cannot build a bundle: %w", err)
	}
	if o.SignKey != "" {
		sign := execlog.Runner{Log: o.Log, Env: []string{"GNUPGHOME=" + o.GPGHome}}
		for _, f := range []string{filepath.Join(tree, "manifest.json"), filepath.Join(tree, "repodata", "repomd.xml")} {
			if _, err := sign.Run(ctx, "sign the bundle", "gpg", "--batch", "--yes", "--pinentry-mode", "loopback",
				"--local-user", o.SignKey, "--armor", "--detach-sign", "--output", f+".asc", f); err != nil {
				return nil, err
			}
		}
	}
	report(o.Sink, fmt.Sprintf("writing the image %s", o.Out))
	if err := iso.Write(tree, o.Out, o.Label); err != nil {
		return nil, err
	}
	return m, nil
}

// keepOnly removes staged files no package names (partial downloads).
func keepOnly(stage string, pkgs []Package) error {
	keep := map[string]bool{}
	for _, p := range pkgs {
		keep[filepath.Base(p.File)] = true
	}
	ents, err := os.ReadDir(stage)
	if err != nil {
		return fmt.Errorf("cannot build a bundle: %w", err)
	}
	for _, e := range ents {
		if !keep[e.Name()] {
			if err := os.RemoveAll(filepath.Join(stage, e.Name())); err != nil {
				return fmt.Errorf("cannot build a bundle: %w", err)
			}
		}
	}
	return nil
}

// ReadManifest reads the manifest of a bundle image and checks each
// package's size and sha256 against the image when verify is set.
func ReadManifest(im *iso.Image, verify bool) (*Manifest, error) {
	b, err := im.ReadFile("manifest.json", maxNeeds)
	if err != nil {
		return nil, fmt.Errorf("cannot read the bundle's manifest: %w", err)
	}
	var m Manifest
	if err := json.NewDecoder(bytes.NewReader(b)).Decode(&m); err != nil {
		return nil, fmt.Errorf("cannot read the bundle's manifest: %w", err)
	}
	if !verify {
		return &m, nil
	}
	for _, p := range m.Packages {
		r, size, err := im.OpenFile(p.File)
		if err != nil {
			return nil, fmt.Errorf("bundle package %s: %w", p.NEVRA, err)
		}
		h := sha256.New()
		if _, err := io.Copy(h, r); err != nil {
			return nil, fmt.Errorf("bundle package %s: %w", p.NEVRA, err)
		}
		if size != p.Size || hex.EncodeToString(h.Sum(nil)) != p.SHA256 {
			return nil, fmt.Errorf("bundle package %s: its bytes do not match the manifest", p.NEVRA)
		}
	}
	return &m, nil
}

func report(s progress.Sink, msg string) {
	if s != nil {
		s.Report(progress.Event{Step: "bundle", Message: msg})
	}
}
