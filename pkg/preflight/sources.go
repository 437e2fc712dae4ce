package preflight

import (
	"fmt"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/iso"
)

// checkSources says where the target's packages come from: each enabled
// repository with its source, an ISO image (path, label, release, directory
// on the image), a directory mirror or a URL (docs/iso.md).
func checkSources(f *Facts) []Finding {
	if f.Assessment == nil || len(f.Assessment.Repos) == 0 {
		return nil
	}
	var details []string
	images, mirrors, network := 0, 0, 0
	seen := map[int]bool{}
	for _, r := range f.Assessment.Repos {
		url := strings.Join(r.BaseURLs, " ")
		n, dir := imageOf(f, r.ID)
		switch {
		case n >= 0:
			im := f.Images[n]
			if !seen[n] {
				seen[n] = true
				images++
			}
			what := "image " + im.Path
			if im.Label != "" {
				what += ", label " + im.Label
			}
			if im.Release != nil && im.Release.Version != "" {
				what += ", release " + strings.TrimSpace(im.Release.Name+" "+im.Release.Version)
			}
			details = append(details, fmt.Sprintf("%s: %s, directory /%s", r.ID, what, strings.TrimPrefix(dir, ".")))
		case strings.HasPrefix(url, "file://") && len(r.BaseURLs) == 1:
			mirrors++
			details = append(details, fmt.Sprintf("%s: directory mirror %s", r.ID, strings.TrimPrefix(url, "file://")))
		default:
			network++
			if url == "" {
				url = "no baseurl (a mirrorlist or metalink)"
			}
			details = append(details, fmt.Sprintf("%s: %s", r.ID, url))
		}
	}
	var parts []string
	for _, c := range []struct {
		n    int
		what string
	}{{images, "ISO image(s) read in place"}, {mirrors, "directory mirror(s)"}, {network, "network repository(ies)"}} {
		if c.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", c.n, c.what))
		}
	}
	return []Finding{{
		Key: KeySources, Severity: Info, Groups: []string{"repositories"},
		Title:   "The packages of release " + f.Target + " come from " + strings.Join(parts, ", "),
		Summary: "The enabled repositories of the target and where each is read from.",
		Details: details,
	}}
}

// imageOf finds the image and the directory on it of repository id
// (iso.RepoID); -1 when it is not an image's.
func imageOf(f *Facts, id string) (int, string) {
	for n, im := range f.Images {
		for _, d := range im.Repos {
			if iso.RepoID(n, d) == id {
				return n, d
			}
		}
	}
	return -1, ""
}
