package cockpit_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/health"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// writeVerdict records in root's state directory the verdict of a first
// boot that fell back (health.json, as `kos-upgrade health` writes it into
// both roots), judged by health.Judge: acme-web.service was running and
// listening on 127.0.0.1:8080 before the upgrade and is inactive after; a
// wanted.d check failed (a warning); a unit had failed before already.
func writeVerdict(t testing.TB, root string) {
	t.Helper()
	now := time.Now()
	web := health.Unit{Name: "acme-web.service", Type: "service", Enabled: true, Active: "active", Sub: "running"}
	broken := health.Unit{Name: "kos-e2e-broken.service", Type: "service", Enabled: true, Active: "failed", Sub: "failed"}
	before := &health.Baseline{Version: health.BaselineVersion, TakenAt: now.Add(-time.Hour), Live: true,
		Units:   []health.Unit{web, broken},
		Sockets: []health.Socket{{Proto: "tcp", Addr: "127.0.0.1", Port: 8080, Unit: "acme-web.service"}}}
	web.Active, web.Sub, web.Enabled = "inactive", "dead", false
	after := &health.Baseline{Version: health.BaselineVersion, TakenAt: now, Live: true, Units: []health.Unit{web, broken}}
	v := health.Judge(health.Input{Baseline: before, Observed: after, Now: now, Checks: []health.CheckResult{
		{Name: "required.d/10-db", Class: health.ClassRequired, Result: health.ResultPassed, Duration: 0.2},
		{Name: "wanted.d/20-cache", Class: health.ClassWanted, Result: health.ResultFailed, Detail: "exit status 1", Output: "cache cold\n", Duration: 0.1},
	}})
	v.Decision = "fallback"
	v.Hooks = []health.CheckResult{{Name: "red.d/10-drain", Class: health.ClassHook, Result: health.ResultPassed, Duration: 0.3}}
	if v.Green {
		t.Fatalf("the verdict of a system whose web server stopped is green: %+v", v)
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, sysroot.StateDirRel)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "health.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
}
