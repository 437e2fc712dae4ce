package carryover

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/keyarchos/kos-upgrade/pkg/safefile"
)

// ErrInexact is wrapped when a plan cannot be carried out exactly on the
// trees as they are (a hard link to a file outside the change, a file
// type the rule does not expect): the caller falls back to the classic
// apply; next must then be dropped, it may be half-changed.
var ErrInexact = errors.New("cannot carry over exactly")

// Stats are the figures of one Apply.
type Stats struct {
	Paths        int   // paths carried over (Skip not counted)
	BytesCloned  int64 // bytes of the files cloned (shared extents, not copied)
	FilesCloned  int
	AccountFiles int // account files merged
}

// maxAccountFile bounds an account file read for a merge.
const maxAccountFile = 64 << 20

// Apply carries plan out: base, live and next are the three trees (live
// and base read-only snapshots, next writable, all on the same btrfs
// filesystem so that files are cloned, not copied). Items are applied in
// path order. An error leaves next half-changed; ErrInexact says the
// classic apply is the answer, any other error is a failure of the
// machine (I/O, space).
func Apply(plan Plan, base, live, next string) (Stats, error) {
	a := &applier{base: base, live: live, next: next, links: map[uint64]string{}, nlink: map[uint64]uint64{}, names: map[uint64]int{},
		added: map[string]bool{}, linked: map[uint64]bool{}}
	if plan.Fallback != "" {
		return a.st, fmt.Errorf("%w: %s", ErrInexact, plan.Fallback)
	}
	for _, it := range plan.Items {
		if it.Entry.Added {
			a.added[it.Entry.Path] = true
		}
	}
	for _, it := range plan.Items {
		if a.inMadeTree(it.Entry.Path) {
			continue // copied whole with its moved directory
		}
		if err := a.item(it); err != nil {
			return a.st, fmt.Errorf("cannot carry over /%s: %w", it.Entry.Path, err)
		}
	}
	// Directories' times last: making their entries changed them.
	for i := len(a.dirTimes) - 1; i >= 0; i-- {
		if err := a.times(a.dirTimes[i], a.dirTimes[i]); err != nil {
			return a.st, err
		}
	}
	for ino, n := range a.nlink {
		if !a.linked[ino] && uint64(a.names[ino]) != n {
			return a.st, fmt.Errorf("%w: /%s has hard links outside the change", ErrInexact, a.links[ino])
		}
	}
	return a.st, nil
}

type applier struct {
	base, live, next string
	st               Stats
	// links: live inode → the first path made for it in next; nlink and
	// names: its link count in live and the names made.
	links map[uint64]string
	nlink map[uint64]uint64
	names map[uint64]int
	// added: the paths the plan adds; linked: inodes linked to a name
	// outside the change (Entry.LinkTo), whose link count is not ours to
	// check.
	added  map[string]bool
	linked map[uint64]bool
	// madeTrees are the moved directories made whole; dirTimes the
	// directories whose times are set at the end.
	madeTrees []string
	dirTimes  []string
}

func (a *applier) inMadeTree(p string) bool {
	for _, t := range a.madeTrees {
		if strings.HasPrefix(p, t+"/") {
			return true
		}
	}
	return false
}

func (a *applier) item(it Item) error {
	e := it.Entry
	p := e.Path
	switch it.Action {
	case Skip:
		return nil
	case MergeAccounts:
		return a.mergeAccounts(p)
	case KeepLive:
		a.st.Paths++
		if _, err := os.Lstat(filepath.Join(a.next, p+".rpmnew")); err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			// The transaction replaced a pristine file: the packaged
			// one becomes .rpmnew.
			if err := os.Rename(filepath.Join(a.next, p), filepath.Join(a.next, p+".rpmnew")); err != nil {
				return err
			}
		}
		return a.replaceFile(p, p)
	case TakePackaged:
		a.st.Paths++
		return a.replaceFile(p, p+".rpmsave")
	case Carry:
	default:
		return fmt.Errorf("%w: unknown action %v", ErrInexact, it.Action)
	}
	a.st.Paths++
	if e.Removed {
		if err := os.RemoveAll(filepath.Join(a.next, p)); err != nil {
			return err
		}
	}
	if e.Added {
		if err := os.RemoveAll(filepath.Join(a.next, p)); err != nil {
			return err
		}
		if e.LinkTo != "" && !a.added[e.LinkTo] {
			return a.linkToExisting(p, e.LinkTo)
		}
		return a.make(p, e.Subtree)
	}
	if e.Removed {
		return nil
	}
	if e.Data {
		if err := a.cloneInto(p); err != nil {
			return err
		}
	}
	if e.Meta {
		if err := a.meta(p, p); err != nil {
			return err
		}
	}
	fi, err := os.Lstat(filepath.Join(a.live, p))
	if err != nil {
		return err
	}
	return a.timesLater(p, p, fi.IsDir())
}

// replaceFile puts live's regular file at src into next at dst (a new
// inode, as rpm writes .rpmsave and a kept file).
func (a *applier) replaceFile(src, dst string) error {
	fi, err := os.Lstat(filepath.Join(a.live, src))
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: /%s is not a regular file on the running system", ErrInexact, src)
	}
	if err := os.RemoveAll(filepath.Join(a.next, dst)); err != nil {
		return err
	}
	return a.makeOne(src, dst, fi)
}

// make creates live's entry at p in next (p absent there), a whole
// directory tree for a moved directory.
func (a *applier) make(p string, subtree bool) error {
	if !subtree {
		fi, err := os.Lstat(filepath.Join(a.live, p))
		if err != nil {
			return err
		}
		return a.makeOne(p, p, fi)
	}
	// The walk covers the moved directory only: part of the change.
	a.madeTrees = append(a.madeTrees, p)
	return filepath.WalkDir(filepath.Join(a.live, p), func(full string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(a.live, full)
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		return a.makeOne(rel, rel, fi)
	})
}

// makeOne creates live's src (described by fi) at dst in next, with its
// metadata.
func (a *applier) makeOne(src, dst string, fi fs.FileInfo) error {
	to := filepath.Join(a.next, dst)
	from := filepath.Join(a.live, src)
	sys, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%w: no inode information for /%s", ErrInexact, src)
	}
	switch m := fi.Mode(); {
	case m.IsRegular():
		if sys.Nlink > 1 {
			a.nlink[sys.Ino] = uint64(sys.Nlink)
			a.names[sys.Ino]++
			if first, ok := a.links[sys.Ino]; ok {
				return os.Link(filepath.Join(a.next, first), to)
			}
			a.links[sys.Ino] = dst
		}
		if err := a.clone(from, to, true); err != nil {
			return err
		}
	case m.IsDir():
		if err := os.Mkdir(to, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	case m&fs.ModeSymlink != 0:
		target, err := os.Readlink(from)
		if err != nil {
			return err
		}
		if err := os.Symlink(target, to); err != nil {
			return err
		}
	case m&(fs.ModeNamedPipe|fs.ModeSocket|fs.ModeDevice|fs.ModeCharDevice) != 0:
		if err := unix.Mknod(to, sys.Mode, int(sys.Rdev)); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%w: /%s is a %s", ErrInexact, src, m.Type())
	}
	if err := a.meta(src, dst); err != nil {
		return err
	}
	return a.timesLater(src, dst, fi.IsDir())
}

// timesLater sets a file's times now and a directory's at the end.
func (a *applier) timesLater(src, dst string, dir bool) error {
	if dir && src == dst {
		a.dirTimes = append(a.dirTimes, dst)
		return nil
	}
	return a.times(src, dst)
}

// cloneInto rewrites next's existing regular file at p with live's
// contents, keeping its inode (and so its hard links).
func (a *applier) cloneInto(p string) error {
	fi, err := os.Lstat(filepath.Join(a.next, p))
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: /%s is not a regular file in the staged root", ErrInexact, p)
	}
	return a.clone(filepath.Join(a.live, p), filepath.Join(a.next, p), false)
}

// clone makes to's contents live's from, sharing its extents (FICLONE).
func (a *applier) clone(from, to string, create bool) error {
	src, err := safefile.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	flags := os.O_WRONLY | os.O_TRUNC | syscall.O_NOFOLLOW
	if create {
		flags |= os.O_CREATE | os.O_EXCL
	}
	dst, err := os.OpenFile(to, flags, 0o600)
	if err != nil {
		return err
	}
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err != nil {
		dst.Close()
		return fmt.Errorf("cannot clone %s: %w", from, err)
	}
	if fi, err := src.Stat(); err == nil {
		a.st.BytesCloned += fi.Size()
	}
	a.st.FilesCloned++
	return dst.Close()
}

// meta gives next's dst live's src's owner, mode and extended attributes.
func (a *applier) meta(src, dst string) error {
	from := filepath.Join(a.live, src)
	to := filepath.Join(a.next, dst)
	fi, err := os.Lstat(from)
	if err != nil {
		return err
	}
	sys := fi.Sys().(*syscall.Stat_t)
	if err := os.Lchown(to, int(sys.Uid), int(sys.Gid)); err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSymlink == 0 {
		// chmod after chown: chown clears set-id bits.
		if err := unix.Fchmodat(unix.AT_FDCWD, to, sys.Mode&0o7777, 0); err != nil {
			return err
		}
	}
	want, err := xattrs(from)
	if err != nil {
		return err
	}
	have, err := xattrs(to)
	if err != nil {
		return err
	}
	for name := range have {
		if _, ok := want[name]; !ok {
			if err := unix.Lremovexattr(to, name); err != nil {
				return fmt.Errorf("cannot remove xattr %s of %s: %w", name, to, err)
			}
		}
	}
	for name, v := range want {
		if hv, ok := have[name]; ok && hv == v {
			continue
		}
		if err := unix.Lsetxattr(to, name, []byte(v), 0); err != nil {
			return fmt.Errorf("cannot set xattr %s of %s: %w", name, to, err)
		}
	}
	return nil
}

// times gives next's dst live's src's access and modification times.
func (a *applier) times(src, dst string) error {
	fi, err := os.Lstat(filepath.Join(a.live, src))
	if err != nil {
		return err
	}
	sys := fi.Sys().(*syscall.Stat_t)
	ts := []unix.Timespec{unix.Timespec(sys.Atim), unix.Timespec(sys.Mtim)}
	return unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(a.next, dst), ts, unix.AT_SYMLINK_NOFOLLOW)
}

// xattrs lists a path's extended attributes (not following a symlink).
func xattrs(p string) (map[string]string, error) {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		return nil, fmt.Errorf("cannot list xattrs of %s: %w", p, err)
	}
	out := map[string]string{}
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" {
			continue
		}
		v := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			return nil, fmt.Errorf("cannot read xattr %s of %s: %w", name, p, err)
		}
		out[name] = string(v[:m])
	}
	return out, nil
}

// mergeAccounts merges an account file into next's, in place (next's
// inode, mode, owner and label kept).
func (a *applier) mergeAccounts(p string) error {
	read := func(root string) ([]byte, error) {
		f, err := safefile.Open(filepath.Join(root, p))
		if err != nil {
			return nil, err
		}
		defer f.Close()
		return io.ReadAll(io.LimitReader(f, maxAccountFile))
	}
	b, err := read(a.base)
	if err != nil {
		return err
	}
	l, err := read(a.live)
	if err != nil {
		return err
	}
	n, err := read(a.next)
	if err != nil {
		return err
	}
	merged, err := MergeAccountFile(b, l, n)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInexact, err)
	}
	f, err := os.OpenFile(filepath.Join(a.next, p), os.O_WRONLY|os.O_TRUNC|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write(merged); err != nil {
		f.Close()
		return err
	}
	a.st.AccountFiles++
	a.st.Paths++
	return f.Close()
}

// linkToExisting makes p a hard link of next's target, a name the change
// leaves alone (Decide checked the transaction did not touch it): the
// running system linked p to it.
func (a *applier) linkToExisting(p, target string) error {
	fi, err := os.Lstat(filepath.Join(a.live, p))
	if err != nil {
		return err
	}
	tfi, err := os.Lstat(filepath.Join(a.live, target))
	if err != nil || !os.SameFile(fi, tfi) || !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: /%s is not a hard link of /%s on the running system", ErrInexact, p, target)
	}
	if err := os.Link(filepath.Join(a.next, target), filepath.Join(a.next, p)); err != nil {
		return err
	}
	a.linked[fi.Sys().(*syscall.Stat_t).Ino] = true
	return nil
}
