package upgrader

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/iso"
	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
)

// ImageSource is the ISO images of a prepare or a check (--iso), opened and
// served to dnf over loopback HTTP for the time of the prepare (docs/iso.md). dnf
// loads their metadata and downloads only the packages the transaction
// needs into the staging directory, checking each against the checksum of
// the metadata; kos-upgrade then verifies the signatures as for any
// repository. Apply never reads the images.
type ImageSource struct {
	images []*iso.Image
	srv    *iso.Server
	// repos are the images' repositories, for dnf; signed says which
	// carry repodata/repomd.xml.asc.
	repos  []pkgmgr.Repo
	signed map[string]bool
	// release is the version the images name (empty when none does).
	release string
}

// OpenImages opens and serves the images at paths; to is the target asked
// for (5.9 or kos-5.9; empty: take it from the images). Nil without paths.
// The caller closes it.
func OpenImages(paths []string, to string) (*ImageSource, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	to = targetVersion(to) // kos-5.9: 5.9
	s := &ImageSource{signed: map[string]bool{}}
	for _, p := range paths {
		im, err := iso.Open(p)
		if err != nil {
			s.Close()
			return nil, err
		}
		s.images = append(s.images, im)
		rel := im.Release()
		if rel == nil || rel.Version == "" {
			continue
		}
		switch {
		case to != "" && rel.Version != to:
			s.Close()
			return nil, fmt.Errorf("the %s holds release %s, not %s", im.Describe(), rel.Version, to)
		case s.release != "" && rel.Version != s.release:
			s.Close()
			return nil, fmt.Errorf("the images hold different releases: %s and %s (%s)", s.release, rel.Version, p)
		}
		s.release = rel.Version
	}
	srv, err := iso.Serve(s.images)
	if err != nil {
		s.Close()
		return nil, err
	}
	s.srv = srv
	for i, im := range s.images {
		for _, r := range im.Repos() {
			s.repos = append(s.repos, pkgmgr.Repo{ID: iso.RepoID(i, r.Dir), BaseURL: srv.RepoURL(i, r.Dir), NoProxy: true})
			s.signed[iso.RepoID(i, r.Dir)] = r.Signed
		}
	}
	return s, nil
}

// VerifyMetadata makes dnf check the signature of the metadata of every
// image repository that carries repodata/repomd.xml.asc (repo_gpgcheck),
// with the distribution keys of the system at root (its
// /etc/pki/rpm-gpg/RPM-GPG-KEY-* files, as for its own repositories). It
// returns how many repositories it applies to; none when root has no key
// file (the packages' signatures are still checked). Safe on nil.
func (s *ImageSource) VerifyMetadata(root string) int {
	if s == nil {
		return 0
	}
	keys, _ := filepath.Glob(filepath.Join(root, "etc/pki/rpm-gpg/RPM-GPG-KEY-*"))
	if len(keys) == 0 {
		return 0
	}
	var urls []string
	for _, k := range keys {
		urls = append(urls, "file://"+k)
	}
	n := 0
	for i, r := range s.repos {
		if s.signed[r.ID] {
			s.repos[i].RepoGPGCheck = true
			s.repos[i].GPGKey = urls
			n++
		}
	}
	return n
}

// Repos returns the images' repositories, for dnf; nil on nil.
func (s *ImageSource) Repos() []pkgmgr.Repo {
	if s == nil {
		return nil
	}
	return s.repos
}

// targetVersion is the version of a --to value ("5.9", "kos-5.9"), or the
// value itself when it does not parse (the caller refuses it later).
func targetVersion(to string) string {
	if to == "" {
		return ""
	}
	t, err := ParseTarget(to)
	if err != nil {
		return to
	}
	return t.Version
}

// Refs returns the images' identities (the plan's, the report's).
func (s *ImageSource) Refs() []iso.Ref {
	if s == nil {
		return nil
	}
	var out []iso.Ref
	for _, im := range s.images {
		out = append(out, im.Ref())
	}
	return out
}

// explain adds to a resolution error what the image server refused to
// serve (a file go-diskfs cannot read correctly).
func (s *ImageSource) explain(err error) error {
	if s == nil || s.srv == nil {
		return err
	}
	if p := s.srv.Problems(); len(p) > 0 {
		return fmt.Errorf("%w\n(the image cannot be read correctly: %s)", err, strings.Join(p, "; "))
	}
	return err
}

// dropCache removes dnf's metadata cache of the images' repositories: their
// URLs change with each prepare, so the cache would only grow.
func (s *ImageSource) dropCache(cacheDir string) {
	if s == nil {
		return
	}
	for _, r := range s.repos {
		m, _ := filepath.Glob(filepath.Join(cacheDir, r.ID+"-*"))
		for _, d := range m {
			os.RemoveAll(d)
		}
	}
}

// Close stops serving and closes the images; safe on nil.
func (s *ImageSource) Close() {
	if s == nil {
		return
	}
	if s.srv != nil {
		s.srv.Close()
	}
	for _, im := range s.images {
		im.Close()
	}
}

// Release returns the version the images name, "" when none does.
func (s *ImageSource) Release() string {
	if s == nil {
		return ""
	}
	return s.release
}
