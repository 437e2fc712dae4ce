package upgrader_test

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/boot"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// TestCrashAtEveryStep kills apply (SIGKILL, as a power cut would stop it)
// at every step boundary, then checks what is left and runs it again: the
// result is a complete upgrade or a clean failure, never a default
// subvolume with a partial transaction. The system has a grub2 /boot and the
// upgrade a new kernel: /boot is restored byte for byte by settle.
func TestCrashAtEveryStep(t *testing.T) {
	crashAtEveryStep(t, newBootSystem(t, true), fixture.Repo59Kernel, boot.EntryIDPrefix+fixture.MachineID+"-"+newKver, false)
}

// TestCrashAtEveryStepStaged is TestCrashAtEveryStep on a root staged
// before the reboot (reboot --stage): every point a staged run reaches
// (all but the classic snapshot and transaction), the boot steps with
// their /boot backup, the new kernel's entry and the trial included; after
// settling no base, next or live snapshot is left. The nspawn tier
// (test/e2e TestNspawnStageCrash) kills the same run in real boots.
func TestCrashAtEveryStepStaged(t *testing.T) {
	crashAtEveryStep(t, newBootSystem(t, true), fixture.Repo59Kernel, boot.EntryIDPrefix+fixture.MachineID+"-"+newKver, true)
}

// TestCrashAtEveryStepEL8 is TestCrashAtEveryStep on an EL8 system
// (newEL8System): the new kernel's %posttrans runs EL8's kernel-install,
// whose 20-grub.install writes the entry and moves saved_entry on the real
// /boot in the middle of the transaction; settle must undo all of it.
func TestCrashAtEveryStepEL8(t *testing.T) {
	crashAtEveryStep(t, newEL8System(t, "").bootSystem, fixture.Repo59EL8Kernel, fixture.MachineID+"-"+fixture.EL8Kernel59, false)
}

// crashAtEveryStep runs the crash scenarios on b, upgrading to repo 5.9
// with the new kernel of kernelRepo, whose entry is newEntry; staged: every
// run is staged first (the points of the classic path are not reached).
func crashAtEveryStep(t *testing.T, b *bootSystem, kernelRepo, newEntry string, staged bool) {
	s := b.system
	ctx := context.Background()
	oldPkgs := rpmQA(t, s.Root)
	bootBefore := b.digest(t)
	// Every crash point of the step table: a new step is crash-tested
	// without anyone remembering to. switched: the crash happened after
	// the new root became the default, so the run counts as succeeded.
	for _, cp := range upgrader.CrashPoints() {
		if staged && cp.Classic {
			continue
		}
		tc := struct {
			step     string
			switched bool
			staged   bool
		}{cp.Name, cp.Complete, cp.Staged || staged}
		t.Run(tc.step, func(t *testing.T) {
			// Start from the old system each time.
			if def := s.defaultSubvol(t); def != "@" {
				if out, err := s.kosUpgrade(t, nil, "rollback", "--no-reboot"); err != nil {
					t.Fatalf("rollback: %v\n%s", err, out)
				}
			}
			if out, err := s.kosUpgrade(t, nil, "clean"); err != nil {
				t.Fatalf("clean: %v\n%s", err, out)
			}
			if d := diffDigest(bootBefore, b.digest(t)); len(d) > 0 {
				t.Fatalf("/boot differs at the start:\n%s", strings.Join(d, "\n"))
			}
			s.prepareAndArm(t, upgrader.PrepareOptions{Repos: s.repos(fixture.Repo59, kernelRepo)})
			if tc.staged {
				// A step of the staged path (reboot --stage).
				if err := s.Engin.Stage(ctx); err != nil {
					t.Fatalf("stage: %v", err)
				}
			}

			out, err := s.kosUpgrade(t, []string{"KOS_UPGRADE_TEST_CRASH_AT=" + tc.step}, "apply")
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("apply was not killed at %s: %v\n%s", tc.step, err, out)
			}
			def := s.defaultSubvol(t)
			st := s.statusJSON(t)
			if tc.switched {
				if !strings.HasPrefix(def, "kos-upgrade/") {
					t.Fatalf("default is %q after a crash past the switch", def)
				}
				if st.State.Status != upgrader.StatusSucceeded {
					t.Errorf("status after a crash past the switch: %s", st.State.Status)
				}
				// The new default root is complete.
				if got := rpmQA(t, s.FS.Top+"/"+def); !strings.Contains(strings.Join(got, " "), "kos-release-5.9") {
					t.Errorf("new default root is not upgraded: %v", got)
				}
				if env := b.env(t); env.Value("kos_upgrade_trial") != newEntry {
					t.Errorf("trial not armed after a crash past the switch: %v", env.Map())
				}
				return
			}
			if def != "@" {
				t.Fatalf("default is %q after a crash at %s, want @", def, tc.step)
			}
			if got := rpmQA(t, s.Root); !reflect.DeepEqual(got, oldPkgs) {
				t.Errorf("old root changed by the crash: %v", got)
			}
			if st.State.Status != upgrader.StatusFailed || st.State.LastResult == nil || !strings.Contains(st.State.LastResult.Error, "interrupted") {
				t.Errorf("status after a crash at %s is not a truthful failure: %+v", tc.step, st.State)
			}
			if st.Armed {
				t.Errorf("still armed after the crash: a reboot would loop")
			}
			// Arm again (settles the crash: removes the half-made
			// snapshot) and apply: complete. --no-stage: what is left
			// is checked before anything is staged again.
			if out, err := s.kosUpgrade(t, nil, "reboot", "--no-reboot", "--no-stage"); err != nil {
				t.Fatalf("re-arm: %v\n%s", err, out)
			}
			for _, sv := range s.subvols(t) {
				t.Errorf("leftover snapshot after settling: %s", sv)
			}
			if d := diffDigest(bootBefore, b.digest(t)); len(d) > 0 {
				t.Errorf("/boot not restored by settle after a crash at %s:\n%s", tc.step, strings.Join(d, "\n"))
			}
			if m, _ := filepath.Glob(filepath.Join(s.Root, "var/lib/kos-upgrade/boot-backup/*")); len(m) > 0 {
				t.Errorf("backup of the interrupted run left: %v", m)
			}
			if out, err := s.kosUpgrade(t, nil, "apply"); err != nil {
				t.Fatalf("apply after the crash: %v\n%s", err, out)
			}
			def = s.defaultSubvol(t)
			if !strings.HasPrefix(def, "kos-upgrade/") {
				t.Fatalf("default after the re-run: %q", def)
			}
			if got := rpmQA(t, s.FS.Top+"/"+def); !strings.Contains(strings.Join(got, " "), "kos-release-5.9") {
				t.Errorf("re-run root is not upgraded: %v", got)
			}
			h, _ := s.Engin.History(ctx)
			var interrupted, succeeded int
			for _, r := range h {
				if strings.Contains(r.Error, "interrupted") {
					interrupted++
				}
				if r.Success && r.Kind == "apply" {
					succeeded++
				}
			}
			if interrupted == 0 || succeeded == 0 {
				t.Errorf("history does not record the interrupted run and the success: %+v", h)
			}
		})
	}
}

func (s *system) statusJSON(t *testing.T) upgrader.StatusReport {
	t.Helper()
	out, err := s.kosUpgrade(t, nil, "--json", "status")
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	var r upgrader.StatusReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return r
}
