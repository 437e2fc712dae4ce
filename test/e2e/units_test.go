package e2e

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// unitFiles lists the systemd unit files of units/.
func unitFiles(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, ext := range []string{"service", "socket", "timer", "path", "target", "mount"} {
		m, err := filepath.Glob(filepath.Join(repoRoot(), "units", "*."+ext))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range m {
			// D-Bus activation files are named *.service too.
			if b, err := os.ReadFile(f); err == nil && strings.Contains(string(b), "[D-BUS Service]") {
				continue
			}
			out = append(out, f)
		}
	}
	if len(out) == 0 {
		t.Fatal("no unit files in units/")
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
	var out []unitEntry
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		l := strings.TrimSpace(sc.Text())
		switch {
		case l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, ";"):
		case strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]"):
			section = l[1 : len(l)-1]
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok {
				t.Errorf("%s:%d: not Key=Value: %q", path, n, l)
				continue
			}
			out = append(out, unitEntry{section, strings.TrimSpace(k), strings.TrimSpace(v), n})
		}
	}
	return out
}

// newerThan239 maps directives (and directive=value prefixes) that KOS 5.x's
// systemd 239 does not know to the release that added them. The host and
// the test guest run a newer systemd, whose `systemd-analyze verify` would
// accept them.
var newerThan239 = map[string]string{
	"ExecCondition": "243", "ExitType": "250", "OOMPolicy": "243", "TimeoutStartFailureMode": "246",
	"TimeoutStopFailureMode": "246", "TimeoutAbortSec": "243", "RuntimeRandomizedExtraSec": "249",
	"ProtectClock": "245", "ProtectKernelLogs": "244", "ProtectHostname": "242", "ProtectProc": "247",
	"ProcSubset": "247", "PrivateIPC": "248", "RestrictSUIDSGID": "242", "RestrictFileSystems": "250",
	"SystemCallLog": "247", "LoadCredential": "247", "SetCredential": "247", "LoadCredentialEncrypted": "250",
	"SetCredentialEncrypted": "250", "ImportCredential": "254", "LogRateLimitIntervalSec": "240",
	"LogRateLimitBurst": "240", "LogFilterPatterns": "253", "LogNamespace": "245", "NUMAPolicy": "243",
	"NUMAMask": "243", "CPUAffinity=numa": "248", "ManagedOOMSwap": "247", "ManagedOOMMemoryPressure": "247",
	"ManagedOOMMemoryPressureLimit": "247", "ManagedOOMPreference": "248", "CoredumpFilter": "246",
	"NoExecPaths": "247", "ExecPaths": "247", "ExtensionImages": "248", "ExtensionDirectories": "251",
	"MountImages": "247", "RootHash": "246", "RootVerity": "246", "RootImageOptions": "247",
	"ReloadSignal": "253", "OpenFile": "253", "MemoryKSM": "254", "WatchdogSignal": "240",
	"Upholds": "249", "PropagatesStopTo": "249", "StopPropagatedFrom": "249", "OnSuccess": "249",
	"OnSuccessJobMode": "249", "FailureActionExitStatus": "240", "SuccessActionExitStatus": "240",
	"ConditionPathIsEncrypted": "246", "ConditionMemory": "244",
	"ConditionCPUs": "244", "ConditionEnvironment": "246", "AssertEnvironment": "246",
	"ConditionFirmware": "249", "ConditionOSRelease": "249", "ConditionCPUFeature": "248",
	"ConditionControlGroupController": "244", "ConditionMemoryPressure": "250", "ConditionCPUPressure": "250",
	"ConditionIOPressure": "250", "ConditionCredential": "252",
	"FlushPending": "242", "Timestamping": "243", "PassPacketInfo": "247", "OnClockChange": "242",
	"OnTimezoneChange": "242", "FixedRandomDelay": "247",
	"Type=exec": "240", "Type=notify-reload": "253", "StandardOutput=append:": "240",
	"StandardError=append:": "240", "StandardOutput=truncate:": "248", "StandardError=truncate:": "248", "DelegateSubgroup": "254", "SurviveFinalKillSignal": "255",
}

// TestUnitsSystemd239 checks every unit of units/ against directives that
// systemd 239 (KOS 5.x, EL8) does not have, and the apply unit against
// systemd.offline-updates(7).
func TestUnitsSystemd239(t *testing.T) {
	for _, path := range unitFiles(t) {
		for _, e := range parseUnit(t, path) {
			for k, since := range newerThan239 {
				key, val, hasVal := strings.Cut(k, "=")
				if e.Key == key && (!hasVal || strings.HasPrefix(e.Value, val)) {
					t.Errorf("%s:%d: %s=%s needs systemd %s; KOS 5.x has 239", filepath.Base(path), e.Line, e.Key, e.Value, since)
				}
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
	for _, e := range entries {
		if e.Section == "Install" {
			t.Errorf("kos-upgrade-apply.service:%d: no [Install] section: the package ships the system-update.target.wants link", e.Line)
			break
		}
	}
	// The safety net for a binary that never ran must only remove our link.
	post := strings.Join(get("Service", "ExecStopPost"), " ")
	if !strings.Contains(post, "/var/lib/kos-upgrade") || !strings.Contains(post, "rm -f /system-update") {
		t.Errorf("kos-upgrade-apply.service: ExecStopPost= should remove /system-update when it points at /var/lib/kos-upgrade; has %q", post)
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
