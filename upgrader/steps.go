package upgrader

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/keyarchos/kos-upgrade/pkg/boot"
	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// The apply engine is this table: Apply journals each step in state.json
// before its side effect and calls its do; when a do fails, the undos of
// that step and of every step before it run in reverse order. Recovery
// after a crash (settle) is the same undo loop, from the step the journal
// recorded. A new step is one entry here: the crash tests, the progress
// weights (ApplyProgress) and docs/state.md's table follow the table.
//
// Contract of an undo: it must be safe to call when its do never ran, ran
// in part, or ran to the end, and calling it twice is harmless: settle
// calls the undos of every step up to the recorded one, knowing only the
// journal. An undo that fails stops the loop (what comes before may depend
// on it); the failure is recorded and the rest is left for a human or the
// next run.
//
// Rollback and the health fallback undo a complete run with the same
// undos, from the switch step back (run.rollback: the switch's undo then
// also ends the trial and makes the old root and entry the defaults, and
// the undos of the steps marked discards are skipped: the upgraded root is
// kept, clean removes it).
type applyStep struct {
	name string
	// weight is the step's share of the overall progress (ApplyProgress).
	weight int
	// when says whether the step runs in this run; nil means always.
	when func(r *run) bool
	do   func(r *run, ctx context.Context) error
	undo func(r *run, ctx context.Context) error
	// commits: once this step's do returned nil the run is complete
	// (the new root boots next): nothing is undone after it.
	commits bool
	// mid: the do has a crash point half-way, crashAt("mid-"+name) (the
	// transaction's is in the dnf helper).
	mid bool
	// staged: the step runs only for a root staged before the reboot
	// (reboot --stage): its crash points are tested on a staged run.
	staged bool
	// offline: the step runs only in the offline boot, never in the
	// shutdown-time finalize (finalize.go): reaching it there undoes the
	// run and leaves the upgrade armed for the offline boot.
	offline bool
	// discards: the undo only throws away what the run made (the
	// upgraded root, the stage); a rollback of a complete run does not
	// run it.
	discards bool
}

// applySteps is the one list of apply steps, in order.
var applySteps = []applyStep{
	{name: StepVerify, weight: 3, do: (*run).verify, undo: (*run).dropStage, discards: true},
	{name: StepBackup, weight: 2, when: (*run).hasBoot, do: (*run).backup, undo: (*run).putBootBack},
	{name: StepCarryOver, weight: 5, when: (*run).hasStage, do: (*run).carryOver, undo: (*run).undoCarryOver, mid: true, staged: true, discards: true},
	{name: StepSnapshot, weight: 5, when: (*run).notCarried, do: (*run).snapshot, undo: (*run).dropSnapshot, offline: true, discards: true},
	{name: StepTransaction, weight: 75, when: (*run).notCarried, do: (*run).transaction, undo: (*run).undoTransaction, mid: true, offline: true},
	{name: StepBoot, weight: 8, when: (*run).hasBootLoader, do: (*run).bootEntry, undo: (*run).putBootBack, mid: true},
	{name: StepFinalize, weight: 3, do: (*run).finalize},
	{name: StepSwitch, weight: 4, do: (*run).switchRoot, undo: (*run).switchBack, commits: true, mid: true},
	{name: StepDone, weight: 0, do: (*run).done},
}

// ApplySteps returns the names of the apply steps, in order: the values of
// State.Step and of the D-Bus Step property while applying.
func ApplySteps() []string {
	names := make([]string, len(applySteps))
	for i, s := range applySteps {
		names[i] = s.name
	}
	return names
}

// ApplyProgress returns the overall progress ranges of apply, from the
// steps' weights (and settle's "recover" at the start).
func ApplyProgress() progress.Ranges {
	w := make([]progress.StepWeight, len(applySteps))
	for i, s := range applySteps {
		w[i] = progress.StepWeight{Step: s.name, Weight: s.weight}
	}
	r := progress.Weighted(w)
	r["recover"] = [2]int{0, 2}
	return r
}

// CrashPoint is where the crash tests stop apply (KOS_UPGRADE_TEST_CRASH_AT
// in a binary with the test hooks): at a step's journal, or half-way
// through its do. Complete: the run counts as done there.
type CrashPoint struct {
	Name     string
	Complete bool
	// Staged: the point is reached only by a run staged before the
	// reboot (reboot --stage).
	Staged bool
	// Classic: the point is reached only by a run that is not carried
	// over (the classic snapshot and transaction, offline-only steps): a
	// staged run, in the offline boot or at shutdown, never reaches it.
	Classic bool
}

// CrashPoints lists every crash point of the table, in order: the crash
// tests of the engine and of the boot tiers iterate it.
func CrashPoints() []CrashPoint {
	var out []CrashPoint
	complete := false
	for _, s := range applySteps {
		out = append(out, CrashPoint{Name: s.name, Complete: complete, Staged: s.staged, Classic: s.offline})
		if s.mid {
			out = append(out, CrashPoint{Name: "mid-" + s.name, Complete: complete, Staged: s.staged, Classic: s.offline})
		}
		complete = complete || s.commits
	}
	return out
}

func stepIndex(name string) int {
	for i, s := range applySteps {
		if s.name == name {
			return i
		}
	}
	return -1
}

// run is one apply run: what its steps read and fill in.
type run struct {
	e     *Engine
	st    store
	state *State
	res   *Result
	plan  *Plan // nil when settling
	// snap is the root's snapshotter: opened by verify, or by the first
	// undo that needs it after a crash.
	snap snapshot.Snapshotter
	// cur is the root the run started from.
	cur snapshot.Snapshot
	// bl is the boot loader the boot steps use; nil: no boot steps (no
	// snapshot, or the root upgraded in place).
	bl boot.Bootloader
	// target is where the transaction runs.
	target string
	// success is the record of a successful run and newState the state
	// that goes with it (finalize writes them into the new root, done
	// into this one).
	success  Result
	newState State
	// notes are said with the failure (an in-place rollback pending).
	notes []string
	// failures are errors of undos that are recorded and do not stop the
	// loop (a merge that could not be started).
	failures []error
	// deferredCheck: verify left the plan's check to the carry-over
	// (a staged root of this plan, stage.go).
	deferredCheck bool
	// adoptedBoot: the run's /boot backup is the stage's, taken before
	// the staged transaction wrote the new kernel (stage.go).
	adoptedBoot bool
	// atShutdown: the run is the shutdown-time finalize (finalize.go).
	atShutdown bool
	// rollback: the undos undo a complete run (kos-upgrade rollback, the
	// health fallback) rather than a failed or interrupted one.
	rollback bool
}

func (r *run) close() {
	if r.snap != nil {
		r.snap.Close()
	}
}

// snapshotter returns the run's snapshotter, opening it when needed.
func (r *run) snapshotter(ctx context.Context) (snapshot.Snapshotter, error) {
	if r.snap == nil {
		s, err := r.e.Snapshotters(ctx, r.state.Backend, r.e.Root)
		if err != nil {
			return nil, err
		}
		r.snap = s
	}
	return r.snap, nil
}

func (r *run) hasBoot() bool       { return r.state.Boot != nil }
func (r *run) hasBootLoader() bool { return r.bl != nil }
func (r *run) report(step, msg string) {
	r.e.report(progress.Event{Step: step, Message: msg})
}

// steps runs the table: journal, do; on a failure the undos.
func (r *run) steps(ctx context.Context) error {
	committed := false
	for i, s := range applySteps {
		if s.when != nil && !s.when(r) {
			continue
		}
		if r.atShutdown && s.offline {
			return r.fail(ctx, i, r.notAtShutdown(s.name))
		}
		if err := r.journal(s.name); err != nil {
			return err
		}
		if err := s.do(r, ctx); err != nil {
			if committed {
				return err
			}
			return r.fail(ctx, i, err)
		}
		committed = committed || s.commits
	}
	return nil
}

// journal records the step before its side effect, then lets the crash
// tests stop the process right there.
func (r *run) journal(step string) error {
	r.state.Step = step
	if err := r.st.save(r.state, r.e.now()); err != nil {
		return err
	}
	r.e.log().Info("apply step", "step", step)
	crashAt(step)
	return nil
}

// undo runs the undos of the steps up to and including the one at index
// last, in reverse order, and stops at the first that fails.
func (r *run) undo(ctx context.Context, last int) error {
	for i := last; i >= 0; i-- {
		if r.rollback && applySteps[i].discards {
			continue
		}
		if u := applySteps[i].undo; u != nil {
			if err := u(r, ctx); err != nil {
				return err
			}
		}
	}
	return nil
}

// fail records a failed run: the result first (an in-place rollback adds
// to it), then the undos, then the record and the state.
func (r *run) fail(ctx context.Context, i int, cause error) error {
	ctx = context.WithoutCancel(ctx)
	var serr *StepError
	if !errors.As(cause, &serr) {
		serr = &StepError{Step: applySteps[i].name, Err: cause}
		cause = serr
	}
	r.res.Success, r.res.Status, r.res.Error, r.res.Step = false, StatusFailed, cause.Error(), serr.Step
	r.res.FinishedAt = r.e.now().UTC()
	r.state.Status, r.state.Step, r.state.LastResult = StatusFailed, serr.Step, r.res
	if err := r.undo(ctx, i); err != nil {
		cause = errors.Join(cause, err)
		r.res.Error += "; " + err.Error()
	}
	for _, n := range r.notes {
		cause = fmt.Errorf("%w; %s", cause, n)
	}
	cause = errors.Join(append([]error{cause}, r.failures...)...)
	err := errors.Join(r.st.record(r.res), r.st.save(r.state, r.e.now()))
	r.report(serr.Step, "upgrade failed: "+cause.Error())
	return errors.Join(cause, err)
}

// verify checks the plan against the system and decides the run's shape:
// the snapshot's name, in place or not, the boot loader and its backup.
func (r *run) verify(ctx context.Context) error {
	e, p := r.e, r.plan
	if r.stagedForPlan() {
		// The transaction ran into the staged root already: the staged
		// files are checked only if the run falls back, the package set
		// by the carry-over, which knows whether the rpm database
		// changed since staging (checkStagedPlan).
		r.deferredCheck = true
	} else {
		r.report(StepVerify, "verifying the staged packages and the installed package set")
		if err := e.checkPlan(ctx, p); err != nil {
			return err
		}
	}
	if err := checkLayout(e.Root, p.Snapshot); err != nil {
		return err
	}
	if err := r.openSnapshot(ctx); err != nil {
		return &StepError{Step: StepSnapshot, Err: err}
	}
	if p.Snapshot == snapshot.BackendNone {
		return nil
	}
	bl, err := e.bootloader()
	if err != nil {
		return err
	}
	if bl == nil && p.Snapshot == snapshot.BackendLVM && !r.state.InPlace {
		// LVM has no default LV: only a boot entry naming the new LV
		// makes it boot (docs/lvm.md).
		return fmt.Errorf("the root is a thin LVM volume, whose upgraded copy boots only through a boot entry naming it, but no boot loader kos-upgrade handles (grub2 with BLS entries, systemd-boot) was found under %s", e.Root.Path("/boot"))
	}
	if bl == nil {
		return nil
	}
	bs, err := e.planBoot(ctx, bl, r.res.RunID)
	if err != nil {
		return err
	}
	if r.state.InPlace {
		// The current entries boot the upgraded root: /boot is only
		// backed up, and restored on failure and rollback.
		bs.Trial, bs.Note = TrialNone, "no trial boot: the root is upgraded in place (its snapshot is the rollback point)"
	}
	if s := r.state.Stage; r.stagedForPlan() && s.Boot != nil {
		// The stage backed /boot up before its transaction wrote the
		// new kernel: that backup is the run's (the backup step keeps
		// a complete backup as it is), so every undo puts /boot back
		// as it was before staging.
		bs.Backups, s.Boot, r.adoptedBoot = s.Boot.Backups, nil, true
	}
	r.bl, r.state.Boot = bl, bs
	return nil
}

// openSnapshot opens the backend and names the snapshot. In place (LVM
// thick) the snapshot is the rollback point and the live root is upgraded
// (docs/lvm.md); that is journaled with the next step, before Create, so
// that a crash is recovered by a merge.
func (r *run) openSnapshot(ctx context.Context) error {
	p, state, res := r.plan, r.state, r.res
	snap, err := r.snapshotter(ctx)
	if err != nil {
		return err
	}
	if r.cur, err = snap.Current(ctx); err != nil {
		return err
	}
	name := "kos-upgrade/" + res.RunID
	if p.Snapshot == snapshot.BackendNone {
		name = r.cur.Name
		r.report(StepSnapshot, "WARNING: no snapshot (--snapshot none): upgrading the running root in place, there is no rollback")
	}
	inPlace := p.Snapshot != snapshot.BackendNone && snapshot.UpgradesInPlace(snap)
	state.Snapshot, state.Previous, state.InPlace, state.RebootRequired = name, r.cur.Name, inPlace, false
	res.Snapshot, res.Previous, res.InPlace = name, r.cur.Name, inPlace
	if inPlace {
		state.Previous, res.Previous = name, name
		if c, ok := snap.(snapshot.ChangeSizer); ok {
			c.SetChangeSize(inPlaceChangeSize(r.plan))
		}
		if j, ok := snap.(snapshot.Journaler); ok {
			// The undo journal saves what the transaction changes: the
			// file lists of the packages it erases, upgrades and
			// installs (/etc and the rpm database whole).
			files, err := r.e.PM.Files(ctx, r.e.Root.Dir, r.st.stageDir(p.StageDir), p.Transaction)
			if err != nil {
				return fmt.Errorf("cannot list the files the transaction changes: %w", err)
			}
			j.SetChanges(files)
		}
	}
	return nil
}

// backup backs up /boot, which is not in the snapshot, before anything
// can touch it (docs/boot.md).
func (r *run) backup(ctx context.Context) error {
	bs := r.state.Boot
	r.report(StepBackup, "backing up "+bs.Backups[0].Dir+" ("+bs.Loader+", default entry "+bs.Previous+")")
	return r.e.backupBoot(ctx, r.st, bs)
}

// putBootBack restores /boot from the run's backup and drops the backup
// (Backups emptied). Without a backup (none made, put back already, or
// cleaned away) it does nothing. It is the one way /boot is put back: the
// undos of the apply steps, which rollback runs too.
func (r *run) putBootBack(ctx context.Context) error {
	bs := r.state.Boot
	if bs == nil || len(bs.Backups) == 0 {
		return nil
	}
	if err := r.e.restoreBoot(ctx, r.st, bs); err != nil {
		return fmt.Errorf("cannot put /boot back as it was: %w; the backup is kept in %s", err, r.st.dir)
	}
	if err := dropBootBackups(r.st, bs); err != nil {
		r.e.log().Warn("cannot remove the /boot backup", "err", err)
	} else {
		bs.Backups = nil
	}
	r.report(r.undoStep(), "restored /boot as it was before the run")
	return nil
}

// undoStep is the progress step the undos report under.
func (r *run) undoStep() string {
	if r.rollback {
		return "rollback"
	}
	return "recover"
}

func (r *run) snapshot(ctx context.Context) error {
	name := r.state.Snapshot
	r.report(StepSnapshot, "creating snapshot "+name+" of "+r.cur.Name)
	target, err := r.snap.Create(ctx, name)
	if err != nil {
		return err
	}
	r.target = target.Path
	if snapshot.RollsBackImmediately(r.snap) {
		if u, ok := r.snap.(snapshot.Journaler); ok {
			if js, err := u.Stats(name); err == nil {
				how := "copied"
				if js.Reflinked {
					how = "cloned (reflinks)"
				}
				r.report(StepSnapshot, fmt.Sprintf("undo journal %s: %d files (%d KiB) %s, %d directories, %d symlinks, %d paths to remove on undo; it took %d KiB of the filesystem",
					name, js.Files, js.Covered>>10, how, js.Dirs, js.Symlinks, js.Absent, js.SpaceUsed>>10))
			}
		}
		if err := r.guard(); err != nil {
			return err
		}
	}
	// The one place the new root is made ready, before rpm touches it.
	if err := dropRPMDBEnvironment(r.target); err != nil {
		return err
	}
	if r.state.InPlace || (r.bl != nil && target.Path == r.e.Root.Dir) {
		// The backend upgrades the root in place (LVM thick: the
		// snapshot is the rollback point): the current entries boot the
		// upgraded root; /boot is only backed up and restored on failure.
		r.report(StepSnapshot, "the root is upgraded in place, "+name+" is its rollback point: no new boot entry, no trial boot")
		r.bl = nil
	}
	return nil
}

// dropSnapshot deletes the run's snapshot (never the default: the backend
// refuses), after unmounting what a killed transaction left mounted in it.
// In place it is the rollback point, which undoTransaction consumed if the
// transaction began.
func (r *run) dropSnapshot(ctx context.Context) error {
	name := r.state.Snapshot
	if !snapshot.Protects(r.state.Backend) || name == "" {
		return nil
	}
	snap, err := r.snapshotter(ctx)
	if err != nil {
		return err
	}
	if !r.state.InPlace {
		if path, err := snap.Path(ctx, name); err == nil {
			if err := unmountBelow(path); err != nil {
				return err
			}
		}
	}
	if err := snap.Delete(ctx, name); err != nil && !errors.Is(err, snapshot.ErrNotFound) {
		return fmt.Errorf("cannot delete the half-made snapshot %s: %w", name, err)
	}
	if snapshot.RollsBackImmediately(snap) {
		if err := r.dropGuard(); err != nil {
			return err
		}
	}
	r.state.Snapshot = ""
	r.report("recover", "removed snapshot "+name)
	return nil
}

func (r *run) transaction(ctx context.Context) error {
	p := r.plan
	if m := p.Migration; m != nil && len(m.Keys) > 0 {
		// A migration: the new root trusts the target's keys, imported
		// inside the snapshot, so a failure discards them with it.
		if err := r.e.importKeys(ctx, r.target, m.Keys); err != nil {
			return err
		}
	}
	r.report(StepTransaction, fmt.Sprintf("running the transaction (%d packages) in %s", len(p.Transaction), r.target))
	rep, err := r.e.transaction(ctx, p, r.target, r.bl != nil)
	if err != nil {
		return err
	}
	for _, w := range rep.Warnings {
		r.report(StepTransaction, "warning: "+w)
	}
	r.res.Warnings = rep.Warnings
	return nil
}

// undoTransaction puts /boot back (the kernel scriptlets wrote to it); in
// place, the live root is (partly) upgraded: the only copy of the old root
// is never deleted, it is merged back (effective at the next boot).
func (r *run) undoTransaction(ctx context.Context) error {
	berr := r.putBootBack(ctx)
	if !r.state.InPlace || !snapshot.Protects(r.state.Backend) || r.state.Snapshot == "" {
		return berr
	}
	snap, err := r.snapshotter(ctx)
	if err != nil {
		return errors.Join(berr, fmt.Errorf("cannot roll back the in-place run: %w", err))
	}
	if r.rollback {
		// A complete run: the rollback point is put back, and the
		// rollback says what that leaves.
		if berr != nil {
			return berr
		}
		_, err := r.merge(ctx, snap, r.state.Snapshot)
		return err
	}
	note, err := r.mergeBack(ctx, snap, r.state.Snapshot)
	if err == nil && snapshot.RollsBackImmediately(snap) {
		err = r.dropGuard()
	}
	if err != nil {
		// Recorded in the result: every command shows it; the root
		// needs a human.
		r.report("recover", "ERROR: "+err.Error())
		r.failures = append(r.failures, err)
	} else {
		r.notes = append(r.notes, note)
	}
	return berr
}

func (r *run) bootEntry(ctx context.Context) error {
	return r.e.bootStep(ctx, r.bl, r.state, r.snap, r.target, r.plan.Target.VersionID)
}

// finalize records success inside the new root before it becomes the
// default, so that it boots knowing what happened.
func (r *run) finalize(ctx context.Context) error {
	e, p, name := r.e, r.plan, r.state.Snapshot
	if p.Mode == ModeInitramfs {
		if err := e.autorelabel(r.target); err != nil {
			return err
		}
	}
	r.success = *r.res
	r.success.Success, r.success.Status, r.success.Error, r.success.Step = true, StatusSucceeded, "", ""
	r.success.FinishedAt = e.now().UTC()
	r.newState = *r.state
	r.newState.Status, r.newState.Step, r.newState.LastResult = StatusSucceeded, "", &r.success
	if s := r.state.Stage; s != nil {
		// The new root knows the leftovers (base, live) but not itself.
		ns := *s
		if ns.Next == r.state.Snapshot {
			ns.Next = ""
		}
		r.newState.Stage = &ns
	}
	if r.target == e.Root.Dir {
		if r.state.InPlace && snapshot.RollsBackImmediately(r.snap) {
			return r.dropGuard()
		}
		return nil
	}
	switch p.Snapshot {
	case snapshot.BackendBtrfs:
		if _, err := rewriteFstab(r.target, name); err != nil {
			return err
		}
	case snapshot.BackendLVM:
		if err := e.rewriteFstabLVM(r.snap, r.target, r.cur.Name, name); err != nil {
			return err
		}
	}
	ns := store{dir: filepath.Join(r.target, sysroot.StateDirRel)}
	if err := ns.record(&r.success); err != nil {
		return err
	}
	return ns.save(&r.newState, e.now())
}

// switchRoot makes the new root the one that boots next. The trial first:
// a crash between the two leaves an entry that names the new root
// explicitly (settle, not switched, restores /boot), never a default root
// that no entry on trial boots.
func (r *run) switchRoot(ctx context.Context) error {
	name := r.state.Snapshot
	if r.state.InPlace {
		r.report(StepSwitch, "the upgraded root boots next; "+name+" is its rollback point")
	} else {
		r.report(StepSwitch, "making "+name+" the root of the next boot")
	}
	if r.bl != nil {
		if err := r.e.armBoot(ctx, r.bl, r.state.Boot); err != nil {
			return err
		}
		crashAt("mid-switch")
	}
	if r.state.InPlace {
		// Nothing to switch: the upgraded root boots.
		return nil
	}
	return r.snap.Activate(ctx, name)
}

// switchBack is the undo of the switch step: /boot put back as the
// backup has it (which removes the new entries and kernels, undoes a
// pinning and the trial). Undoing a complete run (rollback) it first makes
// the pre-upgrade root the default root again (in place the transaction's
// undo merges it back) and ends the trial, and after the restore makes
// the old entry the default (without a backup, cleaned away, that is what
// is left to do).
func (r *run) switchBack(ctx context.Context) error {
	if !r.rollback {
		return r.putBootBack(ctx)
	}
	state, bs := r.state, r.state.Boot
	if !state.InPlace {
		snap, err := r.snapshotter(ctx)
		if err != nil {
			return err
		}
		r.report("rollback", "making "+state.Previous+" the root of the next boot")
		if err := snap.Activate(ctx, state.Previous); err != nil {
			return err
		}
	}
	if bs == nil {
		return nil
	}
	bl, err := r.e.bootloader()
	if err != nil {
		return err
	}
	if bl != nil {
		if err := bl.Fallback(ctx); err != nil {
			return fmt.Errorf("cannot end the trial boot: %w", err)
		}
	}
	if err := r.putBootBack(ctx); err != nil {
		return err
	}
	if bl == nil || bs.Previous == "" {
		return nil
	}
	if err := bl.SetDefault(ctx, bs.Previous); err != nil {
		return fmt.Errorf("cannot make %s the default boot entry again: %w", bs.Previous, err)
	}
	r.report("rollback", "boot entry "+bs.Previous+" is the default again")
	return r.e.removeLeftovers(ctx)
}

// done records the result in the old root.
func (r *run) done(ctx context.Context) error {
	if err := r.st.record(&r.success); err != nil {
		return err
	}
	if err := r.st.save(&r.newState, r.e.now()); err != nil {
		return err
	}
	// A staged run's base and live are not needed any more, but deleting
	// them is no business of the offline window (the downtime): both
	// states name them, and the first command of the new root (its
	// first-boot health) deletes them (settle: staleStage).
	if r.state.InPlace {
		r.report(StepDone, fmt.Sprintf("upgrade to %s succeeded in place; %s is kept as the rollback point (kos-upgrade rollback merges it back)", r.plan.Target.VersionID, r.state.Snapshot))
	} else {
		r.report(StepDone, fmt.Sprintf("upgrade to %s succeeded; the next boot starts %s", r.plan.Target.VersionID, r.state.Snapshot))
	}
	return nil
}
