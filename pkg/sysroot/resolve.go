package sysroot

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/safefile"
)

// maxLinkHops bounds the symbolic links followed in one resolution (the
// kernel's limit is 40).
const maxLinkHops = 40

// Resolve resolves the symbolic links in p (a host path below the root,
// as Path returns) the way they resolve for a process chrooted to the root:
// absolute targets start again at the root, relative ones from the link's
// directory. It returns the host path of the result. A link that leads out
// of the root (.. above it) is refused, as is a loop; a missing component
// ends the resolution, the rest of p is kept as it is.
func (r Root) Resolve(p string) (string, error) {
	rootDir := filepath.Clean(r.Dir)
	rel, err := filepath.Rel(rootDir, p)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("cannot resolve %s: it is outside the root %s", p, rootDir)
	}
	resolved := "/" // inside the root
	parts := splitPath(rel)
	hops := 0
	for len(parts) > 0 {
		c := parts[0]
		parts = parts[1:]
		switch c {
		case ".":
			continue
		case "..":
			if resolved == "/" {
				return "", fmt.Errorf("cannot resolve %s: a symbolic link leads outside the root %s", p, rootDir)
			}
			resolved = filepath.Dir(resolved)
			continue
		}
		next := filepath.Join(resolved, c)
		host := filepath.Join(rootDir, next)
		fi, err := os.Lstat(host)
		if err != nil {
			// Missing: nothing more to follow.
			return filepath.Join(append([]string{host}, parts...)...), nil
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			resolved = next
			continue
		}
		if hops++; hops > maxLinkHops {
			return "", fmt.Errorf("cannot resolve %s in %s: too many symbolic links", p, rootDir)
		}
		target, err := os.Readlink(host)
		if err != nil {
			return "", fmt.Errorf("cannot resolve %s: %w", p, err)
		}
		if filepath.IsAbs(target) {
			resolved = "/"
		}
		parts = append(splitPath(target), parts...)
	}
	return filepath.Join(rootDir, resolved), nil
}

// splitPath returns the components of p, without empty ones.
func splitPath(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" {
			out = append(out, c)
		}
	}
	return out
}

// ReadFile returns the content of the file at p (a host path below the
// root), its symbolic links followed inside the root only (Resolve): a
// regular file of at most max bytes. A link out of the root, a FIFO, a
// device, a directory or a larger file is an error, and nothing blocks; a
// missing file is an error satisfying errors.Is(err, fs.ErrNotExist).
func (r Root) ReadFile(p string, max int64) ([]byte, error) {
	rp, err := r.Resolve(p)
	if err != nil {
		return nil, err
	}
	return safefile.Read(rp, max)
}
