package upgrader

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/keyarchos/kos-upgrade/pkg/atomicfile"
	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// In-place runs (docs/lvm.md, "Thick LVs"): a backend implementing
// snapshot.InPlace with UpgradesInPlace() true makes the snapshot the
// rollback point and returns the live root as the place of the
// transaction. The engine then
//
//   - journals State.InPlace (with Snapshot = Previous = the rollback
//     point) before Create;
//   - on success switches nothing and keeps the rollback point;
//   - on a failure after the transaction started, and after a crash in
//     it, merges the rollback point back (mergeBack): never Delete, the
//     rollback point is the only copy of the old root;
//   - for `kos-upgrade rollback` merges it back too (rollback).
//
// A merge of an open root takes effect at the next boot: until then the
// running root is the half-upgraded (or upgraded) one, State.RebootRequired
// is set and nothing new can be armed.

// inPlaceChangeSize estimates the bytes the transaction of p writes to the
// root, for the size of a thick snapshot (snapshot.LVM.ChangeSize): a COW
// snapshot copies every chunk the transaction writes, free space included,
// so the new packages' installed size counts twice (rpm writes each file to
// a temporary name, and the old files' blocks get reused), plus the rpm
// database, the journal and the scriptlets' writes.
func inPlaceChangeSize(p *Plan) int64 {
	return 2*p.InstallSize + 256<<20
}

// rebootNote is how a failed or rolled-back in-place run says what is left.
func rebootNote(name string) string {
	return "the root is rolled back to " + name + " at the next boot: reboot to complete the rollback"
}

// merge puts the rollback point name of an in-place run back into the
// root: an undo journal at once, an LVM merge at the next boot. It amends
// the run's state for the live root (no snapshot; the merging rollback
// point and RebootRequired until the reboot), which the caller saves, and
// returns what is left to say. The one way an in-place run is undone: a
// failure, a crash and a rollback all come here.
func (r *run) merge(ctx context.Context, snap snapshot.Snapshotter, name string) (string, error) {
	ip, ok := snap.(snapshot.InPlace)
	if !ok || !ip.UpgradesInPlace() {
		return "", fmt.Errorf("the %s backend cannot merge %s back into the root", snap.Backend(), name)
	}
	r.report("rollback", "merging the rollback point "+name+" back into the root")
	if err := ip.Rollback(ctx, name); err != nil {
		return "", err
	}
	if snapshot.RollsBackImmediately(snap) {
		// Undo journal: restored and consumed already.
		r.state.Snapshot, r.state.Previous = "", ""
		return "the root was put back as it was before the upgrade (undo journal " + name + ")", nil
	}
	r.state.Snapshot = ""
	r.state.Previous = name // merging: Clean keeps it, it goes away by itself
	r.state.RebootRequired = true
	return rebootNote(name), nil
}

// mergeBack rolls a failed or interrupted in-place run back: it records
// the outcome (state and result, with the note that the root was rolled
// back) inside the rollback point name, which is what the root reads as
// after the merge, then merges it. On success it amends the result and
// the state for the live root, which the caller saves, and returns the
// note to add to the error.
func (r *run) mergeBack(ctx context.Context, snap snapshot.Snapshotter, name string) (string, error) {
	e, state, res := r.e, r.state, r.res
	if ip, ok := snap.(snapshot.InPlace); !ok || !ip.UpgradesInPlace() {
		return "", fmt.Errorf("cannot roll back: the %s backend cannot merge %s back into the root; the root is half-upgraded", snap.Backend(), name)
	}
	// What the root says after the reboot: the run failed, and the
	// rollback happened. Best effort: without it the next run settles
	// the leftover state as interrupted.
	after := *res
	after.Error = res.Error + "; the root was rolled back to its state before the upgrade (rollback point " + name + " merged at boot)"
	afterState := *state
	afterState.Snapshot, afterState.Previous, afterState.RebootRequired = "", "", false
	afterState.LastResult = &after
	if path, err := snap.Path(ctx, name); err != nil {
		e.log().Warn("cannot record the failure in the rollback point", "snapshot", name, "err", err)
	} else if filepath.Clean(path) != filepath.Clean(e.Root.Dir) {
		ps := store{dir: filepath.Join(path, sysroot.StateDirRel)}
		if err := errors.Join(ps.record(&after), ps.save(&afterState, e.now())); err != nil {
			e.log().Warn("cannot record the failure in the rollback point", "snapshot", name, "err", err)
		}
	}
	note, err := r.merge(ctx, snap, name)
	if err != nil {
		msg := fmt.Sprintf("cannot roll back to %s: %v; the root stays half-upgraded: restore it from a backup", name, err)
		res.Error += "; " + msg
		return "", errors.New(msg)
	}
	res.Error += "; " + note
	r.report("rollback", note)
	return note, nil
}

// Undo journals (snapshot.Undo, docs/undo.md): the root is upgraded in
// place and the rollback point is restored by kos-upgrade itself, so a
// crash in the transaction must bring the next boot back into the offline
// unit, before anything else runs from a half-upgraded root. guard links
// /system-update again once the journal is complete, to the journals'
// directory (snapshot.UndoDirRel), not to the state directory: the unit's
// ExecStopPost= safety net removes a link to the state directory when the
// process dies (so that a binary that cannot run never loops), but turns
// this one into a plain link to the state directory instead, so that a
// process killed while the machine keeps running (kill -9, the OOM killer)
// still leaves the next boot in the offline unit, once more. apply removes
// either link first, as always, and settles the interrupted run (the
// journal is restored) before it says anything else. dropGuard removes it
// when the run ends, either way.

// guard links /system-update to the undo journals' directory for the
// duration of an undo-journaled transaction.
func (r *run) guard() error {
	if err := atomicfile.Symlink(snapshot.UndoDirRel, r.e.Root.SystemUpdateLink()); err != nil {
		return fmt.Errorf("cannot arm the recovery of the in-place run: %w", err)
	}
	return nil
}

// dropGuard removes the link guard made, if it is still ours.
func (r *run) dropGuard() error {
	if owner, err := r.e.LinkOwner(); err != nil || owner != "kos-upgrade" {
		return err
	}
	return atomicfile.Remove(r.e.Root.SystemUpdateLink())
}

// rewriteFstabLVM points the "/" line of the fstab of newRoot, a thin LVM
// snapshot called name of the root called cur, at the snapshot's LV when
// it names the old LV by path. A "/" named by UUID= or LABEL= is left
// alone (both LVs carry the filesystem's UUID, so it may resolve to
// either; the boot entry names the LV by path, which is what mounts the
// root) and reported.
func (e *Engine) rewriteFstabLVM(snap snapshot.Snapshotter, newRoot, cur, name string) error {
	n, ok := snap.(snapshot.Volumes)
	if !ok {
		return nil
	}
	oldLV, err := n.LV(cur)
	if err != nil {
		return err
	}
	newLV, err := n.LV(name)
	if err != nil {
		return err
	}
	changed, ambiguous, err := rewriteFstabLVMFile(newRoot, n.VG(), oldLV, newLV)
	if err != nil {
		return err
	}
	if changed {
		e.report(progress.Event{Step: StepFinalize, Message: "/etc/fstab of the new root mounts / from " + n.VG() + "/" + newLV})
	}
	if ambiguous != "" {
		e.report(progress.Event{Step: StepFinalize, Message: "WARNING: /etc/fstab of the new root names / by " + ambiguous +
			", which the old root's LV " + n.VG() + "/" + oldLV + " carries too (a snapshot has its origin's filesystem UUID); the boot entry mounts " +
			n.VG() + "/" + newLV + " by path, but tools that resolve the fstab line may pick either: name / by /dev/mapper path"})
	}
	return nil
}
