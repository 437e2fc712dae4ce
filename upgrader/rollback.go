package upgrader

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/keyarchos/kos-upgrade/pkg/health"
	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

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
	return e.rollbackWith(ctx, st, state, kind, reason, nil)
}

// rollbackWith is rollback that also writes the first-boot verdict v
// (when not nil) as health.json into the old root's state directory,
// with its history record, before the old root becomes the default.
//
// The rollback is the undo loop of the apply table (steps.go) from the
// switch step back, run on the complete run: the old root the default
// root again (in place: the rollback point merged back), the trial ended,
// /boot put back from the backup and the old entry the default.
func (e *Engine) rollbackWith(ctx context.Context, st store, state *State, kind, reason string, v *health.Verdict) (*Result, error) {
	if !snapshot.Protects(state.Backend) {
		return nil, fmt.Errorf("cannot roll back: the upgrade ran without a snapshot (--snapshot none)")
	}
	now := e.now().UTC()
	res := &Result{
		RunID: now.Format("20060102T150405.000Z") + "-" + kind, Kind: kind, Success: kind == "rollback",
		Status: StatusRolledBack, Error: reason, Backend: state.Backend, Snapshot: state.Previous, Previous: state.Snapshot,
		From: state.Target, StartedAt: now, InPlace: state.InPlace,
	}
	if state.LastResult != nil {
		res.To = state.LastResult.From
	}
	r := &run{e: e, st: st, state: state, res: res, rollback: true}
	defer r.close()
	snap, err := r.snapshotter(ctx)
	if err != nil {
		return nil, fmt.Errorf("cannot roll back: %w", err)
	}
	prev := state.Previous
	prevPath, err := snap.Path(ctx, prev)
	if err != nil {
		return nil, fmt.Errorf("cannot roll back to the pre-upgrade root %s: %w", prev, err)
	}
	inPlace := state.InPlace
	if ip, ok := snap.(snapshot.InPlace); inPlace && (!ok || !ip.UpgradesInPlace()) {
		// The rollback point is merged back into the root (docs/lvm.md).
		return nil, fmt.Errorf("cannot roll back: the upgrade ran in place, but the %s backend of this root cannot merge %s back", snap.Backend(), prev)
	}
	// Record it in the root that will boot, then undo.
	if prevPath != e.Root.Dir {
		if err := e.recordRollback(state, res, kind, reason, prevPath, v); err != nil {
			return nil, fmt.Errorf("cannot roll back: %w", err)
		}
	}
	if err := r.undo(ctx, stepIndex(StepSwitch)); err != nil {
		return nil, fmt.Errorf("cannot roll back: %w", err)
	}
	// In place, merge changed the state: no snapshot, and the merging
	// rollback point until the reboot (LVM), or nothing (undo journal).
	rolled := rolledBack(state, res, kind, reason)
	if inPlace && snapshot.RollsBackImmediately(snap) {
		e.report(progress.Event{Step: "rollback", Message: "the root is as it was before the upgrade (undo journal " + prev + " applied): reboot to run the old system"})
	} else if inPlace {
		e.report(progress.Event{Step: "rollback", Message: rebootNote(prev)})
	}
	res.FinishedAt = e.now().UTC()
	if err := errors.Join(st.record(res), st.save(&rolled, e.now())); err != nil {
		return nil, err
	}
	return res, nil
}

// recordRollback records the rollback res of state (and the verdict v,
// when not nil) in the state directory of the pre-upgrade root at
// prevPath, before it becomes the root that boots.
func (e *Engine) recordRollback(state *State, res *Result, kind, reason, prevPath string, v *health.Verdict) error {
	rolled := rolledBack(state, res, kind, reason)
	if state.InPlace {
		// In the rollback point, which the root becomes: it is consumed
		// by the merge, so there is nothing to roll back to from there.
		rolled.Snapshot, rolled.Previous = "", ""
	}
	ps := store{dir: filepath.Join(prevPath, sysroot.StateDirRel)}
	res.FinishedAt = e.now().UTC()
	var verr error
	if v != nil {
		verr = ps.saveVerdict(v)
	}
	return errors.Join(verr, ps.record(res), ps.save(&rolled, e.now()))
}

// rolledBack is the state after the rollback of state recorded as res
// (kind rollback or fallback, for reason).
func rolledBack(state *State, res *Result, kind, reason string) State {
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
		b.Backups = nil // consumed by the restore
		rolled.Boot = &b
	}
	return rolled
}
