package health

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// presetRoot writes preset files (path relative to the root → content)
// into a new root.
func presetRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for rel, text := range files {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestPresets(t *testing.T) {
	root := presetRoot(t, map[string]string{
		// EL8's catch-all, last by name.
		"usr/lib/systemd/system-preset/99-default-disable.preset": "disable *\n",
		"usr/lib/systemd/system-preset/90-default.preset":         "# distribution\nenable sshd.service\nenable acme-*.service\n",
		// Hidden by /etc's file of the same name.
		"usr/lib/systemd/system-preset/50-site.preset": "enable legacy.service\n",
		"etc/systemd/system-preset/50-site.preset":     "; site\ndisable legacy.service\nbogus line.service\ndisable [bad\n",
		"usr/lib/systemd/system-preset/README":         "enable *\n",
	})
	p := LoadPresets(root)
	tests := []struct{ unit, want string }{
		{"sshd.service", "enable (/usr/lib/systemd/system-preset/90-default.preset:2)"},
		{"acme-web.service", "enable (/usr/lib/systemd/system-preset/90-default.preset:3)"},
		{"legacy.service", "disable (/etc/systemd/system-preset/50-site.preset:2)"},
		{"other.service", "disable (/usr/lib/systemd/system-preset/99-default-disable.preset:1)"},
	}
	for _, tc := range tests {
		t.Run(tc.unit, func(t *testing.T) {
			if got := p.Of(tc.unit).String(); got != tc.want {
				t.Errorf("preset of %s: %q, want %q", tc.unit, got, tc.want)
			}
		})
	}
	if got := LoadPresets(t.TempDir()).Of("x.service").String(); got != "enable (no preset matches)" {
		t.Errorf("no preset files: %q", got)
	}
}

// TestJudgePresets: a unit disabled by the upgrade is expected when the new
// system's presets disable it and the old system's did not; when the old
// ones disabled it already (EL8's "disable *"), it is a regression.
func TestJudgePresets(t *testing.T) {
	newRoot := presetRoot(t, map[string]string{
		"usr/lib/systemd/system-preset/90-kos.preset":             "disable acme-web.service\n",
		"usr/lib/systemd/system-preset/99-default-disable.preset": "disable *\n",
	})
	pol := Policy{Fatal: map[string]bool{KindUnitDisabled: true, KindServiceInactive: true}}
	down := live([]Unit{{Name: "acme-web.service", Type: "service", Active: "inactive", Sub: "dead"}}, nil, nil)
	tests := []struct {
		name, preset string
		green        bool
		rule         string
	}{
		{name: "presets changed to disable: expected", preset: "enable (no preset matches)", green: true,
			rule: "the new system's presets disable it: /usr/lib/systemd/system-preset/90-kos.preset:1; before the upgrade: enable (no preset matches)"},
		{name: "disabled by the old presets too: a regression", preset: "disable (/usr/lib/systemd/system-preset/99-default-disable.preset:1)"},
		{name: "preset not recorded: a regression"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			web := svc("acme-web.service", true, "active", "running")
			web.Preset = tc.preset
			v := Judge(Input{Baseline: live([]Unit{web}, nil, nil), Observed: down, Policy: pol, Presets: LoadPresets(newRoot)})
			if v.Green != tc.green {
				t.Fatalf("green %v, want %v: reasons %q", v.Green, tc.green, v.Reasons)
			}
			var rules []string
			for _, c := range v.Expected {
				rules = append(rules, c.Rule)
			}
			if tc.rule != "" && (len(rules) != 2 || !slices.Contains(rules, tc.rule)) {
				t.Errorf("expected changes' rules %q, want both changes of acme-web with %q", rules, tc.rule)
			}
			if tc.rule == "" && (len(rules) != 0 || !strings.Contains(strings.Join(v.Reasons, "\n"), "acme-web.service was enabled before the upgrade and is not after")) {
				t.Errorf("expected %q, reasons %q", rules, v.Reasons)
			}
		})
	}
}
