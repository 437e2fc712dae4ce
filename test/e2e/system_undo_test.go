package e2e

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/test/fixture"
)

// undoState is `kos-upgrade status --json`'s state, as far as the undo
// backend goes.
type undoState struct {
	State struct {
		Status     string `json:"status"`
		Backend    string `json:"backend"`
		InPlace    bool   `json:"in_place"`
		Blessed    bool   `json:"blessed"`
		Previous   string `json:"previous"`
		LastResult *struct {
			Kind    string `json:"kind"`
			Success bool   `json:"success"`
			Error   string `json:"error"`
			Backend string `json:"backend"`
			InPlace bool   `json:"in_place"`
		} `json:"last_result"`
	} `json:"state"`
}

func undoStatus(t *testing.T, f *Facts, file string) undoState {
	t.Helper()
	var s undoState
	if err := json.Unmarshal([]byte(f.File(file)), &s); err != nil {
		t.Fatalf("%s: %v\n%s", file, err, f.File(file))
	}
	return s
}

// journalLine is what the offline boot says of the undo journal it made.
var journalLine = regexp.MustCompile(`undo journal [^\n]*: \d+ files \(\d+ KiB\) [^\n]*it took \d+ KiB of the filesystem`)

// TestQemuEL8Undo is kos-upgrade on the EL8 installer's layout, where no
// snapshot fits (NewQemuEL8UndoSystem: GPT, /boot on XFS, a full volume
// group with root on XFS reflink=1, swap and home), booted by EL8's grub2.
// prepare's auto picks the undo journal. The upgrade to 5.9 with
// kernel-core 5.9.0 and app-2.0-2 (repo 5.9-acme-off: it disables
// acme-web.service) runs in place, kernel-install makes the new kernel the
// default, and the first boot of the new system is red: the health unit
// falls back through the journal (root) and the /boot backup, and reboots
// into the old kernel and root, whose rpm-managed files are what they were
// before the upgrade (rpm -Va, stat, sha256 of every listed path) and whose
// rpm database has the old set. Then the same system upgrades to 5.9
// without the broken app: blessed at its first boot, and `kos-upgrade
// clean` drops the journal. make e2e only.
func TestQemuEL8Undo(t *testing.T) {
	RequireFull(t)
	QemuParallel(t, 1)
	t0 := time.Now()
	s := NewQemuEL8UndoSystem(t)
	setup := time.Since(t0)
	facts := `vgs --noheadings -o vg_free_count ` + systemVG + ` >$F/vg-free 2>&1
findmnt -n -o FSTYPE / >$F/root-fstype; findmnt -n -o FSTYPE /boot >$F/boot-fstype
xfs_info / >$F/xfs-info 2>&1
swapon --show=NAME --noheadings >$F/swaps; readlink -f /dev/mapper/` + systemVG + `-` + fullVGSwapLV + ` >$F/swap-dev
findmnt -n -o SOURCE /home >$F/home
systemctl is-active acme-web.service >$F/acme-web 2>&1
`
	s.Script(t, map[string]string{
		"1": s.upgradeStep(facts+rpmFilesState, fixture.Repo59AcmeOff),
		// The health unit falls back and reboots: never power off here.
		"3": "sleep 300",
		"4": s.upgradeStep(rpmFilesState + "journalctl -b -1 -o short-monotonic -u kos-upgrade-health.service >$F/health-before.log 2>&1\n"),
		"6": `df -B1 --output=used / | tail -1 >$F/df-before-clean
kos-upgrade clean >$F/clean.log 2>&1; echo $? >$F/clean.rc
df -B1 --output=used / | tail -1 >$F/df-after-clean
ls -A /var/lib/kos-upgrade/undo >$F/undo-after-clean 2>/dev/null
kos-upgrade --json status >$F/status-after-clean.json 2>&1`,
	})
	boots := s.Run(t, 8)
	if len(boots) != 6 {
		t.Fatalf("%d boots, want 6 (5.8, offline, 5.9 red, 5.8, offline, 5.9); run log of boot 1:\n%s\n--- last console:\n%s",
			len(boots), s.ReadShared("run-1.log"), tail(boots[len(boots)-1].Console, 80))
	}
	before := s.Facts("1")
	expectOld(t, "boot 1", before, nil)
	for file, want := range map[string]string{"vg-free": "0", "root-fstype": "xfs", "boot-fstype": "xfs", "acme-web": "active",
		"home": "/dev/mapper/" + systemVG + "-" + fullVGHomeLV} {
		if got := strings.TrimSpace(before.File(file)); got != want {
			t.Errorf("boot 1: %s is %q, want %q", file, got, want)
		}
	}
	if x := before.File("xfs-info"); !strings.Contains(x, "reflink=1") {
		t.Errorf("the root is not XFS with reflink=1:\n%s", x)
	}
	if sw, dev := strings.TrimSpace(before.File("swaps")), strings.TrimSpace(before.File("swap-dev")); sw == "" || sw != dev {
		t.Errorf("swap is not on the swap LV (%s): swaps %q", dev, sw)
	}
	// The offline boot: auto picked the undo journal.
	for _, want := range []string{"the root is upgraded in place", "Upgrade to 5.9 succeeded"} {
		if !strings.Contains(boots[1].Console, want) {
			t.Errorf("the first offline boot does not say %q; console:\n%s", want, tail(boots[1].Console, 60))
		}
	}
	j1 := journalLine.FindString(boots[1].Console)
	if j1 == "" || !strings.Contains(j1, "cloned (reflinks)") {
		t.Errorf("the first offline boot made no undo journal of clones: %q", j1)
	}
	if !strings.Contains(boots[2].Console, fixture.EL8Kernel59) {
		t.Errorf("boot 3 did not run the new kernel; console:\n%s", tail(boots[2].Console, 40))
	}

	// The fallback: the old kernel and root, as they were.
	back := expectEL8Old(t, s, "4", "boot 4 (after the health fallback)")
	st := undoStatus(t, back, "status.json")
	lr := st.State.LastResult
	if st.State.Status != "rolled-back" || lr == nil || lr.Kind != "fallback" || lr.Success || !strings.Contains(lr.Error, "acme-web.service") ||
		lr.Backend != "undo" || !lr.InPlace {
		t.Errorf("the fallback through the undo journal is not recorded: %s\n--- health of boot 3:\n%s", back.File("status.json"), back.File("health-before.log"))
	}
	for _, file := range []string{"rpm-Va", "rpm-Va.rc", "rpm-stat", "rpm-sha256"} {
		if b, a := before.File(file), back.File(file); a != b || a == "" {
			t.Errorf("%s after the fallback differs from before the upgrade:\n%s", file, lineDiff(b, a))
		}
	}

	// The second upgrade: blessed, in place, the journal dropped by clean.
	if !strings.Contains(boots[4].Console, "Upgrade to 5.9 succeeded") {
		t.Errorf("the second offline boot did not succeed; console:\n%s", tail(boots[4].Console, 60))
	}
	j2 := journalLine.FindString(boots[4].Console)
	after := s.Facts("6")
	expectUpgraded(t, "boot 6", after)
	up := undoStatus(t, after, "status.json")
	if up.State.Status != "succeeded" || up.State.Backend != "undo" || !up.State.InPlace || !up.State.Blessed || up.State.Previous == "" {
		t.Errorf("the in-place upgrade with the undo journal is not blessed: %s\n--- health:\n%s", after.File("status.json"), after.File("health.log"))
	}
	if c := after.File("cmdline"); !strings.Contains(c, "/vmlinuz-"+fixture.EL8Kernel59+" ") || !strings.Contains(c, "root=/dev/mapper/"+systemVG+"-"+systemRootLV+" ") {
		t.Errorf("boot 6's command line %q is not the new kernel's on the same root LV", c)
	}
	if env := after.File("grubenv"); !strings.Contains(env, "saved_entry="+fixture.MachineID+"-"+fixture.EL8Kernel59+"\n") {
		t.Errorf("grubenv after the upgrade:\n%s", env)
	}
	cleaned := undoStatus(t, after, "status-after-clean.json")
	if rc := strings.TrimSpace(after.File("clean.rc")); rc != "0" || strings.TrimSpace(after.File("undo-after-clean")) != "" || cleaned.State.Previous != "" {
		t.Errorf("kos-upgrade clean after the blessing (exit %s) left the journal: %q, previous %q\n%s", rc,
			after.File("undo-after-clean"), cleaned.State.Previous, after.File("clean.log"))
	}
	t.Logf("FIGURES: EL8 layout, undo: setup %s, scenario %s; boots %s / %s / %s / %s / %s / %s; rpm-listed paths %s; journals: %q, %q; the root's used bytes before and after clean dropped the journal: %s / %s",
		setup.Round(time.Second), time.Since(t0).Round(time.Second),
		boots[0].Duration.Round(time.Second), boots[1].Duration.Round(time.Second), boots[2].Duration.Round(time.Second),
		boots[3].Duration.Round(time.Second), boots[4].Duration.Round(time.Second), boots[5].Duration.Round(time.Second),
		strings.TrimSpace(before.File("rpm-files.count")), j1, j2,
		strings.TrimSpace(after.File("df-before-clean")), strings.TrimSpace(after.File("df-after-clean")))
}
