// Package sysroot names every path and tool kos-upgrade uses on the system it
// acts on, so that tests and the initramfs can re-root them with --root and
// nothing else hard-codes "/".
package sysroot

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Relative paths inside a system root.
const (
	StateDirRel     = "/var/lib/kos-upgrade"
	SystemUpdateRel = "/system-update"
	OSReleaseRel    = "/etc/os-release"
	MachineIDRel    = "/etc/machine-id"
	ReposDirRel     = "/etc/yum.repos.d"
	DNFConfRel      = "/etc/dnf/dnf.conf"
	ConfigDirRel    = "/etc/kos-upgrade"
)

// Root is the system kos-upgrade acts on: "/" on a running machine, the
// mounted system in tests and in the initramfs (/sysroot).
type Root struct {
	Dir string
}

// New returns a Root for dir ("" means "/"), made absolute.
func New(dir string) (Root, error) {
	if dir == "" {
		dir = "/"
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Root{}, err
	}
	return Root{Dir: abs}, nil
}

// Path joins rel (an absolute path inside the system) to the root.
func (r Root) Path(rel string) string { return filepath.Join(r.Dir, rel) }

// StateDir is where state, plan, staged packages and history live.
func (r Root) StateDir() string { return r.Path(StateDirRel) }

// SystemUpdateLink is the systemd offline-update trigger symlink.
func (r Root) SystemUpdateLink() string { return r.Path(SystemUpdateRel) }

// DBPathRel returns the rpm database directory of the system, relative to the
// root: /usr/lib/sysimage/rpm where the system uses it, else /var/lib/rpm
// (EL8 and KOS 5.x).
func (r Root) DBPathRel() string {
	for _, f := range []string{"rpmdb.sqlite", "Packages", "Packages.db"} {
		if _, err := os.Stat(r.Path(filepath.Join("/usr/lib/sysimage/rpm", f))); err == nil {
			return "/usr/lib/sysimage/rpm"
		}
	}
	return "/var/lib/rpm"
}

// Python returns the interpreter that imports dnf: platform-python on EL8,
// /usr/bin/python3 elsewhere. KOS_UPGRADE_PYTHON overrides it.
func Python() string {
	if p := os.Getenv("KOS_UPGRADE_PYTHON"); p != "" {
		return p
	}
	if _, err := os.Stat("/usr/libexec/platform-python"); err == nil {
		return "/usr/libexec/platform-python"
	}
	return "/usr/bin/python3"
}

// OSRelease is what kos-upgrade reads of os-release(5).
type OSRelease struct {
	ID        string // ID=
	VersionID string // VERSION_ID=
	Name      string // NAME=
}

// maxOSRelease caps os-release (a few hundred bytes in practice).
const maxOSRelease = 1 << 20

// OSRelease reads /etc/os-release of the system, or /usr/lib/os-release
// when the former is missing.
func (r Root) OSRelease() (OSRelease, error) {
	var rel OSRelease
	b, err := r.ReadFile(r.Path(OSReleaseRel), maxOSRelease)
	if err != nil {
		b, err = r.ReadFile(r.Path("/usr/lib/os-release"), maxOSRelease)
	}
	if err != nil {
		return rel, fmt.Errorf("cannot read os-release: %w", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(l), "=")
		if !ok {
			continue
		}
		v = strings.Trim(v, `"'`)
		switch k {
		case "ID":
			rel.ID = v
		case "VERSION_ID":
			rel.VersionID = v
		case "NAME":
			rel.Name = v
		}
	}
	return rel, nil
}
