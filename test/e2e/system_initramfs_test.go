package e2e

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// TestQemuSystemInitramfs is initramfs mode on the thin system: prepare
// --mode initramfs, `kos-upgrade reboot` builds the upgrade initramfs with
// the guest's dracut and boots it once through systemd-boot's one-shot
// entry; the hook applies before switch-root, removes its entry and image
// and reboots into the trial of the new root.
func TestQemuSystemInitramfs(t *testing.T) {
	RequireFull(t)
	QemuParallel(t, 1)
	t0 := time.Now()
	s := NewQemuSystem(t, LayoutThin)
	s.Script(t, map[string]string{
		"1": strings.Replace(prepareAndReboot, "--to 5.9 ", "--to 5.9 --mode initramfs ", 1) + "\n",
		"3": oldRootPackages(LayoutThin) + "\nls /boot >$F/boot-files",
	})
	boots := s.Run(t, 5)
	if len(boots) != 3 {
		t.Fatalf("%d boots, want 3 (5.8, the upgrade initramfs, 5.9)", len(boots))
	}
	before := s.Facts("1")
	expectOld(t, "boot 1", before, nil)
	if c := boots[1].Console; !strings.Contains(c, "Upgrade to 5.9 succeeded") || strings.Contains(c, "system-update.target") {
		t.Errorf("boot 2 is not an upgrade from the initramfs; console:\n%s", tail(c, 60))
	}
	after := s.Facts("3")
	expectUpgraded(t, "boot 3", after)
	if t.Failed() {
		t.Fatalf("facts of boot 3:%s\n--- run log of boot 1:\n%s", after, s.ReadShared("run-1.log"))
	}
	if strings.Contains(after.File("entries"), "initramfs") || strings.Contains(after.File("boot-files"), "kos-upgrade-initramfs") {
		t.Errorf("the one-time entry or the upgrade initramfs is left:\n%s\n%s", after.File("entries"), after.File("boot-files"))
	}
	if got := strings.Fields(after.File("old-rpm-qa")); !slices.Equal(got, before.Packages()) {
		t.Errorf("the old root's packages changed: %q, were %q", got, before.Packages())
	}
	st := after.Status(t)
	if st.State.Status != "succeeded" || st.State.LastResult == nil || !st.State.LastResult.Success {
		t.Errorf("kos-upgrade status in the new system: %s", after.File("status.json"))
	}
	t.Logf("FIGURES: initramfs mode: upgrade boot (QEMU start to exit) %s; offline window (apply) %s; scenario %s",
		boots[1].Duration.Round(time.Millisecond), offlineWindow(t, after).Round(time.Millisecond), time.Since(t0).Round(time.Second))
}
