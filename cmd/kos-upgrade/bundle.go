package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/keyarchos/kos-upgrade/pkg/bundle"
	"github.com/keyarchos/kos-upgrade/pkg/preflight"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

func bundleCmd() *cli.Command {
	return &cli.Command{
		Name:  "bundle",
		Usage: "on a connected machine: make one ISO image with what isolated hosts need for their upgrade",
		Description: `bundle is the connected half of the needs round trip of air-gapped sites
(/usr/share/doc/kos-upgrade/iso.md). Each isolated host writes what it needs
resolved with
  kos-upgrade prepare --to VERSION --export-needs HOST.json
(its installed packages, enabled repository ids, architecture, release and
machine id; nothing secret). On any machine with kos-upgrade and the target
repositories, bundle resolves each host's upgrade with dnf's solver on the
target repositories, downloads the union of the packages once (each package
once, however many hosts need it), writes them as one repository with
createrepo_c metadata, a .treeinfo and a manifest (manifest.json: which host
needs which packages, the bundle's size against the sum of the hosts'
downloads), signs the manifest and repodata/repomd.xml when --sign-key is
given, and writes all of it into an ISO 9660 image. Back on each host:
  kos-upgrade prepare --iso BUNDLE.iso
The hosts verify every package's checksum and GPG signature as usual.

Examples:
   kos-upgrade bundle --needs web1.json --needs db1.json \
       --repo kos=https://mirror.example/kos/5.9/os/ --out kos-5.9-bundle.iso
   kos-upgrade bundle --needs web1.json --iso /srv/KOS-5.9-dvd.iso \
       --sign-key release@example.com --out kos-5.9-bundle.iso`,
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "needs", Usage: "a host's needs `FILE`, written by prepare --export-needs (repeatable)", Required: true},
			&cli.StringFlag{Name: "out", Usage: "the ISO image `FILE` to write", Required: true},
			&cli.StringSliceFlag{Name: "repo", Usage: "a target repository `ID=URL` or ID=/directory (repeatable)"},
			&cli.StringSliceFlag{Name: "iso", Usage: "use the repositories of the ISO 9660 image `FILE` as target repositories (repeatable)"},
			&cli.StringFlag{Name: "label", Usage: "the image's volume `LABEL` (default KOS-VERSION-BUNDLE)"},
			&cli.StringFlag{Name: "sign-key", Usage: "sign the manifest and the repository metadata with the gpg `KEY` (id or user id)"},
			&cli.StringFlag{Name: "gpg-homedir", Usage: "gpg's home `DIR` for --sign-key (default $GNUPGHOME, else ~/.gnupg)"},
			&cli.StringFlag{Name: "workdir", Usage: "where the bundle is assembled (`DIR`; it needs room for the packages twice)"},
		},
		Action: action(func(c *cli.Context, e *env) error {
			var needs []*bundle.Needs
			for _, p := range c.StringSlice("needs") {
				n, err := bundle.ReadNeeds(p)
				if err != nil {
					return err
				}
				needs = append(needs, n)
			}
			repos, err := parseRepos(c.StringSlice("repo"))
			if err != nil {
				return err
			}
			out, err := filepath.Abs(c.String("out"))
			if err != nil {
				return usageError{fmt.Errorf("cannot use --out: %w", err)}
			}
			images, err := upgrader.OpenImages(absPaths(c.StringSlice("iso")), needs[0].Target)
			if err != nil {
				return err
			}
			defer images.Close()
			repos = append(repos, images.Repos()...)
			label := c.String("label")
			if label == "" {
				label = "KOS-" + needs[0].Target + "-BUNDLE"
			}
			home := c.String("gpg-homedir")
			if home == "" {
				home = os.Getenv("GNUPGHOME")
			}
			if home == "" {
				if h, err := os.UserHomeDir(); err == nil {
					home = filepath.Join(h, ".gnupg")
				}
			}
			pm, ok := e.engine.PM.(bundle.Resolver)
			if !ok {
				return fmt.Errorf("cannot build a bundle: the package backend cannot resolve for other hosts")
			}
			workdir := c.String("workdir")
			if workdir == "" {
				workdir = filepath.Dir(out)
			}
			m, err := bundle.Build(c.Context, bundle.Options{
				Needs: needs, Repos: repos, Out: out, Label: label, SignKey: c.String("sign-key"), GPGHome: home,
				WorkDir: workdir, PM: pm, Sink: e.sink, Log: e.engine.Log,
			})
			if err != nil {
				return err
			}
			e.sink.Close()
			if e.json {
				return e.printJSON(m)
			}
			fmt.Fprintf(e.out, "Bundle %s for %d host(s), release %s:\n", out, len(m.Hosts), m.Target)
			for _, h := range m.Hosts {
				fmt.Fprintf(e.out, "  host %s (%s %s, %s): %d packages, %s\n", h.MachineID, h.Release.ID, h.Release.VersionID, h.Arch,
					len(h.Packages), preflight.Size(h.Download))
			}
			ratio := 0.0
			if m.HostsDownload > 0 {
				ratio = float64(m.BundleSize) / float64(m.HostsDownload)
			}
			fmt.Fprintf(e.out, "  %d packages, %s, against %s for the hosts' downloads one by one (%.0f%%)\n",
				len(m.Packages), preflight.Size(m.BundleSize), preflight.Size(m.HostsDownload), 100*ratio)
			if m.Signed != "" {
				fmt.Fprintf(e.out, "  manifest and repository metadata signed by %s\n", m.Signed)
			}
			fmt.Fprintf(e.out, "\nNext, on each host: kos-upgrade prepare --iso %s\n", filepath.Base(out))
			return nil
		}),
	}
}

// exportNeeds is prepare --export-needs.
func exportNeeds(c *cli.Context, e *env) error {
	path, err := filepath.Abs(c.String("export-needs"))
	if err != nil {
		return usageError{fmt.Errorf("cannot use --export-needs: %w", err)}
	}
	if c.String("to") == "" {
		return usageError{fmt.Errorf("--export-needs needs the target release: --to VERSION")}
	}
	for _, f := range []string{"repo", "iso"} {
		if len(c.StringSlice(f)) > 0 {
			return usageError{fmt.Errorf("--export-needs resolves nothing here: --%s has no use with it", f)}
		}
	}
	n, err := e.engine.ExportNeeds(c.Context, c.String("to"), path)
	if err != nil {
		return err
	}
	if e.json {
		return e.printJSON(n)
	}
	fmt.Fprintf(e.out, "Wrote %s: %d installed packages, repositories %s, %s, %s %s → %s\n", path, len(n.Installed),
		strings.Join(n.Repos, ", "), n.Arch, n.Release.ID, n.Release.VersionID, n.Target)
	fmt.Fprintf(e.out, "Next, on a connected machine: kos-upgrade bundle --needs %s --repo ID=URL --out BUNDLE.iso\n", filepath.Base(path))
	return nil
}
