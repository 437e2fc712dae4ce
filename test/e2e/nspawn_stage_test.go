package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/upgrader"
)

// The staged root (docs/stage.md) in real boots: `kos-upgrade reboot
// --stage` in the running guest, the offline step in system-update.target,
// and a SIGKILL (KOS_UPGRADE_TEST_CRASH_AT, the binary has the test hooks)
// at every step boundary of staging and of the staged apply run.

// liveChange is what the running system changes after staging: the
// carry-over must bring it into the new root.
const liveChange = "echo changed-after-staging > /etc/kos-e2e-live\n"

// notOnStagedPath are the apply table's steps a staged run of the nspawn
// guest never reaches, and why: their crash points cannot be hit here
// (the engine tier crashes them, upgrader/crash_test.go). A new step of the
// table is crashed here unless it is added to this list.
var notOnStagedPath = map[string]string{
	upgrader.StepBackup: "the guest has no boot loader (/boot) to back up",
	upgrader.StepBoot:   "the guest has no boot loader",
	upgrader.StepSwitch: "mid-switch is after arming the trial boot entry, which needs a boot loader",
}

// reachedOnStagedPath reports whether the staged run of the nspawn guest
// reaches crash point p, and why not.
func reachedOnStagedPath(p upgrader.CrashPoint) (bool, string) {
	if p.Classic {
		return false, "only a run that is not carried over (the classic path) reaches it"
	}
	step, mid := strings.CutPrefix(p.Name, "mid-")
	why, ok := notOnStagedPath[step]
	if !ok || step == upgrader.StepSwitch && !mid {
		return true, ""
	}
	return false, why
}

// TestNspawnStageCrash kills the staged upgrade at every step boundary of
// staging (in the running system) and of the staged apply run (in the
// offline boot, carry-over included), then boots again: the machine runs
// the old root, untouched and not armed, or the new root, complete with the
// live change carried over — never a mix — and settle (the first-boot unit
// runs it) leaves no base, next or live snapshot behind. Two points in the
// default run (one ending old, one new), every point with
// KOS_UPGRADE_E2E=full (make e2e).
func TestNspawnStageCrash(t *testing.T) {
	Require(t)
	points := slices.Clone(upgrader.StageCrashPoints)
	for _, p := range upgrader.CrashPoints() {
		if ok, why := reachedOnStagedPath(p); !ok {
			t.Logf("crash point %s: not on the nspawn guest's staged path (%s)", p.Name, why)
			continue
		}
		points = append(points, p.Name)
	}
	complete := map[string]bool{}
	for _, p := range upgrader.CrashPoints() {
		complete[p.Name] = p.Complete
	}
	t.Logf("crash points: %q", points)
	for _, point := range points {
		t.Run(point, func(t *testing.T) {
			if point != "mid-"+upgrader.StepCarryOver {
				RequireFull(t)
			}
			stageCrash(t, point)
		})
	}
	// The same apply run late in the shutdown (kos-upgrade-finalize.service).
	for _, point := range points {
		if strings.HasPrefix(point, "stage-") {
			continue
		}
		t.Run("at-shutdown/"+point, func(t *testing.T) {
			if point != upgrader.StepDone {
				RequireFull(t)
			}
			finalizeCrash(t, point, complete[point])
		})
	}
}

// stageCrash kills the staged upgrade at point, in the running system
// (staging) or in the offline boot (the apply run).
func stageCrash(t *testing.T, point string) {
	if strings.HasPrefix(point, "stage-") {
		stagingCrash(t, point)
		return
	}
	complete := false
	for _, p := range upgrader.CrashPoints() {
		complete = complete || p.Name == point && p.Complete
	}
	stagedApplyCrash(t, point, complete)
}

// stagingCrash: `reboot --stage` killed while staging, in the running
// system; the next boot is the old root, not armed, and settle removes the
// half-made stage.
func stagingCrash(t *testing.T, point string) {
	g := NewGuest(t)
	g.Kos(t, "prepare", "--to", "5.9")
	g.Step(t, 1, fmt.Sprintf(`KOS_UPGRADE_TEST_CRASH_AT=%s kos-upgrade reboot --stage --no-reboot
echo "stage exit: $?"
systemctl reboot
`, point))
	g.Step(t, 2, settleStep)
	boots := g.Run(t, maxBoots)
	expectBoots(t, boots, "@:reboot", "@:poweroff")
	if l := g.Facts(1).File("step.log"); !strings.Contains(l, "stage exit: 137") {
		t.Fatalf("reboot --stage was not killed at %s:\n%s", point, l)
	}
	f := expectOldSystem(t, g, 2)
	if got, want := f.File("rpm-qa"), g.Facts(1).File("rpm-qa"); got != want {
		t.Errorf("the old system's packages changed:\nbefore:\n%s\nafter:\n%s", want, got)
	}
	if st := f.settled(t); st.Armed || st.State.Status != "prepared" {
		t.Errorf("after a crash while staging the plan should be prepared, not armed: %s", f.File("settled.json"))
	}
}

// settleStep lets the first-boot unit (kos-upgrade health, which settles
// what a crash left) finish, records the state after it, and powers off.
const settleStep = `systemctl start kos-upgrade-health.service
kos-upgrade --json status > "$1/settled.json" 2>&1
kos-upgrade status > "$1/settled.txt" 2>&1
systemctl poweroff
`

// stagedApplyCrash: staged and armed in the running system, a change
// after staging, then the offline apply killed at point. complete: the
// point is past the switch (the new root boots next).
func stagedApplyCrash(t *testing.T, point string, complete bool) {
	g := NewGuest(t)
	g.Kos(t, "prepare", "--to", "5.9")
	g.WriteFile(t, "etc/systemd/system/kos-upgrade-apply.service.d/crash.conf",
		"[Service]\nEnvironment=KOS_UPGRADE_TEST_CRASH_AT="+point+"\n", 0o644)
	g.Step(t, 1, stageAndArm+liveChange+"systemctl reboot\n")
	g.Step(t, 3, settleStep)
	boots := g.Run(t, maxBoots)
	if l := g.Facts(1).File("step.log"); !strings.Contains(l, "is armed") {
		t.Fatalf("boot 1 did not stage and arm:\n%s", l)
	}
	offlineBoot(t, g, boots, 2)
	if c := boots[1].Console; !strings.Contains(c, "FAILED") {
		t.Errorf("kos-upgrade-apply.service was not killed at %s:\n%s", point, tail(c, 40))
	}
	if !complete {
		expectBoots(t, boots, "@:reboot", "@:reboot", "@:poweroff")
		expectOldAfterCrash(t, g, 3)
		return
	}
	expectBoots(t, boots, "@:reboot", "@:reboot", "kos-upgrade/*:poweroff")
	expectNewAfterCrash(t, g, boots, 3)
}

// stageAndArm stages and arms in the running guest, the offline boot
// carrying over (two boots).
const stageAndArm = "kos-upgrade reboot --stage --no-finalize --no-reboot || exit 1\n"

// finalizeCrash: staged and armed to finalize at shutdown, a change after
// staging, then the finalize killed at point late in the shutdown. The
// link went first: the next boot is the old root (never the offline boot
// with a run half done) or, past the switch, the new one.
func finalizeCrash(t *testing.T, point string, complete bool) {
	g := NewGuest(t)
	g.Kos(t, "prepare", "--to", "5.9")
	g.WriteFile(t, "etc/systemd/system/kos-upgrade-finalize.service.d/crash.conf",
		"[Service]\nEnvironment=KOS_UPGRADE_TEST_CRASH_AT="+point+"\n", 0o644)
	g.Step(t, 1, "kos-upgrade reboot --stage --no-reboot || exit 1\n"+liveChange+"systemctl reboot\n")
	g.Step(t, 2, settleStep)
	boots := g.Run(t, maxBoots)
	if l := g.Facts(1).File("step.log"); !strings.Contains(l, "is armed") || strings.Contains(l, "Not finalizing") {
		t.Fatalf("boot 1 did not stage and arm the finalize:\n%s", l)
	}
	// systemd does not say a stop action was killed: the finalize ran
	// (its unit stopping) and neither ended nor was undone.
	if c := boots[0].Console; !strings.Contains(c, "apply --at-shutdown") || strings.Contains(c, "Upgrade to 5.9 succeeded") || strings.Contains(c, "Not finalized") {
		t.Errorf("kos-upgrade-finalize.service was not killed at %s:\n%s", point, tail(c, 40))
	}
	if !complete {
		expectBoots(t, boots, "@:reboot", "@:poweroff")
		expectOldAfterCrash(t, g, 2)
		return
	}
	expectBoots(t, boots, "@:reboot", "kos-upgrade/*:poweroff")
	expectNewAfterCrash(t, g, boots, 2)
}

// writerUnit is a service that writes when it stops: the finalize runs
// after it stopped, so its last write is in the new root.
const writerUnit = `[Unit]
Description=kos-upgrade e2e: a service that writes when it stops

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
ExecStop=/bin/sh -c 'echo written-at-stop > /var/lib/kos-e2e-writer'
`

// TestNspawnStageFinalize is the one-boot upgrade: `kos-upgrade reboot
// --stage` in the running guest stages, arms and starts
// kos-upgrade-finalize.service, and reboots; late in that shutdown, after
// the services stopped (one writes a file as it stops), the finalize
// carries the changes over and switches: the next boot is the new root.
func TestNspawnStageFinalize(t *testing.T) {
	g := NewGuest(t)
	g.Kos(t, "prepare", "--to", "5.9")
	g.WriteFile(t, "etc/systemd/system/kos-e2e-writer.service", writerUnit, 0o644)
	g.Symlink(t, "../kos-e2e-writer.service", "etc/systemd/system/multi-user.target.wants/kos-e2e-writer.service")
	g.Step(t, 1, liveChange+"/usr/bin/date +%s%N > /kos-e2e/reboot-at\nkos-upgrade reboot --stage\n")
	g.Step(t, 2, upAt+settleStep)
	boots := g.Run(t, maxBoots)
	expectBoots(t, boots, "@:reboot", "kos-upgrade/*:poweroff")
	if l := g.Facts(1).File("step.log"); !strings.Contains(l, "is armed") || strings.Contains(l, "Not finalizing") {
		t.Fatalf("boot 1 did not stage and arm the finalize:\n%s", l)
	}
	if c := boots[0].Console; !strings.Contains(c, "Upgrade to 5.9 succeeded") {
		t.Errorf("the shutdown of boot 1 does not report the finalize:\n%s", tail(c, 40))
	}
	expectNewAfterCrash(t, g, boots, 2)
	w, _ := os.ReadFile(filepath.Join(g.FS.Top, boots[1].Subvol, "var/lib/kos-e2e-writer"))
	if string(w) != "written-at-stop\n" {
		t.Errorf("what a service wrote as it stopped is not in the new root (%q): the finalize ran before the services stopped", w)
	}
	var hist []upgrader.Result
	if err := json.Unmarshal([]byte(g.Facts(2).File("history.json")), &hist); err != nil || len(hist) == 0 {
		t.Fatalf("history in the new root: %v\n%s", err, g.Facts(2).File("history.json"))
	}
	last := hist[len(hist)-1]
	if !last.Success || !last.AtShutdown || last.Path != "staged" {
		t.Errorf("the new root's last run should be a staged finalize at shutdown: %+v", last)
	}
	if st := g.Facts(2).File("settled.txt"); !strings.Contains(st, "finalized late in the shutdown (one boot)") {
		t.Errorf("kos-upgrade status in the new root does not say the run was finalized at shutdown:\n%s", st)
	}
	t.Logf("one boot: downtime (reboot asked → the new root in multi-user.target) %s; the finalize's window %s, %d paths carried",
		downtime(t, g, 2), last.FinishedAt.Sub(last.StartedAt).Round(time.Millisecond), last.Carried)
}

// upAt records, first thing in a step, when the boot reached
// multi-user.target (the driver runs then).
const upAt = "/usr/bin/date +%s%N > /kos-e2e/up-at\n"

// downtime is from the reboot boot 1 asked for (reboot-at) to boot n in
// multi-user.target (up-at): the host's clock, which nspawn guests share.
func downtime(t *testing.T, g *Guest, n int) time.Duration {
	t.Helper()
	read := func(name string) int64 {
		b, err := os.ReadFile(filepath.Join(g.Shared, name))
		v, perr := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil || perr != nil {
			t.Fatalf("%s: %v %v", name, err, perr)
		}
		return v
	}
	return time.Duration(read("up-at") - read("reboot-at")).Round(time.Millisecond)
}

// TestNspawnStageOfflineBoot is the staged upgrade carried over in the
// offline boot (`reboot --stage --no-finalize`): two boots, the same end
// state as TestNspawnStageFinalize, its downtime for comparison. The
// offline boot's staged path is in the default run through
// TestNspawnStageCrash; this one runs with KOS_UPGRADE_E2E=full.
func TestNspawnStageOfflineBoot(t *testing.T) {
	Require(t)
	RequireFull(t)
	g := NewGuest(t)
	g.Kos(t, "prepare", "--to", "5.9")
	g.Step(t, 1, liveChange+"/usr/bin/date +%s%N > /kos-e2e/reboot-at\nkos-upgrade reboot --stage --no-finalize\n")
	g.Step(t, 3, upAt+settleStep)
	boots := g.Run(t, maxBoots)
	expectBoots(t, boots, "@:reboot", "@:reboot", "kos-upgrade/*:poweroff")
	offlineBoot(t, g, boots, 2)
	expectNewAfterCrash(t, g, boots, 3)
	if st := g.Facts(3).settled(t); st.State.LastResult == nil || !st.State.LastResult.Success {
		t.Fatalf("the new root's last result: %s", g.Facts(3).File("settled.json"))
	}
	t.Logf("two boots: downtime (reboot asked → the new root in multi-user.target) %s; the offline boot %s",
		downtime(t, g, 3), boots[1].Duration.Round(time.Millisecond))
}

// TestNspawnStageFinalizeFallback: a change after staging that the
// carry-over cannot take (a packaged file the transaction replaces): the
// finalize at shutdown is undone and leaves the upgrade armed, the offline
// boot runs the classic transaction, the new root boots.
func TestNspawnStageFinalizeFallback(t *testing.T) {
	g := NewGuest(t)
	g.Kos(t, "prepare", "--to", "5.9")
	g.Step(t, 1, "kos-upgrade reboot --stage --no-reboot || exit 1\necho '# local edit' >> /usr/bin/app\nsystemctl reboot\n")
	boots := g.Run(t, maxBoots)
	expectBoots(t, boots, "@:reboot", "@:reboot", "kos-upgrade/*:poweroff")
	if c := boots[0].Console; !strings.Contains(c, "undone, the offline boot upgrades") {
		t.Errorf("the shutdown of boot 1 should say the finalize was undone:\n%s", tail(c, 40))
	}
	offlineBoot(t, g, boots, 2)
	f := g.Facts(3)
	expectUpgraded(t, "boot 3", f)
	if b, _ := os.ReadFile(filepath.Join(g.FS.Top, boots[2].Subvol, "usr/bin/app")); strings.Contains(string(b), "# local edit") {
		t.Errorf("the new root's /usr/bin/app is not the packaged one")
	}
}

// expectOldAfterCrash: boot n runs the old root as it was, the crash
// recorded as a failure, nothing armed, no snapshot left once settled.
func expectOldAfterCrash(t *testing.T, g *Guest, n int) {
	t.Helper()
	f := expectOldSystem(t, g, n)
	if got, want := f.File("rpm-qa"), g.Facts(1).File("rpm-qa"); got != want {
		t.Errorf("the old system's packages changed:\nbefore:\n%s\nafter:\n%s", want, got)
	}
	st := f.settled(t)
	if lr := st.State.LastResult; st.Armed || lr == nil || lr.Success || !strings.Contains(lr.Error, "interrupted") {
		t.Errorf("boot %d: the crash should be recorded as an interrupted run, nothing armed: %s", n, f.File("settled.json"))
	}
}

// expectNewAfterCrash: boot n runs the new root, complete, the live change
// carried over, and only the new root is left of the stage's snapshots.
func expectNewAfterCrash(t *testing.T, g *Guest, boots []Boot, n int) {
	t.Helper()
	f := g.Facts(n)
	expectUpgraded(t, fmt.Sprintf("boot %d", n), f)
	if m := f.File("root-mount"); !strings.Contains(m, boots[n-1].Subvol) {
		t.Errorf("boot %d's root is %q, want subvolume %s", n, m, boots[n-1].Subvol)
	}
	if st := f.settled(t); st.State.Status != "succeeded" || st.Armed {
		t.Errorf("boot %d: kos-upgrade status in the new system: %s", n, f.File("settled.json"))
	}
	live, _ := os.ReadFile(filepath.Join(g.FS.Top, boots[n-1].Subvol, "etc/kos-e2e-live"))
	if string(live) != "changed-after-staging\n" {
		t.Errorf("the change made after staging is not in the new root: %q", live)
	}
	if left := upgradeSubvols(t, g); !slices.Equal(left, []string{boots[n-1].Subvol}) {
		t.Errorf("snapshots left besides the new root %s: %q", boots[n-1].Subvol, left)
	}
}

// settled decodes the status settleStep recorded once settled.
func (f *Facts) settled(t *testing.T) Status {
	t.Helper()
	var s Status
	if err := json.Unmarshal([]byte(f.File("settled.json")), &s); err != nil {
		t.Fatalf("kos-upgrade status --json after settling: %v\n%s", err, f.File("settled.json"))
	}
	return s
}
