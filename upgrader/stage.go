package upgrader

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/atomicfile"
	"github.com/keyarchos/kos-upgrade/pkg/boot"
	"github.com/keyarchos/kos-upgrade/pkg/btrfsdiff"
	"github.com/keyarchos/kos-upgrade/pkg/carryover"
	"github.com/keyarchos/kos-upgrade/pkg/execlog"
	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
)

// The staged root (docs/stage.md): `reboot --stage` builds the upgraded
// root before the reboot, the offline step carries over what the running
// system changed since (the carry-over step of the apply table), or falls
// back to the classic apply and says why.

// Stage steps, journaled in State.Stage.Step before their side effect.
const (
	StageStepSnapshot    = "snapshot"    // next (writable) and base (read-only) made
	StageStepTransaction = "transaction" // the transaction runs into next
	StageStepStaged      = "staged"      // next is complete
)

// StageCrashPoints are where the crash tests stop Stage (crashAt).
var StageCrashPoints = []string{"stage-" + StageStepSnapshot, "stage-" + StageStepTransaction}

// Paths of a run (Result.Path).
const (
	PathClassic = "classic"
	PathStaged  = "staged"
)

// StageState is the staged root (State.Stage): the snapshots' names are
// journaled before they are made, so that settle, cancel, prepare and a
// new stage remove what a crash left.
type StageState struct {
	PlanID string `json:"plan_id"`
	// Next is the writable snapshot the transaction ran into; Base the
	// read-only snapshot of the root it started from; Live the
	// read-only snapshot of the root the offline step takes.
	Next     string    `json:"next"`
	Base     string    `json:"base"`
	Live     string    `json:"live,omitempty"`
	Step     string    `json:"step"`
	StagedAt time.Time `json:"staged_at,omitzero"`
	// NextGeneration is next's btrfs generation when it was made
	// read-only at the end of staging and the transaction's change
	// (base → next) saved (txnStreamPath): the offline step uses the
	// saved change only if next is still at that generation.
	NextGeneration uint64 `json:"next_generation,omitempty"`
	// Boot is the backup of /boot taken before the staged transaction,
	// whose kernel scriptlets write to the real /boot; nil without a boot
	// loader, and once a run took the backup over (verify). Dropping the
	// stage restores /boot from it.
	Boot *BootState `json:"boot,omitempty"`
}

func (s *StageState) validate() error {
	if s == nil {
		return nil
	}
	for _, n := range []string{s.Next, s.Base, s.Live} {
		if n != "" && (!validSnapshotName(n) || !strings.HasPrefix(n, snapshot.BtrfsDir+"/")) {
			return fmt.Errorf("snapshot %q is not one of kos-upgrade's", n)
		}
	}
	switch s.Step {
	case StageStepSnapshot, StageStepTransaction, StageStepStaged:
	default:
		return fmt.Errorf("step %q is not a stage step", s.Step)
	}
	if err := s.Boot.validate(); err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	if s.PlanID != "" && !validID(s.PlanID) {
		return fmt.Errorf("plan_id %q is not a plan id", s.PlanID)
	}
	return nil
}

// Stage builds the upgraded root of the prepared plan while the system
// runs: next, a writable snapshot of the root, then base, a read-only
// snapshot of next before anything changes it (so base is the root as
// next started from it), then the transaction into next from the staged
// files. The running root is not touched; the scriptlets see the real
// /boot, backed up first (stage.boot): the new kernel's entry is written
// and the old entry stays the default, and dropping the stage puts /boot
// back. btrfs only. A stage already there is replaced. Arm after it.
func (e *Engine) Stage(ctx context.Context) error {
	st := e.store()
	l, state, err := e.beginWithPlan(ctx, st, "stage")
	if err != nil {
		return err
	}
	defer l.release()
	p, err := loadPlan(st.planPath())
	if err != nil {
		return fmt.Errorf("cannot stage: %w", err)
	}
	if p.Snapshot != snapshot.BackendBtrfs {
		return fmt.Errorf("cannot stage: %w: the root is not on btrfs (snapshot backend %q); it is upgraded offline", ErrNotStageable, p.Snapshot)
	}
	if p.Mode == ModeInitramfs {
		return fmt.Errorf("cannot stage: %w: the plan is for initramfs mode", ErrNotStageable)
	}
	if err := e.checkPlan(ctx, p); err != nil {
		return fmt.Errorf("cannot stage: %w", err)
	}
	if err := e.dropStage(ctx, st, state); err != nil {
		return fmt.Errorf("cannot stage: %w", err)
	}
	label := "stage-" + e.now().UTC().Format("20060102T150405.000Z")
	bl, err := e.bootloader()
	if err != nil {
		return fmt.Errorf("cannot stage: %w", err)
	}
	var bs *BootState
	if bl != nil {
		if bs, err = e.planBoot(ctx, bl, label); err != nil {
			return fmt.Errorf("cannot stage: %w", err)
		}
	}
	state.Stage = &StageState{PlanID: p.ID, Next: snapshot.BtrfsName(label), Base: snapshot.BtrfsName(label + "-base"), Step: StageStepSnapshot, Boot: bs}
	if err := st.save(state, e.now()); err != nil {
		return err
	}
	crashAt("stage-" + StageStepSnapshot)
	if err := e.stage(ctx, st, state, p); err != nil {
		ctx = context.WithoutCancel(ctx)
		return errors.Join(fmt.Errorf("cannot stage: %w", err), e.dropStage(ctx, st, state))
	}
	return nil
}

func (e *Engine) stage(ctx context.Context, st store, state *State, p *Plan) error {
	snap, err := e.Snapshotters(ctx, p.Snapshot, e.Root)
	if err != nil {
		return err
	}
	defer snap.Close()
	s := state.Stage
	e.report(progress.Event{Step: "stage", Message: "creating " + s.Next + " and its read-only base " + s.Base})
	next, err := snap.Create(ctx, s.Next)
	if err != nil {
		return err
	}
	if err := dropRPMDBEnvironment(next.Path); err != nil {
		return err
	}
	// The package set base starts from is the plan's: the offline step
	// relies on it when the rpm database did not change since
	// (checkStagedPlan).
	if err := e.checkFingerprint(ctx, p, next.Path); err != nil {
		return err
	}
	if err := dropRPMDBEnvironment(next.Path); err != nil {
		return err
	}
	run := execlog.Runner{Log: e.log()}
	if _, err := run.Run(ctx, "create the base snapshot", "btrfs", "subvolume", "snapshot", "-r", next.Path, siblingPath(next.Path, s.Base)); err != nil {
		return err
	}
	s.Step = StageStepTransaction
	if err := st.save(state, e.now()); err != nil {
		return err
	}
	var bl boot.Bootloader
	if bs := s.Boot; bs != nil {
		// The kernel scriptlets write to the real /boot, as in the
		// classic transaction: it is backed up first, and put back
		// when the stage is dropped (dropStage).
		if bl, err = e.bootloader(); err != nil {
			return err
		}
		e.report(progress.Event{Step: "stage", Message: "backing up " + bs.Backups[0].Dir + " (" + bs.Loader + ", default entry " + bs.Previous + ")"})
		if err := e.backupBoot(ctx, st, bs); err != nil {
			return err
		}
	}
	crashAt("stage-" + StageStepTransaction)
	e.report(progress.Event{Step: "stage", Message: fmt.Sprintf("running the transaction (%d packages) in %s while the system runs", len(p.Transaction), next.Path)})
	if _, err := e.transaction(ctx, p, next.Path, s.Boot != nil); err != nil {
		return err
	}
	if bl != nil {
		// The new kernel's entry is there; the old one stays the
		// default until the offline step arms the trial.
		if err := e.ownDefault(ctx, bl, s.Boot.Previous); err != nil {
			return err
		}
	}
	// next stays read-only until the offline step, so the transaction's
	// change is read now, out of the offline window.
	if _, err := run.Run(ctx, "make the staged root read-only", "btrfs", "property", "set", "-ts", next.Path, "ro", "true"); err != nil {
		return err
	}
	stream, err := btrfsdiff.Stream(ctx, run, siblingPath(next.Path, s.Base), next.Path)
	if err != nil {
		return err
	}
	if s.NextGeneration, err = subvolGeneration(ctx, run, next.Path); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(st.txnStreamPath(), stream, 0o600); err != nil {
		return err
	}
	s.Step, s.StagedAt = StageStepStaged, e.now().UTC()
	state.NotStaged = ""
	if err := st.save(state, e.now()); err != nil {
		return err
	}
	e.report(progress.Event{Step: "stage", Message: "staged " + s.Next + ": the offline step carries over what changes until the reboot"})
	return nil
}

// StageBeforeReboot is what `kos-upgrade reboot` and the D-Bus Reboot and
// Arm methods do before arming: on btrfs, stage (Stage) unless skip
// (--no-stage), keeping a finished stage of the same plan; a staging that
// fails leaves the classic offline path. It says whether a finished stage
// of the plan is there now, and why the upgrade is not staged ("" when it
// is, or when it cannot be: not btrfs, or Arm will refuse), which the run
// records as its path_reason (NoStage). The errors are those that make
// Arm refuse too: a stale plan, the state, the lock.
func (e *Engine) StageBeforeReboot(ctx context.Context, skip bool) (staged bool, why string, err error) {
	state, err := e.store().load()
	if err != nil || state.RebootRequired {
		return false, "", nil // Arm refuses and says why
	}
	if owner, err := e.LinkOwner(); err != nil || owner != "" && owner != "kos-upgrade" {
		return false, "", nil // another tool's update is armed: Arm refuses
	}
	if !planReady(state) {
		return false, "", nil // Arm refuses and says why
	}
	if skip {
		why := "not staged: kos-upgrade reboot --no-stage"
		return false, why, e.NoStage(ctx, why)
	}
	if s := state.Stage; s != nil && s.Step == StageStepStaged && s.PlanID == state.PlanID {
		return true, "", nil
	}
	err = e.Stage(ctx)
	switch {
	case err == nil:
		return true, "", nil
	case errors.Is(err, ErrNotStageable):
		return false, "", nil
	case errors.Is(err, ErrBusy), errors.Is(err, ErrNoPlan), Classify(err) == ClassStalePlan:
		return false, "", err
	}
	why = "staging failed: " + err.Error()
	if nerr := e.NoStage(ctx, why); nerr != nil {
		return false, why, errors.Join(err, nerr)
	}
	return false, why, nil
}

// NoStage drops the staged root (if any) of the prepared upgrade and
// records why it has none: its offline step runs the classic transaction
// and says so. Nothing is recorded where staging does not exist; a reason
// already recorded, with no stage, stays.
func (e *Engine) NoStage(ctx context.Context, why string) error {
	st := e.store()
	l, state, err := e.beginWithPlan(ctx, st, "change the upgrade")
	if err != nil {
		return err
	}
	defer l.release()
	if state.Stage == nil && state.NotStaged != "" {
		return nil // the first reason stays (the CLI staged, then the daemon arms)
	}
	if err := e.dropStage(ctx, st, state); err != nil {
		return err
	}
	if state.Backend != snapshot.BackendBtrfs {
		return nil
	}
	state.NotStaged = why
	return st.save(state, e.now())
}

// siblingPath is where the snapshot name is, next to the snapshot at path
// (both under the backend's directory in the top level).
func siblingPath(path, name string) string {
	return filepath.Join(filepath.Dir(path), filepath.Base(name))
}

// dropStage deletes the stage's snapshots (absent ones are fine) and
// forgets it. Safe to call with no stage, twice, or after a crash
// anywhere in Stage or in the carry-over step. The snapshot that is the
// default (a switched run) is never deleted: the backend refuses, and the
// stage is forgotten without it.
func (e *Engine) dropStage(ctx context.Context, st store, state *State) error {
	if state.Stage == nil {
		return nil
	}
	snap, err := e.Snapshotters(ctx, snapshot.BackendBtrfs, e.Root)
	if err != nil {
		return fmt.Errorf("cannot remove the staged root: %w", err)
	}
	defer snap.Close()
	return e.dropStageWith(ctx, st, state, snap)
}

// dropStageWith is dropStage with the snapshotter of a run (a second one
// would unmount the run's work mount when closed).
func (e *Engine) dropStageWith(ctx context.Context, st store, state *State, snap snapshot.Snapshotter) error {
	s := state.Stage
	if s == nil {
		return nil
	}
	if s.Boot != nil {
		// What the staged transaction's kernel scriptlets wrote; the
		// backup goes with the stage.
		if err := e.restoreBoot(ctx, st, s.Boot); err != nil {
			return fmt.Errorf("cannot remove the staged root: cannot put /boot back as it was before staging: %w; the backup is kept in %s", err, st.dir)
		}
		if err := dropBootBackups(st, s.Boot); err != nil {
			e.log().Warn("cannot remove the /boot backup of the stage", "err", err)
		}
		s.Boot = nil
		if err := st.save(state, e.now()); err != nil {
			return err
		}
	}
	def, err := snap.Default(ctx)
	if err != nil {
		return fmt.Errorf("cannot remove the staged root: %w", err)
	}
	for _, n := range []string{s.Live, s.Base, s.Next} {
		if n == "" || n == def.Name || n == state.Snapshot && state.Status == StatusSucceeded {
			continue
		}
		if path, err := snap.Path(ctx, n); err == nil {
			if err := unmountBelow(path); err != nil {
				return err
			}
		}
		if err := snap.Delete(ctx, n); err != nil && !errors.Is(err, snapshot.ErrNotFound) {
			return fmt.Errorf("cannot remove the staged root: %w", err)
		}
	}
	if err := atomicfile.Remove(st.txnStreamPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cannot remove the staged root: %w", err)
	}
	state.Stage = nil
	return st.save(state, e.now())
}

// txnStreamPath is the saved change of the staged transaction.
func (s store) txnStreamPath() string { return filepath.Join(s.dir, "stage-transaction.stream") }

// subvolGeneration returns the btrfs generation of the subvolume at path
// (it moves with every change written to it).
func subvolGeneration(ctx context.Context, run execlog.Runner, path string) (uint64, error) {
	out, err := run.Run(ctx, "read the generation of "+path, "btrfs", "subvolume", "show", path)
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "Generation:"); ok {
			if g, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64); err == nil {
				return g, nil
			}
		}
	}
	return 0, fmt.Errorf("cannot read the generation of %s: no Generation line in %q", path, out)
}

// hasStage: the carry-over step runs (a stage is there).
func (r *run) hasStage() bool { return r.state.Stage != nil }

// stagedForPlan: a finished stage of the run's plan is there.
func (r *run) stagedForPlan() bool {
	s := r.state.Stage
	return s != nil && s.Step == StageStepStaged && r.plan != nil && s.PlanID == r.plan.ID
}

// checkStagedPlan is verify's check of the plan on a staged run (verify
// left it, deferredCheck), in the carry-over once the running system's
// change is known (live, base → live): the installed package set is the
// plan's if the rpm database is as at staging, when Stage checked its
// fingerprint; else it is checked on the running root (a stale plan is
// refused as in verify). The staged files are checked by fallBack.
func (r *run) checkStagedPlan(ctx context.Context, live *btrfsdiff.Diff, liveDir string) error {
	if !r.deferredCheck || carryover.RPMDBAsStaged(live, strings.TrimPrefix(r.e.Root.DBPathRel(), "/"), liveDir) {
		return nil
	}
	r.report(StepVerify, "the rpm database changed since staging: verifying the installed package set")
	if err := r.e.checkFingerprint(ctx, r.plan, r.e.Root.Dir); err != nil {
		return &StepError{Step: StepVerify, Err: err}
	}
	return nil
}

// notCarried: the classic snapshot and transaction steps run.
func (r *run) notCarried() bool { return r.res.Path != PathStaged }

// maxCarryEntries is the policy bound of the carry-over: beyond it the
// classic apply is as fast.
const maxCarryEntries = 200000

// carryOver takes the read-only snapshot live of the root, compares base
// with live and with next, and carries the running system's changes into
// next by rpm's rules; next becomes the run's snapshot. Whatever cannot
// be carried over exactly makes it fall back: the stage is dropped and
// the classic steps run, the reason recorded.
func (r *run) carryOver(ctx context.Context) error {
	s, p := r.state.Stage, r.plan
	r.res.Path = PathClassic
	if s.Step != StageStepStaged {
		return r.fallBack(ctx, "staging did not finish")
	}
	if s.PlanID != p.ID {
		return r.fallBack(ctx, "the root was staged for another plan")
	}
	snap, err := r.snapshotter(ctx)
	if err != nil {
		return err
	}
	next, err := snap.Path(ctx, s.Next)
	if err != nil {
		return r.fallBack(ctx, "the staged root is gone: "+err.Error())
	}
	base, err := snap.Path(ctx, s.Base)
	if err != nil {
		return r.fallBack(ctx, "the base snapshot is gone: "+err.Error())
	}
	s.Live = snapshot.BtrfsName(filepath.Base(s.Next) + "-live")
	if err := r.st.save(r.state, r.e.now()); err != nil {
		return err
	}
	run := execlog.Runner{Log: r.e.log()}
	live := siblingPath(next, s.Live)
	if _, err := run.Run(ctx, "snapshot the running root", "btrfs", "subvolume", "snapshot", "-r", r.e.Root.Dir, live); err != nil {
		return err
	}
	crashAt("mid-" + StepCarryOver)
	ld, err := btrfsdiff.Compute(ctx, run, base, live)
	if err != nil {
		return r.fallBack(ctx, err.Error())
	}
	if err := r.checkStagedPlan(ctx, ld, live); err != nil {
		return err
	}
	td, err := r.txnDiff(ctx, run, base, next)
	if err != nil {
		return r.fallBack(ctx, err.Error())
	}
	cfg, err := configFlags(ctx, run, next, r.e.Root.DBPathRel(), ld, td)
	if err != nil {
		return r.fallBack(ctx, err.Error())
	}
	plan := carryover.Decide(carryover.Input{Live: ld, Txn: td, Config: cfg,
		RPMDB: strings.TrimPrefix(r.e.Root.DBPathRel(), "/"), MaxEntries: maxCarryEntries})
	if plan.Fallback != "" {
		return r.fallBack(ctx, plan.Fallback)
	}
	stats, err := carryover.Apply(plan, base, live, next)
	if errors.Is(err, carryover.ErrInexact) {
		return r.fallBack(ctx, err.Error())
	}
	if err != nil {
		return err
	}
	if err := dropRPMDBEnvironment(next); err != nil {
		return err
	}
	r.res.Path, r.res.Carried, r.res.BytesCloned = PathStaged, stats.Paths, stats.BytesCloned
	r.state.Snapshot, r.res.Snapshot, r.target = s.Next, s.Next, next
	if err := r.st.save(r.state, r.e.now()); err != nil {
		return err
	}
	r.report(StepCarryOver, fmt.Sprintf("carried over %d paths the running system changed since staging (%d bytes cloned)", stats.Paths, stats.BytesCloned))
	return nil
}

// txnDiff is the transaction's change, saved at staging while next is
// at the generation staging left it at; else computed again (next made
// read-only for btrfs send). next is writable afterwards.
func (r *run) txnDiff(ctx context.Context, run execlog.Runner, base, next string) (*btrfsdiff.Diff, error) {
	var d *btrfsdiff.Diff
	var err error
	if stream, rerr := os.ReadFile(r.st.txnStreamPath()); rerr == nil && r.state.Stage.NextGeneration != 0 {
		if gen, gerr := subvolGeneration(ctx, run, next); gerr == nil && gen == r.state.Stage.NextGeneration {
			d, err = btrfsdiff.Parse(stream, base, next)
		}
	}
	if d == nil && err == nil {
		if _, err := run.Run(ctx, "make the staged root read-only", "btrfs", "property", "set", "-ts", next, "ro", "true"); err != nil {
			return nil, err
		}
		d, err = btrfsdiff.Compute(ctx, run, base, next)
	}
	if _, rerr := run.Run(ctx, "make the staged root writable", "btrfs", "property", "set", "-ts", next, "ro", "false"); rerr != nil {
		return nil, errors.Join(err, rerr)
	}
	return d, err
}

// rpm file flags (rpmfiles.h).
const (
	rpmfileConfig    = 1 << 0
	rpmfileNoReplace = 1 << 4
)

// configFlags reads from next's rpmdb the %config flags of the files both
// sides changed (the only ones the rules ask about).
func configFlags(ctx context.Context, run execlog.Runner, next, dbpath string, live, txn *btrfsdiff.Diff) (map[string]carryover.ConfigFlag, error) {
	out := map[string]carryover.ConfigFlag{}
	db := strings.TrimPrefix(dbpath, "/")
	for _, e := range live.Entries {
		if !txn.Touches(e.Path) || e.Path == "" || e.Path == db || strings.HasPrefix(e.Path, db+"/") ||
			e.Times && !e.Removed && !e.Added && !e.Data && !e.Meta {
			// The rules ask only about contents changed on both sides.
			continue
		}
		if _, ok := txn.Lookup(e.Path); !ok {
			continue
		}
		res, err := run.Run(ctx, "read the %config flags of /"+e.Path, "rpm", "--root", next, "--dbpath", dbpath,
			"-qf", "/"+e.Path, "--qf", "[%{FILEFLAGS} %{FILENAMES}\\n]")
		if err != nil {
			continue // owned by no package: no flag
		}
		for _, line := range strings.Split(res, "\n") {
			flags, name, ok := strings.Cut(line, " ")
			if !ok || name != "/"+e.Path {
				continue
			}
			f, err := strconv.ParseUint(flags, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("cannot read the %%config flags of /%s: %q", e.Path, line)
			}
			switch {
			case f&rpmfileNoReplace != 0 && f&rpmfileConfig != 0:
				out[e.Path] = carryover.NoReplace
			case f&rpmfileConfig != 0:
				out[e.Path] = carryover.Config
			}
		}
	}
	return out, nil
}

// fallBack drops the stage and records why the classic steps run; the
// plan is checked as verify checks it when verify left it to the
// carry-over (the classic transaction runs from the staged files).
func (r *run) fallBack(ctx context.Context, why string) error {
	r.res.Path, r.res.PathReason = PathClassic, "the staged root could not be carried over: "+why
	r.report(StepCarryOver, "cannot carry over the staged root ("+why+"): upgrading offline as without a stage")
	if r.adoptedBoot {
		// /boot as before staging, as the classic transaction expects
		// it; the backup stays the run's.
		if err := r.e.restoreBoot(ctx, r.st, r.state.Boot); err != nil {
			return fmt.Errorf("cannot put /boot back as it was before staging: %w", err)
		}
		r.adoptedBoot = false
	}
	if r.deferredCheck {
		r.report(StepVerify, "verifying the staged packages and the installed package set")
		if err := r.e.checkPlan(ctx, r.plan); err != nil {
			return &StepError{Step: StepVerify, Err: err}
		}
		r.deferredCheck = false
	}
	return r.dropStage(ctx)
}

// dropStage is Engine.dropStageWith with the run's snapshotter.
func (r *run) dropStage(ctx context.Context) error {
	if r.state.Stage == nil {
		return nil
	}
	snap, err := r.snapshotter(ctx)
	if err != nil {
		return fmt.Errorf("cannot remove the staged root: %w", err)
	}
	return r.e.dropStageWith(ctx, r.st, r.state, snap)
}

// undoCarryOver drops the stage (next included, unless it is what boots)
// and the run forgets next as its snapshot.
func (r *run) undoCarryOver(ctx context.Context) error {
	if s := r.state.Stage; s != nil && r.state.Snapshot == s.Next {
		r.state.Snapshot = ""
	}
	return r.dropStage(ctx)
}
