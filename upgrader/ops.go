package upgrader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/atomicfile"
	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// Cancel disarms the upgrade and drops the plan and the staged packages.
// Cancelling when nothing is prepared is not an error.
func (e *Engine) Cancel(ctx context.Context) error {
	st := e.store()
	l, state, err := e.begin(ctx, st)
	if err != nil {
		return err
	}
	defer l.release()
	owner, err := e.LinkOwner()
	if err != nil {
		return err
	}
	if owner == "kos-upgrade" {
		if err := atomicfile.Remove(e.Root.SystemUpdateLink()); err != nil {
			return fmt.Errorf("cannot disarm: %w", err)
		}
	}
	// Initramfs mode: the one-shot boot, the one-time entry, the image.
	if err := e.cleanupInitramfs(ctx, st, state); err != nil {
		return fmt.Errorf("cannot disarm: %w", err)
	}
	if state.Status == StatusPrepared || state.Status == StatusArmed || state.Status == StatusFailed {
		state.Status = StatusIdle
	}
	state.Step, state.PlanID, state.Target = "", "", ""
	if err := st.save(state, e.now()); err != nil {
		return err
	}
	if err := atomicfile.Remove(st.planPath()); err != nil {
		return err
	}
	return removeStaged(st)
}

func removeStaged(st store) error {
	for _, d := range []string{"packages", "cache"} {
		if err := os.RemoveAll(filepath.Join(st.dir, d)); err != nil {
			return fmt.Errorf("cannot remove staged files: %w", err)
		}
	}
	return nil
}

// hasStaged says whether a plan or staged files are there to remove.
func hasStaged(st store) bool {
	if _, err := os.Stat(st.planPath()); err == nil {
		return true
	}
	for _, d := range []string{"packages", "cache"} {
		if ents, err := os.ReadDir(filepath.Join(st.dir, d)); err == nil && len(ents) > 0 {
			return true
		}
	}
	return false
}

// Rollback makes the pre-upgrade root the one that boots next and records
// it, in this root and in the pre-upgrade root.
func (e *Engine) Rollback(ctx context.Context) (*Result, error) {
	st := e.store()
	l, state, err := e.begin(ctx, st)
	if err != nil {
		return nil, err
	}
	defer l.release()
	if err := e.rollbackPossible(ctx, state); err != nil {
		return nil, err
	}
	return e.rollback(ctx, st, state, "rollback", "")
}

// rollback makes the pre-upgrade root and its boot entry the ones that boot
// next, and records it (kind "rollback": asked for; "fallback": the new
// system failed its trial boot, reason says how) in the root that will
// boot, then in this one. Order: the record in the old root, the default
// root, then /boot put back as the backup has it (and the old entry the
// default), then the record here; each part can be done again.
func (e *Engine) rollback(ctx context.Context, st store, state *State, kind, reason string) (*Result, error) {
	if !snapshot.Protects(state.Backend) {
		return nil, fmt.Errorf("cannot roll back: the upgrade ran without a snapshot (--snapshot none)")
	}
	snap, err := e.Snapshotters(ctx, state.Backend, e.Root)
	if err != nil {
		return nil, fmt.Errorf("cannot roll back: %w", err)
	}
	defer snap.Close()
	prevPath, err := snap.Path(ctx, state.Previous)
	if err != nil {
		return nil, fmt.Errorf("cannot roll back to the pre-upgrade root %s: %w", state.Previous, err)
	}
	now := e.now().UTC()
	var ip snapshot.InPlace
	if state.InPlace {
		// The rollback point is merged back into the root (docs/lvm.md).
		var ok bool
		if ip, ok = snap.(snapshot.InPlace); !ok || !ip.UpgradesInPlace() {
			return nil, fmt.Errorf("cannot roll back: the upgrade ran in place, but the %s backend of this root cannot merge %s back", snap.Backend(), state.Previous)
		}
	}
	res := &Result{
		RunID: now.Format("20060102T150405.000Z") + "-" + kind, Kind: kind, Success: kind == "rollback",
		Status: StatusRolledBack, Error: reason, Backend: state.Backend, Snapshot: state.Previous, Previous: state.Snapshot,
		From: state.Target, StartedAt: now, InPlace: state.InPlace,
	}
	if state.LastResult != nil {
		res.To = state.LastResult.From
	}
	// Record it in the root that will boot, then switch.
	rolled := *state
	rolled.Status, rolled.Step, rolled.LastResult = StatusRolledBack, "", res
	if state.Boot != nil {
		b := *state.Boot
		if kind == "fallback" {
			b.Trial = TrialFailed
		}
		b.Note = reason
		if b.Note == "" {
			b.Note = "rolled back: " + b.Previous + " is the default entry again"
		}
		b.Backups = nil // consumed by the restore below
		rolled.Boot = &b
	}
	if state.InPlace {
		// In the rollback point, which the root becomes: it is consumed
		// by the merge, so there is nothing to roll back to from there.
		rolled.Snapshot, rolled.Previous = "", ""
	}
	if prevPath != e.Root.Dir {
		ps := store{dir: filepath.Join(prevPath, sysroot.StateDirRel)}
		res.FinishedAt = e.now().UTC()
		if err := errors.Join(ps.record(res), ps.save(&rolled, e.now())); err != nil {
			return nil, fmt.Errorf("cannot roll back: %w", err)
		}
	}
	if ip != nil {
		e.report(progress.Event{Step: "rollback", Message: "merging the rollback point " + state.Previous + " back into the root"})
		if err := ip.Rollback(ctx, state.Previous); err != nil {
			return nil, fmt.Errorf("cannot roll back: %w", err)
		}
	} else {
		e.report(progress.Event{Step: "rollback", Message: "making " + state.Previous + " the root of the next boot"})
		if err := snap.Activate(ctx, state.Previous); err != nil {
			return nil, fmt.Errorf("cannot roll back: %w", err)
		}
	}
	if err := e.rollbackBoot(ctx, st, state.Boot); err != nil {
		return nil, fmt.Errorf("cannot roll back: %w", err)
	}
	if ip != nil {
		// Here, until the reboot: the merge is pending.
		note := rebootNote(state.Previous)
		rolled.Snapshot, rolled.Previous, rolled.RebootRequired = "", state.Previous, true
		e.report(progress.Event{Step: "rollback", Message: note})
	}
	res.FinishedAt = e.now().UTC()
	if err := errors.Join(st.record(res), st.save(&rolled, e.now())); err != nil {
		return nil, err
	}
	return res, nil
}

// rollbackBoot makes the pre-upgrade entry the default again: /boot is
// restored from the run's backup (which removes the new entries and
// kernels, and undoes a pinning), the trial ended, the old default set.
// Without a backup (cleaned away) only the default is set back.
func (e *Engine) rollbackBoot(ctx context.Context, st store, bs *BootState) error {
	if bs == nil {
		return nil
	}
	bl, err := e.bootloader()
	if err != nil || bl == nil {
		return err
	}
	if err := bl.Fallback(ctx); err != nil {
		return fmt.Errorf("cannot end the trial boot: %w", err)
	}
	if _, err := e.putBootBack(ctx, st, bs); err != nil {
		return err
	}
	if bs.Previous != "" {
		if err := bl.SetDefault(ctx, bs.Previous); err != nil {
			return fmt.Errorf("cannot make %s the default boot entry again: %w", bs.Previous, err)
		}
		e.report(progress.Event{Step: "rollback", Message: "boot entry " + bs.Previous + " is the default again"})
		if err := e.removeLeftovers(ctx); err != nil {
			return err
		}
	}
	return nil
}

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
	var removed []string
	// /boot backups: only the one a successful run may still roll back to.
	keepBackup := map[string]bool{}
	if state.Status == StatusSucceeded && state.Boot != nil {
		for _, b := range state.Boot.Backups {
			if parts := strings.SplitN(b.Path, "/", 3); len(parts) == 3 {
				keepBackup[parts[1]] = true
			}
		}
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
	backend := state.Backend
	if !snapshot.Protects(backend) {
		return removed, nil
	}
	snap, err := e.Snapshotters(ctx, backend, e.Root)
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

// StatusReport is what status shows; its JSON form is stable (docs/cli.md).
type StatusReport struct {
	State   *State `json:"state"`
	Running bool   `json:"running"`
	// Armed is true when /system-update points at kos-upgrade.
	Armed bool `json:"armed"`
	// ForeignUpdate names another tool's pending offline update.
	ForeignUpdate string `json:"foreign_update,omitempty"`
	Plan          *Plan  `json:"plan,omitempty"`
	// PlanError says why the plan file could not be read.
	PlanError string `json:"plan_error,omitempty"`
	// Current is the running system's release.
	Current *Release `json:"current,omitempty"`
}

// Status reads the state without changing anything.
func (e *Engine) Status(ctx context.Context) (*StatusReport, error) {
	st := e.store()
	state, err := st.load()
	if err != nil {
		return nil, err
	}
	r := &StatusReport{State: state, Running: locked(st.dir)}
	if state.Status == StatusApplying && !r.Running {
		// Nothing runs: the run was interrupted. Report what the next
		// command will settle it as: succeeded if it got past its switch,
		// else the provisional failed result.
		s := *state
		s.Status = StatusFailed
		if hist, err := st.history(); err == nil {
			for i := range hist {
				if hist[i].RunID == state.RunID {
					s.LastResult = &hist[i]
				}
			}
		}
		if ok, err := e.switched(ctx, state); err == nil && ok {
			s.Status, s.Step = StatusSucceeded, ""
			if s.LastResult != nil {
				lr := *s.LastResult
				lr.Success, lr.Status, lr.Error, lr.Step = true, StatusSucceeded, "", ""
				s.LastResult = &lr
			}
		}
		r.State = &s
	}
	owner, err := e.LinkOwner()
	if err != nil {
		return nil, err
	}
	r.Armed = owner == "kos-upgrade"
	if owner != "" && owner != "kos-upgrade" {
		r.ForeignUpdate = owner
	}
	if state.PlanID != "" {
		p, err := loadPlan(st.planPath())
		if err != nil {
			r.PlanError = err.Error()
		} else {
			r.Plan = p
		}
	}
	if rel, err := readRelease(e.Root.Dir); err == nil {
		r.Current = &rel
	}
	return r, nil
}

// History returns the recorded runs, oldest first.
func (e *Engine) History(ctx context.Context) ([]Result, error) {
	return e.store().history()
}
