package dbusapi_test

import (
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

	// The plain upgrade is the operator's right.
	sigs := watchSignals(t, conn)
	if out, err := b.gdbusCall(t, nobody, "Prepare", "{'to': <'5.9'>}"); err != nil {
		t.Fatalf("plain Prepare as %s: %v: %s", testUser, err, out)
	}
	if ok, msg := sigs.waitFinished(t, 0, 5*time.Minute); !ok {
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
