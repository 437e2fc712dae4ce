package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/health"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/test/fixture"
)

// healthFallbackStep is boot 4's step (the old system after the fallback):
// what status, log and D-Bus LastResult say, the old root's health.json,
// and the new root's, read from its snapshot LV (mounted read-only; the
// record names the snapshot, kos-upgrade/LABEL, whose LV is
// kos-upgrade-LABEL).
const healthFallbackStep = `kos-upgrade status >$F/status.txt 2>&1
kos-upgrade log last >$F/log.txt 2>&1
busctl --system get-property org.kos.Upgrade1 /org/kos/Upgrade1 org.kos.Upgrade1 LastResult >$F/last-result.txt 2>&1; echo $? >$F/last-result.rc
cp /var/lib/kos-upgrade/health.json $F/old-health.json
snap=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["state"]["last_result"]["previous"])' $F/status.json)
echo "$snap" >$F/new-root
lv=` + snapshot.LVMPrefix + `${snap#` + snapshot.BtrfsDir + `/}
lvchange -ay -K ` + systemVG + `/$lv
mkdir -p /mnt/new && mount -o ro,noload /dev/` + systemVG + `/$lv /mnt/new &&
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

// confirmWindowSetup is boot 1's addition for the confirmation window: a
// 30-minute window, a confirm.d probe that passes once
// /etc/kos-e2e-app-ready exists, and systemd-bless-boot masked (it would
// bless the counted entry at boot-complete.target, docs/health.md); and
// an enabled unit that fails at every start (started once here, so that
// the baseline arm takes has it failed): pre-existing, not counted.
const confirmWindowSetup = `printf '[Unit]\nDescription=kos-e2e: fails at every boot\n[Service]\nType=oneshot\nExecStart=/bin/false\n[Install]\nWantedBy=multi-user.target\n' >/etc/systemd/system/kos-e2e-broken.service
systemctl daemon-reload
systemctl enable kos-e2e-broken.service
systemctl start kos-e2e-broken.service || true
mkdir -p /etc/kos-upgrade/confirm.d
printf 'confirm_after = 30m\n' >/etc/kos-upgrade/health.conf
printf '#!/bin/sh\necho probing the application\ntest -e /etc/kos-e2e-app-ready\n' >/etc/kos-upgrade/confirm.d/10-app
chmod 0755 /etc/kos-upgrade/confirm.d/10-app
systemctl mask systemd-bless-boot.service
`

// confirmWindowStep is boot 3's step (the new system, its window open):
// what status and the entries say, then the application is made ready and
// the step waits (up to 4 minutes) for kos-upgrade-confirm.timer's run to
// bless the system.
const confirmWindowStep = `kos-upgrade status >$F/window-status.txt 2>&1
systemctl is-active kos-upgrade-confirm.timer >$F/timer-active 2>&1
touch /etc/kos-e2e-app-ready
blessed() { kos-upgrade --json status | python3 -c 'import json, sys; sys.exit(json.load(sys.stdin)["state"]["boot"]["trial"] != "blessed")'; }
i=0
while [ $i -lt 240 ] && ! blessed; do sleep 2; i=$((i+2)); done
echo $i >$F/bless-seconds
kos-upgrade status >$F/blessed-status.txt 2>&1
ls /boot/loader/entries >$F/blessed-entries
sleep 2
systemctl is-active kos-upgrade-confirm.timer >$F/timer-after 2>&1
journalctl -b -o short-monotonic -u kos-upgrade-confirm.service >$F/confirm.log 2>&1`

// TestQemuSystemHealthConfirmWindow: with confirm_after and a confirm.d
// probe, the first boot of the upgraded system (thin LV snapshot,
// systemd-boot with a boot counter) is green and stays on trial: the entry
// keeps its counter, kos-upgrade-confirm.timer runs; once the application
// is ready the timer's run of kos-upgrade health blesses it (the counter
// goes) and stops the timer. A unit that failed before the upgrade fails
// again: blessed all the same, listed as pre-existing.
func TestQemuSystemHealthConfirmWindow(t *testing.T) {
	RequireFull(t)
	s := NewQemuSystem(t, LayoutThin)
	s.Script(t, map[string]string{
		"1": confirmWindowSetup + prepareAndReboot,
		"3": confirmWindowStep,
	})
	boots := s.Run(t, 5)
	if len(boots) != 3 {
		t.Fatalf("%d boots, want 3 (5.8, offline, 5.9)", len(boots))
	}
	f := s.Facts("3")
	expectUpgraded(t, "boot 3", f)
	if t.Failed() {
		t.Fatalf("facts of boot 3:%s\n--- run log:\n%s", f, s.ReadShared("run-3.log"))
	}
	if st := f.File("window-status.txt"); !strings.Contains(st, "green, confirming") || !strings.Contains(st, "on trial until") {
		t.Errorf("status in the window:\n%s\n--- health:\n%s", st, f.File("health.log"))
	}
	if !strings.Contains(f.File("entries"), "+") {
		t.Errorf("the trial entry lost its boot counter in the window (blessed too early):\n%s", f.File("entries"))
	}
	if a := strings.TrimSpace(f.File("timer-active")); a != "active" {
		t.Errorf("kos-upgrade-confirm.timer in the window: %q", a)
	}
	if st := f.File("blessed-status.txt"); !strings.Contains(st, "confirmation window: the application probes passed") || !strings.Contains(st, "green, blessed") {
		t.Errorf("status after the probe passed (%s s):\n%s\n--- confirm runs:\n%s", f.File("bless-seconds"), st, f.File("confirm.log"))
	}
	if st := f.File("blessed-status.txt"); !strings.Contains(st, "pre-existing: kos-e2e-broken.service had failed before the upgrade already") {
		t.Errorf("the unit failing before the upgrade is not listed as pre-existing:\n%s", st)
	}
	if strings.Contains(f.File("blessed-entries"), "+") {
		t.Errorf("an entry still has a boot counter after the window closed:\n%s", f.File("blessed-entries"))
	}
	if a := strings.TrimSpace(f.File("timer-after")); a != "inactive" {
		t.Errorf("kos-upgrade-confirm.timer after the window: %q", a)
	}
	t.Logf("blessed %s s after the application was ready; confirm runs:\n%s", strings.TrimSpace(f.File("bless-seconds")), f.File("confirm.log"))
}
