package upgrader_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/boot"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// liveScript is a seeded script of what the running system does after
// staging: files added, edited, removed, renamed, chmod, a symlink, the
// %config(noreplace) /etc/app.conf edited (the transaction replaces it),
// and, with conflict, /usr/bin/app (a packaged file the transaction also
// replaces: outside the rules).
func liveScript(t *testing.T, root string, seed int64, conflict bool) []string {
	t.Helper()
	rng := rand.New(rand.NewSource(seed))
	var log []string
	w := func(p, data string) {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 3+rng.Intn(10); i++ {
		p := fmt.Sprintf("srv/site/f%d", rng.Intn(8))
		full := filepath.Join(root, p)
		switch rng.Intn(6) {
		case 0:
			w(p, strings.Repeat("x", rng.Intn(10000)))
			log = append(log, "write "+p)
		case 1:
			if os.Remove(full) == nil {
				log = append(log, "rm "+p)
			}
		case 2:
			if os.Rename(full, full+".old") == nil {
				log = append(log, "mv "+p)
			}
		case 3:
			if os.Chmod(full, 0o600) == nil {
				log = append(log, "chmod "+p)
			}
		case 4:
			os.Remove(filepath.Join(root, "srv/site/link"))
			if err := os.Symlink(filepath.Base(p), filepath.Join(root, "srv/site/link")); err != nil {
				t.Fatal(err)
			}
			log = append(log, "ln -s "+p)
		case 5:
			f, err := os.OpenFile(filepath.Join(root, "etc/app.conf"), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(f, "# local %d\n", i)
			f.Close()
			log = append(log, "edit /etc/app.conf")
		}
	}
	if conflict {
		w("usr/bin/app", "#!/bin/sh\necho patched by hand\n")
		log = append(log, "edit /usr/bin/app")
	}
	return log
}

// upgradedTree is the digest of the root a successful apply made, minus
// what must differ between two runs at different times: the state
// directory (run ids, times), the rpm database and dnf's history (install
// times; the package sets are compared with rpm -qa).
func upgradedTree(t *testing.T, s *system, res *upgrader.ApplyResult) map[string]string {
	t.Helper()
	if res == nil || !res.Ran || res.Result == nil || !res.Result.Success {
		t.Fatalf("apply did not succeed: %+v", res)
	}
	return treeDigest(t, filepath.Join(s.FS.Top, res.Result.Snapshot), "var/lib/kos-upgrade", "var/lib/rpm", "var/lib/dnf", "var/cache/dnf", "var/log")
}

// TestStageDifferential: from the same starting root and the same plan,
// (a) the classic offline apply and (b) stage, then the same seeded live
// changes, then carry-over, give the same tree; a live change outside the
// rules falls back and still gives (a), with the reason recorded. Seeds:
// KOS_UPGRADE_STAGE_SEEDS (default 2; the full tier runs 20).
func TestStageDifferential(t *testing.T) {
	seeds := 2
	if os.Getenv("KOS_UPGRADE_E2E") == "full" {
		seeds = 20
	}
	if v, err := strconv.Atoi(os.Getenv("KOS_UPGRADE_STAGE_SEEDS")); err == nil && v > 0 {
		seeds = v
	}
	for seed := int64(1); seed <= int64(seeds); seed++ {
		for _, conflict := range []bool{false, true} {
			if conflict && seed != 1 {
				continue
			}
			t.Run(fmt.Sprintf("seed-%d-conflict-%v", seed, conflict), func(t *testing.T) {
				ctx := context.Background()
				a, b := newSystem(t), newSystem(t)
				for _, s := range []*system{a, b} {
					for i := 0; i < 8; i++ {
						p := filepath.Join(s.Root, fmt.Sprintf("srv/site/f%d", i))
						os.MkdirAll(filepath.Dir(p), 0o755)
						if err := os.WriteFile(p, []byte(fmt.Sprint(i)), 0o644); err != nil {
							t.Fatal(err)
						}
					}
					if _, err := s.Engin.Prepare(ctx, upgrader.PrepareOptions{To: "5.9", Snapshot: "auto", Repos: s.repos("5.9")}); err != nil {
						t.Fatalf("prepare: %v", err)
					}
				}
				if err := b.Engin.Stage(ctx); err != nil {
					t.Fatalf("stage: %v", err)
				}
				script := liveScript(t, a.Root, seed, conflict)
				liveScript(t, b.Root, seed, conflict)
				var res [2]*upgrader.ApplyResult
				for i, s := range []*system{a, b} {
					if _, err := s.Engin.Arm(ctx); err != nil {
						t.Fatalf("arm: %v", err)
					}
					r, err := s.Engin.Apply(ctx)
					if err != nil {
						t.Fatalf("apply: %v (seed %d, script %v)", err, seed, script)
					}
					res[i] = r
				}
				got := res[1].Result
				wantPath := upgrader.PathStaged
				if conflict {
					wantPath = upgrader.PathClassic
				}
				if got.Path != wantPath || (conflict != (got.PathReason != "")) {
					t.Fatalf("seed %d: path %q (%s), want %s (script %v)", seed, got.Path, got.PathReason, wantPath, script)
				}
				if conflict && !strings.Contains(got.PathReason, "/usr/bin/app") {
					t.Errorf("the fallback's reason does not name /usr/bin/app: %s", got.PathReason)
				}
				if d := diffDigest(upgradedTree(t, a, res[0]), upgradedTree(t, b, res[1])); len(d) > 0 {
					t.Fatalf("seed %d (script %v): the staged root differs from the classic one:\n%s", seed, script, strings.Join(d, "\n"))
				}
				if qa, qb := rpmQA(t, filepath.Join(a.FS.Top, res[0].Result.Snapshot)), rpmQA(t, filepath.Join(b.FS.Top, res[1].Result.Snapshot)); !reflect.DeepEqual(qa, qb) {
					t.Fatalf("packages differ:\n%v\n%v", qa, qb)
				}
				if left := b.subvols(t); len(left) != 1 || left[0] != got.Snapshot {
					t.Errorf("snapshots left: %v, want only %s", left, got.Snapshot)
				}
				t.Logf("seed %d: %s path, %d paths carried, %d bytes cloned, offline %v (script %v)", seed, got.Path, got.Carried, got.BytesCloned, got.FinishedAt.Sub(got.StartedAt), script)
			})
		}
	}
}

// TestStageStalePlan: a package installed after staging makes the plan
// stale: apply refuses as without --stage, the running root is untouched
// and cancel removes the staged root.
func TestStageStalePlan(t *testing.T) {
	s := newSystem(t)
	ctx := context.Background()
	if _, err := s.Engin.Prepare(ctx, upgrader.PrepareOptions{To: "5.9", Snapshot: "auto", Repos: s.repos("5.9")}); err != nil {
		t.Fatalf("prepare: %v", err)
	}
	if err := s.Engin.Stage(ctx); err != nil {
		t.Fatalf("stage: %v", err)
	}
	if n := len(s.subvols(t)); n != 2 {
		t.Fatalf("stage made %v", s.subvols(t))
	}
	if _, err := s.Engin.Arm(ctx); err != nil {
		t.Fatal(err)
	}
	pkgs, err := s.Set.Packages(fixture.RepoThirdParty)
	if err != nil || len(pkgs) == 0 {
		t.Fatalf("no third-party fixture package: %v", err)
	}
	before := rpmQA(t, s.Root)
	testenv.Run(t, "rpm", "--root", s.Root, "--dbpath", fixture.DBPath, "-i", "--nodeps", "--force-debian", pkgs[0])
	if _, err := s.Engin.Apply(ctx); err == nil {
		t.Fatal("apply ran a stale plan")
	}
	if def := s.defaultSubvol(t); def != "@" {
		t.Fatalf("default is %s", def)
	}
	if len(rpmQA(t, s.Root)) != len(before)+1 {
		t.Fatal("the running root changed")
	}
	if err := s.Engin.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
	if left := s.subvols(t); len(left) != 0 {
		t.Fatalf("cancel left %v", left)
	}
}

// TestStageCrash kills `reboot --stage` (SIGKILL) at each of its journaled
// points: the next command settles it (no snapshot left, the running root
// untouched), and a new `reboot --stage` and apply take the staged path.
func TestStageCrash(t *testing.T) {
	s := newSystem(t)
	ctx := context.Background()
	oldPkgs := rpmQA(t, s.Root)
	if _, err := s.Engin.Prepare(ctx, upgrader.PrepareOptions{To: "5.9", Snapshot: "auto", Repos: s.repos("5.9")}); err != nil {
		t.Fatalf("prepare: %v", err)
	}
	for _, point := range upgrader.StageCrashPoints {
		t.Run(point, func(t *testing.T) {
			out, err := s.kosUpgrade(t, []string{"KOS_UPGRADE_TEST_CRASH_AT=" + point}, "reboot", "--stage", "--no-reboot")
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("reboot --stage was not killed at %s: %v\n%s", point, err, out)
			}
			if out, err := s.kosUpgrade(t, nil, "cancel"); err != nil {
				t.Fatalf("cancel: %v\n%s", err, out)
			}
			if left := s.subvols(t); len(left) != 0 {
				t.Fatalf("left after a crash at %s: %v", point, left)
			}
			if got := rpmQA(t, s.Root); !reflect.DeepEqual(got, oldPkgs) {
				t.Fatalf("the running root changed: %v", got)
			}
			if _, err := s.Engin.Prepare(ctx, upgrader.PrepareOptions{To: "5.9", Snapshot: "auto", Repos: s.repos("5.9")}); err != nil {
				t.Fatalf("prepare: %v", err)
			}
		})
	}
	if out, err := s.kosUpgrade(t, nil, "reboot", "--stage", "--no-reboot"); err != nil {
		t.Fatalf("reboot --stage: %v\n%s", err, out)
	}
	if out, err := s.kosUpgrade(t, nil, "apply"); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	out, err := s.kosUpgrade(t, nil, "status")
	if err != nil || !strings.Contains(out, "path: staged before the reboot") {
		t.Fatalf("status does not say the staged path ran: %v\n%s", err, out)
	}
	if left := s.subvols(t); len(left) != 1 || left[0] != s.defaultSubvol(t) {
		t.Fatalf("snapshots left: %v (default %s)", left, s.defaultSubvol(t))
	}
}

// TestStageWithNewKernel: a staged upgrade bringing a new kernel on a
// grub2 system: the entry is made offline as without --stage, on trial,
// and the staged root boots next.
func TestStageWithNewKernel(t *testing.T) {
	b := newBootSystem(t, true)
	s := b.system
	ctx := context.Background()
	if _, err := s.Engin.Prepare(ctx, upgrader.PrepareOptions{To: "5.9", Snapshot: "auto", Repos: s.repos(fixture.Repo59, fixture.Repo59Kernel)}); err != nil {
		t.Fatalf("prepare: %v", err)
	}
	bootBefore := b.digest(t)
	if err := s.Engin.Stage(ctx); err != nil {
		t.Fatalf("stage: %v", err)
	}
	if d := diffDigest(bootBefore, b.digest(t)); len(d) > 0 {
		t.Fatalf("staging changed /boot:\n%s", strings.Join(d, "\n"))
	}
	if _, err := s.Engin.Arm(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := s.Engin.Apply(ctx)
	if err != nil || !res.Result.Success {
		t.Fatalf("apply: %v %+v", err, res)
	}
	if res.Result.Path != upgrader.PathStaged {
		t.Fatalf("path %s: %s", res.Result.Path, res.Result.PathReason)
	}
	want := boot.EntryIDPrefix + fixture.MachineID + "-" + newKver
	if env := b.env(t); env.Value("kos_upgrade_trial") != want {
		t.Errorf("trial: %v, want %s", env.Map(), want)
	}
	if def := s.defaultSubvol(t); def != res.Result.Snapshot {
		t.Errorf("default %s, want %s", def, res.Result.Snapshot)
	}
}
