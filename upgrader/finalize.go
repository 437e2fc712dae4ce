package upgrader

import (
	"context"
	"errors"
	"fmt"

	"github.com/keyarchos/kos-upgrade/pkg/atomicfile"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// The shutdown-time finalize of a staged root (docs/stage.md), as
// rpm-ostree's ostree-finalize-staged.service: kos-upgrade-finalize.service
// is started when a staged upgrade is armed and does nothing until it is
// stopped; systemd stops it late in the shutdown, after every service
// ordered after it (everything after basic.target) stopped, and its stop
// action runs `kos-upgrade apply --at-shutdown`: Finalize. The machine
// then boots once, straight into the new root (on trial, as after the
// offline boot).
//
// The offline boot stays the fallback: Finalize runs only the staged path
// (verify, carry-over, boot entry, finalize, switch); anything else — no
// stage, a stage that cannot be carried over, any failure — is undone and
// leaves the upgrade armed, and the offline boot (system-update.target)
// runs it as without a stage. A crash while finalizing leaves what a crash
// of the offline step leaves: the old root, or the new one complete.

// errNotAtShutdown: what Finalize leaves to the offline boot.
var errNotAtShutdown = errors.New("not finalized at shutdown")

// Finalize runs the armed upgrade's staged path late in the shutdown. It
// does nothing (Ran false, Reason) unless an upgrade is armed with a
// staged root for its plan; then it is Apply without the classic
// transaction. A failed run is undone, recorded, and armed again for the
// offline boot, unless the plan itself is stale (the offline boot would
// refuse it as well). The caller checks that the system is shutting down.
func (e *Engine) Finalize(ctx context.Context) (*ApplyResult, error) {
	owner, err := e.LinkOwner()
	if err != nil {
		return nil, err
	}
	if owner != "kos-upgrade" {
		return &ApplyResult{Reason: "no kos-upgrade offline update is armed"}, nil
	}
	st := e.store()
	l, state, err := e.begin(ctx, st)
	if err != nil {
		return nil, err
	}
	defer l.release()
	if state.Status != StatusArmed {
		return &ApplyResult{Reason: fmt.Sprintf("the state is %s, not armed; the offline boot handles it", state.Status)}, nil
	}
	if s := state.Stage; s == nil || s.Step != StageStepStaged || s.PlanID != state.PlanID {
		return &ApplyResult{Reason: "no staged root for the armed plan: the offline boot upgrades"}, nil
	}
	p, err := loadPlan(st.planPath())
	if err != nil || p.ID != state.PlanID || p.Mode == ModeInitramfs {
		return &ApplyResult{Reason: "the armed plan is not a staged target-mode plan: the offline boot upgrades"}, nil
	}
	// As Apply: the link goes first, so that no crash from here on can
	// send the next boot into the offline target with a run half done.
	if err := atomicfile.Remove(e.Root.SystemUpdateLink()); err != nil {
		return nil, fmt.Errorf("cannot remove the offline update trigger: %w", err)
	}
	r, err := e.startRun(st, state, p)
	if err != nil {
		return nil, errors.Join(err, e.rearm(st, state))
	}
	defer r.close()
	r.atShutdown, r.res.AtShutdown = true, true
	if err := r.steps(ctx); err != nil {
		if state.Status != StatusFailed || Classify(err) == ClassStalePlan {
			// Past the switch (the new root boots), or a plan the
			// offline boot would refuse as well.
			return nil, err
		}
		if aerr := e.rearm(st, state); aerr != nil {
			return nil, errors.Join(err, aerr)
		}
		return &ApplyResult{Reason: "cannot finalize at shutdown (" + err.Error() + "); undone, the offline boot upgrades"}, nil
	}
	return &ApplyResult{Ran: true, Result: &r.success}, nil
}

// rearm arms the upgrade again for the offline boot after a finalize that
// was undone: the state first, then the link (as Arm).
func (e *Engine) rearm(st store, state *State) error {
	state.Status, state.Step = StatusArmed, ""
	if err := st.save(state, e.now()); err != nil {
		return err
	}
	if err := atomicfile.Symlink(sysroot.StateDirRel, e.Root.SystemUpdateLink()); err != nil {
		return fmt.Errorf("cannot arm the offline boot again: %w", err)
	}
	return nil
}

// notAtShutdown is the failure of a finalize that reached a step only the
// offline boot runs (the carry-over fell back to the classic transaction).
func (r *run) notAtShutdown(step string) error {
	why := "the staged root was not carried over"
	if r.res.PathReason != "" {
		why += ": " + r.res.PathReason
	}
	return &StepError{Step: StepCarryOver, Err: fmt.Errorf("%w: the %s step runs only in the offline boot (%s)", errNotAtShutdown, step, why)}
}
