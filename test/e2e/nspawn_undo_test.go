package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// rpmFilesState records into $F what must come back byte for byte after
// an undo: `rpm -Va` (size, digest, mode, owner, mtime of every file the
// rpm database lists, against it) and, independently of the database,
// the type, mode and owner (stat), link target and sha256 of every path
// the database lists.
const rpmFilesState = `/usr/bin/rpm --dbpath /var/lib/rpm -Va >$F/rpm-Va 2>&1; echo $? >$F/rpm-Va.rc
/usr/bin/rpm --dbpath /var/lib/rpm -qa --qf '[%{FILENAMES}\n]' | sort -u >/tmp/rpm-files
tr '\n' '\000' </tmp/rpm-files | xargs -0 stat -c '%n %F %a %u %g %N' >$F/rpm-stat 2>&1
tr '\n' '\000' </tmp/rpm-files | xargs -0 sha256sum >$F/rpm-sha256 2>/dev/null
wc -l </tmp/rpm-files >$F/rpm-files.count
`

// expectSameRPMFiles checks that the rpm-managed files recorded by
// rpmFilesState in facts a and b are the same (rpm -Va, stat, sha256), and
// that there are some.
func expectSameRPMFiles(t *testing.T, what string, a, b *Facts) {
	t.Helper()
	if n, err := strconv.Atoi(strings.TrimSpace(a.File("rpm-files.count"))); err != nil || n < 50 ||
		strings.Count(a.File("rpm-sha256"), "\n") < 40 || strings.Count(a.File("rpm-stat"), "\n") < n {
		t.Errorf("%s: too few rpm-managed paths recorded (%q): stat:\n%s", what, a.File("rpm-files.count"), tail(a.File("rpm-stat"), 10))
	}
	for _, file := range []string{"rpm-Va", "rpm-Va.rc", "rpm-stat", "rpm-sha256"} {
		if x, y := a.File(file), b.File(file); x != y {
			t.Errorf("%s: %s differs from before the upgrade:\n%s", what, file, lineDiff(x, y))
		}
	}
}

// TestNspawnUndoKilled: kos-upgrade apply is killed (SIGKILL, the machine
// keeps running) in the middle of an in-place transaction with an undo
// journal (--snapshot undo on the guest's btrfs root: the journal clones).
// The unit's ExecStopPost= keeps the next boot in the offline unit
// (FailureAction= reboots), where apply restores the root from the journal
// before anything else and reboots: the root never boots half-upgraded.
// The next boot runs the old system, its rpm-managed files as before
// (rpm -Va, stat, sha256), nothing armed.
func TestNspawnUndoKilled(t *testing.T) {
	t0 := time.Now()
	g := NewGuest(t)
	g.Kos(t, "prepare", "--to", "5.9", "--snapshot", "undo")
	g.WriteFile(t, "etc/systemd/system/kos-upgrade-apply.service.d/crash.conf",
		"[Service]\nEnvironment=KOS_UPGRADE_TEST_CRASH_AT=mid-transaction\n"+
			// After the unit's own: what its safety net left.
			"ExecStopPost=/bin/sh -c 'readlink /system-update >/kos-e2e/link-after-stop-$(cat /kos-e2e/boot)'\n", 0o644)
	g.Step(t, 1, "F=$1\n"+rpmFilesState+"kos-upgrade reboot\n")
	g.Step(t, 4, "F=$1\n"+rpmFilesState+"systemctl --no-block poweroff\n")
	boots := g.Run(t, maxBoots)
	expectBoots(t, boots, "@:reboot", "@:reboot", "@:reboot", "@:poweroff")
	offlineBoot(t, g, boots, 2)
	offlineBoot(t, g, boots, 3)
	if c := boots[1].Console; !strings.Contains(c, "cloned (reflinks)") || !strings.Contains(c, "transaction: [2/") ||
		!strings.Contains(c, "Failed to start") || strings.Contains(c, "succeeded") {
		t.Errorf("boot 2 did not make the undo journal and get killed in the transaction; console:\n%s", tail(c, 60))
	}
	if c := boots[2].Console; !strings.Contains(c, "interrupted and has been settled") {
		t.Errorf("boot 3 did not settle the killed run; console:\n%s", tail(c, 60))
	}
	for n, want := range map[int]string{2: "/var/lib/kos-upgrade", 3: ""} {
		if got, err := os.ReadFile(filepath.Join(g.Shared, fmt.Sprintf("link-after-stop-%d", n))); err != nil || strings.TrimSpace(string(got)) != want {
			t.Errorf("boot %d: /system-update after the unit stopped is %q (%v), want %q", n, got, err, want)
		}
	}
	f := expectOldSystem(t, g, 4)
	if got, want := f.File("rpm-qa"), g.Facts(1).File("rpm-qa"); got != want {
		t.Errorf("the old system's packages changed:\nbefore:\n%s\nafter:\n%s", want, got)
	}
	expectSameRPMFiles(t, "boot 4", g.Facts(1), f)
	st := f.Status(t)
	if lr := st.State.LastResult; lr == nil || lr.Success || !strings.Contains(lr.Error, "interrupted") {
		t.Errorf("the killed run is not recorded as interrupted: %s", f.File("status.json"))
	}
	t.Logf("TestNspawnUndoKilled: %s (boots %s / %s / %s / %s)", time.Since(t0).Round(time.Second), boots[0].Duration.Round(time.Second),
		boots[1].Duration.Round(time.Second), boots[2].Duration.Round(time.Second), boots[3].Duration.Round(time.Second))
}

// lineDiff lists the lines only in a (-) and only in b (+).
func lineDiff(a, b string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	ma, mb := in(a), in(b)
	var out []string
	for _, l := range strings.Split(a, "\n") {
		if !mb[l] {
			out = append(out, "- "+l)
		}
	}
	for _, l := range strings.Split(b, "\n") {
		if !ma[l] {
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}
