package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/health"
	"github.com/keyarchos/kos-upgrade/test/fixture"
)

// healthConf is the guest's /etc/kos-upgrade/health.conf: a short wait for
// units still starting, so that a dry run fits in a boot.
const healthConf = "# kos-e2e\nactivating_wait = 20s\n"

// healthStep judges the new system as its first boot would, without acting
// (kos-upgrade health --dry-run), then powers off.
const healthStep = "kos-upgrade --json health --dry-run > $1/verdict.json 2> $1/verdict.err; echo $? > $1/verdict.rc\nsystemctl --no-block poweroff\n"

// brokenUnit fails at every boot, before and after the upgrade: the
// verdict lists it as pre-existing, not as a regression.
const brokenUnit = "[Unit]\nDescription=kos-e2e: fails at every boot\n[Service]\nType=oneshot\nExecStart=/bin/false\n[Install]\nWantedBy=multi-user.target\n"

// writeHealthConf puts healthConf and an enabled, always failing
// kos-e2e-broken.service into the guest's root before prepare.
func writeHealthConf(t *testing.T, g *Guest) {
	t.Helper()
	for rel, text := range map[string]string{
		"etc/kos-upgrade/health.conf":               healthConf,
		"etc/systemd/system/kos-e2e-broken.service": brokenUnit,
	} {
		p := filepath.Join(g.Root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	link := filepath.Join(g.Root, "etc/systemd/system/multi-user.target.wants/kos-e2e-broken.service")
	if err := os.Symlink("/etc/systemd/system/kos-e2e-broken.service", link); err != nil {
		t.Fatal(err)
	}
}

// expectLiveBaseline checks the baseline arm took in the running 5.8 guest
// (live, through systemd's D-Bus API and /proc): acme-web.service enabled
// and running, listening on 127.0.0.1:8080, and legacy.service expected to
// go with the package the plan removes.
func expectLiveBaseline(t *testing.T, g *Guest) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(g.Root, "var/lib/kos-upgrade/baseline.json"))
	if err != nil {
		t.Fatalf("no baseline in the old root: %v", err)
	}
	bl, err := health.Parse(b, "baseline.json")
	if err != nil {
		t.Fatal(err)
	}
	var web, legacy *health.Unit
	for i, u := range bl.Units {
		switch u.Name {
		case "acme-web.service":
			web = &bl.Units[i]
		case "legacy.service":
			legacy = &bl.Units[i]
		}
	}
	if !bl.Live || web == nil || !web.Enabled || web.Active != "active" || web.Sub != "running" || legacy == nil || legacy.Active != "active" {
		t.Errorf("the baseline arm took in the guest is not live or lacks the units (acme-web %+v, legacy %+v):\n%s", web, legacy, b)
	}
	var listening bool
	for _, s := range bl.Sockets {
		listening = listening || s.Key() == "tcp 127.0.0.1:8080" && s.Unit == "acme-web.service"
	}
	if !listening {
		t.Errorf("the baseline lacks acme-web's listener on 127.0.0.1:8080: %+v", bl.Sockets)
	}
	var expected bool
	for _, e := range bl.Expected {
		expected = expected || e.Unit == "legacy.service" && strings.Contains(e.Rule, "package legacy is removed by the plan")
	}
	if !expected {
		t.Errorf("legacy.service is not expected to go: %+v", bl.Expected)
	}
}

// expectLiveVerdict checks the dry-run verdict of the new system in boot
// n's facts. disabled: the upgrade disabled acme-web.service (app 2.0-2 of
// repo 5.9-acme-off): red, it was active and is inactive, its port gone.
// Otherwise green, acme-web running on. Either way legacy.service's end
// is expected (the plan removes legacy) and the always-failing unit is
// pre-existing.
func expectLiveVerdict(t *testing.T, f *Facts, disabled bool) {
	t.Helper()
	var v health.Verdict
	if err := json.Unmarshal([]byte(f.File("verdict.json")), &v); err != nil {
		t.Fatalf("kos-upgrade health --dry-run in the new system: %v\n%s\n%s", err, f.File("verdict.json"), f.File("verdict.err"))
	}
	all := strings.Join(append(append([]string{}, v.Reasons...), v.Warnings...), "\n")
	rc := strings.TrimSpace(f.File("verdict.rc"))
	if disabled {
		if v.Green || rc != "1" {
			t.Errorf("the verdict of the system whose web server the upgrade disabled is green (exit %s): %+v", rc, v)
		}
		for _, want := range []string{"acme-web.service was active before the upgrade and is inactive after",
			"tcp 127.0.0.1:8080 (acme-web.service) was listening before the upgrade and is not after"} {
			if !strings.Contains(all, want) {
				t.Errorf("the verdict lacks %q:\n%s", want, all)
			}
		}
	} else if !v.Green || rc != "0" || strings.Contains(all, "acme-web") {
		t.Errorf("the verdict of a healthy upgrade is not green (exit %s): reasons %q, warnings %q", rc, v.Reasons, v.Warnings)
	}
	var legacy bool
	for _, c := range v.Expected {
		legacy = legacy || c.Subject == "legacy.service" && strings.Contains(c.Rule, "removed by the plan")
	}
	if !legacy || strings.Contains(all, "legacy.service") {
		t.Errorf("legacy.service's end is not listed as expected: expected %+v, findings:\n%s", v.Expected, all)
	}
	if !slices.Contains(v.PreExisting, "kos-e2e-broken.service") || strings.Contains(all, "kos-e2e-broken.service") || strings.Contains(all, "kos-upgrade-health") {
		t.Errorf("the unit failing before the upgrade is not (only) pre-existing: pre-existing %q, findings:\n%s", v.PreExisting, all)
	}
	t.Logf("the new system's verdict: reasons %q, warnings %q, pre-existing %q", v.Reasons, v.Warnings, v.PreExisting)
}

// slowUnit takes 8 s to start; it is active before the upgrade.
const slowUnit = "[Unit]\nDescription=kos-e2e: takes 8 s to start\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sleep 8\n[Install]\nWantedBy=multi-user.target\n"

// slowHealthStep is healthStep with kos-e2e-slow.service restarted just
// before: it is activating when the judgment starts, which waits for it
// (activating is not a verdict) instead of judging it waiting or inactive.
const slowHealthStep = "systemctl restart --no-block kos-e2e-slow.service\nsleep 1\n" +
	"systemctl show -p ActiveState --value kos-e2e-slow.service > $1/slow-before\nstart=$(date +%s)\n" +
	"kos-upgrade --json health --dry-run > $1/verdict.json 2> $1/verdict.err; echo $? > $1/verdict.rc\n" +
	"echo $(( $(date +%s) - start )) > $1/verdict.seconds\nsystemctl --no-block poweroff\n"

// writeSlowUnit enables kos-e2e-slow.service in the guest's root.
func writeSlowUnit(t *testing.T, g *Guest) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(g.Root, "etc/systemd/system/kos-e2e-slow.service"), []byte(slowUnit), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/systemd/system/kos-e2e-slow.service", filepath.Join(g.Root, "etc/systemd/system/multi-user.target.wants/kos-e2e-slow.service")); err != nil {
		t.Fatal(err)
	}
}

// TestNspawnHealthVerdict: the upgrade disables acme-web.service (app
// 2.0-2, a packaging mistake). The baseline arm took in the running 5.8
// guest has it active and listening; the new system, judged live through
// systemd as its first boot would (health --dry-run: the nspawn tier has
// no boot loader to fall back with), is red and says why.
func TestNspawnHealthVerdict(t *testing.T) {
	g := NewGuest(t)
	writeHealthConf(t, g)
	writeSlowUnit(t, g)
	g.Kos(t, append([]string{"prepare", "--to", "5.9"}, g.repoFlags(fixture.Repo59, fixture.Repo59AcmeOff)...)...)
	// --no-finalize: staged (the default on btrfs), carried over in the
	// offline boot, so that boot 3 is the new system's first.
	g.Step(t, 1, "kos-upgrade reboot --no-finalize\n")
	g.Step(t, 3, slowHealthStep)
	boots := g.Run(t, maxBoots)
	expectBoots(t, boots, "@:reboot", "@:reboot", "kos-upgrade/*:poweroff")
	expectLiveBaseline(t, g)
	f := g.Facts(3)
	expectLiveVerdict(t, f, true)
	// The unit still starting was waited for, then judged active.
	secs, _ := strconv.Atoi(strings.TrimSpace(f.File("verdict.seconds")))
	if st := strings.TrimSpace(f.File("slow-before")); st != "activating" || secs < 5 || strings.Contains(f.File("verdict.json"), "kos-e2e-slow") {
		t.Errorf("the judgment did not wait for kos-e2e-slow.service (%s when it began, %d s): %s", st, secs, f.File("verdict.json"))
	}
}
