package upgrader_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/health"
	"github.com/keyarchos/kos-upgrade/pkg/preflight"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// undoDigestSkip are the paths the undo digests leave out: the state
// directory (it records the run and keeps the journal, by design) and the
// logs (dnf.rpm.log, dnf.log: the record of what happened).
var undoDigestSkip = []string{"var/lib/kos-upgrade", "var/log"}

// undoSystem is a 5.8 system on XFS with reflinks on a loop device (the
// EL8 installer's root), upgraded with the undo backend.
type undoSystem struct {
	system
}

func newUndoSystem(t *testing.T) *undoSystem {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping real-component test in -short mode")
	}
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "rpm", "rpmkeys", "/usr/bin/python3")
	set := fixture.MustBuild(t)
	root := testenv.NewLoopFS(t, 1024, "mkfs.xfs", "-q", "-f", "-m", "reflink=1")
	if err := fixture.InstallBase(context.Background(), set, root); err != nil {
		t.Fatal(err)
	}
	s := &undoSystem{system{Set: set, Root: root, Sink: &recordingSink{}}}
	s.Engin = s.engine(t)
	return s
}

func (s *undoSystem) digest(t *testing.T) map[string]string {
	return testenv.TreeDigest(t, s.Root, undoDigestSkip...)
}

func (s *undoSystem) requireUndone(t *testing.T, before map[string]string, oldPkgs []string) {
	t.Helper()
	if d := testenv.DiffDigests(before, s.digest(t)); d != "" {
		t.Errorf("the root differs from before the upgrade:\n%s", d)
	}
	if got := rpmQA(t, s.Root); !reflect.DeepEqual(got, oldPkgs) {
		t.Errorf("rpm -qa after undo: %v, want %v", got, oldPkgs)
	}
	if _, err := os.Lstat(filepath.Join(s.Root, "system-update")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("/system-update left behind: %v", err)
	}
}

func (s *undoSystem) journals(t *testing.T) []string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(s.Root, snapshot.UndoDirRel, "*"))
	return m
}

// Success equals dnf distro-sync; the journal's size is reported; rollback
// gives the old root back, digest for digest.
func TestUndoSuccessAndRollback(t *testing.T) {
	s := newUndoSystem(t)
	ctx := context.Background()
	oldPkgs := rpmQA(t, s.Root)
	before := s.digest(t)
	p := s.prepareAndArm(t, upgrader.PrepareOptions{Snapshot: snapshot.BackendUndo})
	if p.Snapshot != snapshot.BackendUndo {
		t.Fatalf("plan snapshot %q", p.Snapshot)
	}
	// The plan names the scriptlets whose writes elsewhere are not
	// undone: app's %post (it writes /var/lib/app), kos-release's.
	if f := p.Report.Finding(preflight.KeyUndoScriptlets); f == nil || !strings.Contains(strings.Join(f.Details, "\n"), "app-0:2.0-1.noarch: %post") {
		t.Errorf("the plan's report does not list app's %%post: %+v", f)
	} else {
		t.Logf("%s: %s\n%s", f.Key, f.Summary, strings.Join(f.Details, "\n"))
	}
	res, err := s.Engin.Apply(ctx)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if !res.Result.InPlace || res.Result.Snapshot == "" {
		t.Errorf("result: %+v", res.Result)
	}
	for _, ev := range s.Sink.events {
		if strings.HasPrefix(ev.Message, "undo journal") {
			t.Logf("%s", ev.Message)
		}
	}
	u, err := snapshot.NewUndo(s.Root)
	if err != nil {
		t.Fatal(err)
	}
	js, err := u.Stats(res.Result.Snapshot)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("undo journal: %d files, %d bytes covered, reflinked=%v, %d bytes of blocks allocated (shared with the old files' extents), %d bytes of the filesystem's free space used",
		js.Files, js.Covered, js.Reflinked, js.DiskUsage, js.SpaceUsed)
	if !js.Reflinked || js.Files == 0 {
		t.Errorf("journal stats: %+v", js)
	}
	if _, err := os.Lstat(filepath.Join(s.Root, "system-update")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("/system-update left after a success: %v", err)
	}
	got := rpmQA(t, s.Root)
	if want := dnfDistroSyncDir(t, s.Set, before, oldPkgs); !reflect.DeepEqual(got, want) {
		t.Errorf("upgraded root: %v\ndnf distro-sync: %v", got, want)
	}

	// Rollback: the old root, byte for byte, and the journal consumed.
	if _, err := s.Engin.Rollback(ctx); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	s.requireUndone(t, before, oldPkgs)
	st, err := s.Engin.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.State.Status != upgrader.StatusRolledBack || st.State.RebootRequired || st.State.Previous != "" {
		t.Errorf("state after rollback: %+v", st.State)
	}
	if j := s.journals(t); len(j) > 0 {
		t.Errorf("journals left after rollback: %v", j)
	}
}

// dnfDistroSyncDir runs the real dnf CLI's distro-sync on a fresh 5.8
// system in a temporary directory and returns its package list.
func dnfDistroSyncDir(t *testing.T, set *fixture.Set, _ map[string]string, _ []string) []string {
	t.Helper()
	cp := t.TempDir()
	if err := fixture.InstallBase(context.Background(), set, cp); err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	os.WriteFile(filepath.Join(home, ".rpmmacros"), []byte("%_dbpath /var/lib/rpm\n"), 0o644)
	cmd := exec.Command("dnf", "--installroot", cp, "--releasever", "5.9", "--setopt=reposdir="+cp+"/etc/yum.repos.d",
		"--setopt=cachedir="+t.TempDir(), "--setopt=install_weak_deps=False", "-y", "-q", "--allowerasing", "distro-sync")
	cmd.Env = append(os.Environ(), "HOME="+home)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("dnf distro-sync: %v\n%s", err, out)
	}
	return rpmQA(t, cp)
}

// A %pre that fails in the middle of the transaction: the journal puts the
// root back, digest for digest, and rpm answers with the old set.
func TestUndoFailingPre(t *testing.T) {
	s := newUndoSystem(t)
	ctx := context.Background()
	oldPkgs := rpmQA(t, s.Root)
	before := s.digest(t)
	s.prepareAndArm(t, upgrader.PrepareOptions{Snapshot: snapshot.BackendUndo, Repos: s.repos(fixture.Repo59, fixture.Repo59FailPre)})
	_, err := s.Engin.Apply(ctx)
	if err == nil {
		t.Fatal("apply succeeded with a failing pre-install scriptlet")
	}
	if !strings.Contains(err.Error(), "failpre") || !strings.Contains(err.Error(), "put back as it was") {
		t.Errorf("error: %v", err)
	}
	s.requireUndone(t, before, oldPkgs)
	st, err := s.Engin.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lr := st.State.LastResult
	if st.State.Status != upgrader.StatusFailed || st.State.RebootRequired || lr == nil || lr.Step != upgrader.StepTransaction {
		t.Errorf("state: %+v, last result %+v", st.State, lr)
	}
	if j := s.journals(t); len(j) > 0 {
		t.Errorf("journals left: %v", j)
	}
	// A new run can be armed at once: nothing waits for a reboot.
	s.prepareAndArm(t, upgrader.PrepareOptions{Snapshot: snapshot.BackendUndo})
}

// kill -9 at every crash point of the step table, then what the next boot
// does (the offline unit runs apply when /system-update is there, else the
// next command settles): the root is either undone, digest for digest, or
// completely upgraded.
func TestUndoCrashAtEveryStep(t *testing.T) {
	s := newUndoSystem(t)
	oldPkgs := rpmQA(t, s.Root)
	before := s.digest(t)
	for _, cp := range upgrader.CrashPoints() {
		t.Run(cp.Name, func(t *testing.T) {
			if st, err := s.Engin.Status(context.Background()); err == nil && st.State.Status == upgrader.StatusSucceeded {
				if out, err := s.kosUpgrade(t, nil, "rollback", "--no-reboot"); err != nil {
					t.Fatalf("rollback: %v\n%s", err, out)
				}
			}
			if d := testenv.DiffDigests(before, s.digest(t)); d != "" {
				t.Fatalf("the root differs at the start:\n%s", d)
			}
			s.prepareAndArm(t, upgrader.PrepareOptions{Snapshot: snapshot.BackendUndo})
			out, err := s.kosUpgrade(t, []string{"KOS_UPGRADE_TEST_CRASH_AT=" + cp.Name}, "apply")
			if err == nil {
				// Not on this run's path: the boot steps run only with
				// a boot loader (crash_test.go has them).
				t.Logf("%s is not on the path of a run without a boot loader: it completed", cp.Name)
				if got := rpmQA(t, s.Root); !strings.Contains(strings.Join(got, " "), "kos-release-5.9") {
					t.Errorf("the run completed, but the root is not upgraded: %v", got)
				}
				return
			}
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("apply was not killed at %s: %v\n%s", cp.Name, err, out)
			}
			// The next boot.
			_, linkErr := os.Lstat(filepath.Join(s.Root, "system-update"))
			if (cp.Name == upgrader.StepTransaction || cp.Name == "mid-transaction") && linkErr != nil {
				t.Errorf("no /system-update after a crash in the transaction: the next boot would not undo it before anything else runs (%v)", linkErr)
			}
			// To the journals' directory, which the unit's ExecStopPost=
			// keeps for the next boot (a link to the state directory it
			// removes).
			if l, err := os.Readlink(filepath.Join(s.Root, "system-update")); cp.Name == "mid-transaction" && l != snapshot.UndoDirRel {
				t.Errorf("/system-update after a crash in the transaction points at %q (%v), want %s", l, err, snapshot.UndoDirRel)
			}
			if linkErr == nil {
				out, err = s.kosUpgrade(t, nil, "apply")
				if err == nil || !strings.Contains(out, "interrupted") {
					t.Errorf("apply at the next boot: %v\n%s", err, out)
				}
			} else if out, err := s.kosUpgrade(t, nil, "status"); err != nil {
				t.Fatalf("status: %v\n%s", err, out)
			}
			st := s.statusJSON(t)
			if cp.Complete || st.State.Status == upgrader.StatusSucceeded {
				if st.State.Status != upgrader.StatusSucceeded {
					t.Fatalf("status after a crash at %s: %+v", cp.Name, st.State)
				}
				if got := rpmQA(t, s.Root); !strings.Contains(strings.Join(got, " "), "kos-release-5.9") {
					t.Errorf("a complete run left a root that is not upgraded: %v", got)
				}
				return
			}
			// Settle for good (a command takes the lock), then check.
			if out, err := s.kosUpgrade(t, nil, "clean"); err != nil {
				t.Fatalf("clean: %v\n%s", err, out)
			}
			st = s.statusJSON(t)
			if st.State.Status != upgrader.StatusFailed || st.State.LastResult == nil || !strings.Contains(st.State.LastResult.Error, "interrupted") {
				t.Errorf("status after a crash at %s: %+v", cp.Name, st.State)
			}
			s.requireUndone(t, before, oldPkgs)
			if j := s.journals(t); len(j) > 0 {
				t.Errorf("journals left: %v", j)
			}
		})
	}
}

// The first boot after an in-place upgrade with an undo journal: green
// blesses it and clean then drops the journal; red falls back through the
// journal, digest for digest.
func TestUndoHealth(t *testing.T) {
	green := func(context.Context, *health.Baseline, error) *health.Verdict {
		return &health.Verdict{Version: 1, Green: true}
	}
	for _, tc := range []struct {
		name    string
		checks  []upgrader.HealthCheck
		blessed bool
	}{
		{name: "healthy", blessed: true},
		{name: "unhealthy", checks: []upgrader.HealthCheck{{Name: "app", Run: func(context.Context) error { return errors.New("app does not answer") }}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newUndoSystem(t)
			ctx := context.Background()
			oldPkgs := rpmQA(t, s.Root)
			before := s.digest(t)
			s.prepareAndArm(t, upgrader.PrepareOptions{Snapshot: snapshot.BackendUndo})
			res, err := s.Engin.Apply(ctx)
			if err != nil {
				t.Fatalf("apply: %v", err)
			}
			name := res.Result.Snapshot
			hr, err := s.Engin.Health(ctx, upgrader.HealthOptions{Judge: green, Checks: tc.checks})
			if err != nil {
				t.Fatalf("health: %v", err)
			}
			if !tc.blessed {
				if hr.Action != upgrader.HealthFellBack || !hr.Reboot || !strings.Contains(hr.Reason, "app does not answer") {
					t.Fatalf("health: %+v", hr)
				}
				s.requireUndone(t, before, oldPkgs)
				st, err := s.Engin.Status(ctx)
				if err != nil || st.State.Status != upgrader.StatusRolledBack || st.State.RebootRequired {
					t.Errorf("state after the fallback: %+v, %v", st, err)
				}
				return
			}
			if hr.Action != upgrader.HealthBlessed {
				t.Fatalf("health: %+v", hr)
			}
			// Again: nothing more to judge.
			if hr, err := s.Engin.Health(ctx, upgrader.HealthOptions{Judge: green}); err != nil || hr.Action != upgrader.HealthNone {
				t.Errorf("health again: %+v, %v", hr, err)
			}
			if j := s.journals(t); len(j) != 1 {
				t.Fatalf("journals before clean: %v", j)
			}
			removed, err := s.Engin.Clean(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if j := s.journals(t); len(j) > 0 {
				t.Errorf("clean after the blessing left %v (removed %v)", j, removed)
			}
			if !strings.Contains(strings.Join(removed, ","), "undo journal "+name) {
				t.Errorf("clean removed %v", removed)
			}
			if err := s.Engin.RollbackCheck(ctx); err == nil {
				t.Error("rollback still offered without a journal")
			}
		})
	}
}

// clean keeps the journal of a successful run until its first boot was
// blessed: it is the rollback point; clean --rollback-point drops it.
func TestUndoCleanKeepsJournal(t *testing.T) {
	s := newUndoSystem(t)
	ctx := context.Background()
	s.prepareAndArm(t, upgrader.PrepareOptions{Snapshot: snapshot.BackendUndo})
	if _, err := s.Engin.Apply(ctx); err != nil {
		t.Fatalf("apply: %v", err)
	}
	if _, err := s.Engin.Clean(ctx); err != nil {
		t.Fatal(err)
	}
	if j := s.journals(t); len(j) != 1 {
		t.Fatalf("clean before the first boot's verdict removed the journal: %v", j)
	}
	if err := s.Engin.RollbackCheck(ctx); err != nil {
		t.Errorf("rollback not offered: %v", err)
	}
	// Unless the user asks: clean --rollback-point, through the binary.
	out, err := s.kosUpgrade(t, nil, "clean", "--rollback-point")
	if err != nil || !strings.Contains(out, "removed undo journal ") {
		t.Fatalf("clean --rollback-point: %v\n%s", err, out)
	}
	if j := s.journals(t); len(j) != 0 {
		t.Errorf("clean --rollback-point left the journal: %v", j)
	}
	if err := s.Engin.RollbackCheck(ctx); err == nil {
		t.Error("rollback still offered without a journal")
	}
	if out, err := s.kosUpgrade(t, nil, "clean", "--rollback-point"); err != nil || !strings.Contains(out, "Nothing to clean") {
		t.Errorf("clean --rollback-point again: %v\n%s", err, out)
	}
}

// check names the backend, what the journal needs and what it cannot
// undo; on a filesystem without reflinks whose free space cannot hold the
// copies, it inhibits.
func TestUndoCheck(t *testing.T) {
	for _, tc := range []struct {
		name     string
		mkfs     []string
		fill     int64 // bytes left free after filling
		severity preflight.Severity
		detail   string
	}{
		{name: "xfs-reflink", mkfs: []string{"mkfs.xfs", "-q", "-f", "-m", "reflink=1"}, severity: preflight.Info, detail: "clones files (reflink)"},
		{name: "ext4-full", mkfs: []string{"mkfs.ext4", "-q", "-F"}, fill: 100 << 20, severity: preflight.High, detail: "does not clone files"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if testing.Short() {
				t.Skip("skipping real-component test in -short mode")
			}
			testenv.RequireRoot(t)
			set := fixture.MustBuild(t)
			root := testenv.NewLoopFS(t, 600, tc.mkfs...)
			if err := fixture.InstallBase(context.Background(), set, root); err != nil {
				t.Fatal(err)
			}
			if tc.fill > 0 {
				var sfs syscall.Statfs_t
				if err := syscall.Statfs(root, &sfs); err != nil {
					t.Fatal(err)
				}
				f, err := os.Create(filepath.Join(root, "filler"))
				if err != nil {
					t.Fatal(err)
				}
				if err := syscall.Fallocate(int(f.Fd()), 0, 0, int64(sfs.Bavail)*sfs.Bsize-tc.fill); err != nil {
					t.Fatal(err)
				}
				f.Close()
			}
			// stdout only: progress goes to stderr.
			out, _ := exec.Command(binary(t), "--root", root, "--json", "check", "--to", "5.9").Output()
			var rep preflight.Report
			if err := json.Unmarshal(out, &rep); err != nil {
				t.Fatalf("check --json: %v\n%s", err, out)
			}
			var undo, limits *preflight.Finding
			for i, f := range rep.Findings {
				switch f.Key {
				case preflight.KeySnapshotUndo:
					undo = &rep.Findings[i]
				case preflight.KeyUndoLimits:
					limits = &rep.Findings[i]
				}
			}
			if undo == nil || limits == nil {
				t.Fatalf("check does not say how the undo journal protects the upgrade:\n%s", out)
			}
			if undo.Severity != tc.severity || !strings.Contains(strings.Join(append(undo.Details, undo.Summary), " "), tc.detail) {
				t.Errorf("snapshot.undo: %+v", undo)
			}
			if tc.severity == preflight.High && !rep.Inhibited {
				t.Errorf("copies that do not fit did not inhibit: %+v", undo)
			}
			t.Logf("%s: %s %v", undo.Title, undo.Summary, undo.Details)
		})
	}
}
