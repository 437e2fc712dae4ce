package testenv

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// RepoDir returns the top directory of the source tree.
func RepoDir(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot find the source directory")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// WorldDir makes a temporary directory every user may traverse (a
// non-root test user reaches sockets and files in it); removed at cleanup.
func WorldDir(t testing.TB, pattern string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// StartSystemBus runs a private dbus-daemon configured like the system bus
// (dbus's own deny-by-default policy) that includes the project's policy file
// units/org.kos.Upgrade1.conf. Its socket lives in a world-traversable
// directory so that a non-root user can connect. It returns the bus address;
// the daemon is stopped at cleanup.
func StartSystemBus(t testing.TB) string {
	t.Helper()
	RequireTools(t, "dbus-daemon")
	dir := WorldDir(t, "kos-upgrade-bus-")
	policy := filepath.Join(RepoDir(t), "units", "org.kos.Upgrade1.conf")
	sock := filepath.Join(dir, "system_bus_socket")
	cfg := fmt.Sprintf(`<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=%s</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Peer"/>
  </policy>
  <include>%s</include>
  <include ignore_missing="yes">/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf</include>
</busconfig>
`, sock, policy)
	cfgFile := filepath.Join(dir, "bus.conf")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("dbus-daemon", "--config-file="+cfgFile, "--print-address", "--nofork")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("dbus-daemon did not start: %v\n%s", err, stderr.String())
	}
	return strings.TrimSpace(line)
}

// StartPolkit runs the machine's polkitd on the bus at addr (StartSystemBus)
// in a private mount namespace where the only actions are the project's
// units/org.kos.upgrade.policy and the only rules are rules (JavaScript, as
// in /etc/polkit-1/rules.d; "" for none): the real authority deciding with
// the shipped defaults, nothing on the machine changed. It waits until
// polkitd knows the actions; polkitd is stopped at cleanup.
func StartPolkit(t testing.TB, addr, rules string) {
	t.Helper()
	RequireRoot(t)
	polkitd := "/usr/lib/polkit-1/polkitd"
	RequireTools(t, polkitd, "unshare", "busctl")
	dir := WorldDir(t, "kos-upgrade-polkit-")
	for _, d := range []string{"actions", "rules", "empty"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	policy, err := os.ReadFile(filepath.Join(RepoDir(t), "units", "org.kos.upgrade.policy"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "actions", "org.kos.upgrade.policy"), policy, 0o644)
	if rules != "" {
		os.WriteFile(filepath.Join(dir, "rules", "50-test.rules"), []byte(rules), 0o644)
	}
	script := fmt.Sprintf("mount --bind %[1]s/actions /usr/share/polkit-1/actions && "+
		"mount --bind %[1]s/rules /etc/polkit-1/rules.d && "+
		"mount --bind %[1]s/empty /usr/share/polkit-1/rules.d && exec %[2]s --no-debug", dir, polkitd)
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+addr)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	for i := 0; ; i++ {
		q := exec.Command("busctl", "--address="+addr, "call", "org.freedesktop.PolicyKit1",
			"/org/freedesktop/PolicyKit1/Authority", "org.freedesktop.PolicyKit1.Authority", "EnumerateActions", "s", "")
		b, err := q.CombinedOutput()
		if err == nil && strings.Contains(string(b), "org.kos.upgrade.prepare") {
			return
		}
		if i == 100 {
			t.Fatalf("polkitd did not start: %v %s\n%s", err, b, out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
