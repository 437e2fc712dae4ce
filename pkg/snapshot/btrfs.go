package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/atomicfile"
	"github.com/keyarchos/kos-upgrade/pkg/mountinfo"
)

// BtrfsDir is the top-level directory (a plain directory in the top-level
// subvolume, created on first use) under which the btrfs backend creates its
// snapshots. Btrfs snapshot names are paths relative to the top level, so
// kos-upgrade's own snapshots are named "kos-upgrade/<label>".
const BtrfsDir = "kos-upgrade"

// BtrfsTopLevel is the name of the top-level subvolume (id 5), for a root
// mounted from it.
const BtrfsTopLevel = "/"

// btrfsTopMount is the directory, below the work directory, where the top
// level of the root's filesystem is mounted.
const btrfsTopMount = "btrfs-top"

const (
	topLevelID      = 5   // BTRFS_FS_TREE_OBJECTID
	subvolRootInode = 256 // BTRFS_FIRST_FREE_OBJECTID: the root directory of every subvolume
)

// BtrfsName returns the snapshot name the btrfs backend uses for label.
func BtrfsName(label string) string { return BtrfsDir + "/" + label }

// Btrfs snapshots a root mounted from a btrfs subvolume. Snapshots are
// subvolumes next to the root's, under BtrfsDir in the top level, which the
// backend mounts at <workDir>/btrfs-top for its whole life: a snapshot's Path
// is <workDir>/btrfs-top/<name>, writable as soon as Create returns.
//
// Not in a snapshot: other mounts (/boot, a separate /var) and subvolumes
// nested in the root (they show up as empty directories in the snapshot).
type Btrfs struct {
	// Logger receives one line per external command; nil means
	// slog.Default(). Set it before the first call.
	Logger *slog.Logger

	rootDir string // resolved mount point of the root
	top     string // where the top level is mounted
	device  string // source of the root's mount
	devNum  [2]int // major:minor of the filesystem in mountinfo
	cur     subvol // what the root is mounted from

	mu      sync.Mutex
	mounted bool // top is mounted and ours to unmount
}

type subvol struct {
	id   uint64
	name string // relative to the top level; BtrfsTopLevel for id 5
}

var _ Snapshotter = (*Btrfs)(nil)

// NewBtrfs binds the btrfs backend to the system mounted at rootDir, which
// must be the mount point of a btrfs subvolume (or of the top level);
// otherwise the error wraps ErrNotSupported and says what was found. It
// mounts the top level of the same filesystem at <workDir>/btrfs-top, or
// reuses the mount a previous run left there. Close undoes that mount.
func NewBtrfs(ctx context.Context, rootDir, workDir string) (*Btrfs, error) {
	root, mounts, m, err := rootMount(rootDir)
	if err != nil {
		return nil, err
	}
	if m.FSType != "btrfs" {
		return nil, fmt.Errorf("root %s is on %s (%s), not btrfs: %w", rootDir, m.FSType, m.Source, ErrNotSupported)
	}
	if m.Point != root {
		return nil, fmt.Errorf("root %s is not a mount point but a directory in the btrfs mount at %s: %w", rootDir, m.Point, ErrNotSupported)
	}
	subvolOpt, _ := m.SuperOption("subvol")
	idOpt, _ := m.SuperOption("subvolid")
	if subvolOpt != "" && subvolOpt != m.Root {
		return nil, fmt.Errorf("root %s is a bind mount of directory %s in subvolume %s, not a subvolume mount point: %w",
			rootDir, m.Root, subvolOpt, ErrNotSupported)
	}
	if ino, err := inode(root); err != nil {
		return nil, fmt.Errorf("cannot use root %s: %w", rootDir, err)
	} else if ino != subvolRootInode {
		return nil, fmt.Errorf("root %s is mounted from directory %s of a btrfs filesystem, not from a subvolume: %w", rootDir, m.Root, ErrNotSupported)
	}
	id, err := strconv.ParseUint(idOpt, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("cannot find the subvolume id of root %s in its mount options %q", rootDir, m.SuperOptions)
	}
	name := strings.Trim(m.Root, "/")
	if id == topLevelID || name == "" {
		name = BtrfsTopLevel
	}

	b := &Btrfs{
		rootDir: root,
		top:     filepath.Join(workDir, btrfsTopMount),
		device:  m.Source,
		devNum:  [2]int{m.Major, m.Minor},
		cur:     subvol{id: id, name: name},
	}
	if err := b.mountTop(ctx, mounts); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			b.Close()
		}
	}()
	// The mount table and the filesystem must agree on what the root is.
	rid, err := b.rootID(ctx, b.rootDir)
	if err != nil {
		return nil, err
	}
	if rid != id {
		return nil, fmt.Errorf("cannot use root %s: mount table says subvolume %d, btrfs says %d", rootDir, id, rid)
	}
	if name != BtrfsTopLevel {
		tid, err := b.subvolID(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("cannot find subvolume %s of root %s in the top level at %s: %w", name, rootDir, b.top, err)
		}
		if tid != id {
			return nil, fmt.Errorf("cannot use root %s: %s in the top level is subvolume %d, the root is %d", rootDir, name, tid, id)
		}
	}
	ok = true
	return b, nil
}

// mountTop mounts the top level at b.top, or adopts the one mounted there.
func (b *Btrfs) mountTop(ctx context.Context, mounts []mountinfo.Mount) error {
	if err := os.MkdirAll(b.top, 0o700); err != nil {
		return fmt.Errorf("cannot create %s: %w", b.top, err)
	}
	top, err := filepath.EvalSymlinks(b.top)
	if err != nil {
		return fmt.Errorf("cannot use %s: %w", b.top, err)
	}
	b.top = top
	if m, ok := mountedAt(mounts, top); ok {
		if !b.isTopMount(m) {
			return fmt.Errorf("cannot mount the btrfs top level at %s: %s %s (%s) is mounted there already", top, m.FSType, m.Source, m.SuperOptions)
		}
		// Left by a run that did not Close (crash): reuse it.
		b.logger().Debug("reusing btrfs top-level mount", "path", top)
		b.mounted = true
		return nil
	}
	if _, err := b.run(ctx, "mount the btrfs top level", mountTool, "-t", "btrfs", "-o", "subvolid=5", b.device, top); err != nil {
		return err
	}
	b.mounted = true
	mounts, err = mountinfo.Read()
	if err != nil {
		b.Close()
		return err
	}
	if m, ok := mountedAt(mounts, top); !ok || !b.isTopMount(m) {
		b.Close()
		return fmt.Errorf("cannot mount the btrfs top level at %s: %s did not mount the root's filesystem there", top, b.device)
	}
	return nil
}

func (b *Btrfs) isTopMount(m mountinfo.Mount) bool {
	id, _ := m.SuperOption("subvolid")
	return m.FSType == "btrfs" && m.Major == b.devNum[0] && m.Minor == b.devNum[1] && id == "5" && m.Root == "/"
}

// mountedAt returns the topmost mount whose mount point is exactly path.
func mountedAt(mounts []mountinfo.Mount, path string) (mountinfo.Mount, bool) {
	m, err := mountinfo.Lookup(mounts, path)
	if err != nil || m.Point != path {
		return mountinfo.Mount{}, false
	}
	return m, true
}

// Backend implements Snapshotter.
func (b *Btrfs) Backend() string { return BackendBtrfs }

// Current implements Snapshotter: the subvolume the root is mounted from,
// with Path the root directory.
func (b *Btrfs) Current(ctx context.Context) (Snapshot, error) {
	if err := b.check("find the current root"); err != nil {
		return Snapshot{}, err
	}
	def, err := b.defaultID(ctx)
	if err != nil {
		return Snapshot{}, err
	}
	return b.snapshot(ctx, b.cur, def), nil
}

// Default implements Snapshotter.
func (b *Btrfs) Default(ctx context.Context) (Snapshot, error) {
	if err := b.check("find the default subvolume"); err != nil {
		return Snapshot{}, err
	}
	def, err := b.defaultID(ctx)
	if err != nil {
		return Snapshot{}, err
	}
	name, err := b.resolve(ctx, def)
	if err != nil {
		return Snapshot{}, err
	}
	return b.snapshot(ctx, subvol{id: def, name: name}, def), nil
}

// Create implements Snapshotter. Name must be BtrfsName(label) with a
// one-component label. The snapshot is committed to disk when Create returns:
// after a crash it either exists whole (and Create says ErrExists) or not at
// all.
func (b *Btrfs) Create(ctx context.Context, name string) (Snapshot, error) {
	if err := b.check("create snapshot " + name); err != nil {
		return Snapshot{}, err
	}
	if err := checkName(name); err != nil {
		return Snapshot{}, fmt.Errorf("cannot create snapshot: %w", err)
	}
	if !ours(name) {
		return Snapshot{}, fmt.Errorf("cannot create snapshot %q: kos-upgrade's btrfs snapshots are named %s/<label>", name, BtrfsDir)
	}
	dst := b.path(name)
	if _, err := os.Lstat(dst); err == nil {
		return Snapshot{}, fmt.Errorf("cannot create snapshot %s: %s exists: %w", name, dst, ErrExists)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return Snapshot{}, fmt.Errorf("cannot create snapshot %s: %w", name, err)
	}
	dir := filepath.Join(b.top, BtrfsDir)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.Mkdir(dir, 0o700); err != nil {
			return Snapshot{}, fmt.Errorf("cannot create snapshot %s: %w", name, err)
		}
		if err := atomicfile.SyncDir(b.top); err != nil {
			return Snapshot{}, fmt.Errorf("cannot create snapshot %s: %w", name, err)
		}
	}
	if _, err := b.run(ctx, "create snapshot "+name, btrfsTool, "subvolume", "snapshot", b.path(b.cur.name), dst); err != nil {
		return Snapshot{}, err
	}
	if err := b.sync(ctx, "create snapshot "+name); err != nil {
		return Snapshot{}, err
	}
	id, err := b.rootID(ctx, dst)
	if err != nil {
		return Snapshot{}, err
	}
	def, err := b.defaultID(ctx)
	if err != nil {
		return Snapshot{}, err
	}
	return b.snapshot(ctx, subvol{id: id, name: name}, def), nil
}

// Delete implements Snapshotter. Besides the current root and the default,
// it refuses to delete subvolumes outside BtrfsDir: kos-upgrade deletes only
// what it created. Subvolumes nested in the snapshot (made by the
// transaction) and mounts below its path are removed first.
func (b *Btrfs) Delete(ctx context.Context, name string) error {
	if err := b.check("delete snapshot " + name); err != nil {
		return err
	}
	if err := checkName(name); err != nil {
		return fmt.Errorf("cannot delete snapshot: %w", err)
	}
	id, err := b.subvolID(ctx, name)
	if err != nil {
		return fmt.Errorf("cannot delete snapshot: %w", err)
	}
	def, err := b.defaultID(ctx)
	if err != nil {
		return err
	}
	switch {
	case id == b.cur.id:
		return fmt.Errorf("cannot delete snapshot %s: it is the current root (subvolume %d)", name, id)
	case id == def:
		return fmt.Errorf("cannot delete snapshot %s: it is the default subvolume (%d), the one that boots next", name, id)
	case !ours(name):
		return fmt.Errorf("cannot delete snapshot %s: it was not made by kos-upgrade (not under %s/)", name, BtrfsDir)
	}
	path := b.path(name)
	all, err := b.list(ctx)
	if err != nil {
		return err
	}
	ids := map[uint64]bool{id: true}
	var nested []string
	for _, sv := range all {
		if strings.HasPrefix(sv.name, name+"/") {
			nested = append(nested, sv.name)
			ids[sv.id] = true
		}
	}
	// btrfs deletes a subvolume that is mounted elsewhere, leaving the
	// mount on a deleted tree: refuse instead.
	mounts, err := mountinfo.Read()
	if err != nil {
		return err
	}
	for _, m := range mounts {
		sid, _ := m.SuperOption("subvolid")
		n, err := strconv.ParseUint(sid, 10, 64)
		if err != nil || m.FSType != "btrfs" || m.Major != b.devNum[0] || m.Minor != b.devNum[1] || !ids[n] || below(m.Point, path) {
			continue
		}
		return fmt.Errorf("cannot delete snapshot %s: subvolume %d is mounted at %s", name, n, m.Point)
	}
	if err := b.unmountBelow(ctx, path); err != nil {
		return err
	}
	// Deepest first: a subvolume with subvolumes in it cannot be deleted.
	sort.Slice(nested, func(i, j int) bool {
		return strings.Count(nested[i], "/") > strings.Count(nested[j], "/")
	})
	argv := []string{btrfsTool, "subvolume", "delete", "--commit-after"}
	for _, n := range nested {
		argv = append(argv, b.path(n))
	}
	argv = append(argv, path)
	_, err = b.run(ctx, "delete snapshot "+name, argv...)
	return err
}

// unmountBelow unmounts everything mounted at or below path, last mounted
// first.
func (b *Btrfs) unmountBelow(ctx context.Context, path string) error {
	return mountinfo.UnmountBelow(path, true, func(p string) error {
		_, err := b.run(ctx, "unmount "+p, umountTool, p)
		return err
	})
}

// below reports whether p is dir or below it.
func below(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// Activate implements Snapshotter: it sets the default subvolume and commits
// the change. Any existing subvolume can be activated (rolling back to the
// pre-upgrade root, which is not under BtrfsDir, is one of them).
func (b *Btrfs) Activate(ctx context.Context, name string) error {
	if err := b.check("activate snapshot " + name); err != nil {
		return err
	}
	if err := checkName(name); err != nil {
		return fmt.Errorf("cannot activate snapshot: %w", err)
	}
	id, err := b.subvolID(ctx, name)
	if err != nil {
		return fmt.Errorf("cannot activate snapshot: %w", err)
	}
	def, err := b.defaultID(ctx)
	if err != nil {
		return err
	}
	if id == def {
		return nil
	}
	if _, err := b.run(ctx, "activate snapshot "+name, btrfsTool, "subvolume", "set-default", strconv.FormatUint(id, 10), b.top); err != nil {
		return err
	}
	return b.sync(ctx, "activate snapshot "+name)
}

// Path implements Snapshotter: the current root's directory, or the
// subvolume's place in the top-level mount.
func (b *Btrfs) Path(ctx context.Context, name string) (string, error) {
	if err := b.check("find snapshot " + name); err != nil {
		return "", err
	}
	if err := checkName(name); err != nil {
		return "", fmt.Errorf("cannot find snapshot: %w", err)
	}
	id, err := b.subvolID(ctx, name)
	if err != nil {
		return "", fmt.Errorf("cannot find snapshot: %w", err)
	}
	if id == b.cur.id {
		return b.rootDir, nil
	}
	return b.path(name), nil
}

// List implements Snapshotter: the current root, the default and the
// snapshots under BtrfsDir, sorted by name. Other subvolumes are not
// kos-upgrade's business and are left out.
func (b *Btrfs) List(ctx context.Context) ([]Snapshot, error) {
	if err := b.check("list snapshots"); err != nil {
		return nil, err
	}
	def, err := b.defaultID(ctx)
	if err != nil {
		return nil, err
	}
	all, err := b.list(ctx)
	if err != nil {
		return nil, err
	}
	if b.cur.id == topLevelID || def == topLevelID {
		all = append(all, subvol{id: topLevelID, name: BtrfsTopLevel})
	}
	var out []Snapshot
	for _, sv := range all {
		if sv.id == b.cur.id || sv.id == def || (ours(sv.name) && !strings.Contains(strings.TrimPrefix(sv.name, BtrfsDir+"/"), "/")) {
			out = append(out, b.snapshot(ctx, sv, def))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Close implements Snapshotter: it unmounts the top level. Calling it again,
// or when a previous Close already unmounted it, is harmless.
func (b *Btrfs) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.mounted {
		return nil
	}
	mounts, err := mountinfo.Read()
	if err != nil {
		return err
	}
	if m, ok := mountedAt(mounts, b.top); !ok || !b.isTopMount(m) {
		b.mounted = false // someone else unmounted it
		return nil
	}
	if _, err := b.run(context.Background(), "unmount the btrfs top level", umountTool, b.top); err != nil {
		return err
	}
	b.mounted = false
	return nil
}

func (b *Btrfs) check(what string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.mounted {
		return fmt.Errorf("cannot %s: the btrfs backend is closed", what)
	}
	return nil
}

// snapshot fills a Snapshot for sv; def is the default subvolume id.
func (b *Btrfs) snapshot(ctx context.Context, sv subvol, def uint64) Snapshot {
	s := Snapshot{Name: sv.name, ID: strconv.FormatUint(sv.id, 10), Path: b.path(sv.name), Default: sv.id == def}
	if sv.id == b.cur.id {
		s.Path = b.rootDir
	}
	s.Created = b.created(ctx, b.path(sv.name))
	return s
}

// path returns where the subvolume name is in the top-level mount.
func (b *Btrfs) path(name string) string {
	if name == BtrfsTopLevel {
		return b.top
	}
	return filepath.Join(b.top, name)
}

// subvolID returns the id of the subvolume name, ErrNotFound if there is
// nothing there, an error if it is not a subvolume.
func (b *Btrfs) subvolID(ctx context.Context, name string) (uint64, error) {
	if name == BtrfsTopLevel {
		return topLevelID, nil
	}
	p := b.path(name)
	ino, err := inode(p)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("%s: %w", name, ErrNotFound)
	}
	if err != nil {
		return 0, err
	}
	if ino != subvolRootInode {
		return 0, fmt.Errorf("%s is not a btrfs subvolume", p)
	}
	return b.rootID(ctx, p)
}

func (b *Btrfs) rootID(ctx context.Context, path string) (uint64, error) {
	out, err := b.run(ctx, "find the subvolume of "+path, btrfsTool, "inspect-internal", "rootid", path)
	if err != nil {
		return 0, err
	}
	id, err := strconv.ParseUint(strings.TrimSpace(out), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("cannot find the subvolume of %s: btrfs inspect-internal rootid printed %q", path, out)
	}
	return id, nil
}

// resolve returns the name of subvolume id.
func (b *Btrfs) resolve(ctx context.Context, id uint64) (string, error) {
	if id == topLevelID {
		return BtrfsTopLevel, nil
	}
	out, err := b.run(ctx, fmt.Sprintf("find the path of subvolume %d", id), btrfsTool, "inspect-internal", "subvolid-resolve", strconv.FormatUint(id, 10), b.top)
	if err != nil {
		return "", err
	}
	name := strings.TrimSuffix(out, "\n")
	if name == "" {
		return "", fmt.Errorf("cannot find the path of subvolume %d: btrfs printed nothing", id)
	}
	return name, nil
}

var getDefaultRE = regexp.MustCompile(`(?m)^ID (\d+)\b`)

func (b *Btrfs) defaultID(ctx context.Context) (uint64, error) {
	out, err := b.run(ctx, "find the default subvolume", btrfsTool, "subvolume", "get-default", b.top)
	if err != nil {
		return 0, err
	}
	m := getDefaultRE.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("cannot find the default subvolume: unexpected output of btrfs subvolume get-default: %q", out)
	}
	return strconv.ParseUint(m[1], 10, 64)
}

// listRE matches a line of "btrfs subvolume list": the path is the rest of
// the line and may contain spaces.
var listRE = regexp.MustCompile(`^ID (\d+) gen \d+ (?:cgen \d+ )?top level \d+ (?:otime .+? )?path (.+)$`)

// list returns every subvolume but the top level, names relative to it.
func (b *Btrfs) list(ctx context.Context) ([]subvol, error) {
	out, err := b.run(ctx, "list subvolumes", btrfsTool, "subvolume", "list", b.top)
	if err != nil {
		return nil, err
	}
	var svs []subvol
	for i, line := range strings.Split(out, "\n") {
		if line == "" {
			continue
		}
		m := listRE.FindStringSubmatch(line)
		if m == nil {
			return nil, fmt.Errorf("cannot list subvolumes: unexpected line %d of btrfs subvolume list: %q", i+1, line)
		}
		id, err := strconv.ParseUint(m[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("cannot list subvolumes: bad id in %q", line)
		}
		svs = append(svs, subvol{id: id, name: strings.TrimPrefix(m[2], "<FS_TREE>/")})
	}
	return svs, nil
}

// created returns the creation time of the subvolume at path (RFC 3339), or
// "" if btrfs does not say.
func (b *Btrfs) created(ctx context.Context, path string) string {
	out, err := b.run(ctx, "show subvolume "+path, btrfsTool, "subvolume", "show", path)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || k != "Creation time" {
			continue
		}
		t, err := time.Parse("2006-01-02 15:04:05 -0700", strings.TrimSpace(v))
		if err != nil {
			return ""
		}
		return t.Format(time.RFC3339)
	}
	return ""
}

func (b *Btrfs) sync(ctx context.Context, what string) error {
	_, err := b.run(ctx, what+": sync", btrfsTool, "filesystem", "sync", b.top)
	return err
}

func (b *Btrfs) run(ctx context.Context, what string, argv ...string) (string, error) {
	return runner{log: b.Logger}.run(ctx, what, argv...)
}

func (b *Btrfs) logger() *slog.Logger { return runner{log: b.Logger}.logger() }

// checkName accepts BtrfsTopLevel and clean relative paths.
func checkName(name string) error {
	if name == BtrfsTopLevel {
		return nil
	}
	if name == "" || filepath.IsAbs(name) || filepath.Clean(name) != name || name == "." ||
		name == ".." || strings.HasPrefix(name, "../") {
		return fmt.Errorf("bad snapshot name %q: want a clean path relative to the btrfs top level", name)
	}
	return nil
}

// ours reports whether name is under BtrfsDir.
func ours(name string) bool {
	return strings.HasPrefix(name, BtrfsDir+"/") && len(name) > len(BtrfsDir)+1
}

func inode(path string) (uint64, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return 0, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || !fi.IsDir() {
		return 0, nil
	}
	return st.Ino, nil
}
