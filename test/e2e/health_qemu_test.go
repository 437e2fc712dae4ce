package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/health"
	"github.com/keyarchos/kos-upgrade/test/fixture"
)

// healthFallbackStep is boot 4's step (the old system after the fallback):
// what status, log and D-Bus LastResult say, the old root's health.json,
// and the new root's, read from its snapshot LV (mounted read-only).
const healthFallbackStep = `kos-upgrade status >$F/status.txt 2>&1
kos-upgrade log last >$F/log.txt 2>&1
busctl --system get-property org.kos.Upgrade1 /org/kos/Upgrade1 org.kos.Upgrade1 LastResult >$F/last-result.txt 2>&1; echo $? >$F/last-result.rc
cp /var/lib/kos-upgrade/health.json $F/old-health.json
snap=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["state"]["last_result"]["previous"])' $F/status.json)
echo "$snap" >$F/new-root
lvchange -ay -K ` + systemVG + `/$snap
mkdir -p /mnt/new && mount -o ro,noload /dev/` + systemVG + `/$snap /mnt/new &&
cp /mnt/new/var/lib/kos-upgrade/health.json $F/new-health.json; umount /mnt/new`

// TestQemuSystemHealthFallsBack: the upgrade disables acme-web.service
// (app 2.0-2 of repo 5.9-acme-off, a packaging mistake). The first boot of
// the new system (thin LV snapshot, systemd-boot with a boot counter) is
// judged live by kos-upgrade-health.service against the baseline arm
// took: red (acme-web was active and is inactive, its port gone), so it
// falls back and reboots; the old system boots, and there `status`,
// `log` and D-Bus LastResult say why, and health.json is in the state
// directory of both roots.
func TestQemuSystemHealthFallsBack(t *testing.T) {
	RequireFull(t)
	s := NewQemuSystem(t, LayoutThin)
	s.Script(t, map[string]string{
		"1": fmt.Sprintf(`kos-upgrade prepare --to 5.9 %s >$F/prepare.log 2>&1 || { cat $F/prepare.log; exit 1; }
kos-upgrade reboot >$F/reboot.log 2>&1 || { cat $F/reboot.log; exit 1; }
sleep 600`, s.reposFlags(fixture.Repo59, fixture.Repo59AcmeOff)),
		// The health check reboots a red system; a green one is still up.
		"3": "sleep 120\necho 'kos-e2e: the new system is still up 120 s after its health check'",
		"4": healthFallbackStep,
	})
	boots := s.Run(t, 6)
	if len(boots) != 4 {
		t.Fatalf("%d boots, want 4 (5.8, offline, 5.9 judged red, 5.8); health of boot 3:\n%s", len(boots), s.ReadShared("boot-3/health.log"))
	}
	f := expectBackOnOld(t, s, "4", "boot 4 (after the health check's fallback)")
	if c := boots[2].Console; !strings.Contains(c, "failed its health check") {
		t.Errorf("boot 3's console does not show the red verdict:\n%s", tail(c, 60))
	}
	st := f.Status(t)
	if st.State.Status != "rolled-back" || st.State.LastResult == nil || st.State.LastResult.Kind != "fallback" ||
		!strings.Contains(st.State.LastResult.Error, "automatic fallback: acme-web.service was active before the upgrade and is inactive after") {
		t.Errorf("the fallback is not recorded with its reason in the old system: %s", f.File("status.json"))
	}
	for file, want := range map[string][]string{
		"status.txt": {"Health:   red, fallback", "acme-web.service was active before the upgrade and is inactive after",
			"tcp 127.0.0.1:8080 (acme-web.service) was listening before the upgrade and is not after"},
		"log.txt": {"acme-web.service was active before the upgrade and is inactive after"},
	} {
		for _, w := range want {
			if !strings.Contains(f.File(file), w) {
				t.Errorf("%s of the old system lacks %q:\n%s", file, w, f.File(file))
			}
		}
	}
	if strings.TrimSpace(f.File("last-result.rc")) == "0" {
		if !strings.Contains(f.File("last-result.txt"), "acme-web.service was active before the upgrade") {
			t.Errorf("D-Bus LastResult lacks the reason:\n%s", f.File("last-result.txt"))
		}
	} else {
		t.Logf("no D-Bus LastResult in the guest (busctl: %s)", f.File("last-result.txt"))
	}
	var verdicts []health.Verdict
	for _, file := range []string{"old-health.json", "new-health.json"} {
		var v health.Verdict
		if err := json.Unmarshal([]byte(f.File(file)), &v); err != nil {
			t.Fatalf("%s (root %s): %v\n%s\n--- step log:\n%s", file, f.File("new-root"), err, f.File(file), s.ReadShared("run-4.log"))
		}
		if v.Green || v.Decision != "fallback" || !strings.Contains(strings.Join(v.Reasons, "\n"), "acme-web.service was active before the upgrade and is inactive after") {
			t.Errorf("%s: %+v", file, v)
		}
		verdicts = append(verdicts, v)
	}
	if !verdicts[0].At.Equal(verdicts[1].At) {
		t.Errorf("the roots' verdicts differ: %v and %v", verdicts[0].At, verdicts[1].At)
	}
	t.Logf("the verdict read in the old system:\n%s", f.File("status.txt"))
}
