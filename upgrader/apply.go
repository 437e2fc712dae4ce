package upgrader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/keyarchos/kos-upgrade/pkg/atomicfile"
	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
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
	// The state directory (armed), or the undo journals' directory (an
	// undo-journaled transaction runs: inplace.go, guard).
	switch filepath.Clean(target) {
	case sysroot.StateDirRel, e.Root.StateDir(), snapshot.UndoDirRel, e.Root.Path(snapshot.UndoDirRel):
		return "kos-upgrade", nil
	}
	return target, nil
}

// Arm makes the prepared plan run at the next boot: it checks the plan is
// still valid for the installed packages, records "armed", then creates
// /system-update pointing at the state directory.
func (e *Engine) Arm(ctx context.Context) (*Plan, error) {
	st := e.store()
	l, state, err := e.beginWithPlan(ctx, st, "arm")
	if err != nil {
		return nil, err
	}
	defer l.release()
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
	// The system may have changed since prepare: the baseline the first
	// boot is judged against is taken again, before the link that arms.
	if err := e.saveBaseline(ctx, st, p); err != nil {
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
	return e.checkFingerprint(ctx, p, e.Root.Dir)
}

// checkFingerprint verifies the rpmdb fingerprint of the root at dir.
func (e *Engine) checkFingerprint(ctx context.Context, p *Plan, dir string) error {
	fp, err := e.PM.Fingerprint(ctx, dir)
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
	if reason, err := e.takeLink(); err != nil {
		return nil, err
	} else if reason != "" {
		return &ApplyResult{Reason: reason}, nil
	}
	st := e.store()
	// A run interrupted in place (undo journal: guard) is settled by
	// begin, before anything else: say so.
	interrupted := false
	if pre, err := st.load(); err == nil && pre.Status == StatusApplying {
		interrupted = true
	}
	l, state, err := e.begin(ctx, st)
	if err != nil {
		return nil, err
	}
	defer l.release()
	if interrupted && state.LastResult != nil {
		return nil, fmt.Errorf("the previous run was interrupted and has been settled: %s; nothing new was applied", state.LastResult.Error)
	}
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
	r, err := e.startRun(st, state, p)
	if err != nil {
		return nil, err
	}
	defer r.close()
	if err := r.steps(ctx); err != nil {
		return nil, err
	}
	return &ApplyResult{Ran: true, Result: &r.success}, nil
}

// takeLink removes the /system-update link first, when it is ours (no
// boot loops). Without it, or when it is another tool's, it says why
// apply does nothing (not an error).
func (e *Engine) takeLink() (reason string, err error) {
	owner, err := e.LinkOwner()
	if err != nil {
		return "", err
	}
	switch owner {
	case "":
		return "no offline update is armed (" + e.Root.SystemUpdateLink() + " does not exist)", nil
	case "kos-upgrade":
	default:
		return fmt.Sprintf("%s belongs to another tool (%s); leaving it alone", e.Root.SystemUpdateLink(), owner), nil
	}
	if err := atomicfile.Remove(e.Root.SystemUpdateLink()); err != nil {
		return "", fmt.Errorf("cannot remove the offline update trigger: %w", err)
	}
	return "", nil
}

// startRun writes the provisional result, "failed: interrupted", so that
// a crash from here on leaves the truth as the record, and marks the state
// applying.
func (e *Engine) startRun(st store, state *State, p *Plan) (*run, error) {
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
	if err := st.record(res); err != nil {
		return nil, err
	}
	if state.Stage == nil && state.NotStaged != "" {
		res.Path, res.PathReason = PathClassic, state.NotStaged
	}
	state.NotStaged = ""
	state.Status = StatusApplying
	state.RunID = res.RunID
	state.Backend = p.Snapshot
	state.Snapshot = ""
	state.Boot = nil
	state.Blessed = false // a new run has its own first boot
	return &run{e: e, st: st, state: state, res: res, plan: p}, nil
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

// failEarly records a failure that happened before the run started.
func (e *Engine) failEarly(st store, state *State, step string, cause error) error {
	state.Status = StatusFailed
	state.Step = step
	if err := st.save(state, e.now()); err != nil {
		return errors.Join(cause, err)
	}
	return cause
}

// settle turns the state a crashed run left behind into a truthful one: a
// run whose switch happened is completed as succeeded; any other
// interrupted run is undone by the steps' undos, from the recorded step
// back to the first (steps.go), and recorded as failed. The caller holds
// the lock.
func (e *Engine) settle(ctx context.Context, st store) (*State, error) {
	state, err := st.load()
	if err != nil {
		return nil, err
	}
	if state.Status != StatusApplying {
		if staleStage(state) {
			if err := e.dropStage(ctx, st, state); err != nil {
				return nil, fmt.Errorf("cannot clean up the interrupted stage: %w", err)
			}
		}
		return state, nil
	}
	r := &run{e: e, st: st, state: state, res: interruptedResult(st, state)}
	defer r.close()
	switched, err := r.switched(ctx)
	if err != nil {
		return nil, fmt.Errorf("cannot clean up the interrupted run: %w", err)
	}
	res := r.res
	res.FinishedAt = e.now().UTC()
	if switched {
		// The switch happened: the run is complete.
		res.Success, res.Status, res.Error, res.Step = true, StatusSucceeded, "", ""
		state.Status, state.Step, state.LastResult = StatusSucceeded, "", res
		if err := errors.Join(st.record(res), st.save(state, e.now())); err != nil {
			return state, err
		}
		if state.Stage != nil {
			// base and live of a staged run; next is the new root.
			if state.Stage.Next == state.Snapshot {
				state.Stage.Next = ""
			}
			if err := r.dropStage(ctx); err != nil {
				e.log().Warn("cannot remove the staged snapshots", "err", err)
			}
		}
		return state, nil
	}
	last := stepIndex(state.Step)
	res.Success, res.Status, res.Error, res.Step = false, StatusFailed, errInterrupted, state.Step
	if state.InPlace && snapshot.Protects(state.Backend) && state.Snapshot != "" && last >= stepIndex(StepTransaction) {
		res.InPlace = true
		res.Error = "interrupted: the run stopped in its " + state.Step + " step (crash or power cut), after it had begun to change the running root in place"
	}
	if err := r.undo(ctx, last); err != nil {
		return nil, fmt.Errorf("cannot clean up the interrupted run: %w", err)
	}
	state.Status, state.LastResult = StatusFailed, res
	return state, errors.Join(st.record(res), st.save(state, e.now()))
}

// staleStage reports whether the stage recorded in state is a leftover:
// Stage was interrupted (it holds the lock while it runs), or the upgrade
// it was for is over (the new root's state names base and live, which a
// crash between the switch and done left behind, and a rollback after).
func staleStage(state *State) bool {
	s := state.Stage
	if s == nil {
		return false
	}
	return s.Step != StageStepStaged || state.Status == StatusSucceeded || state.Status == StatusRolledBack
}

// interruptedResult is the history record of the interrupted run of state
// (its provisional one), or a new one when there is none.
func interruptedResult(st store, state *State) *Result {
	res := &Result{RunID: state.RunID, Kind: "apply", Backend: state.Backend, Snapshot: state.Snapshot, Previous: state.Previous, To: state.Target}
	if old, err := st.history(); err == nil {
		for i := range old {
			if old[i].RunID == state.RunID {
				r := old[i]
				res = &r
			}
		}
	}
	return res
}

// switched reports whether an interrupted run's snapshot already is the
// default root, that is whether the run got past its switch step.
func (r *run) switched(ctx context.Context) (bool, error) {
	state := r.state
	if !snapshot.Protects(state.Backend) || state.Snapshot == "" {
		return false, nil
	}
	if state.InPlace {
		// Nothing to switch in place: the transaction completed before
		// these steps, so the live root holds the upgrade.
		return stepIndex(state.Step) >= stepIndex(StepFinalize), nil
	}
	if stepIndex(state.Step) < stepIndex(StepSwitch) {
		return false, nil
	}
	snap, err := r.snapshotter(ctx)
	if err != nil {
		return false, err
	}
	def, err := snap.Default(ctx)
	if err != nil {
		return false, err
	}
	return def.Name == state.Snapshot, nil
}

// switched is run.switched for a state read by itself (status).
func (e *Engine) switched(ctx context.Context, state *State) (bool, error) {
	r := &run{e: e, state: state}
	defer r.close()
	return r.switched(ctx)
}
