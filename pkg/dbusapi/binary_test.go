package dbusapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/keyarchos/kos-upgrade/pkg/dbusapi"
	"github.com/keyarchos/kos-upgrade/test/testenv"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

var (
	binOnce  sync.Once
	binPath  string
	binError string
)

// binary builds kos-upgrade once per test process.
func binary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kos-upgrade-dbus-bin-")
		if err != nil {
			binError = err.Error()
			return
		}
		os.Chmod(dir, 0o755)
		binPath = filepath.Join(dir, "kos-upgrade")
		out, err := exec.Command("go", "build", "-tags", testenv.HooksTag, "-o", binPath, "github.com/keyarchos/kos-upgrade/cmd/kos-upgrade").CombinedOutput()
		if err != nil {
			binError = err.Error() + "\n" + string(out)
		}
	})
	if binError != "" {
		t.Fatalf("cannot build kos-upgrade: %s", binError)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// daemonProc is `kos-upgrade daemon` run as a process on the test bus, in
// its own process group (as systemd would kill the whole unit).
type daemonProc struct {
	cmd  *exec.Cmd
	out  *strings.Builder
	done chan error
}

func startDaemonProc(t testing.TB, b *bus, root string, env []string, args ...string) *daemonProc {
	t.Helper()
	cmd := exec.Command(binary(t), append([]string{"--root", root, "daemon"}, args...)...)
	cmd.Env = append(append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+b.Addr), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out := &strings.Builder{}
	var mu sync.Mutex
	cmd.Stdout = writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return out.Write(p) })
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemonProc{cmd: cmd, out: out, done: make(chan error, 1)}
	go func() { d.done <- cmd.Wait() }()
	t.Cleanup(func() { d.kill() })
	waitOwner(t, b, true)
	return d
}

// kill kills the daemon's whole process group (the dnf helper too).
func (d *daemonProc) kill() {
	syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
	}
}

// cli runs kos-upgrade against root with the test bus as the system bus.
func cli(t testing.TB, b *bus, root string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(binary(t), append([]string{"--root", root}, args...)...)
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+b.Addr)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestDaemonRestartDuringPrepare kills the daemon (and its dnf helper) in
// the middle of a prepare; the restarted daemon reports the truth: nothing
// is prepared, nothing runs, and a new prepare succeeds. On the way: the
// daemon binary's sd_notify READY=1, the CLI as a client (status,
// status --follow, prepare through the daemon) and the fallback to the
// state file when no daemon runs.
func TestDaemonRestartDuringPrepare(t *testing.T) {
	s := newSystem(t)
	b := startBus(t)

	// sd_notify: the daemon says READY=1 once it owns the name.
	notifyDir := t.TempDir()
	notifySock := filepath.Join(notifyDir, "notify")
	nl, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifySock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	d := startDaemonProc(t, b, s.Root, []string{"NOTIFY_SOCKET=" + notifySock})
	nl.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, err := nl.Read(buf)
	if err != nil || !strings.Contains(string(buf[:n]), "READY=1") {
		t.Errorf("sd_notify: %q %v", buf[:n], err)
	}

	conn := b.connect(t)
	sigs := watchSignals(t, conn)
	cl, err := dbusapi.NewClient(b.connect(t), s.Root)
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Prepare(context.Background(), upgrader.PrepareOptions{To: "5.9", Snapshot: "auto"}); err != nil {
		t.Fatal(err)
	}
	// Kill it at the first Progress signal: the prepare has started.
	deadline := time.Now().Add(30 * time.Second)
	killed := false
	for !killed && time.Now().Before(deadline) {
		for _, sig := range sigs.snapshot() {
			if sig.Name == dbusapi.Interface+".Progress" {
				d.kill()
				killed = true
				t.Logf("killed the daemon at step %v", sig.Body[0])
				break
			}
		}
		time.Sleep(time.Millisecond)
	}
	if !killed {
		t.Fatal("no Progress signal")
	}
	for _, sig := range sigs.snapshot() {
		if sig.Name == dbusapi.Interface+".Finished" {
			t.Fatalf("the prepare finished before the daemon was killed; the test proves nothing")
		}
	}
	waitOwner(t, b, false)

	// With no daemon, status reads the state file.
	out, err := cli(t, b, s.Root, "--json", "status")
	if err != nil {
		t.Fatalf("status without daemon: %v\n%s", err, out)
	}
	var st upgrader.StatusReport
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.State.Status != upgrader.StatusIdle || st.Plan != nil {
		t.Errorf("status without daemon after the kill: %v\n%s", err, out)
	}

	// Restarted: the truth.
	startDaemonProc(t, b, s.Root, nil)
	for p, want := range map[string]any{"State": "idle", "TargetRelease": "", "Armed": false, "Progress": uint32(0), "Step": ""} {
		if got := prop(t, conn, p); got != want {
			t.Errorf("after restart %s = %#v, want %#v", p, got, want)
		}
	}
	if plan := prop(t, conn, "Plan").(map[string]dbus.Variant); len(plan) != 0 {
		t.Errorf("after restart Plan = %v", plan)
	}
	out, err = cli(t, b, s.Root, "--json", "status")
	var rep dbusapi.Report
	if err != nil || json.Unmarshal([]byte(out), &rep) != nil || rep.State.Status != upgrader.StatusIdle || rep.Running || rep.Job != nil {
		t.Errorf("status through the daemon after restart: %v\n%s", err, out)
	}

	// status --follow streams a prepare started by someone else.
	sigs2 := len(sigs.snapshot())
	cl2, err := dbusapi.NewClient(b.connect(t), s.Root)
	if err != nil {
		t.Fatal(err)
	}
	if err := cl2.Prepare(context.Background(), upgrader.PrepareOptions{To: "5.9", Snapshot: "auto"}); err != nil {
		t.Fatal(err)
	}
	out, err = cli(t, b, s.Root, "status", "--follow")
	if err != nil {
		t.Fatalf("status --follow: %v\n%s", err, out)
	}
	t.Logf("status --follow:\n%s", out)
	for _, w := range []string{"Following prepare", "test: testing the transaction", "prepare finished: upgrade to 5.9 prepared", "State:    prepared"} {
		if !strings.Contains(out, w) {
			t.Errorf("status --follow lacks %q", w)
		}
	}
	if ok, msg := sigs.waitFinished(t, sigs2, time.Minute); !ok {
		t.Fatalf("second prepare failed: %s", msg)
	}

	// prepare through the daemon, from the CLI: progress and the plan.
	out, err = cli(t, b, s.Root, "prepare", "--to", "5.9")
	if err != nil {
		t.Fatalf("prepare through the daemon: %v\n%s", err, out)
	}
	for _, w := range []string{"resolve: resolving the upgrade with dnf", "Plan ", "→ 5.9", "Next: kos-upgrade reboot"} {
		if !strings.Contains(out, w) {
			t.Errorf("prepare through the daemon lacks %q:\n%s", w, out)
		}
	}
	if prop(t, conn, "State") != "prepared" {
		t.Errorf("State %v", prop(t, conn, "State"))
	}
	// The CLI's cancel goes through the daemon too: the daemon sees it at once.
	if out, err := cli(t, b, s.Root, "cancel"); err != nil {
		t.Fatalf("cancel: %v\n%s", err, out)
	}
	if prop(t, conn, "State") != "idle" {
		t.Errorf("State %v after cancel", prop(t, conn, "State"))
	}
	// Busy is exit code 4 through the daemon as in-process.
	if err := cl2.Prepare(context.Background(), upgrader.PrepareOptions{To: "5.9", Snapshot: "auto"}); err != nil {
		t.Fatal(err)
	}
	out, err = cli(t, b, s.Root, "prepare", "--to", "5.9")
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 4 || !strings.Contains(out, "the daemon is running prepare") {
		t.Errorf("prepare while the daemon prepares: %v\n%s", err, out)
	}
	sigs.waitFinished(t, len(sigs.snapshot())-1, time.Minute)
}

// TestDaemonIdleExit: with --idle-timeout the daemon leaves the bus after
// that long without calls, exit status 0.
func TestDaemonIdleExit(t *testing.T) {
	s := newSystem(t)
	b := startBus(t)
	d := startDaemonProc(t, b, s.Root, nil, "--idle-timeout", "1s")
	// Calls keep it alive.
	conn := b.connect(t)
	for range 8 {
		prop(t, conn, "State")
		time.Sleep(250 * time.Millisecond)
	}
	select {
	case err := <-d.done:
		t.Fatalf("the daemon exited while used: %v\n%s", err, d.out)
	default:
	}
	start := time.Now()
	select {
	case err := <-d.done:
		if err != nil {
			t.Errorf("idle exit: %v\n%s", err, d.out)
		}
		t.Logf("idle exit after %s", time.Since(start))
	case <-time.After(10 * time.Second):
		t.Fatal("the daemon did not exit when idle")
	}
	waitOwner(t, b, false)
}

// TestDaemonCheck: the built daemon runs the real assessment for Check, and
// GetReport then returns that report.
func TestDaemonCheck(t *testing.T) {
	s := newSystem(t)
	b := startBus(t)
	startDaemonProc(t, b, s.Root, nil)
	out := b.mustBusctl(t, "--json=short", "call", dbusapi.BusName, "/org/kos/Upgrade1", dbusapi.Interface, "Check", "a{sv}", "2", "root", "s", s.Root, "to", "s", "5.9")
	var reply struct {
		Data []json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal([]byte(out), &reply); err != nil || len(reply.Data) != 2 {
		t.Fatalf("Check reply: %v\n%s", err, out)
	}
	var inhibited bool
	var reportJSON string
	json.Unmarshal(reply.Data[0], &inhibited)
	json.Unmarshal(reply.Data[1], &reportJSON)
	var report struct {
		Target   string            `json:"target"`
		Findings []json.RawMessage `json:"findings"`
	}
	if err := json.Unmarshal([]byte(reportJSON), &report); err != nil || len(report.Findings) == 0 {
		t.Fatalf("Check report: %v\n%s", err, reportJSON)
	}
	if inhibited {
		t.Errorf("the fixture system is inhibited: %s", reportJSON)
	}
	if !strings.Contains(reportJSON, "5.9") {
		t.Errorf("report does not name the target: %s", reportJSON)
	}
	if _, err := os.Stat(filepath.Join(s.Root, "var/lib/kos-upgrade/report.json")); err != nil {
		t.Errorf("report not saved: %v", err)
	}
	// Answers travel with the call; a malformed one is refused in words.
	b.mustBusctl(t, "call", dbusapi.BusName, "/org/kos/Upgrade1", dbusapi.Interface, "Check", "a{sv}", "2", "to", "s", "5.9", "answers", "as", "1", "packages.third-party=keep")
	_, errOut, err := b.busctl(t, nil, "call", dbusapi.BusName, "/org/kos/Upgrade1", dbusapi.Interface, "Check", "a{sv}", "1", "answers", "as", "1", "no-equals-sign")
	if err == nil || !strings.Contains(errOut, "no-equals-sign") {
		t.Errorf("Check with a malformed answer: %v %s", err, errOut)
	}
}

// TestRefusalExitCodeInProcessAndDaemon: the same refusal (a staged
// package changed since prepare: ErrStagedChanged) ends with the same exit
// code whether `kos-upgrade reboot --no-reboot` arms in-process or through
// the daemon, because both derive from upgrader.Classify. A monitor on the
// bus proves the second run went through the daemon.
func TestRefusalExitCodeInProcessAndDaemon(t *testing.T) {
	s := newSystem(t)
	b := startBus(t)
	p, err := s.engine(t).Prepare(context.Background(), upgrader.PrepareOptions{To: "5.9", Snapshot: "auto"})
	if err != nil {
		t.Fatal(err)
	}
	stage := filepath.Join(s.Root, "var/lib/kos-upgrade", p.StageDir)
	rpms, _ := filepath.Glob(filepath.Join(stage, "*.rpm"))
	if len(rpms) == 0 {
		t.Fatalf("nothing staged in %s", stage)
	}
	if err := os.WriteFile(rpms[0], []byte("not the package the plan names"), 0o644); err != nil {
		t.Fatal(err)
	}
	exitOf := func(env ...string) (int, string) {
		t.Helper()
		cmd := exec.Command(binary(t), "--root", s.Root, "reboot", "--no-reboot")
		cmd.Env = append(append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+b.Addr), env...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return cmd.ProcessState.ExitCode(), string(out)
	}
	inProcess, out := exitOf("KOS_UPGRADE_NO_DAEMON=1")
	if inProcess != 3 || !strings.Contains(out, upgrader.ErrStagedChanged.Error()) {
		t.Errorf("in-process: exit %d, want 3 (docs/cli.md)\n%s", inProcess, out)
	}

	startDaemonProc(t, b, s.Root, nil)
	// The daemon answers the refusal with Error.StalePlan...
	call := b.connect(t).Object(dbusapi.BusName, dbusapi.ObjectPath).Call(dbusapi.Interface+".Arm", 0, map[string]dbus.Variant{})
	var de dbus.Error
	if !errors.As(call.Err, &de) || de.Name != dbusapi.ErrorStalePlan {
		t.Errorf("Arm over the bus: %v, want %s", call.Err, dbusapi.ErrorStalePlan)
	}
	// ...and the CLI, which goes through it, exits as it does in-process.
	viaDaemon, out := exitOf()
	if viaDaemon != inProcess {
		t.Errorf("through the daemon: exit %d, in-process %d\n%s", viaDaemon, inProcess, out)
	}
}
