package upgrader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/keyarchos/kos-upgrade/pkg/atomicfile"
	"github.com/keyarchos/kos-upgrade/pkg/boot"
	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// LinkOwner tells whose /system-update symlink exists: "" when there is
// none, "kos-upgrade" when it is ours, else its target (another tool's).
func (e *Engine) LinkOwner() (string, error) {
	target, err := os.Readlink(e.Root.SystemUpdateLink())
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		// A regular file or directory at /system-update belongs to
		// somebody else too.
		if _, serr := os.Lstat(e.Root.SystemUpdateLink()); serr == nil {
			return e.Root.SystemUpdateLink() + " (not a symlink)", nil
		}
		return "", fmt.Errorf("cannot read %s: %w", e.Root.SystemUpdateLink(), err)
	}
	if filepath.Clean(target) == sysroot.StateDirRel || filepath.Clean(target) == e.Root.StateDir() {
		return "kos-upgrade", nil
	}
	return target, nil
}

// Arm makes the prepared plan run at the next boot: it checks the plan is
// still valid for the installed packages, records "armed", then creates
// /system-update pointing at the state directory.
func (e *Engine) Arm(ctx context.Context) (*Plan, error) {
	st := e.store()
	l, state, err := e.begin(ctx, st)
	if err != nil {
		return nil, err
	}
	defer l.release()
	switch state.Status {
	case StatusPrepared, StatusArmed, StatusFailed:
	default:
		return nil, fmt.Errorf("cannot arm: the state is %s; run kos-upgrade prepare --to VERSION first", state.Status)
	}
	if state.RebootRequired {
		return nil, fmt.Errorf("cannot arm: a rollback to %s completes at the next boot; reboot first", state.Previous)
	}
	p, err := loadPlan(st.planPath())
	if err != nil {
		return nil, fmt.Errorf("cannot arm: %w", err)
	}
	owner, err := e.LinkOwner()
	if err != nil {
		return nil, err
	}
	if owner != "" && owner != "kos-upgrade" {
		return nil, fmt.Errorf("cannot arm: %s exists and belongs to another tool (it points at %s); let that update finish or remove it first", e.Root.SystemUpdateLink(), owner)
	}
	if err := e.checkPlan(ctx, p); err != nil {
		return nil, fmt.Errorf("cannot arm: %w", err)
	}
	if p.Mode == ModeInitramfs {
		// Refused before anything is made where no one-time boot can be
		// armed (initramfs.go); the image, the entry and the one-shot
		// come before the status and the link.
		bl, def, err := e.oneShotLoader(ctx)
		if err != nil {
			return nil, fmt.Errorf("cannot arm: %w", err)
		}
		dracut, err := e.dracutCommand()
		if err != nil {
			return nil, fmt.Errorf("cannot arm: %w", err)
		}
		if err := e.armInitramfs(ctx, st, state, p, bl, def, dracut); err != nil {
			return nil, fmt.Errorf("cannot arm in initramfs mode: %w", err)
		}
	} else if err := e.cleanupInitramfs(ctx, st, state); err != nil {
		return nil, fmt.Errorf("cannot arm: %w", err)
	}
	state.Status = StatusArmed
	state.Step = ""
	state.PlanID = p.ID
	state.Target = p.Target.VersionID
	if err := st.save(state, e.now()); err != nil {
		return nil, err
	}
	if err := atomicfile.Symlink(sysroot.StateDirRel, e.Root.SystemUpdateLink()); err != nil {
		return nil, fmt.Errorf("cannot arm: %w", err)
	}
	if state.Initramfs != nil {
		state.Initramfs.Step = InitramfsStepArmed
		if err := st.save(state, e.now()); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// checkPlan verifies staged files and the rpmdb fingerprint.
func (e *Engine) checkPlan(ctx context.Context, p *Plan) error {
	if err := pkgmgr.CheckStaged(e.store().stageDir(p.StageDir), p.Transaction); err != nil {
		return fmt.Errorf("%w: %w; run kos-upgrade prepare again", ErrStagedChanged, err)
	}
	fp, err := e.PM.Fingerprint(ctx, e.Root.Dir)
	if err != nil {
		return fmt.Errorf("cannot read the rpm database: %w", err)
	}
	if fp != p.RPMDBFingerprint {
		return fmt.Errorf("%w (packages were installed, removed or updated after prepare); run kos-upgrade prepare again", ErrStalePlan)
	}
	return nil
}

// ApplyResult says what apply did.
type ApplyResult struct {
	// Ran is false when nothing was armed for kos-upgrade (no symlink, or
	// another tool's): apply did nothing and that is not an error.
	Ran    bool    `json:"ran"`
	Reason string  `json:"reason,omitempty"`
	Result *Result `json:"result,omitempty"`
}

// Apply is the offline step. It removes the /system-update link first (no
// boot loops), then verifies, snapshots, runs the transaction in the
// snapshot, records the result in the new root, switches the default and
// records the result in the old root. Any failure deletes the half-made
// snapshot and leaves the default untouched. A backend that upgrades in
// place (snapshot.InPlace, LVM thick) runs the transaction on the live root
// instead, keeps the snapshot as the rollback point on success, and merges
// it back on a failure (inplace.go).
func (e *Engine) Apply(ctx context.Context) (*ApplyResult, error) {
	owner, err := e.LinkOwner()
	if err != nil {
		return nil, err
	}
	switch owner {
	case "":
		return &ApplyResult{Reason: "no offline update is armed (" + e.Root.SystemUpdateLink() + " does not exist)"}, nil
	case "kos-upgrade":
	default:
		return &ApplyResult{Reason: fmt.Sprintf("%s belongs to another tool (%s); leaving it alone", e.Root.SystemUpdateLink(), owner)}, nil
	}
	if err := atomicfile.Remove(e.Root.SystemUpdateLink()); err != nil {
		return nil, fmt.Errorf("cannot remove the offline update trigger: %w", err)
	}

	st := e.store()
	l, state, err := e.begin(ctx, st)
	if err != nil {
		return nil, err
	}
	defer l.release()
	if state.Status != StatusArmed {
		return nil, fmt.Errorf("cannot apply: the state is %s, not armed; nothing was changed", state.Status)
	}
	p, err := loadPlan(st.planPath())
	if err != nil {
		return nil, e.failEarly(st, state, StepVerify, err)
	}
	if p.Mode == ModeInitramfs {
		if !e.inUpgradeInitramfs() {
			return nil, e.refuseOutsideInitramfs(ctx, st, state, p)
		}
		// The hook removed the one-time entry and its image already;
		// whatever it could not is removed here, before /boot is
		// backed up.
		if err := e.cleanupInitramfs(ctx, st, state); err != nil {
			e.log().Warn("cannot remove the one-time boot entry", "err", err)
		}
	}

	now := e.now().UTC()
	res := &Result{
		RunID:     now.Format("20060102T150405.000Z") + "-" + p.Target.VersionID,
		Kind:      "apply",
		Status:    StatusFailed,
		Error:     errInterrupted,
		From:      p.Source.VersionID,
		To:        p.Target.VersionID,
		Backend:   p.Snapshot,
		Counts:    p.Counts(),
		StartedAt: now,
	}
	// The provisional result: a crash from here on leaves "failed:
	// interrupted" as the record, which is the truth.
	if err := st.record(res); err != nil {
		return nil, err
	}
	state.Status = StatusApplying
	state.RunID = res.RunID
	state.Backend = p.Snapshot
	state.Snapshot = ""
	state.Boot = nil
	if err := e.step(st, state, StepVerify); err != nil {
		return nil, err
	}
	e.report(progress.Event{Step: StepVerify, Message: "verifying the staged packages and the installed package set"})
	if err := e.checkPlan(ctx, p); err != nil {
		return nil, e.finish(st, state, res, nil, "", &StepError{Step: StepVerify, Err: err})
	}

	if err := checkLayout(e.Root, p.Snapshot); err != nil {
		return nil, e.finish(st, state, res, nil, "", &StepError{Step: StepVerify, Err: err})
	}
	snap, err := e.Snapshotters(ctx, p.Snapshot, e.Root)
	if err != nil {
		return nil, e.finish(st, state, res, nil, "", &StepError{Step: StepSnapshot, Err: err})
	}
	defer snap.Close()
	cur, err := snap.Current(ctx)
	if err != nil {
		return nil, e.finish(st, state, res, nil, "", &StepError{Step: StepSnapshot, Err: err})
	}
	name := "kos-upgrade/" + res.RunID
	if p.Snapshot == "none" {
		name = cur.Name
		e.report(progress.Event{Step: StepSnapshot, Message: "WARNING: no snapshot (--snapshot none): upgrading the running root in place, there is no rollback"})
	}
	// In place (LVM thick): the snapshot is the rollback point, the live
	// root is upgraded (docs/lvm.md). Journaled with the step below,
	// before Create, so that a crash is recovered by a merge.
	inPlace := p.Snapshot != "none" && upgradesInPlace(snap)
	state.Snapshot = name
	state.Previous = cur.Name
	state.InPlace = inPlace
	state.RebootRequired = false
	res.Snapshot, res.Previous, res.InPlace = name, cur.Name, inPlace
	if inPlace {
		state.Previous, res.Previous = name, name
		if l, ok := snap.(*snapshot.LVM); ok {
			l.ChangeSize = inPlaceChangeSize(p)
		}
	}

	// The boot loader: /boot is not in the snapshot, so it is backed up
	// before anything can touch it (docs/boot.md). Without snapshots the
	// root is upgraded in place and its kernel scriptlets handle /boot.
	var bl boot.Bootloader
	if p.Snapshot != "none" {
		if bl, err = e.bootloader(); err != nil {
			return nil, e.finish(st, state, res, nil, "", &StepError{Step: StepVerify, Err: err})
		}
	}
	if bl == nil && p.Snapshot == "lvm" && !inPlace {
		// LVM has no default LV: only a boot entry naming the new LV
		// makes it boot (docs/lvm.md).
		return nil, e.finish(st, state, res, nil, "", &StepError{Step: StepVerify, Err: fmt.Errorf(
			"the root is a thin LVM volume, whose upgraded copy boots only through a boot entry naming it, but no boot loader kos-upgrade handles (grub2 with BLS entries, systemd-boot) was found under %s", e.Root.Path("/boot"))})
	}
	if bl != nil {
		bs, err := e.planBoot(ctx, bl, res.RunID)
		if err != nil {
			return nil, e.finish(st, state, res, nil, "", &StepError{Step: StepVerify, Err: err})
		}
		if inPlace {
			// The current entries boot the upgraded root: /boot is only
			// backed up, and restored on failure and rollback.
			bs.Trial, bs.Note = TrialNone, "no trial boot: the root is upgraded in place (its snapshot is the rollback point)"
		}
		state.Boot = bs
		if err := e.step(st, state, StepBackup); err != nil {
			return nil, err
		}
		e.report(progress.Event{Step: StepBackup, Message: "backing up " + bs.Backups[0].Dir + " (" + bs.Loader + ", default entry " + bs.Previous + ")"})
		if err := e.backupBoot(ctx, st, bs); err != nil {
			return nil, e.finish(st, state, res, nil, "", &StepError{Step: StepBackup, Err: err})
		}
	}

	if err := e.step(st, state, StepSnapshot); err != nil {
		return nil, err
	}
	e.report(progress.Event{Step: StepSnapshot, Message: "creating snapshot " + name + " of " + cur.Name})
	target, err := snap.Create(ctx, name)
	if err != nil {
		return nil, e.finish(st, state, res, snap, "", &StepError{Step: StepSnapshot, Err: err})
	}
	// The one place the new root is made ready, before rpm touches it.
	if err := dropRPMDBEnvironment(target.Path); err != nil {
		return nil, e.finish(st, state, res, snap, name, &StepError{Step: StepSnapshot, Err: err})
	}
	if inPlace || (bl != nil && target.Path == e.Root.Dir) {
		// The backend upgrades the root in place (LVM thick: the snapshot
		// is the rollback point): the current entries boot the upgraded
		// root; /boot is only backed up and restored on failure.
		e.report(progress.Event{Step: StepSnapshot, Message: "the root is upgraded in place, " + name + " is its rollback point: no new boot entry, no trial boot"})
		bl = nil
	}

	if err := e.step(st, state, StepTransaction); err != nil {
		return nil, err
	}
	if m := p.Migration; m != nil && len(m.Keys) > 0 {
		// A migration: the new root trusts the target's keys, imported
		// inside the snapshot, so a failure discards them with it.
		if err := e.importKeys(ctx, target.Path, m.Keys); err != nil {
			return nil, e.finish(st, state, res, snap, name, &StepError{Step: StepTransaction, Err: err})
		}
	}
	e.report(progress.Event{Step: StepTransaction, Message: fmt.Sprintf("running the transaction (%d packages) in %s", len(p.Transaction), target.Path)})
	rep, err := e.transaction(ctx, p, target.Path, bl != nil)
	if err != nil {
		return nil, e.finish(st, state, res, snap, name, &StepError{Step: StepTransaction, Err: err})
	}
	for _, w := range rep.Warnings {
		e.report(progress.Event{Step: StepTransaction, Message: "warning: " + w})
	}
	res.Warnings = rep.Warnings

	if bl != nil {
		if err := e.step(st, state, StepBoot); err != nil {
			return nil, err
		}
		if err := e.bootStep(ctx, bl, state, snap, target.Path, p.Target.VersionID); err != nil {
			return nil, e.finish(st, state, res, snap, name, &StepError{Step: StepBoot, Err: err})
		}
	}

	if err := e.step(st, state, StepFinalize); err != nil {
		return nil, err
	}
	if p.Mode == ModeInitramfs {
		if err := e.autorelabel(target.Path); err != nil {
			return nil, e.finish(st, state, res, snap, name, &StepError{Step: StepFinalize, Err: err})
		}
	}
	// Record success inside the new root before it becomes the default,
	// so that it boots knowing what happened.
	done := *res
	done.Success, done.Status, done.Error, done.Step = true, StatusSucceeded, "", ""
	done.FinishedAt = e.now().UTC()
	newState := *state
	newState.Status, newState.Step, newState.LastResult = StatusSucceeded, "", &done
	if target.Path != e.Root.Dir {
		switch p.Snapshot {
		case "btrfs":
			if _, err := rewriteFstab(target.Path, name); err != nil {
				return nil, e.finish(st, state, res, snap, name, &StepError{Step: StepFinalize, Err: err})
			}
		case "lvm":
			if err := e.rewriteFstabLVM(snap, target.Path, cur.Name, name); err != nil {
				return nil, e.finish(st, state, res, snap, name, &StepError{Step: StepFinalize, Err: err})
			}
		}
		ns := store{dir: filepath.Join(target.Path, sysroot.StateDirRel)}
		if err := ns.record(&done); err != nil {
			return nil, e.finish(st, state, res, snap, name, &StepError{Step: StepFinalize, Err: err})
		}
		if err := ns.save(&newState, e.now()); err != nil {
			return nil, e.finish(st, state, res, snap, name, &StepError{Step: StepFinalize, Err: err})
		}
	}

	if err := e.step(st, state, StepSwitch); err != nil {
		return nil, err
	}
	if inPlace {
		e.report(progress.Event{Step: StepSwitch, Message: "the upgraded root boots next; " + name + " is its rollback point"})
	} else {
		e.report(progress.Event{Step: StepSwitch, Message: "making " + name + " the root of the next boot"})
	}
	// The trial first: a crash between the two leaves an entry that names
	// the new root explicitly (settle, not switched, restores /boot), never
	// a default root that no entry on trial boots.
	if bl != nil {
		if err := e.armBoot(ctx, bl, state.Boot); err != nil {
			return nil, e.finish(st, state, res, snap, name, &StepError{Step: StepSwitch, Err: err})
		}
		crashAt("mid-switch")
	}
	if !inPlace {
		// In place, there is nothing to switch: the upgraded root boots.
		if err := snap.Activate(ctx, name); err != nil {
			return nil, e.finish(st, state, res, snap, name, &StepError{Step: StepSwitch, Err: err})
		}
	}

	if err := e.step(st, state, StepDone); err != nil {
		return nil, err
	}
	if err := st.record(&done); err != nil {
		return nil, err
	}
	if err := st.save(&newState, e.now()); err != nil {
		return nil, err
	}
	if inPlace {
		e.report(progress.Event{Step: StepDone, Message: fmt.Sprintf("upgrade to %s succeeded in place; %s is kept as the rollback point (kos-upgrade rollback merges it back)", p.Target.VersionID, name)})
	} else {
		e.report(progress.Event{Step: StepDone, Message: fmt.Sprintf("upgrade to %s succeeded; the next boot starts %s", p.Target.VersionID, name)})
	}
	return &ApplyResult{Ran: true, Result: &done}, nil
}

// transaction runs the plan's transaction in target, with (withBoot) the
// real /boot mounted for the kernel scriptlets, unmounted again whatever
// happens (see chrootMounts for why /proc, /sys and /dev are not).
func (e *Engine) transaction(ctx context.Context, p *Plan, target string, withBoot bool) (rep *pkgmgr.ApplyReport, err error) {
	m, err := mountChroot(e.Root, target, false, withBoot)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, m.unmount()) }()
	return e.PM.Apply(ctx, target, e.store().stageDir(p.StageDir), p.Transaction, e.Sink)
}

// step journals the step before its side effect, then lets the crash tests
// stop the process right there.
func (e *Engine) step(st store, state *State, step string) error {
	state.Step = step
	if err := st.save(state, e.now()); err != nil {
		return err
	}
	e.log().Info("apply step", "step", step)
	crashAt(step)
	return nil
}

// failEarly records a failure that happened before the run started.
func (e *Engine) failEarly(st store, state *State, step string, cause error) error {
	state.Status = StatusFailed
	state.Step = step
	if err := st.save(state, e.now()); err != nil {
		return errors.Join(cause, err)
	}
	return cause
}

// finish records a failed run: it deletes the half-made snapshot (never the
// default), or for an in-place run whose transaction started merges the
// rollback point back (mergeBack), then writes the result and the state.
func (e *Engine) finish(st store, state *State, res *Result, snap snapshot.Snapshotter, made string, cause error) error {
	var serr *StepError
	step := state.Step
	if errors.As(cause, &serr) {
		step = serr.Step
	}
	// /boot first: it must never name a snapshot that is gone.
	keep := false
	if state.Boot != nil {
		if err := e.restoreBoot(context.Background(), st, state.Boot); err != nil {
			cause = errors.Join(cause, fmt.Errorf("cannot put /boot back as it was: %w; the backup is kept in %s", err, st.dir))
			keep = true
		} else if err := dropBootBackups(st, state.Boot); err != nil {
			e.log().Warn("cannot remove the /boot backup", "err", err)
		} else {
			state.Boot.Backups = nil
		}
	}
	merge := false
	switch {
	case snap != nil && made != "" && state.InPlace && snap.Backend() != "none" && step != StepSnapshot:
		// The live root was (partly) upgraded: never delete the only
		// copy of the old root, merge it back (effective at next boot).
		merge = true
	case snap != nil && made != "" && snap.Backend() != "none" && !keep:
		if err := snap.Delete(context.Background(), made); err != nil && !errors.Is(err, snapshot.ErrNotFound) {
			cause = errors.Join(cause, fmt.Errorf("cannot delete the half-made snapshot %s: %w", made, err))
		} else {
			state.Snapshot = ""
		}
	}
	res.Success = false
	res.Status = StatusFailed
	res.Error = cause.Error()
	res.Step = step
	res.FinishedAt = e.now().UTC()
	state.Status = StatusFailed
	state.Step = step
	state.LastResult = res
	if merge {
		if note, err := e.mergeBack(context.Background(), snap, state, res, made); err != nil {
			cause = errors.Join(cause, err)
		} else {
			cause = fmt.Errorf("%w; %s", cause, note)
		}
	}
	err := errors.Join(st.record(res), st.save(state, e.now()))
	e.report(progress.Event{Step: step, Message: "upgrade failed: " + cause.Error()})
	if err != nil {
		return errors.Join(cause, err)
	}
	return cause
}

// settle turns the state a crashed run left behind into a truthful one: a
// run whose switch happened is completed as succeeded; any other
// interrupted run has its half-made snapshot deleted and is recorded as
// failed. The caller holds the lock.
func (e *Engine) settle(ctx context.Context, st store) (*State, error) {
	state, err := st.load()
	if err != nil {
		return nil, err
	}
	if state.Status != StatusApplying {
		return state, nil
	}
	res := &Result{RunID: state.RunID, Kind: "apply", Backend: state.Backend, Snapshot: state.Snapshot, Previous: state.Previous, To: state.Target}
	if old, err := st.history(); err == nil {
		for i := range old {
			if old[i].RunID == state.RunID {
				r := old[i]
				res = &r
			}
		}
	}
	switched, err := e.switched(ctx, state)
	if err != nil {
		return nil, fmt.Errorf("cannot clean up the interrupted run: %w", err)
	}
	if !switched && state.InPlace && state.Backend != "" && state.Backend != "none" && state.Snapshot != "" &&
		(state.Step == StepTransaction || state.Step == StepBoot) {
		// The live root is half-upgraded: merge the rollback point back.
		return e.settleInPlace(ctx, st, state, res)
	}
	if switched {
		// The switch happened: the run is complete.
		res.Success, res.Status, res.Error, res.Step = true, StatusSucceeded, "", ""
		res.FinishedAt = e.now().UTC()
		state.Status, state.Step, state.LastResult = StatusSucceeded, "", res
		return state, errors.Join(st.record(res), st.save(state, e.now()))
	}
	if state.Boot != nil {
		if err := e.restoreBoot(ctx, st, state.Boot); err != nil {
			return nil, fmt.Errorf("cannot clean up the interrupted run: %w", err)
		}
		if err := dropBootBackups(st, state.Boot); err != nil {
			return nil, fmt.Errorf("cannot clean up the interrupted run: %w", err)
		}
		state.Boot.Backups = nil
		e.report(progress.Event{Step: "recover", Message: "restored /boot as it was before the interrupted run"})
	}
	if state.Backend != "" && state.Backend != "none" && state.Snapshot != "" {
		snap, err := e.Snapshotters(ctx, state.Backend, e.Root)
		if err != nil {
			return nil, fmt.Errorf("cannot clean up the interrupted run: %w", err)
		}
		defer snap.Close()
		// A run killed in the transaction left the scriptlets' mounts
		// (in place, the transaction had not started: none).
		if !state.InPlace {
			if path, err := snap.Path(ctx, state.Snapshot); err == nil {
				if err := unmountBelow(path); err != nil {
					return nil, fmt.Errorf("cannot clean up the interrupted run: %w", err)
				}
			}
		}
		if err := snap.Delete(ctx, state.Snapshot); err != nil && !errors.Is(err, snapshot.ErrNotFound) {
			return nil, fmt.Errorf("cannot delete the snapshot %s left by the interrupted run: %w", state.Snapshot, err)
		}
		e.report(progress.Event{Step: "recover", Message: "removed snapshot " + state.Snapshot + " left by an interrupted run"})
		state.Snapshot = ""
	}
	res.Success, res.Status, res.Error, res.Step = false, StatusFailed, errInterrupted, state.Step
	res.FinishedAt = e.now().UTC()
	state.Status, state.LastResult = StatusFailed, res
	return state, errors.Join(st.record(res), st.save(state, e.now()))
}

// switched reports whether an interrupted run's snapshot already is the
// default root, that is whether the run got past its switch step.
func (e *Engine) switched(ctx context.Context, state *State) (bool, error) {
	if state.Backend == "" || state.Backend == "none" || state.Snapshot == "" {
		return false, nil
	}
	if state.InPlace {
		// Nothing to switch in place: the transaction completed before
		// these steps, so the live root holds the upgrade.
		switch state.Step {
		case StepFinalize, StepSwitch, StepDone:
			return true, nil
		}
		return false, nil
	}
	switch state.Step {
	case StepSwitch, StepDone:
	default:
		return false, nil
	}
	snap, err := e.Snapshotters(ctx, state.Backend, e.Root)
	if err != nil {
		return false, err
	}
	defer snap.Close()
	def, err := snap.Default(ctx)
	if err != nil {
		return false, err
	}
	return def.Name == state.Snapshot, nil
}
