package upgrader_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

func TestPrepareChangesNothing(t *testing.T) {
	s := newSystem(t)
	ctx := context.Background()
	beforePkgs := rpmQA(t, s.Root)
	before := treeDigest(t, s.Root, "var/lib/kos-upgrade")
	p, err := s.Engin.Prepare(ctx, upgrader.PrepareOptions{To: "5.9", Snapshot: "auto"})
	if err != nil {
		t.Fatalf("prepare: %v", err)
	}
	if p.Snapshot != "btrfs" {
		t.Errorf("auto picked %q, want btrfs", p.Snapshot)
	}
	if d := diffDigest(before, treeDigest(t, s.Root, "var/lib/kos-upgrade")); len(d) > 0 {
		t.Errorf("prepare changed the root:\n%s", strings.Join(d, "\n"))
	}
	if after := rpmQA(t, s.Root); !reflect.DeepEqual(beforePkgs, after) {
		t.Errorf("prepare changed the installed packages: %v -> %v", beforePkgs, after)
	}
	if got := s.defaultSubvol(t); got != "@" {
		t.Errorf("default subvolume is %q after prepare", got)
	}
	t.Logf("plan: %+v", p.Counts())
}

// prepareAndArm prepares the upgrade to 5.9 with opts and arms it.
func (s *system) prepareAndArm(t *testing.T, opts upgrader.PrepareOptions) *upgrader.Plan {
	t.Helper()
	ctx := context.Background()
	if opts.To == "" {
		opts.To = "5.9"
	}
	if opts.Snapshot == "" {
		opts.Snapshot = "auto"
	}
	p, err := s.Engin.Prepare(ctx, opts)
	if err != nil {
		t.Fatalf("prepare: %v", err)
	}
	if _, err := s.Engin.Arm(ctx); err != nil {
		t.Fatalf("arm: %v", err)
	}
	return p
}

func (s *system) repos(names ...string) []pkgmgr.Repo {
	var out []pkgmgr.Repo
	for _, n := range names {
		out = append(out, pkgmgr.Repo{ID: "fixture-" + n, BaseURL: "file://" + s.Set.Repos[n]})
	}
	return out
}

func TestApplyMatchesDistroSync(t *testing.T) {
	s := newSystem(t)
	ctx := context.Background()
	oldPkgs := rpmQA(t, s.Root)
	oldTree := treeDigest(t, s.Root, "var/lib/kos-upgrade")
	s.prepareAndArm(t, upgrader.PrepareOptions{})
	res, err := s.Engin.Apply(ctx)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if !res.Ran || !res.Result.Success {
		t.Fatalf("apply did not run or failed: %+v", res)
	}
	if _, err := os.Lstat(filepath.Join(s.Root, "system-update")); !os.IsNotExist(err) {
		t.Errorf("/system-update still exists after apply: %v", err)
	}
	def := s.defaultSubvol(t)
	if def != res.Result.Snapshot || !strings.HasPrefix(def, "kos-upgrade/") {
		t.Fatalf("default subvolume is %q, want the new snapshot %q", def, res.Result.Snapshot)
	}
	// The old root is untouched.
	if got := rpmQA(t, s.Root); !reflect.DeepEqual(got, oldPkgs) {
		t.Errorf("old root's packages changed: %v", got)
	}
	if d := diffDigest(oldTree, treeDigest(t, s.Root, "var/lib/kos-upgrade")); len(d) > 0 {
		t.Errorf("apply changed the old root:\n%s", strings.Join(d, "\n"))
	}
	// The new root has what dnf distro-sync gives on a copy.
	newRoot := filepath.Join(s.FS.Top, def)
	want := dnfDistroSync(t, s)
	if got := rpmQA(t, newRoot); !reflect.DeepEqual(got, want) {
		t.Errorf("new root packages differ from dnf distro-sync:\n got %v\nwant %v", got, want)
	}
	// Scriptlets ran in the new root.
	post, _ := os.ReadFile(filepath.Join(newRoot, "var/lib/app/post-ran"))
	if !strings.Contains(string(post), "app 2.0") {
		t.Errorf("app 2.0 %%post did not run in the new root: %q", post)
	}
	if rel, _ := os.ReadFile(filepath.Join(newRoot, "etc/os-release")); !strings.Contains(string(rel), `VERSION_ID="5.9"`) {
		t.Errorf("new root os-release: %s", rel)
	}
	// Both roots know the result.
	for _, r := range []string{s.Root, newRoot} {
		e := s.engine(t)
		e.Root.Dir = r
		st, err := e.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.State.Status != upgrader.StatusSucceeded || st.State.LastResult == nil || !st.State.LastResult.Success {
			t.Errorf("status in %s: %+v", r, st.State)
		}
	}
	// Per-package progress came back.
	var tx int
	for _, e := range s.Sink.events {
		if e.Step == upgrader.StepTransaction && e.Package != "" && e.Total > 0 {
			tx++
		}
	}
	if tx < 7 {
		t.Errorf("only %d per-package transaction events", tx)
	}
}

// dnfDistroSync runs the real dnf CLI's distro-sync on a copy of the 5.8
// system (a snapshot of @) and returns its package list.
func dnfDistroSync(t *testing.T, s *system) []string {
	t.Helper()
	cp := filepath.Join(s.FS.Top, "dnf-copy")
	testenv.Run(t, "btrfs", "subvolume", "snapshot", filepath.Join(s.FS.Top, "@"), cp)
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

func TestFailingPreLeavesOldSystem(t *testing.T) {
	s := newSystem(t)
	ctx := context.Background()
	oldPkgs := rpmQA(t, s.Root)
	s.prepareAndArm(t, upgrader.PrepareOptions{Repos: s.repos("5.9", "5.9-failpre")})
	_, err := s.Engin.Apply(ctx)
	if err == nil {
		t.Fatal("apply succeeded with a failing pre-install scriptlet")
	}
	if !strings.Contains(err.Error(), "failpre") {
		t.Errorf("error does not name the failing package: %v", err)
	}
	if def := s.defaultSubvol(t); def != "@" {
		t.Errorf("default subvolume is %q after a failed apply", def)
	}
	if left := s.subvols(t); len(left) > 0 {
		t.Errorf("half-made snapshots left: %v", left)
	}
	if got := rpmQA(t, s.Root); !reflect.DeepEqual(got, oldPkgs) {
		t.Errorf("old root changed: %v", got)
	}
	st, err := s.Engin.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lr := st.State.LastResult
	if st.State.Status != upgrader.StatusFailed || lr == nil || lr.Success || lr.Step != upgrader.StepTransaction || !strings.Contains(lr.Error, "failpre") {
		t.Errorf("status does not say why: %+v %+v", st.State, lr)
	}
	h, _ := s.Engin.History(ctx)
	if len(h) != 1 || h[0].Success || !strings.Contains(h[0].Error, "failpre") {
		t.Errorf("history: %+v", h)
	}
	out, _ := s.kosUpgrade(t, nil, "status")
	if !strings.Contains(out, "failed at transaction") || !strings.Contains(out, "failpre") {
		t.Errorf("status output does not say why:\n%s", out)
	}
}

func TestStalePlanRefused(t *testing.T) {
	s := newSystem(t)
	ctx := context.Background()
	s.prepareAndArm(t, upgrader.PrepareOptions{})
	// A package is removed after prepare.
	testenv.Run(t, "rpm", "--root", s.Root, "--dbpath", "/var/lib/rpm", "-e", "--nodeps", "keepme")
	before := rpmQA(t, s.Root)
	_, err := s.Engin.Apply(ctx)
	if !errors.Is(err, upgrader.ErrStalePlan) {
		t.Fatalf("apply of a stale plan: %v, want ErrStalePlan", err)
	}
	if !strings.Contains(err.Error(), "prepare again") {
		t.Errorf("error does not say what to do: %v", err)
	}
	if def := s.defaultSubvol(t); def != "@" {
		t.Errorf("default subvolume changed: %q", def)
	}
	if left := s.subvols(t); len(left) > 0 {
		t.Errorf("snapshot made for a stale plan: %v", left)
	}
	if got := rpmQA(t, s.Root); !reflect.DeepEqual(got, before) {
		t.Errorf("root changed: %v", got)
	}
	// Arming again is refused the same way.
	if _, err := s.Engin.Arm(ctx); !errors.Is(err, upgrader.ErrStalePlan) {
		t.Errorf("arm of a stale plan: %v", err)
	}
}

func TestChangedStagedPackageRefused(t *testing.T) {
	s := newSystem(t)
	ctx := context.Background()
	p := s.prepareAndArm(t, upgrader.PrepareOptions{})
	var victim string
	for _, it := range p.Transaction {
		if it.File != "" {
			victim = it.File
			break
		}
	}
	f, err := os.OpenFile(filepath.Join(s.Root, "var/lib/kos-upgrade/packages", victim), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("tampered"))
	f.Close()
	_, err = s.Engin.Apply(ctx)
	if !errors.Is(err, upgrader.ErrStagedChanged) || !strings.Contains(err.Error(), victim) {
		t.Fatalf("apply with a changed staged package: %v, want ErrStagedChanged naming %s", err, victim)
	}
	if left := s.subvols(t); len(left) > 0 {
		t.Errorf("a snapshot was made before the check: %v", left)
	}
	if def := s.defaultSubvol(t); def != "@" {
		t.Errorf("default subvolume changed: %q", def)
	}
}

func TestSignatureRefusals(t *testing.T) {
	s := newSystem(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		repo  string
		nevra string
	}{
		{name: "unsigned", repo: "5.9-unsigned", nevra: "libbar-0:1.1-1.noarch"},
		{name: "untrusted key", repo: "5.9-badsig", nevra: "libbar-0:1.2-1.noarch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Engin.Prepare(ctx, upgrader.PrepareOptions{To: "5.9", Snapshot: "auto", Repos: s.repos("5.9", tc.repo)})
			var ve *pkgmgr.VerifyError
			if !errors.As(err, &ve) {
				t.Fatalf("prepare: %v, want a VerifyError", err)
			}
			if len(ve.Failures) != 1 || ve.Failures[0].NEVRA != tc.nevra {
				t.Errorf("failures %+v, want only %s", ve.Failures, tc.nevra)
			}
			if !strings.Contains(err.Error(), "--no-gpg-check") {
				t.Errorf("error does not name the override: %v", err)
			}
			st, _ := s.Engin.Status(ctx)
			if st.State.Status == upgrader.StatusPrepared {
				t.Errorf("a refused prepare left a plan")
			}
		})
	}
	t.Run("override", func(t *testing.T) {
		p, err := s.Engin.Prepare(ctx, upgrader.PrepareOptions{To: "5.9", Snapshot: "auto", Repos: s.repos("5.9", "5.9-unsigned"), SkipSignatures: true})
		if err != nil {
			t.Fatalf("prepare --no-gpg-check: %v", err)
		}
		if p.SignatureCheck != "skipped" {
			t.Errorf("plan does not record the override: %q", p.SignatureCheck)
		}
	})
}

func TestRollbackAndClean(t *testing.T) {
	s := newSystem(t)
	ctx := context.Background()
	s.prepareAndArm(t, upgrader.PrepareOptions{})
	res, err := s.Engin.Apply(ctx)
	if err != nil {
		t.Fatal(err)
	}
	newName := res.Result.Snapshot
	// Roll back from the upgraded root, as a user does after the reboot.
	newRoot := filepath.Join(t.TempDir(), "new")
	s.FS.MountSubvol(t, newName, newRoot)
	out, err := exec.Command(binary(t), "--root", newRoot, "rollback", "--no-reboot").CombinedOutput()
	if err != nil {
		t.Fatalf("rollback from the new root: %v\n%s", err, out)
	}
	if def := s.defaultSubvol(t); def != "@" {
		t.Fatalf("default after rollback is %q, want @", def)
	}
	// Both roots record it; the old one is what boots next.
	st, _ := s.Engin.Status(ctx)
	if st.State.Status != upgrader.StatusRolledBack {
		t.Errorf("state in the old root after rollback: %s", st.State.Status)
	}
	out, _ = exec.Command(binary(t), "--root", newRoot, "status").CombinedOutput()
	if !strings.Contains(string(out), "rolled-back") {
		t.Errorf("status in the new root after rollback:\n%s", out)
	}
	testenv.UnmountAll(newRoot)
	h, _ := s.Engin.History(ctx)
	if len(h) != 2 || h[1].Kind != "rollback" {
		t.Errorf("history after rollback: %+v", h)
	}
	// A second upgrade, then clean keeps the current, the default and the
	// last good one, and removes the first upgrade's snapshot.
	s.prepareAndArm(t, upgrader.PrepareOptions{})
	res2, err := s.Engin.Apply(ctx)
	if err != nil {
		t.Fatal(err)
	}
	removed, err := s.Engin.Clean(ctx)
	if err != nil {
		t.Fatal(err)
	}
	left := s.subvols(t)
	if !reflect.DeepEqual(left, []string{res2.Result.Snapshot}) {
		t.Errorf("after clean: %v (removed %v), want only %s (and @); first upgrade was %s", left, removed, res2.Result.Snapshot, newName)
	}
	if _, err := os.Stat(filepath.Join(s.Root, "var/lib/kos-upgrade/packages")); !os.IsNotExist(err) {
		t.Errorf("staged packages kept after clean")
	}
}

// auto on a root that is neither btrfs nor LVM (the host's ext4 here)
// picks the undo journal; --snapshot none still works, loudly.
func TestSnapshotAutoPicksUndo(t *testing.T) {
	testenv.RequireRoot(t)
	set := fixture.MustBuild(t)
	root := t.TempDir() // on the host filesystem, not btrfs
	if err := fixture.InstallBase(context.Background(), set, root); err != nil {
		t.Fatal(err)
	}
	r, _ := sysroot.New(root)
	e := upgrader.New(r, nil, nil)
	p, err := e.Prepare(context.Background(), upgrader.PrepareOptions{To: "5.9", Snapshot: "auto"})
	if err != nil {
		t.Fatalf("auto on a non-btrfs root: %v", err)
	}
	if p.Snapshot != snapshot.BackendUndo {
		t.Fatalf("auto on a non-btrfs, non-LVM root picked %q, want undo", p.Snapshot)
	}
	// --snapshot none works, loudly.
	sink := &recordingSink{}
	e.Sink = sink
	p, err = e.Prepare(context.Background(), upgrader.PrepareOptions{To: "5.9", Snapshot: "none"})
	if err != nil {
		t.Fatal(err)
	}
	if p.Snapshot != "none" {
		t.Errorf("plan snapshot %q", p.Snapshot)
	}
	var warned bool
	for _, ev := range sink.events {
		warned = warned || strings.Contains(ev.Message, "NO snapshot")
	}
	if !warned {
		t.Error("--snapshot none did not warn")
	}
	if _, err := e.Arm(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Apply(context.Background()); err != nil {
		t.Fatalf("apply without snapshot: %v", err)
	}
	if got := rpmQA(t, root); !strings.Contains(strings.Join(got, " "), "kos-release-5.9") {
		t.Errorf("in-place upgrade did not happen: %v", got)
	}
}

func TestSeparateFilesystemRefused(t *testing.T) {
	s := newSystem(t)
	opt := filepath.Join(s.Root, "opt")
	if err := os.MkdirAll(opt, 0o755); err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "mount", "-t", "tmpfs", "tmpfs", opt)
	t.Cleanup(func() { testenv.UnmountAll(opt) })
	_, err := s.Engin.Prepare(context.Background(), upgrader.PrepareOptions{To: "5.9", Snapshot: "auto"})
	if err == nil || !strings.Contains(err.Error(), "/opt (tmpfs") || !strings.Contains(err.Error(), "--snapshot none") {
		t.Fatalf("prepare with a separate /opt: %v", err)
	}
}
