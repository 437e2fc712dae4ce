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
func (e *Engine) rollbackWith(ctx context.Context, st store, state *State, kind, reason string, v *health.Verdict) (*Result, error) {
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
	rolled := rolledBack(state, res, kind, reason)
	if prevPath != e.Root.Dir {
		ps := store{dir: filepath.Join(prevPath, sysroot.StateDirRel)}
		res.FinishedAt = e.now().UTC()
		var verr error
		if v != nil {
			verr = ps.saveVerdict(v)
		}
		if err := errors.Join(verr, ps.record(res), ps.save(&rolled, e.now())); err != nil {
			return nil, fmt.Errorf("cannot roll back: %w", err)
		}
	}
	if ip != nil {
		e.report(progress.Event{Step: "rollback", Message: "putting the rollback point " + state.Previous + " back into the root"})
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
	if ip != nil && snapshot.RollsBackImmediately(snap) {
		// Undo journal: the root is the old one again already, and the
		// journal is consumed.
		rolled.Snapshot, rolled.Previous = "", ""
		e.report(progress.Event{Step: "rollback", Message: "the root is as it was before the upgrade (undo journal " + state.Previous + " applied): reboot to run the old system"})
	} else if ip != nil {
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
	if state.InPlace {
		// In the rollback point, which the root becomes: it is consumed
		// by the merge, so there is nothing to roll back to from there.
		rolled.Snapshot, rolled.Previous = "", ""
	}
	return rolled
}
