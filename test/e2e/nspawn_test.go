package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// maxBoots bounds every scenario: more boots than that is a reboot loop.
const maxBoots = 5

// The 5.8 → 5.9 upgrade of the fixture (see test/fixture): what must and
// must not be installed afterwards.
var (
	want59    = []string{"kos-release-5.9-1.noarch", "libfoo-2.0-1.noarch", "libbar-1.0-1.noarch", "app-2.0-1.noarch", "newtool-2.0-1.noarch", "keepme-1.0-1.noarch"}
	gone59    = []string{"legacy", "oldtool"}
	base58Rel = "kos-release-5.8-1.noarch"
)

func hasPackage(pkgs []string, nameOrNEVRA string) bool {
	for _, p := range pkgs {
		if p == nameOrNEVRA || strings.HasPrefix(p, nameOrNEVRA+"-") && !strings.ContainsAny(strings.TrimPrefix(p, nameOrNEVRA+"-")[:1], "abcdefghijklmnopqrstuvwxyz") {
			return true
		}
	}
	return false
}

// expectBoots checks which subvolume each boot started and how it ended.
func expectBoots(t *testing.T, boots []Boot, want ...string) {
	t.Helper()
	var got []string
	for _, b := range boots {
		got = append(got, describeBoot(b))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("boots: got %q, want %q", got, want)
	}
}

func describeBoot(b Boot) string {
	end := "reboot"
	switch b.Exit {
	case exitPoweroff:
		end = "poweroff"
	case exitReboot:
	default:
		end = "exit"
	}
	sub := b.Subvol
	if strings.HasPrefix(sub, "kos-upgrade/") {
		sub = "kos-upgrade/*"
	}
	return sub + ":" + end
}

// offlineBoot checks that boot n went to system-update.target (the driver,
// which runs in multi-user.target only, did not run) and ran our unit.
func offlineBoot(t *testing.T, g *Guest, boots []Boot, n int) {
	t.Helper()
	if f := g.Facts(n); f != nil {
		t.Errorf("boot %d reached multi-user.target: it should have been the offline boot (system-update.target)", n)
	}
	c := boots[n-1].Console
	if !strings.Contains(c, "default target system-update.target") || !strings.Contains(c, "Starting \x1b[0;1;39mkos-upgrade-apply") && !strings.Contains(c, "Starting kos-upgrade-apply") {
		t.Errorf("boot %d did not start kos-upgrade-apply.service in system-update.target; console:\n%s", n, tail(c, 60))
	}
}

// TestNspawnSuccessBtrfs is the whole upgrade as a user runs it: prepare,
// `kos-upgrade reboot` in the running system, the offline boot into
// system-update.target where kos-upgrade-apply.service upgrades a snapshot
// and reboots, and the new system.
func TestNspawnSuccessBtrfs(t *testing.T) {
	t0 := time.Now()
	g := NewGuest(t)
	writeHealthConf(t, g)
	g.Kos(t, "prepare", "--to", "5.9")
	// --no-stage: the classic path end to end, the reference the staged
	// one is tested against (nspawn_stage_test.go: the default, staged).
	g.Step(t, 1, "kos-upgrade reboot --no-stage\n")
	g.Step(t, 3, healthStep)
	boots := g.Run(t, maxBoots)
	expectBoots(t, boots, "@:reboot", "@:reboot", "kos-upgrade/*:poweroff")
	// The health baseline arm took live in boot 1, and how the new
	// system's first boot would judge it: green.
	expectLiveBaseline(t, g)
	expectLiveVerdict(t, g.Facts(3), false)

	before := g.Facts(1)
	if before == nil || before.OSRelease("VERSION_ID") != "5.8" || !hasPackage(before.Packages(), base58Rel) {
		t.Fatalf("boot 1 should run KOS 5.8; facts: %+v", before)
	}
	if s := before.File("step.log"); !strings.Contains(s, "is armed") {
		t.Errorf("kos-upgrade reboot in boot 1 did not arm:\n%s", s)
	}
	offlineBoot(t, g, boots, 2)
	if !strings.Contains(boots[1].Console, "Upgrade to 5.9 succeeded") {
		t.Errorf("the offline boot's console does not report success:\n%s", tail(boots[1].Console, 40))
	}

	after := g.Facts(3)
	expectUpgraded(t, "boot 3", after)
	if m := after.File("root-mount"); !strings.Contains(m, boots[2].Subvol) {
		t.Errorf("boot 3's root is %q, want subvolume %s", m, boots[2].Subvol)
	}
	st := after.Status(t)
	if st.State.Status != "succeeded" || st.State.LastResult == nil || !st.State.LastResult.Success || st.State.LastResult.To != "5.9" {
		t.Errorf("kos-upgrade status in the new system: %s", after.File("status.json"))
	}
	if st.Armed || after.File("system-update") != "" {
		t.Errorf("/system-update is still there in the new system: %q", after.File("system-update"))
	}
	// The old root (@, the rollback target) is untouched: still 5.8, and
	// not armed any more.
	if l, err := readlinkOrEmpty(g.Root + "/system-update"); l != "" || err != nil {
		t.Errorf("/system-update is still there in the old root: %q %v", l, err)
	}
	old := strings.Fields(testenv.Run(t, "rpm", "--root", g.Root, "--dbpath", "/var/lib/rpm", "-qa", "--qf", "%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}\n"))
	slices.Sort(old)
	if !slices.Equal(old, before.Packages()) {
		t.Errorf("the old root's packages changed: %q, were %q", old, before.Packages())
	}
	// kos-upgrade log finds the offline boot in the journal the guest's
	// journald wrote, by the fields of the apply's milestones.
	l := g.Kos(t, "log", "last")
	for _, want := range []string{"Journal of boot ", "kos-upgrade apply 5.8 → 5.9 finished successfully", "Upgrade to 5.9 succeeded"} {
		if !strings.Contains(l, want) {
			t.Errorf("kos-upgrade log last on the old root lacks %q:\n%s", want, l)
		}
	}
	t.Logf("timings: offline boot %s, whole scenario %s", boots[1].Duration.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
}

func readlinkOrEmpty(p string) (string, error) {
	l, err := os.Readlink(p)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	return l, err
}

// repoFlags returns --repo ID=file://DIR for fixture repos.
func (g *Guest) repoFlags(names ...string) []string { return repoFlags(g.Set, names...) }

// repoFlags returns --repo ID=file://DIR for fixture repos of set.
func repoFlags(set *fixture.Set, names ...string) []string {
	var out []string
	for i, n := range names {
		out = append(out, "--repo", fmt.Sprintf("r%d=file://%s", i, set.Repos[n]))
	}
	return out
}

// upgradeSubvols lists the subvolumes kos-upgrade made.
func upgradeSubvols(t *testing.T, g *Guest) []string {
	var out []string
	for _, s := range g.Subvols(t) {
		if strings.HasPrefix(s, "kos-upgrade/") {
			out = append(out, s)
		}
	}
	return out
}

// expectOldSystem checks that boot n runs the untouched 5.8 system from @,
// with nothing armed.
func expectOldSystem(t *testing.T, g *Guest, n int) *Facts {
	t.Helper()
	f := g.Facts(n)
	if f == nil {
		t.Fatalf("the driver did not run in boot %d", n)
	}
	if v := f.OSRelease("VERSION_ID"); v != "5.8" || !hasPackage(f.Packages(), base58Rel) {
		t.Errorf("boot %d should run the old KOS 5.8; facts:%s", n, f)
	}
	if l := f.File("system-update"); l != "" {
		t.Errorf("boot %d: /system-update is still there (%s)", n, strings.TrimSpace(l))
	}
	if d := g.DefaultSubvol(t); d != "@" {
		t.Errorf("the default subvolume is %s, want @", d)
	}
	if s := upgradeSubvols(t, g); len(s) > 0 {
		t.Errorf("subvolumes left behind: %q", s)
	}
	return f
}

// TestNspawnFailingScriptlet: a %pre that fails in the offline transaction.
// The machine comes back on the old system, untouched, with the failure
// recorded, and does not loop.
func TestNspawnFailingScriptlet(t *testing.T) {
	g := NewGuest(t)
	g.Kos(t, append([]string{"prepare", "--to", "5.9"}, g.repoFlags("5.9", "5.9-failpre")...)...)
	g.Step(t, 1, "kos-upgrade reboot\n")
	boots := g.Run(t, maxBoots)
	expectBoots(t, boots, "@:reboot", "@:reboot", "@:poweroff")
	offlineBoot(t, g, boots, 2)
	if !strings.Contains(boots[1].Console, "upgrade failed") {
		t.Errorf("the offline boot's console does not report the failure:\n%s", tail(boots[1].Console, 40))
	}
	f := expectOldSystem(t, g, 3)
	want := g.Facts(1).File("rpm-qa")
	if got := f.File("rpm-qa"); got != want {
		t.Errorf("the old system's packages changed:\nbefore:\n%s\nafter:\n%s", want, got)
	}
	st := f.Status(t)
	lr := st.State.LastResult
	if st.State.Status != "failed" || lr == nil || lr.Success || lr.Step != "transaction" || !strings.Contains(lr.Error, "failpre") {
		t.Errorf("kos-upgrade status should record the failed transaction (failpre): %s", f.File("status.json"))
	}
}

// otherToolUnit is a test double of another tool's offline update service:
// ordered after ours, it records what it finds, removes its link and reboots.
const otherToolUnit = `[Unit]
Description=Another tool's offline update (test double)
DefaultDependencies=no
Requires=sysinit.target
After=sysinit.target system-update-pre.target kos-upgrade-apply.service
Before=system-update.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'readlink /system-update > /kos-e2e/other-saw-link; systemctl show -p ActiveState -p Result -p ExecMainStatus kos-upgrade-apply.service > /kos-e2e/other-saw-apply; rm -f /system-update; systemctl reboot'
StandardOutput=journal+console
`

// TestNspawnForeignLink: another tool's /system-update is left alone. arm
// refuses and names it; in the offline boot our unit exits 0 without
// touching the link and without rebooting under the other tool.
func TestNspawnForeignLink(t *testing.T) {
	g := NewGuest(t)
	g.Kos(t, "prepare", "--to", "5.9")
	g.WriteFile(t, "etc/systemd/system/other-update.service", otherToolUnit, 0o644)
	g.Symlink(t, "../other-update.service", "etc/systemd/system/system-update.target.wants/other-update.service")
	g.Step(t, 1, `mkdir -p /var/lib/other-tool
ln -s /var/lib/other-tool /system-update
if kos-upgrade reboot; then echo "UNEXPECTED: kos-upgrade reboot armed over another tool's link"; else echo "refused: $?"; fi
systemctl reboot
`)
	boots := g.Run(t, maxBoots)
	expectBoots(t, boots, "@:reboot", "@:reboot", "@:poweroff")
	step := g.Facts(1).File("step.log")
	if !strings.Contains(step, "refused: 1") || !strings.Contains(step, "another tool") || !strings.Contains(step, "/var/lib/other-tool") {
		t.Errorf("kos-upgrade reboot should refuse and name the other tool's link:\n%s", step)
	}
	offlineBoot(t, g, boots, 2)
	saw, _ := os.ReadFile(filepath.Join(g.Shared, "other-saw-link"))
	if strings.TrimSpace(string(saw)) != "/var/lib/other-tool" {
		t.Errorf("the other tool found its link as %q after kos-upgrade-apply ran, want /var/lib/other-tool (did kos-upgrade remove it, or reboot under it?)", saw)
	}
	apply, _ := os.ReadFile(filepath.Join(g.Shared, "other-saw-apply"))
	if !strings.Contains(string(apply), "Result=success") || !strings.Contains(string(apply), "ExecMainStatus=0") {
		t.Errorf("kos-upgrade-apply.service should have run and exited 0: %s", apply)
	}
	if !strings.Contains(boots[1].Console, "belongs to another tool") {
		t.Errorf("kos-upgrade apply should say why it did nothing:\n%s", tail(boots[1].Console, 40))
	}
	f := expectOldSystem(t, g, 3)
	if st := f.Status(t); st.State.Status != "prepared" {
		t.Errorf("the plan should still be prepared (never armed): %s", f.File("status.json"))
	}
}

// TestNspawnNoLoopWithoutBinary: kos-upgrade-apply.service's binary is
// missing or crashes before it could remove /system-update. The unit's
// ExecStopPost= removes our link and FailureAction=reboot reboots: the next
// boot is the normal system, not the offline target again. systemd's own
// safety net (system-update-cleanup.service) is masked to prove the unit
// does not depend on it.
func TestNspawnNoLoopWithoutBinary(t *testing.T) {
	for _, tc := range []struct{ name, breakIt string }{
		{"missing", "rm /usr/bin/kos-upgrade"},
		{"crash", "printf '#!/bin/sh\\nkill -SEGV $$\\n' > /usr/bin/kos-upgrade"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewGuest(t)
			g.Kos(t, "prepare", "--to", "5.9")
			// --no-stage: the offline step never runs here, so a
			// stage would stay pending (armed) after boot 3.
			g.Step(t, 1, "kos-upgrade reboot --no-reboot --no-stage\n"+tc.breakIt+"\nsystemctl mask system-update-cleanup.service\nsystemctl reboot\n")
			boots := g.Run(t, maxBoots)
			expectBoots(t, boots, "@:reboot", "@:reboot", "@:poweroff")
			if l := g.Facts(1).File("step.log"); !strings.Contains(l, "is armed") {
				t.Fatalf("boot 1 did not arm:\n%s", l)
			}
			offlineBoot(t, g, boots, 2)
			if !strings.Contains(boots[1].Console, "FAILED") {
				t.Errorf("kos-upgrade-apply.service should have failed in boot 2:\n%s", tail(boots[1].Console, 40))
			}
			expectOldSystem(t, g, 3)
		})
	}
}
