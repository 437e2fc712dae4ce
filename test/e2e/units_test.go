package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/test/el8"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// unitExts are the file name extensions of systemd units the product may ship.
var unitExts = []string{"service", "socket", "timer", "path", "target", "mount", "automount", "swap", "slice", "scope"}

// isUnitFile reports whether path names a systemd unit (by extension) that
// is not a D-Bus activation file (those are named *.service too).
func isUnitFile(path string) bool {
	ext := strings.TrimPrefix(filepath.Ext(path), ".")
	if !slices.Contains(unitExts, ext) {
		return false
	}
	b, err := os.ReadFile(path)
	return err == nil && !strings.Contains(string(b), "[D-BUS Service]")
}

// unitFiles lists the systemd unit files of units/.
func unitFiles(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, ext := range unitExts {
		m, err := filepath.Glob(filepath.Join(repoRoot(), "units", "*."+ext))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range m {
			if isUnitFile(f) {
				out = append(out, f)
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("no unit files in units/")
	}
	return out
}

// shippedUnitFiles lists every systemd unit file of the source tree the
// product ships: units/ and the dracut module's units under dracut/.
func shippedUnitFiles(t *testing.T) []string {
	t.Helper()
	out := unitFiles(t)
	n := len(out)
	err := filepath.WalkDir(filepath.Join(repoRoot(), "dracut"), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && isUnitFile(path) {
			out = append(out, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) == n {
		t.Fatal("no unit files in dracut/")
	}
	return out
}

// unitEntry is one "Key=Value" of a unit file.
type unitEntry struct {
	Section, Key, Value string
	Line                int
}

func parseUnit(t *testing.T, path string) []unitEntry {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	entries, err := parseUnitText(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return entries
}

// parseUnitText parses a unit file as systemd does: sections, Key=Value
// lines, comments (# and ;), and lines continued by a trailing backslash.
func parseUnitText(r io.Reader) ([]unitEntry, error) {
	var out []unitEntry
	var errs []error
	section := ""
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		l := strings.TrimSpace(sc.Text())
		first := n
		for strings.HasSuffix(l, "\\") && sc.Scan() {
			n++
			l = strings.TrimSuffix(l, "\\") + " " + strings.TrimSpace(sc.Text())
		}
		switch {
		case l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, ";"):
		case strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]"):
			section = l[1 : len(l)-1]
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok {
				errs = append(errs, fmt.Errorf("line %d: not Key=Value: %q", first, l))
				continue
			}
			out = append(out, unitEntry{section, strings.TrimSpace(k), strings.TrimSpace(v), first})
		}
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, err)
	}
	return out, errors.Join(errs...)
}

// unitSections maps a unit type to the sections its files may have
// (systemd.unit(5) and the unit type's own page).
var unitSections = map[string][]string{
	"service":   {"Unit", "Service", "Install"},
	"socket":    {"Unit", "Socket", "Install"},
	"timer":     {"Unit", "Timer", "Install"},
	"path":      {"Unit", "Path", "Install"},
	"target":    {"Unit", "Install"},
	"mount":     {"Unit", "Mount", "Install"},
	"automount": {"Unit", "Automount", "Install"},
	"swap":      {"Unit", "Swap", "Install"},
	"slice":     {"Unit", "Slice", "Install"},
	"scope":     {"Unit", "Scope"},
}

// backportedTo239 are directives EL8's systemd 239 knows only because Red
// Hat backported them in a later RHEL 8 minor release (they are in
// systemd-239-82's load-fragment-gperf.gperf.m4, the kit's version, but
// upstream added them after 239): a KOS 5.x built on an earlier EL8 minor
// release does not know them, so the product's units must not use them.
// The value is the upstream release that added the directive.
var backportedTo239 = map[string]string{
	"MemoryMin": "240", "DefaultMemoryLow": "240", "DefaultMemoryMin": "243", "CPUQuotaPeriodSec": "242",
	"AllowedCPUs": "244", "AllowedMemoryNodes": "244", "IODeviceLatencyTargetSec": "240",
	"LogRateLimitIntervalSec": "240", "LogRateLimitBurst": "240", "ExecCondition": "243",
	"NUMAPolicy": "243", "NUMAMask": "243", "RestrictSUIDSGID": "242", "FlushPending": "242",
	"PassPacketInfo": "247", "ConditionControlGroupController": "244", "AssertControlGroupController": "244",
}

// newerValues239 are values (prefixes) of directives systemd 239 has that
// only a later release understands, with that release.
var newerValues239 = []struct{ key, prefix, since string }{
	{"Type", "exec", "240"},
	{"Type", "notify-reload", "253"},
	{"StandardOutput", "append:", "240"},
	{"StandardError", "append:", "240"},
	{"StandardOutput", "truncate:", "248"},
	{"StandardError", "truncate:", "248"},
	{"CPUAffinity", "numa", "248"},
}

// checkUnit239 returns what in the unit file name (its entries parsed)
// systemd 239 (KOS 5.x, EL8) would not understand: a section the unit type
// has not, a directive load-fragment-gperf.gperf.m4 of systemd 239 does not
// list for that section (systemd 239 ignores it with a warning), a
// directive only later RHEL 8 minor releases backported, a value only a
// later release understands. X- directives are systemd's own extension
// point and always pass.
func checkUnit239(known el8.Directives, name string, entries []unitEntry) []string {
	var bad []string
	typ := strings.TrimPrefix(filepath.Ext(name), ".")
	sections, ok := unitSections[typ]
	if !ok {
		return []string{fmt.Sprintf("%s: not a unit type systemd 239 knows", name)}
	}
	for _, e := range entries {
		where := fmt.Sprintf("%s:%d: [%s] %s=", name, e.Line, e.Section, e.Key)
		switch {
		case strings.HasPrefix(e.Key, "X-"):
			continue
		case !slices.Contains(sections, e.Section) && !strings.HasPrefix(e.Section, "X-"):
			bad = append(bad, fmt.Sprintf("%s: a %s unit has no [%s] section", where, typ, e.Section))
			continue
		case strings.HasPrefix(e.Section, "X-"):
			continue
		case !known.Has(e.Section, e.Key):
			bad = append(bad, fmt.Sprintf("%s: systemd 239 does not know it (load-fragment-gperf.gperf.m4)", where))
			continue
		}
		if since, ok := backportedTo239[e.Key]; ok {
			bad = append(bad, fmt.Sprintf("%s: added in systemd %s, only later RHEL 8 minor releases backported it to 239", where, since))
		}
		for _, v := range newerValues239 {
			if e.Key == v.key && strings.HasPrefix(e.Value, v.prefix) {
				bad = append(bad, fmt.Sprintf("%s%s: needs systemd %s; KOS 5.x has 239", where, e.Value, v.since))
			}
		}
		// Exec prefixes: "-", "@", "+", "!", "!!" exist in 239; ":" (249)
		// and "|" (256) do not.
		if strings.HasPrefix(e.Key, "Exec") {
			prefix := e.Value[:len(e.Value)-len(strings.TrimLeft(e.Value, "-@+!:|"))]
			if strings.ContainsAny(prefix, ":|") {
				bad = append(bad, fmt.Sprintf("%s%s: the %q prefix needs systemd 249 or later; KOS 5.x has 239", where, e.Value, prefix))
			}
		}
	}
	return bad
}

// systemd239 reads the directives of the kit's systemd 239; without the
// kit (../shared/el8) the test skips, which fails in CI.
func systemd239(t *testing.T) el8.Directives {
	t.Helper()
	src, err := el8.Sources()
	if err != nil {
		testenv.Skip(t, "skipping: "+err.Error())
	}
	known, err := el8.SystemdDirectivesFrom(filepath.Join(src, el8.SystemdTarball))
	if err != nil {
		t.Fatal(err)
	}
	return known
}

// TestUnitCheck239 shows that the systemd 239 check refuses what systemd 239
// does not know and passes what it does.
func TestUnitCheck239(t *testing.T) {
	known := systemd239(t)
	for _, tc := range []struct {
		name, file, unit string
		bad              []string // substrings, one per expected problem
	}{
		{"plain service", "a.service", "[Unit]\nDescription=x\nAfter=b.service\n[Service]\nType=oneshot\nExecStart=/bin/true\nTimeoutStartSec=4h\n[Install]\nWantedBy=multi-user.target\n", nil},
		{"X- directives and sections", "a.service", "[Unit]\nX-Foo=1\n[X-Custom]\nAnything=1\n", nil},
		{"continued line", "a.service", "[Service]\nExecStart=/bin/sh -c \\\n  'true'\n", nil},
		{"MemoryMin (240, a RHEL 8 backport)", "a.service", "[Service]\nMemoryMin=10M\n", []string{"MemoryMin=: added in systemd 240"}},
		{"CPUQuotaPeriodSec (242)", "a.service", "[Service]\nCPUQuotaPeriodSec=10ms\n", []string{"CPUQuotaPeriodSec=: added in systemd 242"}},
		{"ExecCondition (243)", "a.service", "[Service]\nExecCondition=/bin/true\n", []string{"ExecCondition=: added in systemd 243"}},
		{"ExecSearchPath (250)", "a.service", "[Service]\nExecSearchPath=/usr/bin\n", []string{"ExecSearchPath=: systemd 239 does not know it"}},
		{"TimeoutCleanSec (244)", "a.service", "[Service]\nTimeoutCleanSec=1\n", []string{"TimeoutCleanSec=: systemd 239 does not know it"}},
		{"ProtectClock (245)", "a.service", "[Service]\nProtectClock=yes\n", []string{"ProtectClock=: systemd 239"}},
		{"OOMPolicy (243)", "a.service", "[Service]\nOOMPolicy=stop\n", []string{"OOMPolicy=: systemd 239"}},
		{"Upholds (249)", "a.service", "[Unit]\nUpholds=b.service\n", []string{"Upholds=: systemd 239"}},
		{"a [Service] directive in [Unit]", "a.service", "[Unit]\nExecStart=/bin/true\n", []string{"[Unit] ExecStart=: systemd 239 does not know it"}},
		{"a [Service] section in a socket", "a.socket", "[Service]\nType=oneshot\n", []string{"a socket unit has no [Service] section"}},
		{"Type=exec (240)", "a.service", "[Service]\nType=exec\n", []string{"Type=exec: needs systemd 240"}},
		{"StandardOutput=append: (240)", "a.service", "[Service]\nStandardOutput=append:/var/log/x\n", []string{"needs systemd 240"}},
		{"the : exec prefix (249)", "a.service", "[Service]\nExecStart=-:/bin/true\n", []string{"prefix needs systemd 249"}},
		{"two problems", "a.service", "[Service]\nMemoryMin=1\nProtectProc=invisible\n", []string{"MemoryMin", "ProtectProc"}},
		{"a socket", "a.socket", "[Socket]\nListenStream=/run/a\nSocketMode=0600\n", nil},
		{"a timer", "a.timer", "[Timer]\nOnCalendar=daily\nPersistent=yes\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			entries, err := parseUnitText(strings.NewReader(tc.unit))
			if err != nil {
				t.Fatal(err)
			}
			got := checkUnit239(known, tc.file, entries)
			if len(got) != len(tc.bad) {
				t.Fatalf("got %d problems %q, want %d %q", len(got), got, len(tc.bad), tc.bad)
			}
			for i, want := range tc.bad {
				if !strings.Contains(got[i], want) {
					t.Errorf("problem %d: got %q, want it to contain %q", i, got[i], want)
				}
			}
		})
	}
}

// TestBackportedTo239Known keeps the list of RHEL 8 backports honest: each
// must be a directive of the kit's systemd 239 (else it is simply unknown,
// which the allowlist refuses anyway).
func TestBackportedTo239Known(t *testing.T) {
	known := systemd239(t)
	for key := range backportedTo239 {
		found := false
		for _, keys := range known {
			found = found || keys[key]
		}
		if !found {
			t.Errorf("%s is not in systemd 239's load-fragment-gperf.gperf.m4: drop it from backportedTo239", key)
		}
	}
}

// TestUnitsSystemd239 checks every unit the product ships (units/ and the
// dracut module's) against the directives systemd 239 (KOS 5.x, EL8) knows,
// read from its load-fragment-gperf.gperf.m4, and the apply unit against
// systemd.offline-updates(7).
func TestUnitsSystemd239(t *testing.T) {
	known := systemd239(t)
	for _, path := range shippedUnitFiles(t) {
		rel, _ := filepath.Rel(repoRoot(), path)
		entries := parseUnit(t, path)
		for _, p := range checkUnit239(known, rel, entries) {
			t.Error(p)
		}
		// Every shipped unit is pulled in by a link the package (or the
		// dracut module) ships, or by D-Bus activation: none has an
		// [Install] section, so none can be disabled by accident.
		for _, e := range entries {
			if e.Section == "Install" {
				t.Errorf("%s:%d: no [Install] section: the package ships the .wants/.requires links", rel, e.Line)
				break
			}
		}
	}

	apply := filepath.Join(repoRoot(), "units", "kos-upgrade-apply.service")
	entries := parseUnit(t, apply)
	get := func(section, key string) []string {
		var v []string
		for _, e := range entries {
			if e.Section == section && e.Key == key {
				v = append(v, strings.Fields(e.Value)...)
			}
		}
		return v
	}
	want := []struct {
		section, key string
		values       []string
	}{
		{"Unit", "DefaultDependencies", []string{"no"}},
		{"Unit", "Requires", []string{"sysinit.target"}},
		{"Unit", "After", []string{"sysinit.target", "system-update-pre.target"}},
		{"Unit", "Before", []string{"system-update.target"}},
		{"Unit", "FailureAction", []string{"reboot"}},
		{"Service", "Type", []string{"oneshot"}},
		{"Service", "ExecStart", []string{"/usr/bin/kos-upgrade", "apply", "--reboot"}},
		{"Service", "StandardOutput", []string{"journal+console"}},
	}
	for _, w := range want {
		got := get(w.section, w.key)
		for _, v := range w.values {
			if !slices.Contains(got, v) {
				t.Errorf("kos-upgrade-apply.service: [%s] %s= should contain %s (systemd.offline-updates(7)); has %q", w.section, w.key, v, got)
			}
		}
	}
	// The safety net for a binary that never ran must only remove our link.
	post := strings.Join(get("Service", "ExecStopPost"), " ")
	if !strings.Contains(post, "/var/lib/kos-upgrade") || !strings.Contains(post, "rm -f /system-update") {
		t.Errorf("kos-upgrade-apply.service: ExecStopPost= should remove /system-update when it points at /var/lib/kos-upgrade; has %q", post)
	}
	// ... and keep the link of a killed undo-journaled transaction, made
	// plain (docs/undo.md): the next boot restores the root first.
	if !strings.Contains(post, "/var/lib/kos-upgrade/undo) ln -sfn /var/lib/kos-upgrade") {
		t.Errorf("kos-upgrade-apply.service: ExecStopPost= should turn the undo journal's link into a plain one; has %q", post)
	}
}

// TestUnitsInstalledChecked makes sure the systemd 239 check covers what
// `make install` installs: every unit file in the installed tree is one of
// the source files TestUnitsSystemd239 checks, byte for byte.
func TestUnitsInstalledChecked(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: runs make install in -short mode")
	}
	testenv.RequireTools(t, "make")
	tree, err := installTree()
	if err != nil {
		t.Fatal(err)
	}
	checked := map[string]bool{}
	for _, path := range shippedUnitFiles(t) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		checked[string(b)] = true
	}
	n := 0
	err = filepath.WalkDir(tree, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() || !isUnitFile(path) {
			return err
		}
		n++
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if !checked[string(b)] {
			rel, _ := filepath.Rel(tree, path)
			t.Errorf("make install installs the unit /%s, which is not one of the units/ or dracut/ files the systemd 239 check covers", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Errorf("make install installed no unit file into %s", tree)
	}
}

// TestUnitsVerify runs `systemd-analyze verify` on every unit of units/ in
// a guest root (the cached Debian base plus `make install`), so that
// ExecStart= binaries and referenced units resolve as on a real system. Any
// warning ("Unknown key ...", "ignoring") fails the test, not only errors.
func TestUnitsVerify(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: needs the Debian guest base (debootstrap) in -short mode")
	}
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "systemd-analyze", "debootstrap", "tar", "make")
	tarball, err := BaseTarball(context.Background(), t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	tree, err := installTree()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	testenv.Run(t, "tar", "--numeric-owner", "-C", root, "-xf", tarball)
	testenv.Run(t, "cp", "-a", tree+"/.", root+"/")
	unitDir := filepath.Join(root, "usr/lib/systemd/system")
	// The link of systemd.offline-updates(7), as make install ships it.
	link := filepath.Join(unitDir, "system-update.target.wants", "kos-upgrade-apply.service")
	if l, err := os.Readlink(link); err != nil || l != "../kos-upgrade-apply.service" {
		t.Errorf("make install should ship %s -> ../kos-upgrade-apply.service; got %q, %v", link, l, err)
	}
	var names []string
	for _, path := range unitFiles(t) {
		name := filepath.Base(path)
		installed := filepath.Join(unitDir, name)
		if _, err := os.Stat(installed); err != nil {
			// Not installed by make install (yet): verify the file itself.
			t.Logf("%s is not installed by make install; verifying units/%s", name, name)
			testenv.Run(t, "install", "-m", "0644", path, installed)
		}
		names = append(names, name)
	}
	args := append([]string{"verify", "--root=" + root, "--man=no"}, names...)
	cmd := exec.Command("systemd-analyze", args...)
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}
