package upgrader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/atomicfile"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
)

// Clean removes staged packages (when no plan is pending) and the snapshots
// kos-upgrade made, except the current root, the default, and the last good
// one (the rollback target after a success). It returns what it removed.
func (e *Engine) Clean(ctx context.Context) ([]string, error) {
	st := e.store()
	l, state, err := e.begin(ctx, st)
	if err != nil {
		return nil, err
	}
	defer l.release()
	removed, err := cleanBootBackups(st, state)
	if err != nil {
		return nil, err
	}
	if state.Status != StatusPrepared && state.Status != StatusArmed {
		had := hasStaged(st)
		if err := removeStaged(st); err != nil {
			return nil, err
		}
		if err := atomicfile.Remove(st.planPath()); err != nil {
			return nil, err
		}
		if had {
			removed = append(removed, "staged packages")
		}
	}
	if !snapshot.Protects(state.Backend) {
		return removed, nil
	}
	if state.Status == StatusSucceeded && state.InPlace && state.Blessed && state.Backend == snapshot.BackendUndo && state.Previous != "" {
		// The upgraded system's first boot was healthy: the undo journal
		// is no rollback point any more.
		if err := e.dropJournal(ctx, state); err != nil {
			return removed, err
		}
		removed = append(removed, "undo journal "+state.Previous)
		state.Previous, state.Snapshot = "", ""
		if err := st.save(state, e.now()); err != nil {
			return removed, err
		}
	}
	gone, err := e.cleanSnapshots(ctx, state)
	return append(removed, gone...), err
}

// DropRollbackPoint removes, because the user asks (clean
// --rollback-point), the undo journal a successful in-place upgrade keeps
// as its rollback point, before its first boot blessed it or not: rollback
// and the health fallback are no longer possible. It returns what it
// removed ("" when there is no such journal). Other backends' rollback
// points are snapshots, which clean keeps: refused.
func (e *Engine) DropRollbackPoint(ctx context.Context) (string, error) {
	st := e.store()
	l, state, err := e.begin(ctx, st)
	if err != nil {
		return "", err
	}
	defer l.release()
	if state.Status != StatusSucceeded || state.Previous == "" || !snapshot.Protects(state.Backend) {
		return "", nil
	}
	if !state.InPlace || state.Backend != snapshot.BackendUndo {
		return "", fmt.Errorf("cannot drop the rollback point %s: it is a %s snapshot, which kos-upgrade rollback boots; only an undo journal is dropped this way", state.Previous, state.Backend)
	}
	name := state.Previous
	// The state first: a crash after it leaves a journal clean removes
	// as one of no run's, never a rollback point without its journal.
	// The /boot backup goes with it (clean removes backups no state
	// keeps).
	state.Previous, state.Snapshot = "", ""
	if state.Boot != nil {
		state.Boot.Backups = nil
	}
	if err := st.save(state, e.now()); err != nil {
		return "", err
	}
	if err := e.dropJournal(ctx, &State{Backend: state.Backend, Previous: name}); err != nil {
		return "", err
	}
	return "undo journal " + name + " (the rollback point: kos-upgrade rollback is no longer possible)", nil
}

// cleanBootBackups removes the /boot backups but the one a successful run
// may still roll back to and the one of a pending stage.
func cleanBootBackups(st store, state *State) ([]string, error) {
	var removed []string
	keepBackup := map[string]bool{}
	keep := func(bs *BootState) {
		for _, b := range bs.Backups {
			if parts := strings.SplitN(b.Path, "/", 3); len(parts) == 3 {
				keepBackup[parts[1]] = true
			}
		}
	}
	if state.Status == StatusSucceeded && state.Boot != nil {
		keep(state.Boot)
	}
	if s := state.Stage; s != nil && s.Boot != nil && (state.Status == StatusPrepared || state.Status == StatusArmed) {
		// The backup of /boot from before the pending stage: dropping
		// the stage puts /boot back from it.
		keep(s.Boot)
	}
	if ents, err := os.ReadDir(filepath.Join(st.dir, "boot-backup")); err == nil {
		for _, d := range ents {
			if keepBackup[d.Name()] {
				continue
			}
			if err := os.RemoveAll(filepath.Join(st.dir, "boot-backup", d.Name())); err != nil {
				return nil, fmt.Errorf("cannot remove the /boot backup %s: %w", d.Name(), err)
			}
			removed = append(removed, "/boot backup "+d.Name())
		}
	}
	return removed, nil
}

// cleanSnapshots removes the snapshots kos-upgrade made but what boots now
// and next and, after a success, the rollback target.
func (e *Engine) cleanSnapshots(ctx context.Context, state *State) ([]string, error) {
	var removed []string
	snap, err := e.Snapshotters(ctx, state.Backend, e.Root)
	if err != nil {
		return nil, fmt.Errorf("cannot clean snapshots: %w", err)
	}
	defer snap.Close()
	list, err := snap.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("cannot clean snapshots: %w", err)
	}
	cur, err := snap.Current(ctx)
	if err != nil {
		return nil, fmt.Errorf("cannot clean snapshots: %w", err)
	}
	// Keep what boots now and next, and after a success the rollback
	// target. A root rolled away from is not "good": it goes.
	keep := map[string]bool{cur.Name: true}
	if state.Status == StatusSucceeded {
		keep[state.Previous] = true
	}
	if state.InPlace {
		// An in-place rollback point is the only copy of the old root
		// (after a success: the last good one), or is being merged back
		// (after a failure or rollback: it goes away at the next boot).
		keep[state.Previous] = true
		keep[state.Snapshot] = true
	}
	for _, s := range list {
		if s.Default {
			keep[s.Name] = true
		}
	}
	if s := state.Stage; s != nil && (state.Status == StatusPrepared || state.Status == StatusArmed) {
		// The root staged for the pending plan (reboot --stage).
		keep[s.Next], keep[s.Base] = true, true
	}
	for _, s := range list {
		if keep[s.Name] || !strings.HasPrefix(s.Name, "kos-upgrade/") {
			continue
		}
		if err := snap.Delete(ctx, s.Name); err != nil && !errors.Is(err, snapshot.ErrNotFound) {
			return removed, fmt.Errorf("cannot clean snapshot %s: %w", s.Name, err)
		}
		removed = append(removed, "snapshot "+s.Name)
	}
	return removed, nil
}

// dropJournal deletes the undo journal of state's successful run.
func (e *Engine) dropJournal(ctx context.Context, state *State) error {
	snap, err := e.Snapshotters(ctx, state.Backend, e.Root)
	if err != nil {
		return fmt.Errorf("cannot remove the undo journal: %w", err)
	}
	defer snap.Close()
	if err := snap.Delete(ctx, state.Previous); err != nil && !errors.Is(err, snapshot.ErrNotFound) {
		return fmt.Errorf("cannot remove the undo journal %s: %w", state.Previous, err)
	}
	return nil
}
