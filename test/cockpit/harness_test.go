package cockpit_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// The harness: a private system bus with the project's policy, the real
// `kos-upgrade daemon` serving a fixture 5.8 system on btrfs, the plugin
// where Cockpit finds it, and a fresh cockpit-ws per browser session. The
// ideas are those of pkg/dbusapi's tests (package dbusapi_test, which
// cannot be imported).

const (
	cockpitWS     = "/usr/lib/cockpit/cockpit-ws"
	chromium      = "/usr/bin/chromium"
	busName       = "org.kos.Upgrade1"
	installedPath = "/usr/bin/kos-upgrade" // manifest.json's condition
)

type bus struct {
	Addr string
}

// startBus runs the private system-like bus of testenv.StartSystemBus.
func startBus(t testing.TB) *bus {
	t.Helper()
	return &bus{Addr: testenv.StartSystemBus(t)}
}

// waitOwner waits until org.kos.Upgrade1 has an owner on b.
func (b *bus) waitOwner(t testing.TB) {
	t.Helper()
	conn, err := dbus.Connect(b.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var has bool
		if err := conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, busName).Store(&has); err != nil {
			t.Fatal(err)
		}
		if has {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has no owner after 30s", busName)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// newSystem installs the fixture 5.8 system into subvolume @ (the default
// subvolume) of a btrfs filesystem on a loop device, mounted below a
// world-traversable directory.
func newSystem(t testing.TB) (root string, set *fixture.Set) {
	t.Helper()
	set = fixture.MustBuild(t)
	fs := testenv.NewBtrfs(t, 1024)
	root = filepath.Join(testenv.WorldDir(t, "kos-upgrade-cockpit-root-"), "root")
	fs.MakeDefaultRoot(t, "@", root)
	if err := fixture.InstallBase(context.Background(), set, root); err != nil {
		t.Fatal(err)
	}
	return root, set
}

// binary builds kos-upgrade into a world-readable directory.
func binary(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(testenv.WorldDir(t, "kos-upgrade-cockpit-bin-"), "kos-upgrade")
	cmd := exec.Command("go", "build", "-tags", testenv.HooksTag, "-o", bin, "github.com/keyarchos/kos-upgrade/cmd/kos-upgrade")
	cmd.Dir = testenv.RepoDir(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cannot build kos-upgrade: %v\n%s", err, out)
	}
	return bin
}

// logBuffer collects a process's output for the failure message.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startProc starts cmd in its own process group, killed (the group) at
// cleanup; its output goes to the returned buffer.
func startProc(t testing.TB, cmd *exec.Cmd) *logBuffer {
	t.Helper()
	out := &logBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	return out
}

// startDaemon runs `kos-upgrade --root root daemon` on b.
func startDaemon(t testing.TB, b *bus, bin, root string) *logBuffer {
	t.Helper()
	cmd := exec.Command(bin, "--root", root, "daemon")
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+b.Addr)
	out := startProc(t, cmd)
	b.waitOwner(t)
	return out
}

// pluginDataDir returns an XDG data directory holding cockpit/kos-upgrade:
// a copy of the plugin whose manifest condition names bin instead of
// /usr/bin/kos-upgrade (not installed on a test machine).
func pluginDataDir(t testing.TB, bin string) string {
	t.Helper()
	data := testenv.WorldDir(t, "kos-upgrade-cockpit-data-")
	dst := filepath.Join(data, "cockpit", "kos-upgrade")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(testenv.RepoDir(t), "cockpit", "kos-upgrade")
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if e.Name() == "manifest.json" {
			if !strings.Contains(string(b), installedPath) {
				t.Fatalf("manifest.json has no condition on %s", installedPath)
			}
			b = []byte(strings.ReplaceAll(string(b), installedPath, bin))
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return data
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startCockpit runs a fresh cockpit-ws on 127.0.0.1 and returns its URL.
// local: --local-session=cockpit-bridge, a bridge of this process (root)
// with no login, seeing the test bus as the system bus; otherwise --no-tls
// with the real login page (PAM).
func startCockpit(t testing.TB, b *bus, dataDir string, local bool) (string, *logBuffer) {
	t.Helper()
	port := freePort(t)
	args := []string{"--port", fmt.Sprint(port), "--address", "127.0.0.1"}
	if local {
		args = append(args, "--local-session=cockpit-bridge")
	} else {
		args = append(args, "--no-tls")
	}
	cmd := exec.Command(cockpitWS, args...)
	runtimeDir := testenv.WorldDir(t, "kos-upgrade-cockpit-run-")
	cmd.Env = append(os.Environ(),
		"DBUS_SYSTEM_BUS_ADDRESS="+b.Addr,
		// A session bus address that exists nowhere: otherwise the
		// bridge starts (and leaves behind) a session bus of its own.
		"DBUS_SESSION_BUS_ADDRESS=unix:path="+filepath.Join(runtimeDir, "no-session-bus"),
		"XDG_DATA_HOME="+dataDir,
		"XDG_RUNTIME_DIR="+runtimeDir,
	)
	out := startProc(t, cmd)
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
			return url, out
		}
		if time.Now().After(deadline) {
			t.Fatalf("cockpit-ws does not listen on %s:\n%s", url, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// webUser is the unprivileged user the "user" scenario logs in as. It is
// not pkg/dbusapi's kosupgrade-test: a Cockpit login needs a real shell and
// a home (for ~/.pam_environment), and changing those of a user that other
// tests run processes as is refused (usermod) or races with them.
const webUser = "kosupgrade-web"

// webHome is webUser's home; ~/.pam_environment (read by pam_env in
// Cockpit's PAM stack) points its bridge at the test bus and the plugin.
const webHome = "/var/tmp/kosupgrade-web"

// loginUser prepares webUser for a Cockpit login with a fresh random
// password. At cleanup the password is locked again and the processes the
// session left (pam_ssh_add's ssh-agent) are ended.
func loginUser(t testing.TB, b *bus, dataDir string) (name, password string) {
	t.Helper()
	if _, err := user.Lookup(webUser); err != nil {
		out, err := exec.Command("useradd", "--system", "-M", "-s", "/bin/sh", "-d", webHome, webUser).CombinedOutput()
		if err != nil {
			testenv.Skip(t, "skipping: cannot create the user "+webUser+": "+string(out))
		}
	}
	u, err := user.Lookup(webUser)
	if err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(webHome)
	if err := os.MkdirAll(webHome, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(webHome) })
	// No logind here: XDG_RUNTIME_DIR is the home's run/.
	runDir := filepath.Join(webHome, "run")
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		t.Fatal(err)
	}
	env := fmt.Sprintf("DBUS_SYSTEM_BUS_ADDRESS DEFAULT=%s\nDBUS_SESSION_BUS_ADDRESS DEFAULT=unix:path=%s/no-session-bus\nXDG_DATA_HOME DEFAULT=%s\nXDG_RUNTIME_DIR DEFAULT=%s\n",
		b.Addr, runDir, dataDir, runDir)
	if err := os.WriteFile(filepath.Join(webHome, ".pam_environment"), []byte(env), 0o644); err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "chown", "-R", u.Uid+":"+u.Gid, webHome)
	buf := make([]byte, 12)
	rand.Read(buf)
	password = "Kos-" + hex.EncodeToString(buf)
	cmd := exec.Command("chpasswd")
	cmd.Stdin = strings.NewReader(webUser + ":" + password + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("chpasswd: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		exec.Command("passwd", "-l", webUser).Run()
		killUserProcs(u.Uid)
	})
	return webUser, password
}

// killUserProcs ends the processes of uid (only webUser's, which no one
// but this test uses), each by its pid.
func killUserProcs(uid string) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		status, err := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(status), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" && f[1] == uid {
				syscall.Kill(pid, syscall.SIGTERM)
			}
		}
	}
}

var npmOnce sync.Once
var npmErr error

// nodeModules installs test/cockpit's npm packages (playwright-core, no
// browser download: the test drives Debian's chromium) with npm ci.
func nodeModules(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(testenv.RepoDir(t), "test", "cockpit")
	npmOnce.Do(func() {
		if _, err := os.Stat(filepath.Join(dir, "node_modules", "playwright-core", "package.json")); err == nil {
			return
		}
		cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			npmErr = fmt.Errorf("npm ci in %s: %v\n%s", dir, err, out)
		}
	})
	if npmErr != nil {
		t.Fatal(npmErr)
	}
	return dir
}

// runBrowser runs browser.mjs for a scenario, streaming its lines into
// the test log; it fails the test when the script fails.
func runBrowser(t testing.TB, scenario string, env ...string) {
	t.Helper()
	dir := nodeModules(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", filepath.Join(dir, "browser.mjs"), scenario)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	var lines []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			lines = append(lines, sc.Text())
			t.Log(sc.Text())
		}
	}()
	err := cmd.Run()
	pw.Close()
	<-done
	if err != nil {
		t.Fatalf("browser scenario %s failed: %v (its log is above)", scenario, err)
	}
}
