// Package undojournal saves, before a package transaction changes a root in
// place, everything the transaction can change, so that Restore can put the
// root back byte for byte: the files it replaces or removes (cloned with
// FICLONE where the filesystem shares extents, else copied), whole trees
// (/etc, the rpm database), the paths it adds (removed on restore), and the
// owners, modes, times, extended attributes (SELinux labels included) and
// symlink targets of all of them.
//
// A journal is a directory: data/ holds the saved file contents, one file
// per saved regular file (a clone costs an inode, not the file's blocks),
// manifest.json.gz lists every entry (gzip-compressed JSON: 10-20 bytes
// an entry, a tenth of the plain JSON that earlier journals have in
// manifest.json, which Restore still reads), and the file
// "complete" is written last, after everything is synced: a journal
// without it was cut short and must not be restored (the transaction
// cannot have started).
//
// What it cannot see: files that no list names and no tree holds, which a
// scriptlet changes (a %post writing under /var). Callers say so.
package undojournal

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/keyarchos/kos-upgrade/pkg/atomicfile"
)

// Files of a journal directory.
const (
	manifestName   = "manifest.json.gz"
	manifestNameV1 = "manifest.json" // plain JSON, journals made before
	completeName   = "complete"
	dataDir        = "data"
)

// ErrNoSpace is returned (wrapped) when the filesystem cannot hold the
// copies a journal needs without reflinks.
var ErrNoSpace = errors.New("not enough free space for the undo journal")

// ErrIncomplete is returned (wrapped) by Restore for a journal that was
// cut short.
var ErrIncomplete = errors.New("the undo journal is incomplete")

// Spec says what a journal covers.
type Spec struct {
	// Root is the directory of the system (its "/").
	Root string
	// Dir is the journal's directory, on the same filesystem as Root
	// (reflinks do not cross filesystems). Its parent must exist.
	Dir string
	// Paths are absolute paths inside Root ("/usr/bin/tool") that the
	// transaction may replace, remove or create: the file lists of the
	// packages it erases or upgrades and of the packages it installs.
	// Symlinks in their parent directories resolve inside Root.
	Paths []string
	// Trees are directories inside Root saved whole: Restore puts back
	// everything in them and removes what was not there.
	Trees []string
	// CloneTrees are saved whole too, but only when the files are cloned
	// (reflinks): where scriptlets write files no package lists (/var/lib),
	// too big to copy.
	CloneTrees []string
	// Exclude are paths inside Root never saved nor touched by Restore
	// (the state directory holding the journal).
	Exclude []string
	// Copy are paths inside Root whose files are copied even where they
	// could be cloned: files the transaction rewrites in place, page by
	// page (the rpm database), where a clone would make every write a
	// copy on write of a shared extent.
	Copy []string
}

// under reports whether p is one of dirs or below one.
func under(p string, dirs []string) bool {
	for _, d := range dirs {
		d = filepath.Clean("/" + d)
		if p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}

// Entry kinds.
const (
	kindFile    = "f"
	kindDir     = "d"
	kindSymlink = "l"
	kindAbsent  = "x" // did not exist: removed on restore
)

type entry struct {
	Path   string            `json:"p"`
	Kind   string            `json:"k"`
	Mode   uint32            `json:"m,omitempty"`
	UID    int               `json:"u,omitempty"`
	GID    int               `json:"g,omitempty"`
	Mtime  int64             `json:"t,omitempty"` // ns
	Size   int64             `json:"s,omitempty"`
	Target string            `json:"l,omitempty"`
	Data   string            `json:"d,omitempty"`
	Xattrs map[string][]byte `json:"x,omitempty"`
	// Link names the journaled file this one is a hard link of (saved
	// once, linked again on restore).
	Link string `json:"h,omitempty"`

	dev, ino, nlink uint64 // of a regular file, to find hard links
}

type manifest struct {
	Version   int      `json:"version"`
	Reflinked bool     `json:"reflinked"`
	SpaceUsed int64    `json:"space_used"`
	Root      string   `json:"root"`
	Trees     []string `json:"trees"`
	Exclude   []string `json:"exclude,omitempty"`
	Entries   []entry  `json:"entries"`
}

// Stats describes a journal.
type Stats struct {
	// Entries counts the journal's entries by kind: Files, Dirs,
	// Symlinks, Absent (paths to remove on restore).
	Files, Dirs, Symlinks, Absent int
	// Covered is the size of the regular files saved.
	Covered int64
	// Reflinked is true when the files were cloned, false when copied.
	Reflinked bool
	// DiskUsage is what the journal's files have allocated, shared
	// extents counted (an upper bound with reflinks).
	DiskUsage int64
	// SpaceUsed is how much the filesystem's free space shrank while the
	// journal's files were saved, plus the blocks of its manifest (what
	// it really costs; with reflinks only the metadata: an inode and a
	// directory entry a file, the extents' reference counts, the
	// manifest; approximate on a busy filesystem).
	SpaceUsed int64
}

// Need is the space a journal needs on its filesystem.
type Need struct {
	// Bytes the copies take (0 with reflinks) plus the manifest.
	Bytes int64
	// Covered is the size of the regular files it saves.
	Covered int64
	// Reflink says whether the filesystem of the journal clones files.
	Reflink bool
	// Free is what the filesystem has free for root.
	Free int64
}

// Check computes what a journal for spec needs and refuses with ErrNoSpace
// when the filesystem cannot hold it (copies, without reflinks, plus a
// margin of 64 MiB or 5% of the filesystem for the transaction itself).
func Check(ctx context.Context, spec Spec) (Need, error) {
	parent, reflink, err := probe(spec)
	if err != nil {
		return Need{}, err
	}
	ents, err := collect(ctx, spec, reflink)
	if err != nil {
		return Need{}, err
	}
	return check(spec, parent, reflink, ents)
}

// probe finds where the journal goes (its nearest existing directory: it
// may not exist yet) and whether files of the root can be cloned there.
func probe(spec Spec) (string, bool, error) {
	parent := filepath.Dir(filepath.Clean(spec.Dir))
	for {
		if fi, err := os.Stat(parent); err == nil && fi.IsDir() {
			break
		}
		if parent == filepath.Dir(parent) {
			break
		}
		parent = filepath.Dir(parent)
	}
	reflink, err := canReflink(spec.Root, parent)
	return parent, reflink, err
}

// trees are the trees a journal saves whole: spec.Trees, and
// spec.CloneTrees when the files are cloned.
func trees(spec Spec, reflink bool) []string {
	t := append([]string(nil), spec.Trees...)
	if reflink {
		t = append(t, spec.CloneTrees...)
	}
	return cleanAll(t)
}

func check(spec Spec, parent string, reflink bool, ents []entry) (Need, error) {
	n := Need{Reflink: reflink}
	var copied int64
	for _, e := range ents {
		if e.Kind == kindFile {
			n.Covered += e.Size
			if under(e.Path, spec.Copy) {
				copied += e.Size
			}
		}
	}
	n.Bytes = int64(len(ents))*256 + 1<<20
	if !n.Reflink {
		n.Bytes += n.Covered
	} else {
		n.Bytes += copied
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(parent, &sfs); err != nil {
		return n, fmt.Errorf("cannot read the free space of %s: %w", parent, err)
	}
	n.Free = int64(sfs.Bfree) * int64(sfs.Bsize)
	margin := max(int64(64<<20), int64(sfs.Blocks)*int64(sfs.Bsize)/20)
	if n.Bytes+margin > n.Free {
		return n, fmt.Errorf("%w: the filesystem of %s does not clone files (no reflink), so the journal copies %d MiB of files, but only %d MiB are free (%d MiB kept for the transaction): free space there, or upgrade without a rollback point (--snapshot none)",
			ErrNoSpace, parent, mib(n.Bytes), mib(n.Free), mib(margin))
	}
	return n, nil
}

func mib(b int64) int64 { return (b + 1<<20 - 1) >> 20 }

// Reflinks reports whether files of root can be cloned into dir (an
// existing directory), by trying it: what Check and Create decide on.
func Reflinks(root, dir string) (bool, error) { return canReflink(root, dir) }

// canReflink reports whether a file of root's filesystem can be cloned
// into dir, by trying it.
func canReflink(root, dir string) (bool, error) {
	a, err := os.CreateTemp(dir, ".kos-reflink-probe-*")
	if err != nil {
		return false, fmt.Errorf("cannot probe reflinks in %s: %w", dir, err)
	}
	defer os.Remove(a.Name())
	defer a.Close()
	if _, err := a.WriteString("probe"); err != nil {
		return false, fmt.Errorf("cannot probe reflinks in %s: %w", dir, err)
	}
	b, err := os.CreateTemp(dir, ".kos-reflink-probe-*")
	if err != nil {
		return false, fmt.Errorf("cannot probe reflinks in %s: %w", dir, err)
	}
	defer os.Remove(b.Name())
	defer b.Close()
	if !sameFS(root, dir) {
		return false, nil
	}
	return unix.IoctlFileClone(int(b.Fd()), int(a.Fd())) == nil, nil
}

func sameFS(a, b string) bool {
	var sa, sb unix.Stat_t
	if unix.Stat(a, &sa) != nil || unix.Stat(b, &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev
}

// Create makes the journal for spec in spec.Dir: it checks the space
// (Check), saves every entry, syncs everything and writes the completeness
// mark last. A leftover spec.Dir (a cut-short journal) is removed first;
// a complete one is refused, so that a retry never overwrites the only copy
// of the old files with the new ones.
func Create(ctx context.Context, spec Spec) (Stats, error) {
	if Complete(spec.Dir) {
		return Stats{}, fmt.Errorf("cannot make the undo journal %s: a complete one exists already", spec.Dir)
	}
	if err := os.RemoveAll(spec.Dir); err != nil {
		return Stats{}, fmt.Errorf("cannot remove the incomplete undo journal %s: %w", spec.Dir, err)
	}
	parent, reflink, err := probe(spec)
	if err != nil {
		return Stats{}, err
	}
	ents, err := collect(ctx, spec, reflink)
	if err != nil {
		return Stats{}, err
	}
	need, err := check(spec, parent, reflink, ents)
	if err != nil {
		return Stats{}, err
	}
	// What is not on disk yet (delayed allocation) would count as the
	// journal's.
	if err := syncFS(parent); err != nil {
		return Stats{}, err
	}
	free0 := freeBytes(parent)
	if err := os.MkdirAll(filepath.Join(spec.Dir, dataDir), 0o700); err != nil {
		return Stats{}, fmt.Errorf("cannot make the undo journal: %w", err)
	}
	st := Stats{Reflinked: need.Reflink}
	for i := range ents {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		e := &ents[i]
		switch e.Kind {
		case kindFile:
			if e.Link != "" {
				st.Files++
				continue
			}
			e.Data = fmt.Sprintf("%07d", i)
			clone := need.Reflink && !under(e.Path, spec.Copy)
			if err := saveFile(filepath.Join(spec.Root, e.Path), filepath.Join(spec.Dir, dataDir, e.Data), clone); err != nil {
				return st, err
			}
			st.Files++
			st.Covered += e.Size
		case kindDir:
			st.Dirs++
		case kindSymlink:
			st.Symlinks++
		case kindAbsent:
			st.Absent++
		}
	}
	if err := syncFS(spec.Dir); err != nil {
		return st, err
	}
	st.SpaceUsed = max(0, free0-freeBytes(parent))
	m := manifest{Version: 1, Reflinked: need.Reflink, Root: spec.Root, Trees: trees(spec, reflink), Exclude: cleanAll(spec.Exclude), Entries: ents}
	data, err := encodeManifest(&m)
	if err != nil {
		return st, err
	}
	// The manifest's blocks, counted before it is written: it records
	// the figure (the size of a number does not change the block count
	// but at a block's edge, once in thousands).
	var sfs unix.Statfs_t
	bs := int64(4096)
	if unix.Statfs(parent, &sfs) == nil && sfs.Bsize > 0 {
		bs = int64(sfs.Bsize)
	}
	st.SpaceUsed += (int64(len(data)) + bs - 1) / bs * bs
	m.SpaceUsed = st.SpaceUsed
	if data, err = encodeManifest(&m); err != nil {
		return st, err
	}
	if err := atomicfile.WriteFile(filepath.Join(spec.Dir, manifestName), data, 0o600); err != nil {
		return st, err
	}
	if err := syncFS(spec.Dir); err != nil {
		return st, err
	}
	if err := atomicfile.WriteFile(filepath.Join(spec.Dir, completeName), []byte("complete\n"), 0o600); err != nil {
		return st, err
	}
	st.DiskUsage = diskUsage(spec.Dir)
	return st, nil
}

// encodeManifest is m as gzip-compressed JSON.
func encodeManifest(m *manifest) ([]byte, error) {
	var b bytes.Buffer
	z := gzip.NewWriter(&b)
	if err := json.NewEncoder(z).Encode(m); err != nil {
		return nil, fmt.Errorf("cannot encode the undo journal: %w", err)
	}
	if err := z.Close(); err != nil {
		return nil, fmt.Errorf("cannot encode the undo journal: %w", err)
	}
	return b.Bytes(), nil
}

// Complete reports whether the journal in dir was made to the end.
func Complete(dir string) bool {
	fi, err := os.Lstat(filepath.Join(dir, completeName))
	return err == nil && fi.Mode().IsRegular()
}

// syncFS makes every write to the filesystem of dir durable (the saved
// files, the directories they were made in).
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("cannot sync the undo journal: %w", err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("cannot sync the undo journal: %w", err)
	}
	return nil
}

// freeBytes is the free space of the filesystem of dir (0 when unknown).
func freeBytes(dir string) int64 {
	var sfs unix.Statfs_t
	if unix.Statfs(dir, &sfs) != nil {
		return 0
	}
	return int64(sfs.Bfree) * int64(sfs.Bsize)
}

// diskUsage adds up the allocated blocks of the files under dir.
func diskUsage(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		var s unix.Stat_t
		if unix.Lstat(p, &s) == nil {
			n += s.Blocks * 512
		}
		return nil
	})
	return n
}

func cleanAll(ps []string) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, filepath.Clean("/"+p))
	}
	return out
}

// collect lists the entries of spec: trees whole, paths one by one (with
// their absent ancestors), in a stable order, without duplicates.
func collect(ctx context.Context, spec Spec, reflink bool) ([]entry, error) {
	seen := map[string]bool{}
	var ents []entry
	excluded := func(p string) bool {
		for _, x := range spec.Exclude {
			x = filepath.Clean("/" + x)
			if p == x || strings.HasPrefix(p, x+"/") {
				return true
			}
		}
		return false
	}
	add := func(p string) error {
		if seen[p] || excluded(p) || p == "/" {
			return nil
		}
		seen[p] = true
		e, err := stat(spec.Root, p)
		if err != nil {
			return err
		}
		ents = append(ents, e)
		return nil
	}
	var rootSt unix.Stat_t
	if err := unix.Stat(spec.Root, &rootSt); err != nil {
		return nil, fmt.Errorf("cannot read %s: %w", spec.Root, err)
	}
	for _, t := range trees(spec, reflink) {
		t, err := resolveIn(spec.Root, t)
		if err != nil {
			return nil, err
		}
		err = filepath.WalkDir(filepath.Join(spec.Root, t), func(full string, d os.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, os.ErrNotExist) {
					return nil
				}
				return err
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			rel, err := filepath.Rel(spec.Root, full)
			if err != nil {
				return err
			}
			p := filepath.Clean("/" + rel)
			if d.IsDir() {
				// Not into what is excluded, nor into other
				// filesystems mounted in the tree.
				var st unix.Stat_t
				if excluded(p) || (unix.Lstat(full, &st) == nil && st.Dev != rootSt.Dev) {
					return filepath.SkipDir
				}
			}
			return add(p)
		})
		if err != nil {
			return nil, fmt.Errorf("cannot list %s for the undo journal: %w", t, err)
		}
	}
	for _, p := range spec.Paths {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		r, err := resolveIn(spec.Root, p)
		if err != nil {
			return nil, err
		}
		// The path and its ancestors up to the first that exists: the
		// directories the transaction creates are removed on restore,
		// the existing parent's metadata is put back.
		for q := r; q != "/"; q = filepath.Dir(q) {
			if err := add(q); err != nil {
				return nil, err
			}
			if _, err := os.Lstat(filepath.Join(spec.Root, q)); err == nil && q != r {
				break
			}
		}
	}
	sort.SliceStable(ents, func(i, j int) bool { return ents[i].Path < ents[j].Path })
	// Hard links: the first path (in order) is saved, the others link to
	// it again on restore.
	type key struct{ dev, ino uint64 }
	first := map[key]string{}
	for i := range ents {
		e := &ents[i]
		if e.Kind != kindFile || e.nlink < 2 {
			continue
		}
		k := key{e.dev, e.ino}
		if p, ok := first[k]; ok {
			e.Link = p
		} else {
			first[k] = e.Path
		}
	}
	return ents, nil
}

// resolveIn resolves the symlinks in the directories of p (absolute,
// inside root) as a process chrooted to root would, leaving the last
// component alone, and returns the result, absolute inside root.
func resolveIn(root, p string) (string, error) {
	p = filepath.Clean("/" + p)
	if p == "/" {
		return p, nil
	}
	dir, base := filepath.Dir(p), filepath.Base(p)
	resolved := "/"
	parts := strings.Split(strings.Trim(dir, "/"), "/")
	hops := 0
	for len(parts) > 0 {
		c := parts[0]
		parts = parts[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			resolved = filepath.Dir(resolved)
			continue
		}
		next := filepath.Join(resolved, c)
		fi, err := os.Lstat(filepath.Join(root, next))
		if err != nil || fi.Mode()&os.ModeSymlink == 0 {
			// Missing (created by the transaction) or a directory.
			resolved = next
			continue
		}
		if hops++; hops > 40 {
			return "", fmt.Errorf("cannot resolve %s in %s: too many symbolic links", p, root)
		}
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return "", fmt.Errorf("cannot resolve %s in %s: %w", p, root, err)
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(resolved, target)
		}
		parts = append(strings.Split(strings.Trim(filepath.Clean(target), "/"), "/"), parts...)
		resolved = "/"
	}
	return filepath.Join(resolved, base), nil
}

// stat describes the path p inside root as an entry.
func stat(root, p string) (entry, error) {
	full := filepath.Join(root, p)
	var s unix.Stat_t
	if err := unix.Lstat(full, &s); err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			return entry{Path: p, Kind: kindAbsent}, nil
		}
		return entry{}, fmt.Errorf("cannot read %s: %w", full, err)
	}
	e := entry{Path: p, Mode: s.Mode &^ unix.S_IFMT, UID: int(s.Uid), GID: int(s.Gid), Mtime: s.Mtim.Nano()}
	switch s.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		e.Kind, e.Size = kindFile, s.Size
		e.dev, e.ino, e.nlink = uint64(s.Dev), s.Ino, uint64(s.Nlink)
	case unix.S_IFDIR:
		e.Kind = kindDir
	case unix.S_IFLNK:
		e.Kind = kindSymlink
		t, err := os.Readlink(full)
		if err != nil {
			return entry{}, fmt.Errorf("cannot read %s: %w", full, err)
		}
		e.Target = t
	default:
		// FIFOs, sockets, devices: no package file list has them in
		// a place the transaction changes; say so rather than guess.
		return entry{}, fmt.Errorf("cannot save %s in the undo journal: it is not a regular file, directory or symbolic link", full)
	}
	x, err := xattrs(full)
	if err != nil {
		return entry{}, err
	}
	e.Xattrs = x
	return e, nil
}

// xattrs reads every extended attribute of path (not following a
// symlink): security.selinux, security.capability, user.*, trusted.*.
func xattrs(path string) (map[string][]byte, error) {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(path, buf)
	if errors.Is(err, unix.ERANGE) {
		if n, err = unix.Llistxattr(path, nil); err == nil {
			buf = make([]byte, n)
			n, err = unix.Llistxattr(path, buf)
		}
	}
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cannot list the extended attributes of %s: %w", path, err)
	}
	var out map[string][]byte
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" || strings.HasPrefix(name, "system.") {
			// system.posix_acl_*: restored with the mode by the
			// filesystem from what is stored as xattrs below;
			// skipped: ACLs are not in rpm payloads.
			continue
		}
		v := make([]byte, 256)
		sz, err := unix.Lgetxattr(path, name, v)
		if errors.Is(err, unix.ERANGE) {
			if sz, err = unix.Lgetxattr(path, name, nil); err == nil {
				v = make([]byte, sz)
				sz, err = unix.Lgetxattr(path, name, v)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("cannot read the extended attribute %s of %s: %w", name, path, err)
		}
		if out == nil {
			out = map[string][]byte{}
		}
		out[name] = v[:sz]
	}
	return out, nil
}

// saveFile clones (or copies) src to dst.
func saveFile(src, dst string, reflink bool) error {
	in, err := os.OpenFile(src, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("cannot save %s in the undo journal: %w", src, err)
	}
	defer in.Close()
	return cloneInto(in, dst, reflink)
}

// cloneInto makes dst (new, 0600) a clone or copy of in.
func cloneInto(in *os.File, dst string, reflink bool) error {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("cannot create %s: %w", dst, err)
	}
	ok := false
	defer func() {
		out.Close()
		if !ok {
			os.Remove(dst)
		}
	}()
	if !reflink || unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) != nil {
		if _, err := io.Copy(out, in); err != nil {
			return fmt.Errorf("cannot copy %s to %s: %w", in.Name(), dst, err)
		}
	}
	// Synced with the whole filesystem by the caller (syncFS).
	ok = true
	return nil
}

// Read describes the complete journal in dir.
func Read(dir string) (Stats, error) {
	m, err := readManifest(dir)
	if err != nil {
		return Stats{}, err
	}
	st := Stats{Reflinked: m.Reflinked, DiskUsage: diskUsage(dir), SpaceUsed: m.SpaceUsed}
	for _, e := range m.Entries {
		switch e.Kind {
		case kindFile:
			st.Files++
			st.Covered += e.Size
		case kindDir:
			st.Dirs++
		case kindSymlink:
			st.Symlinks++
		case kindAbsent:
			st.Absent++
		}
	}
	return st, nil
}
