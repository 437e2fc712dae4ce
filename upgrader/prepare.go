package upgrader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/iso"
	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/pkg/preflight"
	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
)

// PrepareOptions are the user's choices for prepare.
type PrepareOptions struct {
	// To is the target release version, e.g. "5.9".
	To string
	// Repos replace the system's repository configuration when given.
	Repos []pkgmgr.Repo
	// Snapshot is auto, btrfs, lvm, undo or none.
	Snapshot string
	// SkipSignatures disables GPG verification (explicit user override).
	SkipSignatures bool
	// Answers are answers to the assessment's questions, KEY=VALUE (as
	// --answer); they are laid over /etc/kos-upgrade/answers.conf.
	Answers []string
	// MigrationMap is the migration map file to use instead of the one
	// found for the source distribution (pkg/migrate); migrations only.
	MigrationMap string
	// GPGKeys are public key files of the target distribution, added to
	// the map's: packages are verified with them and apply imports them
	// into the new root (migrations only).
	GPGKeys []string
	// Mode is how apply will run: target (default, "" too) or initramfs
	// (docs/initramfs.md).
	Mode string
	// Images are ISO 9660 images (absolute paths) whose repositories are
	// used together with Repos, read in place (docs/iso.md); To may be
	// empty when they name their release.
	Images []string
}

// Prepare resolves, downloads, verifies and tests the upgrade and writes the
// plan. The running system is not changed (only the state directory). It
// runs preparePhases in order, as ignition runs its stages.
func (e *Engine) Prepare(ctx context.Context, opts PrepareOptions) (*Plan, error) {
	pr := &prepareRun{e: e, opts: opts}
	defer pr.close()
	if err := pr.validate(); err != nil {
		return nil, err
	}
	pr.st = e.store()
	l, state, err := e.begin(ctx, pr.st)
	if err != nil {
		return nil, err
	}
	defer l.release()
	if state.Status == StatusArmed {
		return nil, fmt.Errorf("cannot prepare: an upgrade to %s is armed for the next boot; run kos-upgrade cancel first", state.Target)
	}
	// A new prepare undoes the root staged for the last plan.
	if err := e.dropStage(ctx, pr.st, state); err != nil {
		return nil, fmt.Errorf("cannot prepare: %w", err)
	}
	state.NotStaged = ""
	pr.state = state
	for _, ph := range preparePhases {
		e.log().Debug("prepare phase", "phase", ph.name)
		if err := ph.run(pr, ctx); err != nil {
			return nil, err
		}
	}
	return pr.plan, nil
}

// preparePhases are prepare's named phases, in order; each reads what the
// ones before it filled in. validate runs before the lock is taken.
var preparePhases = []struct {
	name string
	run  func(pr *prepareRun, ctx context.Context) error
}{
	{"migration", (*prepareRun).migration},
	{"backend", (*prepareRun).pickBackend},
	{"assess", (*prepareRun).assess},
	{"resolve", (*prepareRun).resolve},
	{"stage", (*prepareRun).stage},
	{"verify", (*prepareRun).verify},
	{"test", (*prepareRun).test},
	{"journal", (*prepareRun).journalNeed},
	{"baseline", (*prepareRun).baseline},
	{"write plan", (*prepareRun).writePlan},
}

// prepareRun is one prepare: what its phases read and fill in.
type prepareRun struct {
	e     *Engine
	opts  PrepareOptions
	to    Target
	mode  string
	st    store
	state *State
	// source is the running release; mig the migration, if --to names
	// another distribution; repos the repositories to resolve with.
	source  Release
	mig     *migrationSetup
	repos   []pkgmgr.Repo
	backend string
	report  *preflight.Report
	// before is the rpmdb fingerprint the plan is made for.
	before   string
	stageDir string
	res      *pkgmgr.Resolution
	sigCheck string
	// assessed is the transaction the assessment resolved, and
	// assessedFor what it was resolved for: resolve reuses it when the
	// plan's request is the same (resolutionKey).
	assessed    *pkgmgr.Assessment
	assessedFor resolutionKey
	plan        *Plan
	// imgs are the --iso images, served to dnf while prepare runs, and
	// cacheDir dnf's metadata cache, which loses their repositories at
	// the end.
	imgs     *ImageSource
	cacheDir string
}

func (pr *prepareRun) close() {
	if pr.cacheDir != "" {
		pr.imgs.dropCache(pr.cacheDir)
	}
	pr.imgs.Close()
}

const stageRel = "packages"

// validate checks the options and opens the --iso images, which may name
// the release.
func (pr *prepareRun) validate() error {
	imgs, err := OpenImages(pr.opts.Images, targetVersion(pr.opts.To))
	if err != nil {
		return fmt.Errorf("cannot prepare: %w", err)
	}
	pr.imgs = imgs
	imgs.VerifyMetadata(pr.e.Root.Dir)
	if pr.opts.To == "" && imgs != nil {
		if imgs.release == "" {
			return fmt.Errorf("cannot prepare: the images name no release (no .treeinfo or .discinfo): give the target release with --to VERSION")
		}
		pr.opts.To = imgs.release
	}
	opts := pr.opts
	if !ValidVersion(opts.To) {
		return fmt.Errorf("cannot prepare: %q is not a release version (for example --to 5.9)", opts.To)
	}
	to, err := ParseTarget(opts.To)
	if err != nil {
		return fmt.Errorf("cannot prepare: %w", err)
	}
	pr.to, pr.mode = to, opts.Mode
	if pr.mode == "" {
		pr.mode = ModeTarget
	}
	if !ValidMode(pr.mode) {
		return fmt.Errorf("cannot prepare: mode %q: choose target or initramfs", opts.Mode)
	}
	return nil
}

// migration reads the running release and, when --to names another
// distribution than the running one (--to kos-5.9 on CentOS), sets up the
// migration (docs/migration.md).
func (pr *prepareRun) migration(ctx context.Context) error {
	source, err := readRelease(pr.e.Root.Dir)
	if err != nil {
		return err
	}
	pr.source = source
	pr.repos = append(append([]pkgmgr.Repo(nil), pr.opts.Repos...), pr.imgs.Repos()...)
	to, opts := pr.to, pr.opts
	if to.Distro != "" && to.Distro != source.ID {
		mig, err := setupMigration(source, to, opts)
		if err != nil {
			return fmt.Errorf("cannot prepare the migration to %s: %w", to, err)
		}
		pr.mig = mig
		if len(pr.repos) == 0 && mig.m != nil {
			pr.repos = mig.m.PkgRepos()
		}
		supported := mig.preflight.Supported(preflight.Release{ID: source.ID, VersionID: source.VersionID, Name: source.Name})
		if len(pr.repos) == 0 && supported {
			return fmt.Errorf("cannot prepare the migration to %s: the migration map %s names no %s repository; give them with --repo ID=URL", to, mig.m.Origin, to.Distro)
		}
	} else if source.VersionID == to.Version {
		return fmt.Errorf("cannot prepare: the system already runs release %s", to.Version)
	}
	if pr.mig == nil && len(opts.GPGKeys)+len(opts.MigrationMap) > 0 {
		return fmt.Errorf("cannot prepare: --gpgkey and --migration-map are for migrations from another distribution (--to kos-VERSION on CentOS)")
	}
	return nil
}

// pickBackend picks the snapshot backend and checks that apply can use it.
func (pr *prepareRun) pickBackend(ctx context.Context) error {
	e := pr.e
	snap, err := e.Snapshotters(ctx, pr.opts.Snapshot, e.Root)
	if err != nil {
		return err
	}
	pr.backend = snap.Backend()
	thinLVM := pr.backend == snapshot.BackendLVM && !snapshot.UpgradesInPlace(snap)
	snap.Close()
	if thinLVM {
		// The upgraded copy of a thin LV boots only through a boot entry
		// naming it (docs/lvm.md): apply would refuse without one.
		if bl, err := e.bootloader(); err != nil {
			return err
		} else if bl == nil {
			return fmt.Errorf("cannot prepare: the root is a thin LVM volume, whose upgraded copy boots only through a boot entry naming it, but no boot loader kos-upgrade handles (grub2 with BLS entries, systemd-boot) was found under %s; use --snapshot none to upgrade in place without rollback", e.Root.Path("/boot"))
		}
	}
	if err := checkLayout(e.Root, pr.backend); err != nil {
		return err
	}
	if pr.mode == ModeInitramfs {
		// Refused now rather than at arm: the one-time boot of the
		// upgrade initramfs needs a boot loader that can do one.
		if _, _, err := e.oneShotLoader(ctx); err != nil {
			return fmt.Errorf("cannot prepare: %w", err)
		}
	}
	if pr.backend == snapshot.BackendNone {
		e.report(progress.Event{Step: "check", Message: "WARNING: --snapshot none: the upgrade will change the running root in place, with NO snapshot and NO rollback"})
	}
	return nil
}

// assess runs the same assessment as kos-upgrade check and refuses on an
// inhibitor or a migration without the target's keys.
func (pr *prepareRun) assess(ctx context.Context) error {
	var pfm *preflight.Migration
	if pr.mig != nil {
		pfm = pr.mig.preflight
	}
	// dnf's metadata cache of the plan: the assessment loads the
	// repositories' metadata once, the resolve below reads it from there.
	pr.cacheDir = filepath.Join(pr.st.dir, "cache")
	if err := ensurePrivateDir(pr.cacheDir); err != nil {
		return fmt.Errorf("cannot create %s: %w", pr.cacheDir, err)
	}
	// The installed packages the assessment resolves against.
	fp, err := pr.e.PM.Fingerprint(ctx, pr.e.Root.Dir)
	if err != nil {
		return fmt.Errorf("cannot read the rpm database: %w", err)
	}
	report, a, err := pr.e.assess(ctx, pr.opts, pr.to.Version, pr.repos, pr.imgs.Refs(), pfm, pr.state, pr.backend, pr.cacheDir)
	if err != nil {
		return err
	}
	pr.report, pr.assessed = report, a
	pr.assessedFor = pr.resolutionKey(fp)
	if mig := pr.mig; mig != nil && len(mig.keys) == 0 && !pr.opts.SkipSignatures {
		return fmt.Errorf("cannot prepare the migration to %s: no public key of %s to verify its packages with (the migration map's key files %v are not installed); give it with --gpgkey FILE", pr.to, mig.m.Target.Name, mig.m.GPGKeys)
	}
	return nil
}

// resolve records the rpmdb fingerprint, then has dnf resolve the upgrade
// and download its packages into the stage directory.
func (pr *prepareRun) resolve(ctx context.Context) error {
	e, opts := pr.e, pr.opts
	e.report(progress.Event{Step: "fingerprint", Message: "reading the installed package set"})
	before, err := e.PM.Fingerprint(ctx, e.Root.Dir)
	if err != nil {
		return fmt.Errorf("cannot read the rpm database: %w", err)
	}
	pr.before = before
	pr.stageDir = pr.st.stageDir(stageRel)
	if err := ensurePrivateDir(pr.stageDir); err != nil {
		return fmt.Errorf("cannot create %s: %w", pr.stageDir, err)
	}
	res, err := pr.solve(ctx, pkgmgr.ResolveRequest{
		Root: e.Root.Dir, Release: pr.to.Version, Repos: pr.repos, CacheDir: pr.cacheDir, StageDir: pr.stageDir,
		Migration: pr.migrationRequest(),
	})
	if err != nil {
		err = pr.imgs.explain(err)
		if errors.Is(err, pkgmgr.ErrDepsolve) {
			return fmt.Errorf("cannot resolve the upgrade to %s: %w", opts.To, err)
		}
		return fmt.Errorf("cannot prepare the upgrade to %s: %w", opts.To, err)
	}
	if len(res.Items) == 0 {
		return fmt.Errorf("cannot prepare: dnf finds nothing to change for release %s; check the repositories", opts.To)
	}
	pr.res = res
	return nil
}

// resolutionKey is what dnf's resolution depends on. The answers and the
// rest of the assessment only judge the transaction: they are not in it.
type resolutionKey struct {
	Root, Release, Fingerprint string
	Repos                      []pkgmgr.Repo
	Migration                  *pkgmgr.Migration
}

// resolutionKey is the key of this prepare's resolution on the installed
// packages of fingerprint fp.
func (pr *prepareRun) resolutionKey(fp string) resolutionKey {
	return resolutionKey{Root: pr.e.Root.Dir, Release: pr.to.Version, Fingerprint: fp, Repos: pr.repos, Migration: pr.migrationRequest()}
}

func (pr *prepareRun) migrationRequest() *pkgmgr.Migration {
	if pr.mig == nil {
		return nil
	}
	return pr.mig.preflight.Request
}

// solve resolves req. When the assessment resolved the same request on
// the same installed packages (resolutionKey), dnf's solver does not run
// again: the backend downloads the assessment's transaction
// (pkgmgr.Downloader).
func (pr *prepareRun) solve(ctx context.Context, req pkgmgr.ResolveRequest) (*pkgmgr.Resolution, error) {
	e, a := pr.e, pr.assessed
	d, ok := e.PM.(pkgmgr.Downloader)
	if !ok || a == nil || len(a.Problems) > 0 || len(a.Items) == 0 || !reflect.DeepEqual(pr.assessedFor, pr.resolutionKey(pr.before)) {
		return e.PM.Resolve(ctx, req, e.Sink)
	}
	res, err := d.Download(ctx, req, a.Items, e.Sink)
	if err != nil {
		return nil, err
	}
	res.Migration = a.Migration
	return res, nil
}

// stage removes staged files no item of the plan names.
func (pr *prepareRun) stage(ctx context.Context) error {
	return pruneStage(pr.stageDir, pr.res.Items)
}

// verify checks the staged packages' signatures, unless the user said not
// to.
func (pr *prepareRun) verify(ctx context.Context) error {
	e := pr.e
	if pr.opts.SkipSignatures {
		pr.sigCheck = "skipped"
		e.report(progress.Event{Step: "verify", Message: "WARNING: GPG signature verification skipped at the user's request"})
		return nil
	}
	pr.sigCheck = "enforced"
	e.report(progress.Event{Step: "verify", Message: "verifying package signatures"})
	keys := pr.res.GPGKeys
	if pr.mig != nil {
		keys = append(append([]string(nil), keys...), pr.mig.keyFiles...)
	}
	if err := e.PM.Verify(ctx, e.Root.Dir, pr.stageDir, pr.res.Items, keys, e.Sink); err != nil {
		return fmt.Errorf("cannot prepare: %w; remove the offending repository, import its key, or pass --no-gpg-check to accept unverified packages", err)
	}
	return nil
}

// test runs the test transaction and checks the installed packages did
// not change meanwhile.
func (pr *prepareRun) test(ctx context.Context) error {
	e := pr.e
	e.report(progress.Event{Step: "test", Message: "testing the transaction"})
	if err := e.PM.Test(ctx, e.Root.Dir, pr.stageDir, pr.res.Items, e.Sink); err != nil {
		var he *pkgmgr.HelperError
		if errors.As(err, &he) && he.Kind == "test" {
			return fmt.Errorf("cannot prepare: %w", err) // it says "the test transaction failed"
		}
		return fmt.Errorf("cannot prepare: the test transaction failed: %w", err)
	}
	after, err := e.PM.Fingerprint(ctx, e.Root.Dir)
	if err != nil {
		return fmt.Errorf("cannot read the rpm database: %w", err)
	}
	if after != pr.before {
		return fmt.Errorf("cannot prepare: the installed packages changed while preparing; run prepare again")
	}
	return nil
}

// journalNeed checks, for the undo backend, that the undo journal of this
// transaction fits on the root's filesystem (apply checks again before it
// makes it), and says what it needs.
func (pr *prepareRun) journalNeed(ctx context.Context) error {
	e := pr.e
	if pr.backend != snapshot.BackendUndo {
		return nil
	}
	snap, err := e.Snapshotters(ctx, pr.backend, e.Root)
	if err != nil {
		return err
	}
	defer snap.Close()
	u, ok := snap.(snapshot.Journaler)
	if !ok {
		return nil
	}
	files, err := e.PM.Files(ctx, e.Root.Dir, pr.stageDir, pr.res.Items)
	if err != nil {
		return fmt.Errorf("cannot prepare: cannot list the files the transaction changes: %w", err)
	}
	u.SetChanges(files)
	need, err := u.Need(ctx)
	if err != nil {
		return fmt.Errorf("cannot prepare: %w", err)
	}
	msg := fmt.Sprintf("undo journal: %d paths; the filesystem clones files (reflink), the journal shares the blocks of %d MiB of files", len(files), need.Covered>>20)
	if !need.Reflink {
		msg = fmt.Sprintf("undo journal: %d paths; the filesystem does not clone files, the journal copies %d MiB (%d MiB free)", len(files), need.Bytes>>20, need.Free>>20)
	}
	e.report(progress.Event{Step: "check", Message: msg})
	// The plan says which scriptlets may write what the journal does
	// not hold (docs/undo.md).
	scripts, err := e.PM.Scriptlets(ctx, e.Root.Dir, pr.stageDir, pr.res.Items)
	if err != nil {
		return fmt.Errorf("cannot prepare: cannot list the transaction's scriptlets: %w", err)
	}
	if f := preflight.UndoScriptlets(scripts, need.Reflink); f != nil && pr.report != nil {
		pr.report.Add(*f)
		if err := pr.report.Save(e.Root.StateDir()); err != nil {
			e.log().Warn("cannot save the assessment", "error", err)
		}
		e.report(progress.Event{Step: "check", Message: fmt.Sprintf("undo journal: scriptlets of %d package(s) run; what they write outside the journal is not undone (the plan's report lists them)", len(scripts))})
	}
	return nil
}

// writePlan writes the plan, then the state that says it is prepared.
// baseline takes the health baseline (baseline.go) before the plan is
// written: a prepared plan always has one.
func (pr *prepareRun) baseline(ctx context.Context) error {
	return pr.e.saveBaseline(ctx, pr.st, pr.newPlan())
}

func (pr *prepareRun) writePlan(ctx context.Context) error {
	e, opts, st, state := pr.e, pr.opts, pr.st, pr.state
	p := pr.newPlan()
	if err := p.Validate(); err != nil {
		return fmt.Errorf("cannot prepare: dnf's answer makes no valid plan: %w", err)
	}
	if err := savePlan(st.planPath(), p); err != nil {
		return err
	}
	state.Status = StatusPrepared
	state.Step = ""
	state.PlanID = p.ID
	state.Target = opts.To
	state.Backend = pr.backend
	if err := st.save(state, e.now()); err != nil {
		return err
	}
	what := "upgrade"
	if pr.mig != nil {
		what = "migration from " + pr.source.String()
	}
	e.report(progress.Event{Step: "prepare", Message: fmt.Sprintf("%s to %s prepared: %s", what, opts.To, summarize(p))})
	pr.plan = p
	return nil
}

func (pr *prepareRun) newPlan() *Plan {
	now := pr.e.now().UTC()
	source, res := pr.source, pr.res
	p := &Plan{
		Version:          PlanVersion,
		ID:               now.Format("20060102T150405Z") + "-" + pr.opts.To,
		CreatedAt:        now,
		MachineID:        readMachineID(pr.e.Root.Dir),
		Source:           source,
		Target:           Release{ID: source.ID, VersionID: pr.to.Version, Name: source.Name},
		Repos:            pr.opts.Repos,
		Images:           pr.imgs.Refs(),
		Snapshot:         pr.backend,
		Mode:             pr.mode,
		RPMDBFingerprint: pr.before,
		SignatureCheck:   pr.sigCheck,
		StageDir:         stageRel,
		Transaction:      res.Items,
		Report:           pr.report,
	}
	if mig := pr.mig; mig != nil {
		p.Target = Release{ID: mig.m.Target.ID, VersionID: pr.to.Version, Name: mig.m.Target.Name}
		p.Repos = pr.repos
		p.Migration = &Migration{
			From:    source,
			Map:     MapRef{Name: mig.m.Name, Origin: mig.m.Origin, SHA256: mig.m.SHA256},
			Applied: res.Migration,
			Keys:    mig.keys,
		}
		if p.Migration.Applied == nil {
			p.Migration.Applied = []pkgmgr.Swap{}
		}
	}
	for _, it := range res.Items {
		p.DownloadSize += it.Size
		p.InstallSize += it.InstallSize
	}
	return p
}

// assess runs the same assessment as kos-upgrade check and refuses on an
// inhibitor. The report is saved in the state directory (as check does) and
// returned for the plan, with the transaction it resolved (nil when it
// resolved none).
func (e *Engine) assess(ctx context.Context, opts PrepareOptions, release string, repos []pkgmgr.Repo, images []iso.Ref, mig *preflight.Migration, state *State, backend, cacheDir string) (*preflight.Report, *pkgmgr.Assessment, error) {
	answers, err := preflight.LoadAnswers(e.Root, opts.Answers)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot prepare: %w", err)
	}
	owner, err := e.LinkOwner()
	if err != nil {
		return nil, nil, err
	}
	var pm preflight.Assessor // nil: dnf
	if a, ok := e.PM.(preflight.Assessor); ok {
		pm = a
	}
	e.report(progress.Event{Step: "check", Message: "assessing the upgrade"})
	r, facts, err := preflight.Run(ctx, preflight.Options{
		Root: e.Root, To: release, Repos: repos, Images: images, SkipSignatures: opts.SkipSignatures, Migration: mig, CacheDir: cacheDir,
		Snapshot: preflight.SnapshotFacts{Requested: opts.Snapshot, Backend: backend},
		State: preflight.StateFacts{Status: string(state.Status), PlanID: state.PlanID, Target: state.Target,
			Snapshot: state.Snapshot, Previous: state.Previous},
		SystemUpdate: owner, PM: pm, Sink: e.Sink, Log: e.log(),
	}, answers)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot prepare: cannot assess the upgrade: %w", err)
	}
	if err := r.Save(e.Root.StateDir()); err != nil {
		e.log().Warn("cannot save the assessment", "error", err)
	}
	if err := r.Err(); err != nil {
		return nil, nil, fmt.Errorf("cannot prepare: %w\n(%s shows the whole report)", err, e.checkCommand(opts))
	}
	return r, facts.Assessment, nil
}

// checkCommand is the check command line that assesses what prepare with
// opts did: the same root, target, repositories, snapshot backend and
// answers given on the command line.
func (e *Engine) checkCommand(opts PrepareOptions) string {
	args := []string{"kos-upgrade"}
	if e.Root.Dir != "/" {
		args = append(args, "--root", shellQuote(e.Root.Dir))
	}
	args = append(args, "check", "--to", shellQuote(opts.To))
	for _, r := range opts.Repos {
		args = append(args, "--repo", shellQuote(r.ID+"="+r.BaseURL))
	}
	if opts.Snapshot != "" && opts.Snapshot != snapshot.BackendAuto {
		args = append(args, "--snapshot", shellQuote(opts.Snapshot))
	}
	if opts.SkipSignatures {
		args = append(args, "--no-gpg-check")
	}
	for _, a := range opts.Answers {
		args = append(args, "--answer", shellQuote(a))
	}
	return strings.Join(args, " ")
}

// shellQuote quotes s for a shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.,/:=+@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// pruneStage removes staged files no item of the plan names (leftovers of
// earlier prepares).
func pruneStage(dir string, items []pkgmgr.Item) error {
	keep := map[string]bool{}
	for _, it := range items {
		if it.File != "" {
			keep[it.File] = true
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("cannot list staged packages: %w", err)
	}
	for _, e := range ents {
		if !keep[e.Name()] {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return fmt.Errorf("cannot remove stale staged file: %w", err)
			}
		}
	}
	return nil
}

func summarize(p *Plan) string {
	c := p.Counts()
	var parts []string
	for _, a := range []string{pkgmgr.ActionUpgrade, pkgmgr.ActionInstall, pkgmgr.ActionDowngrade, pkgmgr.ActionReinstall, pkgmgr.ActionObsoleted, pkgmgr.ActionRemove} {
		if c[a] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", c[a], a))
		}
	}
	return fmt.Sprintf("%s; download %s, installed size %s; snapshot %s", strings.Join(parts, ", "),
		preflight.Size(p.DownloadSize), preflight.Size(p.InstallSize), p.Snapshot)
}
