package upgrader

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
)

func validPlan() *Plan {
	return &Plan{
		Version: PlanVersion, ID: "20261125T101500Z-5.9", CreatedAt: time.Date(2026, 11, 25, 10, 15, 0, 0, time.UTC),
		MachineID: "0123456789abcdef0123456789abcdef",
		Source:    Release{ID: "kos", VersionID: "5.8"}, Target: Release{ID: "kos", VersionID: "5.9"},
		Snapshot: "btrfs", Mode: "target", RPMDBFingerprint: "sha256:abc", SignatureCheck: "enforced",
		StageDir: "packages",
		Transaction: []pkgmgr.Item{
			{Action: "upgrade", NEVRA: "app-0:2.0-1.noarch", Name: "app", File: "app-2.0-1.noarch.rpm", SHA256: "aa", Size: 10},
			{Action: "remove", NEVRA: "legacy-0:1.0-1.noarch", Name: "legacy", Reason: "conflicts"},
		},
	}
}

func planJSON(t *testing.T, mutate func(m map[string]any)) []byte {
	t.Helper()
	b, err := json.Marshal(validPlan())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if mutate != nil {
		mutate(m)
	}
	b, err = json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParsePlan(t *testing.T) {
	good := planJSON(t, nil)
	tests := []struct {
		name    string
		input   []byte
		wantErr string // substring; "" means success
	}{
		{name: "valid", input: good},
		{name: "empty", input: []byte(""), wantErr: "empty"},
		{name: "whitespace", input: []byte(" \n"), wantErr: "empty"},
		{name: "truncated", input: good[:len(good)/2], wantErr: "malformed JSON"},
		{name: "not an object", input: []byte(`[1,2]`), wantErr: "wrong type"},
		{name: "no version", input: planJSON(t, func(m map[string]any) { delete(m, "version") }), wantErr: `no "version"`},
		{name: "future version", input: planJSON(t, func(m map[string]any) { m["version"] = 99 }), wantErr: "newer than this kos-upgrade"},
		{name: "zero version", input: planJSON(t, func(m map[string]any) { m["version"] = 0 }), wantErr: "not valid"},
		{name: "version wrong type", input: planJSON(t, func(m map[string]any) { m["version"] = "1" }), wantErr: "wrong type"},
		{name: "no target", input: planJSON(t, func(m map[string]any) { m["target"] = map[string]any{} }), wantErr: "no target release"},
		{name: "no fingerprint", input: planJSON(t, func(m map[string]any) { delete(m, "rpmdb_fingerprint") }), wantErr: "no rpmdb fingerprint"},
		{name: "initramfs mode", input: planJSON(t, func(m map[string]any) { m["mode"] = "initramfs" })},
		{name: "no mode (older plans)", input: planJSON(t, func(m map[string]any) { delete(m, "mode") })},
		{name: "unknown mode", input: planJSON(t, func(m map[string]any) { m["mode"] = "kexec" }), wantErr: `mode "kexec" is neither target nor initramfs`},
		{name: "absolute stage dir", input: planJSON(t, func(m map[string]any) { m["stage_dir"] = "/etc" }), wantErr: "not a relative directory"},
		{name: "escaping stage dir", input: planJSON(t, func(m map[string]any) { m["stage_dir"] = "../../etc" }), wantErr: "not a relative directory"},
		{name: "install without file", input: planJSON(t, func(m map[string]any) {
			m["transaction"] = []any{map[string]any{"action": "install", "nevra": "x-0:1-1.noarch", "name": "x"}}
		}), wantErr: "no valid file"},
		{name: "file with slash", input: planJSON(t, func(m map[string]any) {
			m["transaction"] = []any{map[string]any{"action": "install", "nevra": "x-0:1-1.noarch", "name": "x", "file": "../x.rpm", "sha256": "aa"}}
		}), wantErr: "no valid file"},
		{name: "unknown action", input: planJSON(t, func(m map[string]any) {
			m["transaction"] = []any{map[string]any{"action": "explode", "nevra": "x-0:1-1.noarch", "name": "x"}}
		}), wantErr: `unknown action "explode"`},
		{name: "duplicate item", input: planJSON(t, func(m map[string]any) {
			it := map[string]any{"action": "remove", "nevra": "x-0:1-1.noarch", "name": "x"}
			m["transaction"] = []any{it, it}
		}), wantErr: "appears twice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := ParsePlan(tc.input)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("ParsePlan: %v", err)
				}
				if p.Target.VersionID != "5.9" || len(p.Transaction) != 2 {
					t.Fatalf("parsed plan is wrong: %+v", p)
				}
				return
			}
			if err == nil {
				t.Fatalf("ParsePlan succeeded, want error containing %q", tc.wantErr)
			}
			if !errors.Is(err, ErrBadPlan) {
				t.Errorf("error %v does not wrap ErrBadPlan", err)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not contain %q", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), "prepare") {
				t.Errorf("error %q does not tell the user what to do", err)
			}
		})
	}
}

func TestPlanKeepsUnknownFields(t *testing.T) {
	in := planJSON(t, func(m map[string]any) {
		m["future_field"] = map[string]any{"x": 1.0}
		m["note"] = "from a newer minor"
	})
	p, err := ParsePlan(in)
	if err != nil {
		t.Fatal(err)
	}
	p.SignatureCheck = "skipped" // a rewrite
	out, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	if m["note"] != "from a newer minor" || m["future_field"].(map[string]any)["x"] != 1.0 {
		t.Errorf("unknown fields lost in rewrite: %s", out)
	}
	if m["signature_check"] != "skipped" {
		t.Errorf("known field not rewritten: %s", out)
	}
}

func TestPlanKeysCoverEveryField(t *testing.T) {
	b, err := json.Marshal(planAlias(*validPlan()))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(b, &m)
	known := map[string]bool{}
	for _, k := range planKeys {
		known[k] = true
	}
	for k := range m {
		if !known[k] {
			t.Errorf("field %q is missing from planKeys: it would be duplicated as unknown", k)
		}
	}
}

func FuzzParsePlan(f *testing.F) {
	b, _ := json.Marshal(validPlan())
	f.Add(b)
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, in []byte) {
		p, err := ParsePlan(in)
		if err != nil {
			if !errors.Is(err, ErrBadPlan) {
				t.Fatalf("error does not wrap ErrBadPlan: %v", err)
			}
			return
		}
		// A plan that parses survives a rewrite and parses again.
		out, err := json.Marshal(p)
		if err != nil {
			t.Fatalf("cannot re-encode: %v", err)
		}
		if _, err := ParsePlan(out); err != nil {
			t.Fatalf("re-encoded plan does not parse: %v\n%s", err, out)
		}
	})
}
