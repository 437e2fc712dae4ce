package dbusapi_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/keyarchos/kos-upgrade/pkg/dbusapi"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// TestPrepareRightsSplit: with the real polkitd deciding, a user whom a
// rule allows org.kos.upgrade.prepare (an operator group's rule) can
// prepare a plain upgrade, but not one without signature checks, from
// repositories of its choosing, without a snapshot or to an older release:
// those need org.kos.upgrade.prepare-unsafe (auth_admin). Badly typed or
// invalid options fail at once, before authorization. Nothing refused
// changes the state directory.
func TestPrepareRightsSplit(t *testing.T) {
	s := newSystem(t)
	b := startBus(t)
	nobody := testUserCred(t)
	testenv.StartPolkit(t, b.Addr, `polkit.addRule(function(action, subject) {
    if (action.id == "`+dbusapi.ActionPrepare+`" && subject.user == "`+testUser+`") {
        return polkit.Result.YES;
    }
});
`)
	startDaemon(t, b, s, dbusapi.Options{})
	conn := b.connect(t)
	before := stateDigest(t, s.Root)

	unsafe := []struct{ name, opts string }{
		{"no_gpg_check", "{'to': <'5.9'>, 'no_gpg_check': <true>}"},
		{"repos", "{'to': <'5.9'>, 'repos': <['mine=file:///home/mallory/repo']>}"},
		{"snapshot none", "{'to': <'5.9'>, 'snapshot': <'none'>}"},
		{"allow_downgrade", "{'to': <'5.7'>, 'allow_downgrade': <true>}"},
		{"downgrade answer", "{'to': <'5.7'>, 'answers': <['allow-downgrade=yes']>}"},
		{"iso", "{'iso': <['/etc/os-release']>}"},
	}
	for _, tc := range unsafe {
		t.Run(tc.name, func(t *testing.T) {
			out, err := b.gdbusCall(t, nobody, "Prepare", tc.opts)
			if err == nil || !strings.Contains(out, dbusapi.ErrorAccessDenied) || !strings.Contains(out, dbusapi.ActionPrepareUnsafe) {
				t.Errorf("Prepare %s as %s: %v: %s", tc.opts, testUser, err, out)
			}
		})
	}
	bad := []struct{ name, opts, want string }{
		{"to as u", "{'to': <uint32 5>}", "option to has type u, want s"},
		{"to not a version", "{'to': <'../../5.9'>}", "not a release version"},
		{"no_gpg_check as s", "{'to': <'5.9'>, 'no_gpg_check': <'yes'>}", "option no_gpg_check has type s, want b"},
		{"repos as s", "{'to': <'5.9'>, 'repos': <'a=file:///x'>}", "option repos has type s, want as"},
		{"bad answer", "{'to': <'5.9'>, 'answers': <['no value']>}", "want KEY=VALUE"},
		{"iso relative", "{'iso': <['kos.iso']>}", "not a clean absolute path"},
		{"iso a directory", "{'iso': <['/etc']>}", "not a regular file"},
		{"iso missing", "{'iso': <['/nonexistent.iso']>}", "no such file"},
		{"mode unknown", "{'to': <'5.9'>, 'mode': <'kexec'>}", "choose target or initramfs"},
		{"mode as b", "{'to': <'5.9'>, 'mode': <true>}", "option mode has type b, want s"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			out, err := b.gdbusCall(t, nobody, "Prepare", tc.opts)
			if err == nil || !strings.Contains(out, dbusapi.ErrorInvalidArgs) || !strings.Contains(out, tc.want) {
				t.Errorf("Prepare %s: %v: %s\nwant InvalidArgs with %q", tc.opts, err, out, tc.want)
			}
		})
	}
	if d := diffDigest(before, stateDigest(t, s.Root)); d != "" {
		t.Fatalf("refused calls changed the state directory:\n%s", d)
	}

	// The mode is the operator's choice too, and reaches the engine:
	// initramfs mode needs a one-time boot entry, which this system
	// (no boot loader) cannot make, so that prepare fails at its checks.
	sigs := watchSignals(t, conn)
	if out, err := b.gdbusCall(t, nobody, "Prepare", "{'to': <'5.9'>, 'mode': <'initramfs'>}"); err != nil {
		t.Fatalf("Prepare in initramfs mode as %s: %v: %s", testUser, err, out)
	}
	if ok, msg := sigs.waitFinished(t, 0, 5*time.Minute); ok || !strings.Contains(msg, "initramfs mode boots the upgrade initramfs through a one-time boot entry") {
		t.Fatalf("Prepare in initramfs mode without a boot loader: %v %q", ok, msg)
	}

	// The plain upgrade is the operator's right.
	after := len(sigs.snapshot())
	if out, err := b.gdbusCall(t, nobody, "Prepare", "{'to': <'5.9'>}"); err != nil {
		t.Fatalf("plain Prepare as %s: %v: %s", testUser, err, out)
	}
	if ok, msg := sigs.waitFinished(t, after, 5*time.Minute); !ok {
		t.Fatalf("plain Prepare failed: %s", msg)
	}
	plan, _ := prop(t, conn, "Plan").(map[string]dbus.Variant)
	if repos, ok := plan["repos"].Value().([]string); !ok || len(repos) != 0 {
		t.Errorf("Plan repos %v, want none (the system's own)", plan["repos"])
	}
	if sc := plan["signature_check"].Value(); sc != "enforced" {
		t.Errorf("Plan signature_check %v", sc)
	}
}

// TestNoCredentialsForEveryone: a repository URL with user:token@ in the
// plan, in the last result's error and in the plan's findings reaches no
// unprivileged reader of GetReport, GetHistory or the properties; the
// state directory is root's alone (0700, files 0600).
func TestNoCredentialsForEveryone(t *testing.T) {
	s := newSystem(t)
	b := startBus(t)
	nobody := testUserCred(t)
	const secret = "s3cr3t-t0ken"
	dir := filepath.Join(s.Root, "var/lib/kos-upgrade")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	plan := `{"version": 1, "id": "20260101T000000Z-5.9", "created_at": "2026-01-01T00:00:00Z", "source": {"id": "kos", "version_id": "5.8"},
"target": {"id": "kos", "version_id": "5.9"}, "repos": [{"id": "corp", "baseurl": "https://deploy:` + secret + `@mirror.example/kos/5.9"}],
"snapshot": "btrfs", "rpmdb_fingerprint": "sha256:x", "signature_check": "enforced", "stage_dir": "packages",
"transaction": [{"action": "remove", "nevra": "a-0:1-1.noarch", "name": "a", "reason": "from https://deploy:` + secret + `@mirror.example"}]}`
	state := `{"version": 1, "status": "prepared", "plan_id": "20260101T000000Z-5.9", "target": "5.9",
"last_result": {"run_id": "20251201T000000.000Z-5.8", "kind": "apply", "status": "failed", "error": "cannot download https://deploy:` + secret + `@mirror.example/x.rpm", "started_at": "2025-12-01T00:00:00Z"}}`
	os.WriteFile(filepath.Join(dir, "plan.json"), []byte(plan), 0o600)
	os.WriteFile(filepath.Join(dir, "state.json"), []byte(state), 0o600)
	os.MkdirAll(filepath.Join(dir, "history"), 0o700)
	os.WriteFile(filepath.Join(dir, "history", "20251201T000000.000Z-5.8.json"), []byte(`{"run_id": "20251201T000000.000Z-5.8", "kind": "apply", "status": "failed", "error": "cannot download https://deploy:`+secret+`@mirror.example/x.rpm", "started_at": "2025-12-01T00:00:00Z"}`), 0o600)
	// The first-boot verdict: its reasons are for everyone, the site
	// checks' output is not (health.json is root's).
	const checkSecret = "pg-passw0rd"
	os.WriteFile(filepath.Join(dir, "health.json"), []byte(`{"version": 1, "green": false, "decision": "fallback", "at": "2026-01-01T00:00:00Z",
"reasons": ["check required.d/db failed (exit status 1): db down"], "baseline": "x",
"checks": [{"name": "required.d/db", "class": "required", "result": "failed", "output": "password=`+checkSecret+`\ndb down", "seconds": 1}]}`), 0o600)
	startDaemon(t, b, s, dbusapi.Options{})

	var seen []string
	for _, m := range []string{"GetReport", "GetHistory"} {
		out, err := b.gdbusCall(t, nobody, m, "{}")
		if err != nil {
			t.Fatalf("%s as %s: %v: %s", m, testUser, err, out)
		}
		seen = append(seen, out)
	}
	for _, p := range []string{"Plan", "LastResult"} {
		out, errOut, err := b.busctl(t, nobody, "get-property", dbusapi.BusName, objPath, dbusapi.Interface, p)
		if err != nil {
			t.Fatalf("get-property %s: %v %s", p, err, errOut)
		}
		seen = append(seen, out)
	}
	all := strings.Join(seen, "\n")
	if strings.Contains(all, secret) {
		t.Errorf("an unprivileged caller read the token:\n%s", all)
	}
	if !strings.Contains(all, "https://***@mirror.example") {
		t.Errorf("the redacted URL is not shown:\n%s", all)
	}
	if strings.Contains(all, checkSecret) || !strings.Contains(all, "db down") {
		t.Errorf("GetReport shows a site check's output, or not the verdict's reason:\n%s", all)
	}

	// A prepare (the daemon's, as root) leaves root-only files.
	if _, errOut, err := b.busctl(t, nil, "call", dbusapi.BusName, objPath, dbusapi.Interface, "Cancel", "a{sv}", "0"); err != nil {
		t.Fatalf("Cancel: %v %s", err, errOut)
	}
	os.Chmod(dir, 0o755) // as an older kos-upgrade left it
	conn := b.connect(t)
	sigs := watchSignals(t, conn)
	b.mustBusctl(t, "call", dbusapi.BusName, objPath, dbusapi.Interface, "Prepare", "a{sv}", "1", "to", "s", "5.9")
	if ok, msg := sigs.waitFinished(t, 0, 5*time.Minute); !ok {
		t.Fatalf("Prepare failed: %s", msg)
	}
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case p == dir || rel == "packages" || rel == "history" || rel == "cache":
			if fi.Mode().Perm() != 0o700 {
				t.Errorf("%s is %04o, want 0700", p, fi.Mode().Perm())
			}
		case rel == "state.json" || rel == "plan.json" || strings.HasPrefix(rel, "history/"):
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("%s is %04o, want 0600", p, fi.Mode().Perm())
			}
		}
		return nil
	})
}
