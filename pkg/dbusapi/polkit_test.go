package dbusapi_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/dbusapi"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// TestPolkitActionPerMethod: with the real polkitd deciding by the shipped
// policy (units/org.kos.upgrade.policy) and one site rule granting the test
// user org.kos.upgrade.cancel only, each privileged method asks polkit for
// its own action: every other one is refused naming that action (and
// saying authentication is required: the policy's auth_admin defaults),
// Cancel is allowed. Nothing refused changes the state directory.
func TestPolkitActionPerMethod(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "dbus-daemon", "gdbus")
	b := startBus(t)
	nobody := testUserCred(t)
	testenv.StartPolkit(t, b.Addr, `polkit.addRule(function(action, subject) {
    if (action.id == "`+dbusapi.ActionCancel+`" && subject.user == "`+testUser+`") {
        return polkit.Result.YES;
    }
});
`)
	s := &system{Root: t.TempDir()}
	if err := os.MkdirAll(filepath.Join(s.Root, "var/lib/kos-upgrade"), 0o700); err != nil {
		t.Fatal(err)
	}
	startDaemon(t, b, s, dbusapi.Options{
		Check: func(context.Context, string, []string) (bool, []byte, error) {
			t.Error("Check ran for a caller polkit refused")
			return false, nil, nil
		},
	})
	before := stateDigest(t, s.Root)
	for _, tc := range []struct{ method, opts, action string }{
		{"Check", "{'to': <'5.9'>}", dbusapi.ActionCheck},
		{"Prepare", "{'to': <'5.9'>}", dbusapi.ActionPrepare},
		{"Prepare", "{'to': <'5.9'>, 'snapshot': <'none'>}", dbusapi.ActionPrepareUnsafe},
		{"Arm", "{}", dbusapi.ActionArm},
		{"Reboot", "{'no_reboot': <true>}", dbusapi.ActionReboot},
		{"Rollback", "{'no_reboot': <true>}", dbusapi.ActionRollback},
	} {
		t.Run(tc.method+" "+tc.opts, func(t *testing.T) {
			out, err := b.gdbusCall(t, nobody, tc.method, tc.opts)
			if err == nil || !strings.Contains(out, dbusapi.ErrorAccessDenied) ||
				!strings.Contains(out, "to do "+tc.action+".") || !strings.Contains(out, "Authentication is required") {
				t.Errorf("%s as %s: %v: %s\nwant AccessDenied for %s, authentication required", tc.method, testUser, err, out, tc.action)
			}
		})
	}
	if d := diffDigest(before, stateDigest(t, s.Root)); d != "" {
		t.Fatalf("refused calls changed the state directory:\n%s", d)
	}
	if out, err := b.gdbusCall(t, nobody, "Cancel", "{}"); err != nil {
		t.Errorf("Cancel as %s, whom the rule allows it: %v: %s", testUser, err, out)
	}
}
