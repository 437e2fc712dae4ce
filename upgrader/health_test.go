package upgrader_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/boot"
	"github.com/keyarchos/kos-upgrade/pkg/health"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// readVerdict reads health.json of the root at dir.
func readVerdict(t *testing.T, dir string) *health.Verdict {
	t.Helper()
	p := filepath.Join(dir, sysroot.StateDirRel, "health.json")
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatalf("no verdict in %s: %v", dir, err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %04o, want 0600", p, fi.Mode().Perm())
	}
	b, _ := os.ReadFile(p)
	var v health.Verdict
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	return &v
}

// TestHealthVerdict: the first boot of a real upgrade (btrfs, grub2 BLS,
// the fixture's 5.8 → 5.9), judged through the binary under --root
// (offline: the enabled units, fstab and the default target are compared,
// the live parts are not measured) against the baseline prepare and arm
// took. app 2.0-2 (repo 5.9-acme-off) disables acme-web.service (a
// packaging mistake); the plan
// removes legacy and its legacy.service (expected, with the rule).
func TestHealthVerdict(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, newRoot string)
		green bool
		// in the verdict's reasons (red) or warnings (green), and in
		// `status` of the root that boots next
		want []string
		// maxTime bounds the health command (hanging checks are killed)
		maxTime time.Duration
		// hook is what the green.d/red.d hook wrote (verdict, file;
		// ROOT stands for the new root);
		// output is in the command's output
		hook, output string
		// rearm: prepare and arm again on the old system afterwards
		rearm bool
	}{
		{name: "unit disabled by the upgrade is fatal by policy",
			setup: func(t *testing.T, newRoot string) {
				writeFile(t, filepath.Join(newRoot, "etc/kos-upgrade/health.conf"), "fatal = unit-disabled service-inactive\n", 0o644)
				writeFile(t, filepath.Join(newRoot, "etc/kos-upgrade/red.d/10-notify"), "#!/bin/sh\necho \"$KOS_UPGRADE_VERDICT $KOS_UPGRADE_VERDICT_FILE\" > "+filepath.Join(newRoot, "hook-ran")+"\nexit 7\n", 0o755)
			},
			hook:   "fallback ROOT" + sysroot.StateDirRel + "/health.json",
			rearm:  true,
			output: "hook red.d/10-notify: failed",
			want: []string{"acme-web.service was enabled before the upgrade and is not after",
				"expected: legacy.service was enabled before the upgrade and is not after: package legacy is removed by the plan"}},
		{name: "unit disabled by the new system's presets is expected",
			setup: func(t *testing.T, newRoot string) {
				// As if kos-release 5.9 shipped a preset disabling it.
				writeFile(t, filepath.Join(newRoot, "etc/kos-upgrade/health.conf"), "fatal = unit-disabled service-inactive\n", 0o644)
				writeFile(t, filepath.Join(newRoot, "usr/lib/systemd/system-preset/50-kos.preset"), "# KOS 5.9\ndisable acme-web.service\n", 0o644)
			},
			green: true,
			want:  []string{"expected: acme-web.service was enabled before the upgrade and is not after: the new system's presets disable it: /usr/lib/systemd/system-preset/50-kos.preset:2; before the upgrade: enable (no preset matches)"}},
		{name: "hanging required check is killed, red",
			setup: func(t *testing.T, newRoot string) {
				writeFile(t, filepath.Join(newRoot, "etc/kos-upgrade/health.conf"), "check_timeout = 2s\nhook_timeout = 1s\n", 0o644)
				writeFile(t, filepath.Join(newRoot, "etc/kos-upgrade/red.d/10-drain"), "#!/bin/sh\nsleep 600\n", 0o755)
				writeFile(t, filepath.Join(newRoot, "etc/kos-upgrade/required.d/10-db"), "#!/bin/sh\necho waiting for the database\nsleep 600\n", 0o755)
				writeFile(t, filepath.Join(newRoot, "etc/kos-upgrade/wanted.d/10-cache"), "#!/bin/sh\necho cache cold\nexit 1\n", 0o755)
			},
			want:    []string{"check required.d/10-db timed out (killed after 2s): waiting for the database"},
			output:  "hook red.d/10-drain: timed out",
			maxTime: 30 * time.Second},
		{name: "failing wanted check and damaged inputs: green with warnings",
			setup: func(t *testing.T, newRoot string) {
				writeFile(t, filepath.Join(newRoot, "etc/kos-upgrade/health.conf"), "fatal = everything\n", 0o644)
				writeFile(t, filepath.Join(newRoot, "etc/kos-upgrade/wanted.d/10-cache"), "#!/bin/sh\necho cache cold\nexit 1\n", 0o755)
				writeFile(t, filepath.Join(newRoot, sysroot.StateDirRel, "baseline.json"), `{"version": 99}`, 0o600)
				writeFile(t, filepath.Join(newRoot, "etc/kos-upgrade/green.d/10-notify"), "#!/bin/sh\necho \"$KOS_UPGRADE_VERDICT\" > "+filepath.Join(newRoot, "hook-ran")+"\n", 0o755)
			},
			green:  true,
			hook:   "blessed",
			output: "hook green.d/10-notify: passed",
			want: []string{"check wanted.d/10-cache failed (exit status 1): cache cold",
				`unknown kind "everything"`, "the default policy was used", "the baseline cannot be used"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := newBootSystem(t, true)
			// prepare and arm took the baseline, offline: acme-web and
			// legacy enabled, legacy.service expected to go.
			b.prepareAndArm(t, upgrader.PrepareOptions{Repos: b.repos(fixture.Repo59, fixture.Repo59Kernel, fixture.Repo59AcmeOff)})
			ar, err := b.Engin.Apply(context.Background())
			if err != nil {
				t.Fatalf("apply: %v", err)
			}
			res := ar.Result
			bl, err := os.ReadFile(filepath.Join(b.Root, sysroot.StateDirRel, "baseline.json"))
			if err != nil {
				t.Fatal(err)
			}
			if s := string(bl); !strings.Contains(s, `"acme-web.service"`) || !strings.Contains(s, `"rule": "package legacy is removed by the plan`) {
				t.Errorf("baseline:\n%s", s)
			}
			newRoot, _ := b.mountRoot(t, res.Snapshot)
			tc.setup(t, newRoot)
			ne := b.entry(t, boot.EntryIDPrefix+fixture.MachineID+"-"+newKver)
			t0 := time.Now()
			out, err := exec.Command(binary(t), "--root", newRoot, "health", "--cmdline", cmdline(ne)).CombinedOutput()
			if tc.maxTime > 0 && time.Since(t0) > tc.maxTime {
				t.Errorf("health took %s", time.Since(t0))
			}
			if tc.output != "" && !strings.Contains(string(out), tc.output) {
				t.Errorf("health output lacks %q:\n%s", tc.output, out)
			}
			if tc.hook != "" {
				want := strings.ReplaceAll(tc.hook, "ROOT", newRoot)
				if b, _ := os.ReadFile(filepath.Join(newRoot, "hook-ran")); strings.TrimSpace(string(b)) != want {
					t.Errorf("the hook wrote %q, want %q", b, want)
				}
			}
			var ee *exec.ExitError
			nextRoot := newRoot
			if tc.green {
				if err != nil {
					t.Fatalf("health: %v\n%s", err, out)
				}
			} else {
				if !errors.As(err, &ee) || ee.ExitCode() != 1 {
					t.Fatalf("health: %v, want exit 1\n%s", err, out)
				}
				nextRoot = b.Root
				if def := b.defaultSubvol(t); def != "@" {
					t.Errorf("default subvolume after the red verdict: %q", def)
				}
			}
			// The verdict is in the new root, and after a fallback in the
			// old one too, the same.
			v := readVerdict(t, newRoot)
			if v.Green != tc.green {
				t.Errorf("verdict green=%v, want %v: %+v", v.Green, tc.green, v)
			}
			if !tc.green {
				if old := readVerdict(t, b.Root); old.Decision != "fallback" || !old.At.Equal(v.At) {
					t.Errorf("the old root's verdict %+v differs from the new root's %+v", old, v)
				}
			}
			findings := strings.Join(append(append([]string{}, v.Reasons...), v.Warnings...), "\n")
			st, err := exec.Command(binary(t), "--root", nextRoot, "status").CombinedOutput()
			if err != nil {
				t.Fatalf("status: %v\n%s", err, st)
			}
			t.Logf("status of the root that boots next:\n%s", st)
			if !tc.green {
				// The fallback's history record says why (log, and D-Bus
				// LastResult, which is the same record).
				lg, err := exec.Command(binary(t), "--root", nextRoot, "log", "last").CombinedOutput()
				if err != nil || !strings.Contains(string(lg), "automatic fallback: "+v.Reasons[0]) {
					t.Errorf("log last of the root that boots next lacks %q: %v\n%s", "automatic fallback: "+v.Reasons[0], err, lg)
				}
			}
			for _, w := range tc.want {
				if !strings.Contains(string(st), w) {
					t.Errorf("status of the root that boots next lacks %q:\n%s", w, st)
				}
				if !strings.HasPrefix(w, "expected:") && !strings.Contains(findings, w) {
					t.Errorf("verdict lacks %q:\n%s", w, findings)
				}
			}
			if tc.rearm {
				// The next upgrade's arm takes a new baseline and drops
				// the verdict of this one's first boot.
				b.prepareAndArm(t, upgrader.PrepareOptions{Repos: b.repos(fixture.Repo59, fixture.Repo59Kernel)})
				if _, err := os.Stat(filepath.Join(b.Root, sysroot.StateDirRel, "health.json")); !os.IsNotExist(err) {
					t.Errorf("the old verdict survived the next arm: %v", err)
				}
			}
		})
	}
}

// TestHealthConfirmWindow: health.conf's confirmation window keeps a green
// trial on trial (grubenv still arms it, saved_entry still the old entry)
// until the confirm.d probe passes or the window has passed, then blesses
// or falls back. Each case runs the binary twice on the first boot of a
// real upgrade (btrfs, grub2 BLS), as kos-upgrade-health.service and then
// kos-upgrade-confirm.service would.
// getEnv is the value of key in a grub environment block ("" when unset).
func getEnv(env *boot.Env, key string) string {
	v, _ := env.Get(key)
	return v
}

func TestHealthConfirmWindow(t *testing.T) {
	tests := []struct {
		name, conf string
		// probe exits 0 once ROOT/app-ready exists; none: no confirm.d
		probe bool
		// between the runs: create app-ready, or wait, or write a
		// damaged health.conf (the window stays open)
		ready  bool
		damage bool
		wait   time.Duration
		green  bool
		// in health.json's confirmed (green) or reasons (red)
		want string
	}{
		{name: "probe passes on the second run: blessed before the window ends",
			conf: "confirm_after = 1h\n", probe: true, ready: true, green: true, want: "the application probes passed"},
		{name: "damaged health.conf in the window: kept open, the probe decides",
			conf: "confirm_after = 1h\n", probe: true, ready: true, damage: true, green: true, want: "the application probes passed"},
		{name: "probe never passes: fallback when the window ends",
			conf: "confirm_after = 3s\n", probe: true, wait: 3 * time.Second,
			want: "the application probes (confirm.d) did not pass within the confirmation window (3s)"},
		{name: "probe never passes, confirm_on_timeout = bless",
			conf: "confirm_after = 3s\nconfirm_on_timeout = bless\n", probe: true, wait: 3 * time.Second, green: true,
			want: "the confirmation window (3s) passed; the application probes did not pass"},
		{name: "no probe: blessed once the window has passed, still healthy",
			conf: "confirm_after = 3s\n", wait: 3 * time.Second, green: true,
			want: "the system stayed healthy for the confirmation window (3s)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := newBootSystem(t, true)
			res := b.applyKernel(t)
			newRoot, _ := b.mountRoot(t, res.Snapshot)
			writeFile(t, filepath.Join(newRoot, "etc/kos-upgrade/health.conf"), tc.conf, 0o644)
			if tc.probe {
				writeFile(t, filepath.Join(newRoot, "etc/kos-upgrade/confirm.d/10-app"),
					"#!/bin/sh\necho probing the application\ntest -e "+filepath.Join(newRoot, "app-ready")+"\n", 0o755)
			}
			hook := "#!/bin/sh\necho \"$KOS_UPGRADE_VERDICT\" >> " + filepath.Join(newRoot, "hook-ran") + "\n"
			writeFile(t, filepath.Join(newRoot, "etc/kos-upgrade/green.d/10-notify"), hook, 0o755)
			writeFile(t, filepath.Join(newRoot, "etc/kos-upgrade/red.d/10-drain"), hook, 0o755)
			ne := b.entry(t, boot.EntryIDPrefix+fixture.MachineID+"-"+newKver)
			oldDefault := getEnv(b.env(t), "saved_entry")
			runHealth := func() (string, error) {
				out, err := exec.Command(binary(t), "--root", newRoot, "health", "--cmdline", cmdline(ne)).CombinedOutput()
				return string(out), err
			}

			// First run: green, the window opens; nothing is blessed.
			out, err := runHealth()
			if err != nil || !strings.Contains(out, "stays on trial") {
				t.Fatalf("first run: %v\n%s", err, out)
			}
			v := readVerdict(t, newRoot)
			if !v.Green || v.Decision != "confirming" || v.ConfirmBy == nil {
				t.Errorf("verdict in the window: %+v", v)
			}
			env := b.env(t)
			if getEnv(env, "saved_entry") != oldDefault || getEnv(env, "kos_upgrade_trial") != ne.ID {
				t.Errorf("in the window the trial is not armed any more: saved_entry %q, kos_upgrade_trial %q", getEnv(env, "saved_entry"), getEnv(env, "kos_upgrade_trial"))
			}
			if _, err := os.Stat(filepath.Join(newRoot, "hook-ran")); err == nil {
				t.Errorf("a hook ran while the window is open")
			}
			st, _ := exec.Command(binary(t), "--root", newRoot, "status").CombinedOutput()
			if !strings.Contains(string(st), "green, confirming") || !strings.Contains(string(st), "on trial until") {
				t.Errorf("status in the window:\n%s", st)
			}

			if tc.ready {
				writeFile(t, filepath.Join(newRoot, "app-ready"), "", 0o644)
			}
			if tc.damage {
				writeFile(t, filepath.Join(newRoot, "etc/kos-upgrade/health.conf"), "confirm_after = forever\n", 0o644)
			}
			time.Sleep(tc.wait)
			out, err = runHealth()
			nextRoot := newRoot
			if tc.green {
				if err != nil {
					t.Fatalf("second run: %v\n%s", err, out)
				}
				if env := b.env(t); getEnv(env, "saved_entry") != ne.ID || getEnv(env, "kos_upgrade_trial") != "" {
					t.Errorf("not blessed: saved_entry %q, kos_upgrade_trial %q", getEnv(env, "saved_entry"), getEnv(env, "kos_upgrade_trial"))
				}
			} else {
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != 1 {
					t.Fatalf("second run: %v, want exit 1\n%s", err, out)
				}
				nextRoot = b.Root
				if def := b.defaultSubvol(t); def != "@" {
					t.Errorf("default subvolume after the window failed: %q", def)
				}
			}
			v = readVerdict(t, nextRoot)
			findings := v.Confirmed + strings.Join(v.Reasons, "\n")
			if v.Green != tc.green || !strings.Contains(findings, tc.want) {
				t.Errorf("verdict after the window: green %v, %q; want %v, %q", v.Green, findings, tc.green, tc.want)
			}
			// The hook ran once, after the final verdict, and its result
			// is in health.json (of both roots after a fallback).
			decision := map[bool]string{true: "blessed", false: "fallback"}[tc.green]
			if b, _ := os.ReadFile(filepath.Join(newRoot, "hook-ran")); string(b) != decision+"\n" {
				t.Errorf("hooks wrote %q, want %q once", b, decision)
			}
			for _, r := range []string{newRoot, nextRoot} {
				if v := readVerdict(t, r); len(v.Hooks) != 1 || v.Hooks[0].Result != health.ResultPassed {
					t.Errorf("hooks in %s's health.json: %+v", r, v.Hooks)
				}
			}
		})
	}
}
