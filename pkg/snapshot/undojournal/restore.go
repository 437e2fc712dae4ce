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
	"github.com/keyarchos/kos-upgrade/pkg/safefile"
)

// maxManifest bounds what Restore reads of a manifest (a journal of a
// whole distribution's file lists is a few tens of MiB).
const maxManifest = 1 << 30

// Restore puts the system at root back to what the complete journal in dir
// recorded: the saved files, symlinks and directories with their owners,
// modes, times and extended attributes; the paths that did not exist are
// removed, and so is whatever appeared in a journaled tree. It refuses an
// incomplete journal (ErrIncomplete). It keeps the journal: calling it
// again, after a crash in it or not, gives the same root. Everything is
// synced when it returns.
func Restore(ctx context.Context, dir, root string) error {
	if !Complete(dir) {
		return fmt.Errorf("cannot undo from %s: %w (it was cut short before the transaction began)", dir, ErrIncomplete)
	}
	m, err := readManifest(dir)
	if err != nil {
		return err
	}
	g, err := newGuard(root)
	if err != nil {
		return err
	}
	known := map[string]bool{}
	for _, e := range m.Entries {
		if !validPath(e.Path) || (e.Kind == kindFile && e.Link == "" && !validData(e.Data)) || (e.Link != "" && !validPath(e.Link)) {
			return fmt.Errorf("cannot read the undo journal %s: bad entry %q", dir, e.Path)
		}
		known[e.Path] = true
	}
	excluded := func(p string) bool {
		for _, x := range m.Exclude {
			if p == x || strings.HasPrefix(p, x+"/") {
				return true
			}
		}
		return false
	}
	// What appeared in a tree.
	for _, t := range m.Trees {
		if !validPath(t) {
			return fmt.Errorf("cannot read the undo journal %s: bad tree %q", dir, t)
		}
		var extra []string
		err := filepath.WalkDir(filepath.Join(root, t), func(full string, d os.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, os.ErrNotExist) {
					return nil
				}
				return err
			}
			rel, err := filepath.Rel(root, full)
			if err != nil {
				return err
			}
			p := filepath.Clean("/" + rel)
			if known[p] || excluded(p) {
				return nil
			}
			extra = append(extra, full)
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("cannot undo the changes in %s: %w", t, err)
		}
		for _, full := range extra {
			rel, _ := filepath.Rel(root, full)
			if err := g.check("/" + rel); err != nil {
				return err
			}
			if err := os.RemoveAll(full); err != nil {
				return fmt.Errorf("cannot undo: %w", err)
			}
		}
	}
	ents := m.Entries
	// Directories first, parents before children: a directory the
	// transaction replaced (by a symlink, a file) is one again before
	// anything is removed or written below it.
	for _, e := range ents {
		if e.Kind != kindDir {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := g.check(e.Path); err != nil {
			return err
		}
		if err := restoreDir(root, e); err != nil {
			return fmt.Errorf("cannot undo: %w", err)
		}
	}
	// Deepest first: what the transaction added.
	for i := len(ents) - 1; i >= 0; i-- {
		if err := ctx.Err(); err != nil {
			return err
		}
		if e := ents[i]; e.Kind == kindAbsent && !excluded(e.Path) {
			if err := g.check(e.Path); err != nil {
				return err
			}
			if err := os.RemoveAll(filepath.Join(root, e.Path)); err != nil {
				return fmt.Errorf("cannot undo: %w", err)
			}
		}
	}
	// Then what is in the directories.
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return err
		}
		if e.Kind != kindFile && e.Kind != kindSymlink {
			continue
		}
		if err := g.check(e.Path); err != nil {
			return err
		}
		var err error
		switch {
		case e.Kind == kindFile && e.Link != "":
			err = restoreLink(root, e)
		case e.Kind == kindFile:
			err = restoreFile(root, dir, e)
		default:
			err = restoreSymlink(root, e)
		}
		if err != nil {
			return fmt.Errorf("cannot undo: %w", err)
		}
	}
	// Directory times last, children first: the steps above changed them.
	for i := len(ents) - 1; i >= 0; i-- {
		if e := ents[i]; e.Kind == kindDir {
			if err := setTimes(filepath.Join(root, e.Path), e.Mtime); err != nil {
				return fmt.Errorf("cannot undo: %w", err)
			}
		}
	}
	return syncFS(root)
}

// readManifest reads the manifest of the complete journal in dir:
// manifest.json.gz, else (a journal made before) manifest.json.
func readManifest(dir string) (*manifest, error) {
	if !Complete(dir) {
		return nil, fmt.Errorf("cannot read the undo journal %s: %w", dir, ErrIncomplete)
	}
	data, err := safefile.Read(filepath.Join(dir, manifestName), maxManifest)
	if errors.Is(err, os.ErrNotExist) {
		data, err = safefile.Read(filepath.Join(dir, manifestNameV1), maxManifest)
	} else if err == nil {
		data, err = gunzip(data)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read the undo journal: %w", err)
	}
	var m manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("cannot read the undo journal %s: %w", dir, err)
	}
	if m.Version != 1 {
		return nil, fmt.Errorf("cannot read the undo journal %s: version %d", dir, m.Version)
	}
	return &m, nil
}

// gunzip decompresses a manifest, at most maxManifest bytes of it.
func gunzip(data []byte) ([]byte, error) {
	z, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	out, err := io.ReadAll(io.LimitReader(z, maxManifest+1))
	if err != nil {
		return nil, err
	}
	if len(out) > maxManifest {
		return nil, fmt.Errorf("the manifest is larger than %d bytes", maxManifest)
	}
	return out, nil
}

// guard keeps Restore inside the root: the directory holding a path it
// writes or removes must resolve inside root (the transaction, or whoever
// changed the root since, may have left a symlink that leads out, which an
// absolute target does when root is not "/").
type guard struct{ root string }

func newGuard(root string) (guard, error) {
	r, err := filepath.EvalSymlinks(root)
	if err != nil {
		return guard{}, fmt.Errorf("cannot undo: %w", err)
	}
	return guard{root: r}, nil
}

func (g guard) check(p string) error {
	parent := filepath.Dir(filepath.Join(g.root, p))
	d, err := filepath.EvalSymlinks(parent)
	if errors.Is(err, os.ErrNotExist) {
		return nil // made by restoreDir, or nothing to remove
	}
	if err != nil {
		return fmt.Errorf("cannot undo %s: %w", p, err)
	}
	if d != g.root && !strings.HasPrefix(d, g.root+"/") && g.root != "/" {
		return fmt.Errorf("cannot undo %s: %s leads out of the root (to %s); the root needs a human", p, parent, d)
	}
	return nil
}

func validPath(p string) bool {
	return strings.HasPrefix(p, "/") && filepath.Clean(p) == p && p != "/"
}

func validData(d string) bool {
	return d != "" && !strings.ContainsAny(d, "/\x00") && d != "." && d != ".."
}

// place makes way for an entry of another kind at full: anything that is
// not a directory when a directory is wanted, and the reverse, is removed.
func place(full string, wantDir bool) error {
	fi, err := os.Lstat(full)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	if fi.IsDir() == wantDir {
		return nil
	}
	return os.RemoveAll(full)
}

func restoreDir(root string, e entry) error {
	full := filepath.Join(root, e.Path)
	if err := place(full, true); err != nil {
		return err
	}
	if err := os.Mkdir(full, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	if err := os.Lchown(full, e.UID, e.GID); err != nil {
		return err
	}
	if err := unix.Chmod(full, e.Mode); err != nil {
		return fmt.Errorf("cannot set the mode of %s: %w", full, err)
	}
	return setXattrs(full, e.Xattrs, true)
}

// restoreFile puts a saved file back: a clone of the journal's copy, made
// next to it, given the recorded metadata, renamed over the path.
func restoreFile(root, dir string, e entry) error {
	full := filepath.Join(root, e.Path)
	if err := place(full, false); err != nil {
		return err
	}
	in, err := os.OpenFile(filepath.Join(dir, dataDir, e.Data), os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := filepath.Join(filepath.Dir(full), ".kos-undo-"+filepath.Base(full))
	os.Remove(tmp)
	if err := cloneInto(in, tmp, true); err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp)
		}
	}()
	if err := os.Lchown(tmp, e.UID, e.GID); err != nil {
		return err
	}
	// After chown, which clears set-id bits.
	if err := unix.Chmod(tmp, e.Mode); err != nil {
		return fmt.Errorf("cannot set the mode of %s: %w", full, err)
	}
	if err := setXattrs(tmp, e.Xattrs, false); err != nil {
		return err
	}
	if err := setTimes(tmp, e.Mtime); err != nil {
		return err
	}
	if err := os.Rename(tmp, full); err != nil {
		return err
	}
	ok = true
	return nil
}

// restoreLink makes e a hard link of the file it was one of, restored
// before it (entries are in path order, the first of the links saved).
func restoreLink(root string, e entry) error {
	full := filepath.Join(root, e.Path)
	if err := place(full, false); err != nil {
		return err
	}
	tmp := filepath.Join(filepath.Dir(full), ".kos-undo-"+filepath.Base(full))
	os.Remove(tmp)
	if err := os.Link(filepath.Join(root, e.Link), tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, full); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

func restoreSymlink(root string, e entry) error {
	full := filepath.Join(root, e.Path)
	if err := place(full, false); err != nil {
		return err
	}
	tmp := filepath.Join(filepath.Dir(full), ".kos-undo-"+filepath.Base(full))
	os.Remove(tmp)
	if err := os.Symlink(e.Target, tmp); err != nil {
		return err
	}
	if err := os.Lchown(tmp, e.UID, e.GID); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := setXattrs(tmp, e.Xattrs, false); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := setTimes(tmp, e.Mtime); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, full)
}

// setXattrs sets the recorded extended attributes of path (a symlink
// itself, not its target); with prune, it removes the others too.
func setXattrs(path string, want map[string][]byte, prune bool) error {
	if prune {
		have, err := xattrs(path)
		if err != nil {
			return err
		}
		for name := range have {
			if _, ok := want[name]; !ok {
				if err := unix.Lremovexattr(path, name); err != nil && !errors.Is(err, unix.ENODATA) {
					return fmt.Errorf("cannot remove the extended attribute %s of %s: %w", name, path, err)
				}
			}
		}
	}
	names := make([]string, 0, len(want))
	for name := range want {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := unix.Lsetxattr(path, name, want[name], 0); err != nil {
			return fmt.Errorf("cannot set the extended attribute %s of %s: %w", name, path, err)
		}
	}
	return nil
}

func setTimes(path string, mtimeNS int64) error {
	ts := []unix.Timespec{unix.NsecToTimespec(mtimeNS), unix.NsecToTimespec(mtimeNS)}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("cannot set the times of %s: %w", path, err)
	}
	return nil
}

// Remove drops the journal in dir: the completeness mark first, so that
// a crash half-way leaves an incomplete journal that nobody restores.
// Removing a journal that does not exist returns nil.
func Remove(dir string) error {
	if err := atomicfile.Remove(filepath.Join(dir, completeName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		if _, serr := os.Stat(dir); !errors.Is(serr, os.ErrNotExist) {
			return err
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("cannot remove the undo journal %s: %w", dir, err)
	}
	return nil
}
