// Package cockpit_test tests the Cockpit plugin (cockpit/kos-upgrade) in a
// real browser (Debian's chromium driven by playwright-core), in a real
// Cockpit (cockpit-ws with the cockpit-system shell), against the real
// daemon on a private system bus, upgrading the fixture 5.8 system with
// the fixture repositories. The browser steps are in browser.mjs; this
// file sets everything up and runs one scenario per Cockpit session.
//
// Screenshots of every state are written to test/cockpit/screenshots (or
// $KOS_UPGRADE_SCREENSHOTS) for a person to look at; they are not compared.
package cockpit_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

func TestCockpitPlugin(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping real-component test in -short mode")
	}
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "rpm", "btrfs", "/usr/bin/python3", "dbus-daemon", "go",
		cockpitWS, "cockpit-bridge", "/usr/share/cockpit/shell/manifest.json", chromium, "node", "npm",
		"chpasswd", "usermod")
	start := time.Now()
	nodeModules(t)

	shots := os.Getenv("KOS_UPGRADE_SCREENSHOTS")
	if shots == "" {
		shots = filepath.Join(testenv.RepoDir(t), "test", "cockpit", "screenshots")
	}
	shots, _ = filepath.Abs(shots)
	os.RemoveAll(shots)
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots: %s", shots)

	root, set := newSystem(t)
	testenv.RequireTools(t, fixture.ISOTools...)
	image := filepath.Join(testenv.WorldDir(t, "kos-upgrade-cockpit-iso-"), "KOS-5.9-x86_64.iso")
	if err := fixture.MakeISO(context.Background(), image, fixture.ISOOptions{Label: "KOS-5.9-x86_64", Release: "5.9",
		Dirs: map[string]string{"BaseOS": set.Repos[fixture.Repo59]}}); err != nil {
		t.Fatal(err)
	}
	b := startBus(t)
	bin := binary(t)
	daemonLog := startDaemon(t, b, bin, root)
	data := pluginDataDir(t, bin)
	t.Logf("set up in %s", time.Since(start).Round(time.Millisecond))

	common := []string{
		"KOS_SHOTS=" + shots,
		"KOS_BIN=" + bin,
		"KOS_ROOT=" + root,
		"KOS_ISO=" + image,
		"KOS_CHROMIUM=" + chromium,
		"DBUS_SYSTEM_BUS_ADDRESS=" + b.Addr,
	}

	// An administrator (a local session as root): check, prepare, arm,
	// cancel from the page; then prepare and cancel from the CLI while
	// the page follows; it leaves a prepared upgrade behind.
	ok := t.Run("admin", func(t *testing.T) {
		url, wsLog := startCockpit(t, b, data, true)
		defer func() {
			if t.Failed() {
				t.Logf("cockpit-ws:\n%s\ndaemon:\n%s", wsLog, daemonLog)
			}
		}()
		runBrowser(t, "admin", append(common, "KOS_URL="+url)...)
	})
	if !ok {
		return
	}

	// A user without rights, logged in with a password: sees the status
	// and the verdict of the last first boot (a fallback), and Prepare is
	// refused with words.
	writeVerdict(t, root)
	t.Run("user", func(t *testing.T) {
		name, password := loginUser(t, b, data)
		url, wsLog := startCockpit(t, b, data, false)
		defer func() {
			if t.Failed() {
				t.Logf("cockpit-ws:\n%s\ndaemon:\n%s", wsLog, daemonLog)
			}
		}()
		runBrowser(t, "user", append(common, "KOS_URL="+url, "KOS_USER="+name, "KOS_PASSWORD="+password)...)
	})
	t.Logf("total %s", time.Since(start).Round(time.Millisecond))
}
