// Package carryover decides and applies what the running system changed
// since the staged root was built: given the change from base to live
// (the running system) and from base to next (the staged transaction),
// both from pkg/btrfsdiff, Decide says, path by path, how the running
// system's change goes into next by rpm's own rules, or that it cannot be
// carried over exactly and the classic offline apply must run instead
// (Plan.Fallback, with the reason). Apply carries a plan out on the
// trees: reflink clones, removals, modes, owners, xattrs, symlinks, hard
// links, times.
package carryover

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/btrfsdiff"
)

// Action is how one path the running system changed goes into next.
type Action int

const (
	// Carry: the transaction did not touch the path; the running
	// system's change is applied to next as it is.
	Carry Action = iota + 1
	// KeepLive: a %config(noreplace) file both changed: the running
	// system's version stays at the path, the packaged one becomes
	// path.rpmnew.
	KeepLive
	// TakePackaged: a %config file both changed: the packaged version
	// stays, the running system's becomes path.rpmsave.
	TakePackaged
	// MergeAccounts: /etc/passwd, group, shadow or gshadow both changed:
	// merged by entry name (MergeAccountFile).
	MergeAccounts
	// Skip: only the times changed on the running system and the
	// transaction rewrote the path: next's stays (what the classic apply
	// gives).
	Skip
)

func (a Action) String() string {
	switch a {
	case Carry:
		return "carry"
	case KeepLive:
		return "keep-live"
	case TakePackaged:
		return "take-packaged"
	case MergeAccounts:
		return "merge-accounts"
	case Skip:
		return "skip"
	}
	return fmt.Sprintf("action(%d)", int(a))
}

// ConfigFlag is how rpm treats a file on upgrade (from next's rpmdb).
type ConfigFlag int

const (
	// Config is %config: a locally changed file is saved as .rpmsave
	// and replaced.
	Config ConfigFlag = iota + 1
	// NoReplace is %config(noreplace): a locally changed file is kept
	// and the packaged one written as .rpmnew.
	NoReplace
)

// Item is one path's decision, with the running system's change.
type Item struct {
	Entry  btrfsdiff.Entry
	Action Action
}

// Plan is the outcome of Decide: the items in path order, or the reason
// to fall back to the classic apply.
type Plan struct {
	Items    []Item
	Fallback string
}

// Input is what Decide judges. Paths are relative to the root, without a
// leading slash, as btrfsdiff gives them.
type Input struct {
	Live *btrfsdiff.Diff // base → the running system
	Txn  *btrfsdiff.Diff // base → next (the staged transaction)
	// Config holds the %config flags of next's packages' files.
	Config map[string]ConfigFlag
	// RPMDB is the rpm database directory (sysroot.Root's, relative).
	RPMDB string
	// MaxEntries bounds the running system's change (a policy bound:
	// beyond it the classic apply is as fast); 0: no bound.
	MaxEntries int
}

// AccountFiles are merged by entry name when both sides changed them.
var AccountFiles = []string{"etc/passwd", "etc/group", "etc/shadow", "etc/gshadow"}

func isAccountFile(p string) bool {
	for _, a := range AccountFiles {
		if p == a {
			return true
		}
	}
	return false
}

// Decide judges every path the running system changed. It is pure: the
// same input gives the same plan.
func Decide(in Input) Plan {
	if in.Live == nil || in.Txn == nil {
		return Plan{Fallback: "no change lists"}
	}
	if in.MaxEntries > 0 && len(in.Live.Entries) > in.MaxEntries {
		return Plan{Fallback: fmt.Sprintf("the running system changed %d paths since staging, over the bound of %d", len(in.Live.Entries), in.MaxEntries)}
	}
	var p Plan
	for _, e := range in.Live.Entries {
		if in.RPMDB != "" && (e.Path == in.RPMDB || strings.HasPrefix(e.Path, in.RPMDB+"/")) {
			if timesOnly(e) || rpmdbScratch(e.Path) {
				// Reading the database touches these; next's own
				// database is the truth (the package set was checked
				// against the plan's fingerprint).
				p.Items = append(p.Items, Item{Entry: e, Action: Skip})
				continue
			}
			return Plan{Fallback: "the rpm database changed since staging: /" + e.Path}
		}
		if !in.Txn.Touches(e.Path) {
			if e.LinkTo != "" && in.Txn.Touches(e.LinkTo) {
				return Plan{Fallback: fmt.Sprintf("/%s was linked to /%s, which the transaction changed", e.Path, e.LinkTo)}
			}
			p.Items = append(p.Items, Item{Entry: e, Action: Carry})
			continue
		}
		if timesOnly(e) {
			p.Items = append(p.Items, Item{Entry: e, Action: Skip})
			continue
		}
		a, why := both(in, e)
		if a == 0 {
			return Plan{Fallback: why}
		}
		p.Items = append(p.Items, Item{Entry: e, Action: a})
	}
	return p
}

// RPMDBAsStaged says whether the running system's change (base → live)
// leaves the rpm database at rpmdb as it was at staging: nothing below it
// changed but the times and what rpm writes when it only reads
// (rpmdbScratch), and sqlite's write-ahead log is empty or absent in live
// (liveDir), since a non-empty one may hold a transaction not yet in the
// database file. Then the package set is the one staging checked.
func RPMDBAsStaged(live *btrfsdiff.Diff, rpmdb, liveDir string) bool {
	for _, e := range live.Entries {
		if (e.Path == "" || strings.HasPrefix(rpmdb, e.Path+"/")) && (e.Removed || e.Added) {
			return false // a directory above it moved or replaced
		}
		if e.Path != rpmdb && !strings.HasPrefix(e.Path, rpmdb+"/") || timesOnly(e) {
			continue
		}
		if !rpmdbScratch(e.Path) {
			return false
		}
		if strings.HasSuffix(e.Path, "-wal") {
			fi, err := os.Lstat(filepath.Join(liveDir, e.Path))
			if err == nil && fi.Size() > 0 || err != nil && !errors.Is(err, fs.ErrNotExist) {
				return false
			}
		}
	}
	return true
}

// rpmdbScratch says whether p is a file rpm writes when it only reads its
// database: the Berkeley DB environment and locks, sqlite's shared memory
// and write-ahead log.
func rpmdbScratch(p string) bool {
	b := p[strings.LastIndexByte(p, '/')+1:]
	return strings.HasPrefix(b, "__db.") || b == ".dbenv.lock" || b == ".rpm.lock" ||
		b == "rpmdb.sqlite-shm" || b == "rpmdb.sqlite-wal"
}

func timesOnly(e btrfsdiff.Entry) bool {
	return e.Times && !e.Removed && !e.Added && !e.Data && !e.Meta
}

// both decides a path both sides changed: an action, or 0 and why not.
func both(in Input, e btrfsdiff.Entry) (Action, string) {
	t, ok := in.Txn.Lookup(e.Path)
	conflict := fmt.Sprintf("/%s was changed both by the running system and by the transaction", e.Path)
	if !ok || e.Subtree || t.Subtree {
		// Something below or above it changed, or a directory moved.
		return 0, conflict
	}
	// Both sides must leave a file there (a content change or a
	// replacement): a removal on either side is rpm's business.
	if !stays(e) || !stays(t) {
		return 0, conflict
	}
	// rpm judges a %config file by its contents: a mode or owner change
	// alone is not a local modification, and the rules below are only
	// for contents.
	if !e.Data && !e.Added {
		return 0, conflict
	}
	switch {
	case isAccountFile(e.Path):
		return MergeAccounts, ""
	case in.Config[e.Path] == NoReplace:
		return KeepLive, ""
	case in.Config[e.Path] == Config:
		return TakePackaged, ""
	}
	return 0, conflict
}

// stays says whether an entry leaves something at its path: changed in
// place or replaced, not removed.
func stays(e btrfsdiff.Entry) bool {
	return !e.Removed || e.Added
}
