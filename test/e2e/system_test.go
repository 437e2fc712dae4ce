package e2e

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// prepareAndReboot is boot 1's step of an upgrade: prepare in the running
// system, then `kos-upgrade reboot` (the sleep keeps the driver from
// powering off while systemd reboots); --no-finalize: a btrfs root is
// staged (the default) and carried over in the offline boot, so every
// layout boots 5.8, offline, 5.9.
const prepareAndReboot = `kos-upgrade prepare --to 5.9 >$F/prepare.log 2>&1 || { echo "prepare failed: $?"; cat $F/prepare.log; exit 1; }
kos-upgrade reboot --no-finalize >$F/reboot.log 2>&1 || { echo "reboot failed: $?"; cat $F/reboot.log; exit 1; }
sleep 600`

// oldRootPackages is a step that records the packages of the old root LV
// into $F/old-rpm-qa (mounted read-only: the snapshot is the rollback
// point, not to be touched).
func oldRootPackages(layout string) string {
	mount := fmt.Sprintf("mount -o ro,noload /dev/%s/%s /mnt/old", systemVG, systemRootLV)
	if layout == LayoutBtrfs {
		mount = "mount -o ro,subvol=" + systemBtrfsSubvol + " LABEL=kos-root /mnt/old"
	}
	return `mkdir -p /mnt/old && ` + mount + ` &&
/usr/bin/rpm --root /mnt/old --dbpath /var/lib/rpm -qa --qf '%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}\n' | sort >$F/old-rpm-qa
cat /mnt/old/etc/os-release >$F/old-os-release; umount /mnt/old`
}

// lvReport is `lvs --reportformat json` of the system's VG.
type lvReport struct {
	Report []struct {
		LV []struct {
			Name    string `json:"lv_name"`
			Attr    string `json:"lv_attr"`
			Origin  string `json:"origin"`
			Pool    string `json:"pool_lv"`
			Merging string `json:"lv_merging"`
		} `json:"lv"`
	} `json:"report"`
}

// lvNames returns the LVs of boot n's lvs report.
func (f *Facts) lvNames(t *testing.T) []string {
	t.Helper()
	var r lvReport
	if err := json.Unmarshal([]byte(f.File("lvs.json")), &r); err != nil {
		t.Fatalf("lvs report: %v\n%s", err, f.File("lvs.json"))
	}
	var out []string
	for _, rep := range r.Report {
		for _, lv := range rep.LV {
			out = append(out, lv.Name)
		}
	}
	return out
}

// expectUpgraded checks that the facts are of the upgraded 5.9 system.
func expectUpgraded(t *testing.T, what string, f *Facts) {
	t.Helper()
	if f == nil {
		t.Fatalf("%s: the driver did not run", what)
	}
	if v := f.OSRelease("VERSION_ID"); v != "5.9" {
		t.Errorf("%s runs VERSION_ID %q, want 5.9", what, v)
	}
	pkgs := f.Packages()
	for _, p := range want59 {
		if !hasPackage(pkgs, p) {
			t.Errorf("%s: %s is not installed: %q", what, p, pkgs)
		}
	}
	for _, p := range gone59 {
		if hasPackage(pkgs, p) {
			t.Errorf("%s: %s is still installed: %q", what, p, pkgs)
		}
	}
}

// expectOld checks that the facts are of the untouched 5.8 system.
func expectOld(t *testing.T, what string, f *Facts, before []string) {
	t.Helper()
	if f == nil {
		t.Fatalf("%s: the driver did not run", what)
	}
	if v := f.OSRelease("VERSION_ID"); v != "5.8" {
		t.Errorf("%s runs VERSION_ID %q, want 5.8", what, v)
	}
	if got := f.Packages(); before != nil && !slices.Equal(got, before) {
		t.Errorf("%s: packages %q, want the old system's %q", what, got, before)
	}
}

// expectBackOnOld checks that boot n runs, from the old entry, the 5.8
// system boot 1 ran, untouched, and returns its facts.
func expectBackOnOld(t *testing.T, s *QemuSystem, n, what string) *Facts {
	t.Helper()
	before := s.Facts("1")
	expectOld(t, "boot 1", before, nil)
	f := s.Facts(n)
	expectOld(t, what, f, before.Packages())
	if sel := strings.TrimSpace(f.File("entry-selected")); sel != s.Entry {
		t.Errorf("%s started entry %q, want the old %s", what, sel, s.Entry)
	}
	return f
}

// offlineWindow is how long the offline apply ran, from the result in
// the new system's status.
func offlineWindow(t *testing.T, f *Facts) time.Duration {
	t.Helper()
	var st struct {
		State struct {
			LastResult *struct {
				StartedAt  time.Time `json:"started_at"`
				FinishedAt time.Time `json:"finished_at"`
			} `json:"last_result"`
		} `json:"state"`
	}
	if err := json.Unmarshal([]byte(f.File("status.json")), &st); err != nil || st.State.LastResult == nil {
		return 0
	}
	return st.State.LastResult.FinishedAt.Sub(st.State.LastResult.StartedAt)
}

// TestQemuSystemThinSuccess is the whole upgrade on a server's disk, with
// nothing played by the harness: OVMF and systemd-boot boot the root on a
// thin LV; prepare and `kos-upgrade reboot` run in the guest; the offline
// boot applies into a thin snapshot, writes a BLS entry for it and arms a
// trial with systemd-boot's boot counting; systemd-boot picks the new entry,
// the health unit blesses it. This is the full-system scenario of the
// default test run.
func TestQemuSystemThinSuccess(t *testing.T) {
	QemuParallel(t, 1)
	upgradeSucceeds(t, LayoutThin)
}

// TestQemuSystemBtrfsSuccess is TestQemuSystemThinSuccess on a btrfs root
// (subvolume @): the new entry boots the snapshot with rootflags=subvol=.
func TestQemuSystemBtrfsSuccess(t *testing.T) {
	RequireFull(t)
	QemuParallel(t, 1)
	upgradeSucceeds(t, LayoutBtrfs)
}

// upgradeSucceeds runs and checks a successful upgrade of a system whose
// root is a snapshot (thin LV or btrfs).
func upgradeSucceeds(t *testing.T, layout string) {
	t0 := time.Now()
	s := NewQemuSystem(t, layout)
	s.Script(t, map[string]string{
		"1": prepareAndReboot,
		"3": oldRootPackages(layout),
	})
	boots := s.Run(t, 5)
	if len(boots) != 3 {
		t.Fatalf("%d boots, want 3 (5.8, offline, 5.9)", len(boots))
	}
	before := s.Facts("1")
	expectOld(t, "boot 1", before, nil)
	if s.Facts("2") != nil {
		t.Errorf("boot 2 reached multi-user.target: it should have been the offline boot")
	}
	if c := boots[1].Console; !strings.Contains(c, "system-update.target") || !strings.Contains(c, "Upgrade to 5.9 succeeded") {
		t.Errorf("boot 2 is not a successful offline upgrade; console:\n%s", tail(c, 60))
	}
	after := s.Facts("3")
	expectUpgraded(t, "boot 3", after)
	if t.Failed() {
		t.Fatalf("facts of boot 3:%s\n--- run log:\n%s", after, s.ReadShared("run-3.log"))
	}
	st := after.Status(t)
	if st.State.Status != "succeeded" || st.State.LastResult == nil || !st.State.LastResult.Success {
		t.Errorf("kos-upgrade status in the new system: %s", after.File("status.json"))
	}
	snap := st.State.Snapshot
	if !strings.Contains(boots[1].Console, "as a trial") {
		t.Errorf("the offline boot armed no trial boot; console:\n%s", tail(boots[1].Console, 40))
	}
	var bs struct {
		State struct {
			Boot *struct {
				Entry string `json:"entry"`
				Trial string `json:"trial"`
			} `json:"boot"`
		} `json:"state"`
	}
	if err := json.Unmarshal([]byte(after.File("status.json")), &bs); err != nil || bs.State.Boot == nil || bs.State.Boot.Trial != "blessed" {
		t.Errorf("the trial is not blessed in the new system: %v\n%s\n--- health:\n%s", err, after.File("status.json"), after.File("health.log"))
	} else if sel := strings.TrimSpace(after.File("entry-selected")); !strings.HasPrefix(sel, bs.State.Boot.Entry+"+") {
		t.Errorf("systemd-boot selected %q in boot 3, want the trial entry %s with its counter", sel, bs.State.Boot.Entry)
	}
	// The new root is the thin snapshot, booted by its own entry, which
	// systemd-boot selected and the health check blessed.
	if m := after.File("root-mount"); layout == LayoutBtrfs && !strings.Contains(m, "[/"+snap+"]") ||
		layout != LayoutBtrfs && (!strings.Contains(m, "/dev/mapper/"+systemVG+"-") || strings.Contains(m, "/dev/mapper/"+systemVG+"-"+systemRootLV+" ")) {
		t.Errorf("boot 3's root is %q, want the snapshot %s", m, snap)
	}
	sel := strings.TrimSpace(after.File("entry-selected"))
	if sel == "" || sel == s.Entry {
		t.Errorf("systemd-boot selected entry %q in boot 3, want the new one (not %s)", sel, s.Entry)
	}
	if strings.Contains(after.File("entries"), "+") {
		t.Errorf("an entry still has a boot counter after the health check blessed the new system:\n%s\n--- health:\n%s",
			after.File("entries"), after.File("health.log"))
	}
	if !strings.Contains(after.File("entries"), s.Entry) {
		t.Errorf("the old entry %s is gone:\n%s", s.Entry, after.File("entries"))
	}
	if layout == LayoutThin {
		if lvs := after.lvNames(t); !slices.Contains(lvs, systemRootLV) || len(lvs) < 3 {
			t.Errorf("LVs after the upgrade: %q, want the old root, the pool and the snapshot", lvs)
		}
	}
	// The old root LV is the untouched rollback point.
	if got := strings.Fields(after.File("old-rpm-qa")); !slices.Equal(got, before.Packages()) {
		t.Errorf("the old root's packages changed: %q, were %q", got, before.Packages())
	}
	t.Logf("snapshot %s; the new system booted %d boot(s) after `kos-upgrade reboot`", snap, len(boots)-1)
	t.Logf("FIGURES (%s): boots from reboot to the new system %d; offline boot (QEMU start to exit) %s; offline window (apply) %s; scenario %s",
		layout, len(boots)-1, boots[1].Duration.Round(time.Millisecond), offlineWindow(t, after).Round(time.Millisecond), time.Since(t0).Round(time.Second))
}

// reposFlags returns --repo flags for fixture repos of s.
func (s *QemuSystem) reposFlags(names ...string) string {
	return strings.Join(repoFlags(s.Set, names...), " ")
}

// TestQemuSystemThickRollback upgrades a root on a thick LV in place (the
// snapshot is the rollback point), boots the upgraded system, then runs
// `kos-upgrade rollback`, which merges the snapshot back at the next boot.
func TestQemuSystemThickRollback(t *testing.T) {
	RequireFull(t)
	QemuParallel(t, 1)
	s := NewQemuSystem(t, LayoutThick)
	s.Script(t, map[string]string{
		"1": prepareAndReboot,
		"3": "kos-upgrade rollback >$F/rollback.log 2>&1 || { cat $F/rollback.log; exit 1; }\nsleep 600",
	})
	boots := s.Run(t, 6)
	if len(boots) != 4 {
		t.Fatalf("%d boots, want 4 (5.8, offline, 5.9, rolled back 5.8)", len(boots))
	}
	before := s.Facts("1")
	expectOld(t, "boot 1", before, nil)
	after := s.Facts("3")
	expectUpgraded(t, "boot 3", after)
	st := after.Status(t)
	if st.State.Status != "succeeded" || st.State.LastResult == nil || !st.State.LastResult.Success {
		t.Errorf("kos-upgrade status in the upgraded system: %s", after.File("status.json"))
	}
	if m := after.File("root-mount"); !strings.Contains(m, "/dev/mapper/"+systemVG+"-"+systemRootLV+" ") {
		t.Errorf("boot 3's root is %q, want the same LV upgraded in place", m)
	}
	if lvs := after.lvNames(t); len(lvs) != 2 {
		t.Errorf("LVs after the in-place upgrade: %q, want the root and its rollback snapshot", lvs)
	}
	if l := after.File("rollback.log"); !strings.Contains(l, "Rolled back: the root is merged back") {
		t.Errorf("kos-upgrade rollback did not say it merges the rollback point back:\n%s", l)
	}
	back := s.Facts("4")
	expectOld(t, "boot 4 (after the rollback)", back, before.Packages())
	bs := back.Status(t)
	if bs.State.LastResult == nil || bs.State.LastResult.Kind != "rollback" || !bs.State.LastResult.Success {
		t.Errorf("kos-upgrade status after the rollback: %s", back.File("status.json"))
	}
	t.Logf("FIGURES: thick in place: offline window %s; boots %d", offlineWindow(t, after).Round(time.Millisecond), len(boots))
}

// TestQemuSystemPowerCut cuts the power in the middle of the offline
// transaction (QEMU killed while the apply is stopped after its third
// package): the next boot is the old system, the run is recorded as
// failed, nothing is armed and nothing reboots again.
func TestQemuSystemPowerCut(t *testing.T) {
	RequireFull(t)
	QemuParallel(t, 1)
	s := NewQemuSystem(t, LayoutThin)
	s.Script(t, map[string]string{
		"1": `mkdir -p /etc/systemd/system/kos-upgrade-apply.service.d
printf '[Service]\nEnvironment=KOS_UPGRADE_TEST_HANG_AT=mid-transaction\n' >/etc/systemd/system/kos-upgrade-apply.service.d/hang.conf
` + prepareAndReboot,
	})
	s.CutAt = map[int]string{2: "KOS-TEST: hanging at mid-transaction"}
	boots := s.Run(t, 5)
	if len(boots) != 3 {
		t.Fatalf("%d boots, want 3 (5.8, offline cut, 5.8)", len(boots))
	}
	f := expectBackOnOld(t, s, "3", "boot 3 (after the power cut)")
	st := f.Status(t)
	if st.State.LastResult == nil || st.State.LastResult.Success || !strings.Contains(st.State.LastResult.Error, "interrupted") {
		t.Errorf("the interrupted run is not recorded as failed: %s", f.File("status.json"))
	}
	if st.Armed || f.File("system-update") != "" {
		t.Errorf("still armed after the power cut (a reboot loop): %q", f.File("system-update"))
	}
}

// TestQemuSystemBrokenRootFallsBack upgrades to a root whose init exits
// (keepme-1.1 of repo 5.9-badinit): the kernel panics in every trial boot
// of the new entry, systemd-boot's counter runs out after the configured
// tries (2) and the old entry boots again, where the health unit records
// the fallback.
func TestQemuSystemBrokenRootFallsBack(t *testing.T) {
	RequireFull(t)
	QemuParallel(t, 1)
	s := NewQemuSystem(t, LayoutThin)
	s.Script(t, map[string]string{
		"1": fmt.Sprintf(`mkdir -p /etc/kos-upgrade && echo tries=2 >/etc/kos-upgrade/boot.conf
kos-upgrade prepare --to 5.9 %s >$F/prepare.log 2>&1 || { cat $F/prepare.log; exit 1; }
kos-upgrade reboot >$F/reboot.log 2>&1 || { cat $F/reboot.log; exit 1; }
sleep 600`, s.reposFlags("5.9", "5.9-badinit")),
	})
	boots := s.Run(t, 7)
	if len(boots) != 5 {
		t.Fatalf("%d boots, want 5 (5.8, offline, 2 failed trials, 5.8)", len(boots))
	}
	for _, b := range boots[2:4] {
		if !strings.Contains(b.Console, "this init is broken on purpose") {
			t.Errorf("boot %d did not run the broken init of the new root; console:\n%s", b.N, tail(b.Console, 40))
		}
	}
	f := expectBackOnOld(t, s, "5", "boot 5 (after the fallback)")
	st := f.Status(t)
	if st.State.Status != "rolled-back" || st.State.LastResult == nil || st.State.LastResult.Kind != "fallback" || st.State.LastResult.Success {
		t.Errorf("the fallback is not recorded: %s\n--- health:\n%s", f.File("status.json"), f.File("health.log"))
	}
	// The failed entry is gone and loader.conf is as before the upgrade.
	if e := strings.TrimSpace(f.File("entries")); e != s.Entry {
		t.Errorf("entries after the fallback: %q, want only %s", e, s.Entry)
	}
	if c := f.File("loader.conf"); !strings.Contains(c, "default "+s.Entry+"\n") {
		t.Errorf("loader.conf after the fallback:\n%s", c)
	}
}

// TestQemuSystemKexec is the upgrade with `kos-upgrade reboot --kexec`:
// into the offline target and out of it to the new system with kexec, so
// the firmware runs once (the first boot) in the whole QEMU run.
func TestQemuSystemKexec(t *testing.T) {
	RequireFull(t)
	QemuParallel(t, 1)
	t0 := time.Now()
	s := NewQemuSystem(t, LayoutThin)
	s.Script(t, map[string]string{
		"1": strings.Replace(prepareAndReboot, "kos-upgrade reboot ", "kos-upgrade reboot --kexec ", 1),
	})
	boots := s.Run(t, 3)
	if len(boots) != 1 {
		t.Fatalf("%d QEMU boots, want 1 (5.8, kexec to the offline target, kexec to 5.9)", len(boots))
	}
	expectOld(t, "before the upgrade", s.Facts("1"), nil)
	after := s.Facts("1k")
	expectUpgraded(t, "after two kexecs", after)
	if after != nil && strings.Contains(after.File("root-mount"), "/dev/mapper/"+systemVG+"-"+systemRootLV+" ") {
		t.Errorf("the kexec'd system runs the old root LV: %s", after.File("root-mount"))
	}
	posts := strings.Count(boots[0].Console, "BdsDxe: starting")
	if posts != 1 {
		t.Errorf("the firmware started a boot loader %d times, want once (no POST after `kos-upgrade reboot --kexec`)", posts)
	}
	t.Logf("FIGURES: --kexec: firmware POSTs after `kos-upgrade reboot` %d; QEMU run %s; scenario %s",
		posts-1, boots[0].Duration.Round(time.Millisecond), time.Since(t0).Round(time.Second))
}
