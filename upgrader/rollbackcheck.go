package upgrader

import (
	"context"
	"fmt"

	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
)

// RollbackCheck says why Rollback would fail, or nil; it changes nothing
// (and takes no lock: Rollback checks again under its lock). A caller that
// must do something after the rollback that can fail (a reboot) checks
// both first, so that a refusal never comes after the switch.
func (e *Engine) RollbackCheck(ctx context.Context) error {
	state, err := e.store().load()
	if err != nil {
		return err
	}
	return e.rollbackPossible(ctx, state)
}

// rollbackPossible checks, before anything is changed, what a rollback
// from state needs: a successful upgrade that kept a rollback point, no
// rollback already pending, and a backend that still has the rollback
// point (and, after an in-place upgrade, can merge it back).
func (e *Engine) rollbackPossible(ctx context.Context, state *State) error {
	if state.RebootRequired {
		return fmt.Errorf("cannot roll back: the rollback to %s is scheduled already; reboot to complete it", state.Previous)
	}
	if state.Status != StatusSucceeded || state.Previous == "" {
		return fmt.Errorf("cannot roll back: the state is %s; a rollback needs a successful upgrade with a snapshot of the old root", state.Status)
	}
	if !snapshot.Protects(state.Backend) {
		return fmt.Errorf("cannot roll back: the upgrade ran without a snapshot (--snapshot none)")
	}
	snap, err := e.Snapshotters(ctx, state.Backend, e.Root)
	if err != nil {
		return fmt.Errorf("cannot roll back: %w", err)
	}
	defer snap.Close()
	if _, err := snap.Path(ctx, state.Previous); err != nil {
		return fmt.Errorf("cannot roll back to the pre-upgrade root %s: %w", state.Previous, err)
	}
	if state.InPlace {
		if ip, ok := snap.(snapshot.InPlace); !ok || !ip.UpgradesInPlace() {
			return fmt.Errorf("cannot roll back: the upgrade ran in place, but the %s backend of this root cannot merge %s back", snap.Backend(), state.Previous)
		}
	}
	return nil
}
