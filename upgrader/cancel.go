package upgrader

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/keyarchos/kos-upgrade/pkg/atomicfile"
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
	if state.Status != StatusApplying {
		if err := e.dropStage(ctx, st, state); err != nil {
			return fmt.Errorf("cannot disarm: %w", err)
		}
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
