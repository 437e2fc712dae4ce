// Package btrfsdiff says what changed between two read-only btrfs
// snapshots of the same subvolume (a parent and a child), from btrfs's own
// change tracking: the metadata-only incremental send stream
// (`btrfs send --no-data -p parent child`), which the kernel computes by
// comparing the two trees' b-trees, so its cost follows the size of the
// change, not of the tree. Nothing is walked or hashed. docs/stage.md says
// why send and not `btrfs subvolume find-new`.
package btrfsdiff

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/execlog"
)

// Entry is what changed at one path. Path is relative to the subvolume
// ("" is its root directory), with no leading slash.
//
// A path can be both Removed and Added: what the parent had there went
// (deleted or moved away) and something else is there in the child (a new
// file, or one moved or hard-linked here). Data, Meta and Times describe
// an inode that stayed at Path and changed in place.
type Entry struct {
	Path string
	// Removed: the parent's entry at Path is not in the child at Path.
	Removed bool
	// Added: the child's entry at Path was not at Path in the parent.
	Added bool
	// Data: the file's contents changed (written, truncated, cloned).
	Data bool
	// Meta: mode, owner, extended attributes (SELinux labels included) or
	// inode flags changed.
	Meta bool
	// Times: only meaningful alone; the timestamps changed (every
	// directory whose entries changed has this).
	Times bool
	// Subtree: Path is a directory that was moved (Added: moved here;
	// Removed: moved away), with everything below it, including entries
	// the stream does not name.
	Subtree bool
	// LinkTo: Added as a new name (a hard link) of the inode that is at
	// LinkTo in the child; "" when that inode has no name the stream
	// names at the end (it was itself new and renamed, or removed).
	LinkTo string
}

// Diff is the change from a parent snapshot to a child, one Entry per
// path, sorted by path.
type Diff struct {
	Entries []Entry
	// Commands is how many send commands described it (a cost figure).
	Commands int
}

// Runner runs an external command and returns its standard output
// (execlog.Runner).
type Runner interface {
	Run(ctx context.Context, what string, argv ...string) (string, error)
}

// Compute returns the change from parent to child: two read-only
// snapshots, child a descendant of parent (a snapshot of a snapshot, or of
// the same subvolume later). It runs `btrfs send --no-data -p`; the
// snapshots are read, never changed. Calling it twice returns the same.
func Compute(ctx context.Context, run Runner, parent, child string) (*Diff, error) {
	stream, err := Stream(ctx, run, parent, child)
	if err != nil {
		return nil, err
	}
	return Parse(stream, parent, child)
}

// Stream returns the metadata-only send stream from parent to child (as
// Compute), to be parsed now or later (Parse), while neither snapshot
// changes.
func Stream(ctx context.Context, run Runner, parent, child string) ([]byte, error) {
	if run == nil {
		run = execlog.Runner{}
	}
	out, err := run.Run(ctx, "list the changes since "+parent,
		"btrfs", "send", "--quiet", "--no-data", "-p", parent, child)
	if err != nil {
		return nil, err
	}
	return []byte(out), nil
}

// Parse reads a stream from Stream of the same parent and child, which
// must not have changed since (the directories are looked at to tell a
// moved directory from a file). Any stream is checked as Compute checks
// it: a damaged or foreign one is an error, never a wrong Diff.
func Parse(stream []byte, parent, child string) (*Diff, error) {
	cmds, err := parseStream(stream)
	if err != nil {
		return nil, fmt.Errorf("cannot read the changes from %s to %s: %w", parent, child, err)
	}
	d, err := fromCommands(cmds, func(p string) (bool, error) { return isDir(child, p) },
		func(p string) (bool, error) { return isDir(parent, p) })
	if err != nil {
		return nil, fmt.Errorf("cannot read the changes from %s to %s: %w", parent, child, err)
	}
	return d, nil
}

func isDir(root, p string) (bool, error) {
	fi, err := os.Lstat(filepath.Join(root, p))
	if err != nil {
		if os.IsNotExist(err) {
			return false, nil
		}
		return false, err
	}
	return fi.IsDir(), nil
}

// node is an inode the stream names, under its current name.
type node struct {
	// orig is its path in the parent; "" with isNew for one the stream
	// created.
	orig              string
	isNew             bool
	link              bool
	linkTo            *node
	data, meta, times bool
}

// namespace replays the stream's names: which parent entry (or new
// inode) each current path is.
type namespace struct {
	nodes   map[string]*node
	removed map[string]bool // parent paths gone (unlinked, or moved away)
}

// origOf is the parent path of what is now at cur, for an entry the
// stream has not named yet: cur itself, unless an ancestor was moved.
func (ns *namespace) origOf(cur string) (string, bool) {
	for p := cur; p != ""; p = parentOf(p) {
		if n, ok := ns.nodes[p]; ok && p != cur {
			if n.isNew {
				return "", false
			}
			return join(n.orig, strings.TrimPrefix(cur, p+"/")), true
		}
	}
	return cur, true
}

// inPlace says whether the parent entry n is where its parent directory's
// move (if any) took it: not moved itself.
func (ns *namespace) inPlace(cur string, n *node) bool {
	orig, ok := ns.origOf(cur)
	return ok && orig == n.orig
}

// get returns the node at cur, adding one for a parent entry.
func (ns *namespace) get(cur string) *node {
	if n, ok := ns.nodes[cur]; ok {
		return n
	}
	orig, ok := ns.origOf(cur)
	n := &node{orig: orig, isNew: !ok}
	ns.nodes[cur] = n
	return n
}

// rename moves the node at from, and every named node below it, to to.
func (ns *namespace) rename(from, to string) {
	n := ns.get(from)
	delete(ns.nodes, from)
	moved := map[string]*node{}
	for k, v := range ns.nodes {
		if strings.HasPrefix(k, from+"/") {
			moved[to+k[len(from):]] = v
			delete(ns.nodes, k)
		}
	}
	for k, v := range moved {
		ns.nodes[k] = v
	}
	ns.nodes[to] = n
}

// remove drops the node at cur; a parent entry is recorded as removed.
func (ns *namespace) remove(cur string) {
	n := ns.get(cur)
	delete(ns.nodes, cur)
	if !n.isNew && !n.link {
		ns.removed[n.orig] = true
	}
}

// fromCommands replays a decoded stream. childDir and parentDir say
// whether a path is a directory in the child and the parent.
func fromCommands(cmds []command, childDir, parentDir func(string) (bool, error)) (*Diff, error) {
	ns := &namespace{nodes: map[string]*node{}, removed: map[string]bool{}}
	for i, c := range cmds {
		switch c.cmd {
		case cmdSubvol, cmdSnapshot:
			if i != 0 {
				return nil, fmt.Errorf("%w: a second subvolume", errStream)
			}
		case cmdEnd:
		case cmdMkfile, cmdMkdir, cmdMknod, cmdMkfifo, cmdMksock, cmdSymlink:
			if c.path == "" {
				return nil, fmt.Errorf("%w: creating the root", errStream)
			}
			ns.nodes[c.path] = &node{isNew: true}
		case cmdLink:
			if c.path == "" {
				return nil, fmt.Errorf("%w: a link without a name", errStream)
			}
			if c.pathLink == "" {
				return nil, fmt.Errorf("%w: a link to nothing", errStream)
			}
			ns.nodes[c.path] = &node{isNew: true, link: true, linkTo: ns.get(c.pathLink)}
		case cmdRename:
			if c.path == "" || c.pathTo == "" || c.pathTo == c.path || strings.HasPrefix(c.pathTo, c.path+"/") {
				return nil, fmt.Errorf("%w: rename %q to %q", errStream, c.path, c.pathTo)
			}
			ns.rename(c.path, c.pathTo)
		case cmdUnlink, cmdRmdir:
			if c.path == "" {
				return nil, fmt.Errorf("%w: removing the root", errStream)
			}
			ns.remove(c.path)
		case cmdWrite, cmdClone, cmdTruncate, cmdUpdateExtent, cmdFallocate, cmdEncodedWrite:
			ns.get(c.path).data = true
		case cmdSetXattr, cmdRemoveXattr, cmdChmod, cmdChown, cmdFileattr, cmdEnableVerity:
			ns.get(c.path).meta = true
		case cmdUtimes:
			ns.get(c.path).times = true
		}
	}
	if len(cmds) == 0 || (cmds[0].cmd != cmdSnapshot && cmds[0].cmd != cmdSubvol) {
		return nil, fmt.Errorf("%w: no subvolume command first", errStream)
	}
	if cmds[0].cmd == cmdSubvol {
		return nil, fmt.Errorf("%w: a full stream, not an incremental one", errStream)
	}

	entries := map[string]*Entry{}
	at := func(p string) *Entry {
		e, ok := entries[p]
		if !ok {
			e = &Entry{Path: p}
			entries[p] = e
		}
		return e
	}
	for p := range ns.removed {
		dir, err := parentDir(p)
		if err != nil {
			return nil, err
		}
		e := at(p)
		e.Removed = true
		e.Subtree = e.Subtree || dir
	}
	keyOf := map[*node]string{}
	for cur, n := range ns.nodes {
		keyOf[n] = cur
	}
	for cur, n := range ns.nodes {
		if isOrphan(cur) {
			return nil, fmt.Errorf("%w: %s left under its temporary name", errStream, cur)
		}
		switch {
		case n.isNew:
			e := at(cur)
			e.Added = true
			if n.linkTo != nil {
				e.LinkTo = keyOf[n.linkTo]
			}
		case !ns.inPlace(cur, n):
			dir, err := childDir(cur)
			if err != nil {
				return nil, err
			}
			e := at(cur)
			e.Added = true
			e.Subtree = e.Subtree || dir
			// What moved away from orig is recorded by removed unless
			// orig is now taken by another entry.
			o := at(n.orig)
			o.Removed = true
			o.Subtree = o.Subtree || dir
		default:
			if !n.data && !n.meta && !n.times {
				continue
			}
			e := at(cur)
			e.Data = e.Data || n.data
			e.Meta = e.Meta || n.meta
			e.Times = e.Times || n.times
		}
	}
	d := &Diff{Commands: len(cmds)}
	for _, e := range entries {
		d.Entries = append(d.Entries, *e)
	}
	sort.Slice(d.Entries, func(i, j int) bool { return d.Entries[i].Path < d.Entries[j].Path })
	return d, nil
}

// isOrphan says whether p is a send stream's temporary name
// ("o<ino>-<gen>-<n>" in the subvolume's root).
func isOrphan(p string) bool {
	if strings.Contains(p, "/") || len(p) < 6 || p[0] != 'o' {
		return false
	}
	parts := strings.Split(p[1:], "-")
	if len(parts) != 3 {
		return false
	}
	for _, s := range parts {
		if s == "" || strings.Trim(s, "0123456789") != "" {
			return false
		}
	}
	return true
}

func parentOf(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return ""
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return a + "/" + b
}

// Paths returns the paths of the entries that satisfy keep.
func (d *Diff) Paths(keep func(Entry) bool) []string {
	var out []string
	for _, e := range d.Entries {
		if keep(e) {
			out = append(out, e.Path)
		}
	}
	return out
}

// Touches says whether the diff changes p or anything below or above it
// in a way other than times: an entry at p, below p, or a moved or
// removed directory that holds p.
func (d *Diff) Touches(p string) bool {
	i := sort.Search(len(d.Entries), func(i int) bool { return d.Entries[i].Path >= p })
	for j := i; j < len(d.Entries) && (d.Entries[j].Path == p || strings.HasPrefix(d.Entries[j].Path, p+"/")); j++ {
		if d.Entries[j].changed() {
			return true
		}
	}
	for q := parentOf(p); ; q = parentOf(q) {
		if e, ok := d.Lookup(q); ok && (e.Subtree || (e.Removed && q != "")) {
			return true
		}
		if q == "" {
			return false
		}
	}
}

func (e Entry) changed() bool { return e.Removed || e.Added || e.Data || e.Meta }

// Lookup returns the entry at p.
func (d *Diff) Lookup(p string) (Entry, bool) {
	i := sort.Search(len(d.Entries), func(i int) bool { return d.Entries[i].Path >= p })
	if i < len(d.Entries) && d.Entries[i].Path == p {
		return d.Entries[i], true
	}
	return Entry{}, false
}
