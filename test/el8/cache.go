// Package el8 builds the parts of EL8's platform that decide whether an
// upgrade works (rpm 4.14.3 with a Berkeley DB rpmdb, grub2 2.02 with Red
// Hat's BLS patches, dracut 049, kernel-install from systemd 239) from the
// upstream sources in ../shared/el8, for the test tiers that must run what a
// KOS 5.x server runs. Builds are cached under /var/cache/kos-upgrade-el8,
// keyed by the sha256 of their inputs, so a warm run costs nothing.
package el8

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// CacheEnv overrides the directory of the cached builds.
const CacheEnv = "KOS_UPGRADE_EL8_CACHE"

// SourcesEnv overrides the directory that holds the EL8 source tarballs
// (default: ../shared/el8 next to the repository).
const SourcesEnv = "KOS_UPGRADE_EL8_SOURCES"

// CacheDir is where built trees are kept.
func CacheDir() string {
	if d := os.Getenv(CacheEnv); d != "" {
		return d
	}
	return "/var/cache/kos-upgrade-el8"
}

// Key returns the sha256 (hex) of version followed by the contents of each
// input file, in order. A build's key must name everything that shapes its
// output: the source tarballs, the build recipe's version string.
func Key(version string, inputs ...string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00", version)
	for _, in := range inputs {
		f, err := os.Open(in)
		if err != nil {
			return "", fmt.Errorf("cannot read build input: %w", err)
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", fmt.Errorf("cannot read build input %s: %w", in, err)
		}
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Cached returns CacheDir()/name-key, building it first when it is missing.
// build receives an empty directory and fills it; only a build that returns
// nil is published (renamed into place), so an interrupted build is never
// taken for a finished one. Concurrent callers (parallel test binaries)
// serialize on a lock file per name: the second one finds the first one's
// result.
func Cached(name, key string, build func(dir string) error) (string, error) {
	root := CacheDir()
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", fmt.Errorf("cannot create build cache: %w", err)
	}
	final := Path(name, key)
	lock, err := os.OpenFile(filepath.Join(root, name+".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", fmt.Errorf("cannot open build lock: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("cannot lock build cache: %w", err)
	}
	if fi, err := os.Stat(final); err == nil && fi.IsDir() {
		return final, nil
	}
	tmp := final + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return "", fmt.Errorf("cannot clear a stale build: %w", err)
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", fmt.Errorf("cannot create build directory: %w", err)
	}
	if err := build(tmp); err != nil {
		return "", fmt.Errorf("cannot build %s: %w", name, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", fmt.Errorf("cannot publish build %s: %w", name, err)
	}
	return final, nil
}

// Path returns where Cached(name, key, …) publishes its build. A build
// whose output names its own location (an rpath, a configured prefix) is
// configured for Path and written into the directory Cached gives it.
func Path(name, key string) string {
	return filepath.Join(CacheDir(), name+"-"+key[:16])
}

// Sources returns the directory holding the EL8 source tarballs.
func Sources() (string, error) {
	if d := os.Getenv(SourcesEnv); d != "" {
		return d, nil
	}
	// Tests run with the package directory as working directory; walk up to
	// the repository (the directory with go.mod) and take ../shared/el8.
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("cannot find the EL8 sources: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			src := filepath.Join(filepath.Dir(dir), "shared", "el8")
			if _, err := os.Stat(filepath.Join(src, "rpm-4.14.3.tar.xz")); err != nil {
				return "", fmt.Errorf("cannot find the EL8 sources in %s (set %s): %w", src, SourcesEnv, err)
			}
			return src, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("cannot find the EL8 sources: no go.mod above the working directory (set %s)", SourcesEnv)
		}
		dir = parent
	}
}
