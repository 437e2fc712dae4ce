package dbusapi_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/godbus/dbus/v5"

	"github.com/keyarchos/kos-upgrade/pkg/dbusapi"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// TestInPlaceProperties: LastResult says whether the run upgraded the live
// root (in_place) and whether it completes only at the next boot
// (reboot_required: an in-place rollback point merged back at the next
// activation), and RollbackAvailable is false while such a merge is
// pending, as the engine's rollback check says (upgrader.RollbackCheck).
func TestInPlaceProperties(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "dbus-daemon")
	b := startBus(t)
	for _, tc := range []struct {
		name                  string
		state                 string
		inPlace, rebootNeeded bool
		rollback              bool
	}{
		{name: "snapshot upgrade",
			state:    `"status": "succeeded", "backend": "btrfs", "previous": "@kos-upgrade/pre", "last_result": {"run_id": "r1", "kind": "apply", "success": true, "status": "succeeded", "backend": "btrfs", "started_at": "2026-01-01T00:00:00Z"}`,
			rollback: true},
		{name: "in-place upgrade",
			state:   `"status": "succeeded", "backend": "lvm", "in_place": true, "snapshot": "root_pre", "previous": "root_pre", "last_result": {"run_id": "r1", "kind": "apply", "success": true, "status": "succeeded", "backend": "lvm", "in_place": true, "started_at": "2026-01-01T00:00:00Z"}`,
			inPlace: true, rollback: true},
		{name: "in-place rollback pending",
			state:   `"status": "rolled-back", "backend": "lvm", "in_place": true, "previous": "root_pre", "reboot_required": true, "last_result": {"run_id": "r2", "kind": "rollback", "success": true, "status": "rolled-back", "backend": "lvm", "in_place": true, "started_at": "2026-01-01T00:00:00Z"}`,
			inPlace: true, rebootNeeded: true},
		{name: "merge pending after a succeeded run",
			state:   `"status": "succeeded", "backend": "lvm", "in_place": true, "previous": "root_pre", "reboot_required": true, "last_result": {"run_id": "r1", "kind": "apply", "success": true, "status": "succeeded", "backend": "lvm", "in_place": true, "started_at": "2026-01-01T00:00:00Z"}`,
			inPlace: true, rebootNeeded: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &system{Root: t.TempDir()}
			dir := filepath.Join(s.Root, "var/lib/kos-upgrade")
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "state.json"), []byte(`{"version": 1, "target": "5.9", `+tc.state+`}`), 0o600); err != nil {
				t.Fatal(err)
			}
			d := startDaemon(t, b, s, dbusapi.Options{})
			last, ok := prop(t, d.Conn, "LastResult").(map[string]dbus.Variant)
			if !ok {
				t.Fatalf("LastResult: %v", prop(t, d.Conn, "LastResult"))
			}
			for key, want := range map[string]bool{"in_place": tc.inPlace, "reboot_required": tc.rebootNeeded} {
				if v, ok := last[key]; !ok || v.Value() != want {
					t.Errorf("LastResult %s = %v (present: %v), want %v", key, v.Value(), ok, want)
				}
			}
			if got := prop(t, d.Conn, "RollbackAvailable"); got != tc.rollback {
				t.Errorf("RollbackAvailable = %v, want %v", got, tc.rollback)
			}
		})
	}
}
