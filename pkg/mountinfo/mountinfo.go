// Package mountinfo reads the kernel's mount table (/proc/self/mountinfo) and
// finds the mount a path lives on.
package mountinfo

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultPath is the mount table of the calling process.
const DefaultPath = "/proc/self/mountinfo"

// ErrNotFound is returned by Lookup when no mount contains the path.
var ErrNotFound = errors.New("no mount contains the path")

// Mount is one line of mountinfo, fields as described in proc(5).
type Mount struct {
	ID           int      // unique mount id
	ParentID     int      // id of the parent mount
	Major        int      // st_dev major of the filesystem
	Minor        int      // st_dev minor of the filesystem
	Root         string   // path within the filesystem that is the mount's root (btrfs: subvolume path, e.g. "/@")
	Point        string   // mount point, relative to the process's root, escapes decoded
	Options      string   // per-mount options ("rw,relatime")
	Optional     []string // optional fields ("shared:1", "master:2"), possibly none
	FSType       string   // filesystem type, with subtype if any ("fuse.sshfs")
	Source       string   // mount source ("/dev/vda1", "tmpfs")
	SuperOptions string   // per-superblock options ("rw,subvolid=256,subvol=/@")
}

// SuperOption returns the value of the per-superblock option key (for
// example "subvolid") and whether it is present; a flag option without "="
// has the empty value.
func (m Mount) SuperOption(key string) (string, bool) {
	return option(m.SuperOptions, key)
}

// Option returns the value of the per-mount option key and whether it is
// present.
func (m Mount) Option(key string) (string, bool) {
	return option(m.Options, key)
}

func option(opts, key string) (string, bool) {
	for _, o := range strings.Split(opts, ",") {
		k, v, _ := strings.Cut(o, "=")
		if k == key {
			return v, true
		}
	}
	return "", false
}

// Read parses the mount table of the calling process.
func Read() ([]Mount, error) {
	f, err := os.Open(DefaultPath)
	if err != nil {
		return nil, fmt.Errorf("cannot read mount table: %w", err)
	}
	defer f.Close()
	mounts, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("cannot parse %s: %w", DefaultPath, err)
	}
	return mounts, nil
}

// Parse parses mountinfo text. A malformed line makes it fail with an error
// naming the line number; empty lines are ignored.
func Parse(r io.Reader) ([]Mount, error) {
	var mounts []Mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		m, err := parseLine(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w: %q", n, err, line)
		}
		mounts = append(mounts, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("cannot read line %d: %w", n+1, err)
	}
	return mounts, nil
}

func parseLine(line string) (Mount, error) {
	var m Mount
	fields := strings.Split(line, " ")
	// id parent maj:min root point options [optional...] - fstype source superopts
	sep := -1
	for i := 6; i < len(fields); i++ {
		if fields[i] == "-" {
			sep = i
			break
		}
	}
	if len(fields) < 6 {
		return m, fmt.Errorf("has %d fields, want at least 10", len(fields))
	}
	if sep < 0 {
		return m, errors.New(`has no "-" separator after the mount options`)
	}
	if len(fields)-sep-1 != 3 {
		return m, fmt.Errorf("has %d fields after the separator, want 3 (fstype, source, super options)", len(fields)-sep-1)
	}
	var err error
	if m.ID, err = strconv.Atoi(fields[0]); err != nil {
		return m, fmt.Errorf("bad mount id %q", fields[0])
	}
	if m.ParentID, err = strconv.Atoi(fields[1]); err != nil {
		return m, fmt.Errorf("bad parent id %q", fields[1])
	}
	maj, min, ok := strings.Cut(fields[2], ":")
	if !ok {
		return m, fmt.Errorf("bad major:minor %q", fields[2])
	}
	if m.Major, err = strconv.Atoi(maj); err != nil {
		return m, fmt.Errorf("bad major:minor %q", fields[2])
	}
	if m.Minor, err = strconv.Atoi(min); err != nil {
		return m, fmt.Errorf("bad major:minor %q", fields[2])
	}
	if m.Root, err = unescape(fields[3]); err != nil {
		return m, fmt.Errorf("bad root: %w", err)
	}
	if m.Point, err = unescape(fields[4]); err != nil {
		return m, fmt.Errorf("bad mount point: %w", err)
	}
	m.Options = fields[5]
	if sep > 6 {
		m.Optional = append([]string(nil), fields[6:sep]...)
	}
	if m.FSType, err = unescape(fields[sep+1]); err != nil {
		return m, fmt.Errorf("bad fstype: %w", err)
	}
	if m.Source, err = unescape(fields[sep+2]); err != nil {
		return m, fmt.Errorf("bad source: %w", err)
	}
	if m.SuperOptions, err = unescape(fields[sep+3]); err != nil {
		return m, fmt.Errorf("bad super options: %w", err)
	}
	return m, nil
}

// unescape decodes the kernel's octal escapes (\040 space, \011 tab, \012
// newline, \134 backslash).
func unescape(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i+4 > len(s) {
			return "", fmt.Errorf("truncated escape in %q", s)
		}
		v, err := strconv.ParseUint(s[i+1:i+4], 8, 8)
		if err != nil {
			return "", fmt.Errorf("bad escape %q in %q", s[i:i+4], s)
		}
		b.WriteByte(byte(v))
		i += 3
	}
	return b.String(), nil
}

// Lookup returns the mount that contains path: the one with the longest mount
// point that is path or a parent of it, the last mounted one when several are
// stacked on the same point. Symbolic links in path are resolved first, so
// path must exist.
func Lookup(mounts []Mount, path string) (Mount, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return Mount{}, fmt.Errorf("cannot find the mount of %s: %w", path, err)
	}
	resolved, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return Mount{}, fmt.Errorf("cannot find the mount of %s: %w", path, err)
	}
	best := -1
	for i, m := range mounts {
		if !contains(m.Point, resolved) {
			continue
		}
		if best < 0 || len(m.Point) > len(mounts[best].Point) {
			best = i
			continue
		}
		if m.Point == mounts[best].Point && !covers(m, mounts[best]) {
			// Stacked on the same point: the one mounted on top of
			// the other wins. Its parent is the one it covers; when
			// the ids do not tell, the later line is the later mount.
			best = i
		}
	}
	if best < 0 {
		return Mount{}, fmt.Errorf("cannot find the mount of %s: %w", path, ErrNotFound)
	}
	return mounts[best], nil
}

// covers reports whether b is known to be mounted on top of a.
func covers(a, b Mount) bool {
	return b.ParentID == a.ID
}

// contains reports whether path is point or below it.
func contains(point, path string) bool {
	point = filepath.Clean(point)
	if point == "/" {
		return strings.HasPrefix(path, "/")
	}
	return path == point || strings.HasPrefix(path, point+"/")
}

// Below returns the mount points of mounts at dir (when self is true) or
// below it, last mounted first: the order to unmount them in.
func Below(mounts []Mount, dir string, self bool) []string {
	dir = filepath.Clean(dir)
	var out []string
	for i := len(mounts) - 1; i >= 0; i-- {
		p := mounts[i].Point
		if strings.HasPrefix(p, dir+"/") || self && p == dir {
			out = append(out, p)
		}
	}
	return out
}

// UnmountBelow unmounts, with unmount, everything mounted at dir (when
// self is true) or below it in the calling process's mount table, last
// mounted first (Below). Symbolic links in dir are resolved first; a dir
// that does not exist has nothing below it. It tries every mount point and
// returns the errors of those it could not unmount.
func UnmountBelow(dir string, self bool, unmount func(point string) error) error {
	resolved, err := filepath.EvalSymlinks(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	mounts, err := Read()
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range Below(mounts, resolved, self) {
		if err := unmount(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
