package e2e

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"
)

// crashDropIn makes the finalize at shutdown crash (SIGKILL) half-way
// through its carry-over, after the live snapshot.
const crashDropIn = `mkdir -p /etc/systemd/system/kos-upgrade-finalize.service.d
printf '[Service]\nEnvironment=KOS_UPGRADE_TEST_CRASH_AT=mid-carryover\n' >/etc/systemd/system/kos-upgrade-finalize.service.d/crash.conf
systemctl daemon-reload`

// stageCrashAndReboot is boot 1's step: prepare, `reboot --stage
// --no-reboot` (stages, arms, starts kos-upgrade-finalize.service) with
// the crash drop-in, a change to the running system after staging, then
// the reboot, late in which the finalize is killed.
const stageCrashAndReboot = crashDropIn + `
kos-upgrade prepare --to 5.9 >$F/prepare.log 2>&1 || { echo "prepare failed: $?"; cat $F/prepare.log; exit 1; }
kos-upgrade reboot --stage --no-reboot >$F/reboot.log 2>&1 || { echo "reboot --stage failed: $?"; cat $F/reboot.log; exit 1; }
echo changed-after-staging >/etc/kos-e2e-live
systemctl reboot
sleep 600`

// restageAndReboot is boot 2's step, in the old root after the crash: the
// state once settled (the first-boot unit ran), the subvolumes, then the
// drop-in removed (a change carried over as a removal), staged again and
// rebooted: this time the finalize completes.
const restageAndReboot = `kos-upgrade --json status >$F/settled.json 2>&1
btrfs subvolume list / >$F/subvols 2>&1
rm -r /etc/systemd/system/kos-upgrade-finalize.service.d && systemctl daemon-reload
kos-upgrade reboot --stage --no-reboot >$F/reboot.log 2>&1 || { echo "reboot --stage failed: $?"; cat $F/reboot.log; exit 1; }
/usr/bin/date +%s%N >/kos-e2e/reboot-at
systemctl reboot
sleep 600`

// newRootStep records, in the first boot of the new root, when it reached
// multi-user.target, the change made after staging and the drop-in's
// removal.
const newRootStep = `/usr/bin/date +%s%N >/kos-e2e/up-at
cat /etc/kos-e2e-live >$F/live 2>&1
ls /etc/systemd/system/kos-upgrade-finalize.service.d >$F/dropin 2>&1`

// TestQemuSystemBtrfsStaged is the staged upgrade on a server's disk with
// a real boot loader (OVMF, systemd-boot, btrfs root in @), finalized late
// in the shutdown (kos-upgrade-finalize.service). First a crash: the
// finalize is killed half-way through its carry-over, and the next boot is
// the old root from the old entry (the link went first: not the offline
// boot), settled, no snapshot left. Then, staged again, the finalize
// completes: the new kernel's entry written and put on trial, the staged
// root made the default, and the machine boots once, straight into 5.9,
// with the changes made after staging carried over; the health unit
// blesses the entry. Slow (TCG): make e2e.
func TestQemuSystemBtrfsStaged(t *testing.T) {
	RequireFull(t)
	QemuParallel(t, 1)
	t0 := time.Now()
	s := NewQemuSystem(t, LayoutBtrfs)
	s.Script(t, map[string]string{
		"1": stageCrashAndReboot,
		"2": restageAndReboot,
		"3": newRootStep + "\n" + oldRootPackages(LayoutBtrfs),
	})
	boots := s.Run(t, 5)
	if len(boots) != 3 {
		t.Fatalf("%d boots, want 3 (5.8 with the finalize killed at its shutdown, 5.8 again with the finalize at its shutdown, 5.9)", len(boots))
	}
	before := s.Facts("1")
	expectOld(t, "boot 1", before, nil)
	if l := s.ReadShared("boot-1/reboot.log"); !strings.Contains(l, "is armed") || strings.Contains(l, "Not finalizing") {
		t.Fatalf("boot 1 did not stage and arm the finalize:\n%s", l)
	}
	if c := boots[0].Console; !strings.Contains(c, "apply --at-shutdown") || strings.Contains(c, "Upgrade to 5.9 succeeded") {
		t.Errorf("the finalize at the shutdown of boot 1 was not killed:\n%s", tail(c, 60))
	}

	// After the crash: the old root, from the old entry, settled.
	crashed := expectBackOnOld(t, s, "2", "boot 2 (after the crash)")
	var settled Status
	if err := json.Unmarshal([]byte(crashed.File("settled.json")), &settled); err != nil {
		t.Fatalf("status after the crash: %v\n%s", err, crashed.File("settled.json"))
	}
	if lr := settled.State.LastResult; settled.Armed || lr == nil || lr.Success || !strings.Contains(lr.Error, "interrupted") {
		t.Errorf("boot 2: the crash should be recorded as an interrupted run, nothing armed: %s", crashed.File("settled.json"))
	}
	if sv := crashed.File("subvols"); strings.Contains(sv, "kos-upgrade/") {
		t.Errorf("boot 2: snapshots left after the crash was settled:\n%s", sv)
	}
	if l := s.ReadShared("boot-2/reboot.log"); !strings.Contains(l, "is armed") || strings.Contains(l, "Not finalizing") {
		t.Fatalf("boot 2 did not stage and arm the finalize again:\n%s", l)
	}
	if c := boots[1].Console; !strings.Contains(c, "Upgrade to 5.9 succeeded") {
		t.Errorf("the shutdown of boot 2 does not report the finalize:\n%s", tail(c, 60))
	}

	after := s.Facts("3")
	expectUpgraded(t, "boot 3", after)
	if t.Failed() {
		t.Fatalf("facts of boot 3:%s\n--- run log:\n%s", after, s.ReadShared("run-3.log"))
	}
	if l := after.File("live"); l != "changed-after-staging\n" {
		t.Errorf("the change made after staging is not in the new root: %q", l)
	}
	if d := after.File("dropin"); !strings.Contains(d, "No such file") {
		t.Errorf("the drop-in removed after staging is still in the new root: %q", d)
	}
	st := after.Status(t)
	lr := st.State.LastResult
	if st.State.Status != "succeeded" || lr == nil || !lr.Success || !lr.AtShutdown || lr.Path != "staged" {
		t.Fatalf("the new system's status is not a staged upgrade finalized at shutdown: %s", after.File("status.json"))
	}
	if b := st.State.Boot; b == nil || b.Trial != "blessed" {
		t.Errorf("the trial is not blessed in the new system:\n%s\n--- health:\n%s", after.File("status.json"), after.File("health.log"))
	} else if sel := strings.TrimSpace(after.File("entry-selected")); !strings.HasPrefix(sel, b.Entry+"+") {
		t.Errorf("systemd-boot selected %q in boot 3, want the trial entry %s with its counter", sel, b.Entry)
	}
	if m := after.File("root-mount"); !strings.Contains(m, "[/"+st.State.Snapshot+"]") {
		t.Errorf("boot 3's root is %q, want the staged root %s", m, st.State.Snapshot)
	}
	if got := strings.Fields(after.File("old-rpm-qa")); strings.Join(got, " ") != strings.Join(before.Packages(), " ") {
		t.Errorf("the old root's packages changed: %q, were %q", got, before.Packages())
	}
	down := time.Duration(readNanos(t, s.ReadShared("up-at")) - readNanos(t, s.ReadShared("reboot-at")))
	t.Logf("FIGURES (btrfs, staged, finalize at shutdown): boots from reboot to the new system 1; downtime (reboot asked → the new root in multi-user.target, guest clock) %s; offline window (finalize) %s, %d paths carried; QEMU boot 2 (driver, staging, shutdown with the finalize) %s; scenario %s",
		down.Round(time.Millisecond), lr.FinishedAt.Sub(lr.StartedAt).Round(time.Millisecond), lr.Carried,
		boots[1].Duration.Round(time.Millisecond), time.Since(t0).Round(time.Second))
}

func readNanos(t *testing.T, s string) int64 {
	t.Helper()
	v, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		t.Fatalf("a time recorded by the guest: %v", err)
	}
	return v
}
