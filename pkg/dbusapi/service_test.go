package dbusapi_test

import (
	"context"
	"encoding/json"
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
)

var allProps = []string{"State", "Step", "Progress", "CurrentRelease", "TargetRelease", "Armed", "Plan", "LastResult", "RollbackAvailable"}
var allMethods = []string{"Check", "Prepare", "Arm", "Reboot", "Cancel", "Rollback", "GetReport", "GetHistory"}

const objPath = string(dbusapi.ObjectPath)

// gdbusMonitor runs `gdbus monitor` on the service and returns a function
// that stops it and returns what it printed.
func gdbusMonitor(t *testing.T, b *bus) func() string {
	t.Helper()
	testenv.RequireTools(t, "gdbus")
	cmd := exec.Command("gdbus", "monitor", "--address", b.Addr, "--dest", dbusapi.BusName, "--object-path", objPath)
	var out strings.Builder
	var mu sync.Mutex
	cmd.Stdout = writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return out.Write(p) })
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return func() string {
		time.Sleep(200 * time.Millisecond) // let it print the last signals
		cmd.Process.Kill()
		cmd.Wait()
		mu.Lock()
		defer mu.Unlock()
		return out.String()
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// TestPrepareOverBus is the main flow with independent clients: busctl and
// gdbus introspect and read every property, busctl calls Prepare, gdbus
// monitor and a Go client see PropertiesChanged and Progress signals during
// the real prepare of the fixture repositories; then Arm and Cancel.
func TestPrepareOverBus(t *testing.T) {
	s := newSystem(t)
	b := startBus(t)
	startDaemon(t, b, s, dbusapi.Options{})
	conn := b.connect(t)

	// Introspection, by both tools.
	intro := b.mustBusctl(t, "introspect", dbusapi.BusName, objPath)
	for _, n := range append(append([]string{}, allProps...), allMethods...) {
		if !strings.Contains(intro, "."+n+" ") {
			t.Errorf("busctl introspect lacks %s:\n%s", n, intro)
		}
	}
	for _, n := range []string{".Progress ", ".Finished ", "org.freedesktop.DBus.Properties"} {
		if !strings.Contains(intro, n) {
			t.Errorf("busctl introspect lacks %s", n)
		}
	}
	testenv.RequireTools(t, "gdbus")
	gout, err := exec.Command("gdbus", "introspect", "--address", b.Addr, "--dest", dbusapi.BusName, "--object-path", objPath).CombinedOutput()
	if err != nil {
		t.Fatalf("gdbus introspect: %v\n%s", err, gout)
	}
	for _, n := range []string{"interface org.kos.Upgrade1", "Prepare(in  a{sv} options)", "GetHistory(in  a{sv} options,", "readonly s State = 'idle'", "readonly s CurrentRelease = '5.8'", "signal"} {
		if !strings.Contains(string(gout), n) {
			t.Errorf("gdbus introspect lacks %q:\n%s", n, gout)
		}
	}
	tree := b.mustBusctl(t, "tree", dbusapi.BusName)
	if !strings.Contains(tree, objPath) {
		t.Errorf("busctl tree: %s", tree)
	}

	// Every property, with busctl.
	want := map[string]string{
		"State": `s "idle"`, "Step": `s ""`, "Progress": "u 0", "CurrentRelease": `s "5.8"`, "TargetRelease": `s ""`,
		"Armed": "b false", "Plan": "a{sv} 0", "LastResult": "a{sv} 0", "RollbackAvailable": "b false",
	}
	for _, p := range allProps {
		got := strings.TrimSpace(b.mustBusctl(t, "get-property", dbusapi.BusName, objPath, dbusapi.Interface, p))
		if got != want[p] {
			t.Errorf("property %s = %s, want %s", p, got, want[p])
		}
	}

	// Prepare, watched by gdbus monitor and by a Go client.
	stopMon := gdbusMonitor(t, b)
	time.Sleep(300 * time.Millisecond) // gdbus monitor subscribes
	sigs := watchSignals(t, conn)
	b.mustBusctl(t, "call", dbusapi.BusName, objPath, dbusapi.Interface, "Prepare", "a{sv}", "2", "to", "s", "5.9", "mode", "s", "target")
	ok, msg := sigs.waitFinished(t, 0, 5*time.Minute)
	if !ok {
		t.Fatalf("prepare failed: %s", msg)
	}
	t.Logf("Finished: %s", msg)
	mon := stopMon()

	steps := map[string]bool{}
	var states []string
	lastPct := uint32(0)
	for _, sig := range sigs.snapshot() {
		switch sig.Name {
		case dbusapi.Interface + ".Progress":
			steps[sig.Body[0].(string)] = true
			pct := sig.Body[1].(uint32)
			if pct < lastPct || pct > 100 {
				t.Errorf("Progress went from %d to %d", lastPct, pct)
			}
			lastPct = pct
		case "org.freedesktop.DBus.Properties.PropertiesChanged":
			if st, ok := sig.Body[1].(map[string]dbus.Variant)["State"]; ok {
				states = append(states, st.Value().(string))
			}
		}
	}
	for _, st := range []string{"fingerprint", "resolve", "stage", "verify", "test"} {
		if !steps[st] {
			t.Errorf("no Progress signal for step %s (saw %v)", st, steps)
		}
	}
	if strings.Join(states, ",") != "preparing,prepared" {
		t.Errorf("State changes %v, want preparing then prepared", states)
	}
	for _, n := range []string{"org.kos.Upgrade1.Progress", "org.freedesktop.DBus.Properties.PropertiesChanged", "org.kos.Upgrade1.Finished", "'preparing'", "'verify'"} {
		if !strings.Contains(mon, n) {
			t.Errorf("gdbus monitor did not see %s:\n%.3000s", n, mon)
		}
	}

	if got := prop(t, conn, "State"); got != "prepared" {
		t.Errorf("State %v after prepare", got)
	}
	if got := prop(t, conn, "Progress"); got != uint32(100) {
		t.Errorf("Progress %v after prepare", got)
	}
	if got := prop(t, conn, "TargetRelease"); got != "5.9" {
		t.Errorf("TargetRelease %v after prepare", got)
	}
	plan := prop(t, conn, "Plan").(map[string]dbus.Variant)
	if plan["target"].Value() != "5.9" || plan["snapshot"].Value() != "btrfs" || plan["mode"].Value() != "target" || plan["packages"].Value().(uint32) == 0 ||
		plan["download_size"].Value().(uint64) == 0 || plan["upgrade"].Value().(uint32) == 0 {
		t.Errorf("Plan %v", plan)
	}
	// gdbus reads the same with its own parser.
	gp, err := exec.Command("gdbus", "call", "--address", b.Addr, "--dest", dbusapi.BusName, "--object-path", objPath,
		"--method", "org.freedesktop.DBus.Properties.GetAll", dbusapi.Interface).CombinedOutput()
	if err != nil || !strings.Contains(string(gp), "'State': <'prepared'>") || !strings.Contains(string(gp), "'target': <'5.9'>") {
		t.Errorf("gdbus GetAll: %v\n%s", err, gp)
	}

	// GetReport: the status document.
	out := b.mustBusctl(t, "--json=short", "call", dbusapi.BusName, objPath, dbusapi.Interface, "GetReport", "a{sv}", "0")
	var rep struct {
		Data []string `json:"data"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.Data) != 1 {
		t.Fatalf("GetReport: %v %s", err, out)
	}
	var report dbusapi.Report
	if err := json.Unmarshal([]byte(rep.Data[0]), &report); err != nil {
		t.Fatal(err)
	}
	if report.State.Status != "prepared" || report.Plan == nil || report.Plan.Target.VersionID != "5.9" || report.Job != nil {
		t.Errorf("GetReport: %s", rep.Data[0])
	}

	// Arm, then Cancel.
	out = b.mustBusctl(t, "call", dbusapi.BusName, objPath, dbusapi.Interface, "Arm", "a{sv}", "0")
	if !strings.Contains(out, report.Plan.ID) {
		t.Errorf("Arm returned %s, want plan %s", out, report.Plan.ID)
	}
	if prop(t, conn, "Armed") != true || prop(t, conn, "State") != "armed" {
		t.Errorf("after Arm: Armed %v State %v", prop(t, conn, "Armed"), prop(t, conn, "State"))
	}
	if l, err := os.Readlink(filepath.Join(s.Root, "system-update")); err != nil || !strings.Contains(l, "kos-upgrade") {
		t.Errorf("/system-update after Arm: %q %v", l, err)
	}
	b.mustBusctl(t, "call", dbusapi.BusName, objPath, dbusapi.Interface, "Cancel", "a{sv}", "0")
	if prop(t, conn, "Armed") != false || prop(t, conn, "State") != "idle" || len(prop(t, conn, "Plan").(map[string]dbus.Variant)) != 0 {
		t.Errorf("after Cancel: Armed %v State %v Plan %v", prop(t, conn, "Armed"), prop(t, conn, "State"), prop(t, conn, "Plan"))
	}
	if _, err := os.Lstat(filepath.Join(s.Root, "system-update")); !os.IsNotExist(err) {
		t.Errorf("/system-update after Cancel: %v", err)
	}

	// Options are checked: unknown keys and a root the daemon does not serve.
	_, errOut, err := b.busctl(t, nil, "call", dbusapi.BusName, objPath, dbusapi.Interface, "Prepare", "a{sv}", "1", "too", "s", "5.9")
	if err == nil || !strings.Contains(errOut, `unknown option "too"`) {
		t.Errorf("Prepare with a typo: %v %s", err, errOut)
	}
	_, errOut, err = b.busctl(t, nil, "call", dbusapi.BusName, objPath, dbusapi.Interface, "GetReport", "a{sv}", "1", "root", "s", "/")
	if err == nil || !strings.Contains(errOut, "serves the system at "+s.Root) {
		t.Errorf("GetReport for another root: %v %s", err, errOut)
	}
	// GetHistory: no run yet.
	if out := strings.TrimSpace(b.mustBusctl(t, "call", dbusapi.BusName, objPath, dbusapi.Interface, "GetHistory", "a{sv}", "0")); out != "aa{sv} 0" {
		t.Errorf("GetHistory: %s", out)
	}
	// Check is not wired in this build of the service.
	_, errOut, err = b.busctl(t, nil, "call", dbusapi.BusName, objPath, dbusapi.Interface, "Check", "a{sv}", "0")
	if err == nil || !strings.Contains(errOut, "not available") {
		t.Errorf("Check: %v %s", err, errOut)
	}
}

// TestAccessControl: a real unprivileged user reads everything but is
// refused every change with AccessDenied and a clear message; nothing
// changes. Also: two concurrent Prepare calls (one runs, the other is
// Busy) and 100 concurrent readers during the job.
func TestAccessControlAndConcurrency(t *testing.T) {
	s := newSystem(t)
	b := startBus(t)
	startDaemon(t, b, s, dbusapi.Options{})
	conn := b.connect(t)
	nobody := testUserCred(t)

	t.Run("unprivileged", func(t *testing.T) {
		before := stateDigest(t, s.Root)
		for _, p := range allProps {
			if _, errOut, err := b.busctl(t, nobody, "get-property", dbusapi.BusName, objPath, dbusapi.Interface, p); err != nil {
				t.Errorf("non-root cannot read %s: %v %s", p, err, errOut)
			}
		}
		for _, m := range []string{"GetReport", "GetHistory"} {
			if _, errOut, err := b.busctl(t, nobody, "call", dbusapi.BusName, objPath, dbusapi.Interface, m, "a{sv}", "0"); err != nil {
				t.Errorf("non-root cannot call %s: %v %s", m, err, errOut)
			}
		}
		if _, errOut, err := b.busctl(t, nobody, "introspect", dbusapi.BusName, objPath); err != nil {
			t.Errorf("non-root cannot introspect: %v %s", err, errOut)
		}
		calls := map[string][]string{
			"Prepare":  {"a{sv}", "1", "to", "s", "5.9"},
			"Reboot":   {"a{sv}", "1", "no_reboot", "b", "true"},
			"Cancel":   {"a{sv}", "0"},
			"Rollback": {"a{sv}", "1", "no_reboot", "b", "true"},
			"Arm":      {"a{sv}", "0"},
		}
		for m, args := range calls {
			// busctl shows only "Access denied" for this error name
			// (systemd replaces the message of privilege errors) ...
			_, errOut, err := b.busctl(t, nobody, append([]string{"call", dbusapi.BusName, objPath, dbusapi.Interface, m}, args...)...)
			if err == nil || !strings.Contains(errOut, "Access denied") {
				t.Errorf("non-root busctl %s: %v %s", m, err, errOut)
			}
			// ... gdbus shows the name and the daemon's message.
			opts := "{}"
			if m == "Prepare" {
				opts = "{'to': <'5.9'>}"
			}
			out, err := b.gdbusCall(t, nobody, m, opts)
			want := dbusapi.ErrorAccessDenied + ": " + m + " refused: only root may do this and you are " + testUser
			if err == nil || !strings.Contains(out, want) {
				t.Errorf("non-root gdbus %s: %v: %s\nwant %s", m, err, out, want)
			}
		}
		// Properties cannot be written, not even by root.
		if _, errOut, err := b.busctl(t, nil, "set-property", dbusapi.BusName, objPath, dbusapi.Interface, "State", "s", "armed"); err == nil {
			t.Errorf("set-property State succeeded: %s", errOut)
		}
		if d := diffDigest(before, stateDigest(t, s.Root)); d != "" {
			t.Errorf("refused calls changed the state directory:\n%s", d)
		}
		if prop(t, conn, "State") != "idle" {
			t.Errorf("State %v", prop(t, conn, "State"))
		}
	})

	t.Run("busy", func(t *testing.T) {
		sigs := watchSignals(t, conn)
		var wg sync.WaitGroup
		errs := make([]string, 2)
		oks := make([]bool, 2)
		for i := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errOut, err := b.busctl(t, nil, "call", dbusapi.BusName, objPath, dbusapi.Interface, "Prepare", "a{sv}", "1", "to", "s", "5.9")
				oks[i], errs[i] = err == nil, errOut
			}()
		}
		wg.Wait()
		if oks[0] == oks[1] {
			t.Fatalf("two concurrent Prepare: want one running and one refused, got ok=%v errors %q", oks, errs)
		}
		refused := errs[0] + errs[1]
		if !strings.Contains(refused, "cannot start prepare: the daemon is running prepare") {
			t.Errorf("Busy refusal does not name the running job: %s", refused)
		}
		// Cancel while preparing: Busy too, as a typed error for a Go client.
		cl, err := dbusapi.NewClient(b.connect(t), s.Root)
		if err != nil {
			t.Fatal(err)
		}
		if err := cl.Cancel(context.Background()); err == nil || !strings.Contains(err.Error(), "running prepare") {
			t.Errorf("Cancel during prepare: %v", err)
		} else if rerr, ok := err.(*dbusapi.RemoteError); !ok || rerr.Name != dbusapi.ErrorBusy {
			t.Errorf("Cancel during prepare: %#v", err)
		}

		// 100 concurrent readers, each on its own connection, while the job runs.
		var readers sync.WaitGroup
		var mu sync.Mutex
		var failures []string
		start := time.Now()
		for i := range 100 {
			readers.Add(1)
			go func() {
				defer readers.Done()
				c, err := dbus.Connect(b.Addr)
				if err == nil {
					defer c.Close()
					var all map[string]dbus.Variant
					err = c.Object(dbusapi.BusName, dbusapi.ObjectPath).Call("org.freedesktop.DBus.Properties.GetAll", 0, dbusapi.Interface).Store(&all)
					if err == nil && len(all) != len(allProps) {
						err = errFmt("GetAll returned %d properties", len(all))
					}
					if err == nil {
						var rep string
						err = c.Object(dbusapi.BusName, dbusapi.ObjectPath).Call(dbusapi.Interface+".GetReport", 0, map[string]dbus.Variant{}).Store(&rep)
					}
				}
				if err != nil {
					mu.Lock()
					failures = append(failures, err.Error())
					mu.Unlock()
				}
				_ = i
			}()
		}
		readers.Wait()
		t.Logf("100 concurrent readers served in %s", time.Since(start))
		if len(failures) > 0 {
			t.Errorf("%d of 100 readers failed: %v", len(failures), failures[0])
		}
		if ok, msg := sigs.waitFinished(t, 0, 5*time.Minute); !ok {
			t.Fatalf("prepare failed: %s", msg)
		}
		if prop(t, conn, "State") != "prepared" {
			t.Errorf("State %v", prop(t, conn, "State"))
		}
	})

	t.Run("unprivileged-after-prepare", func(t *testing.T) {
		before := stateDigest(t, s.Root)
		for _, m := range []string{"Cancel", "Reboot", "Arm", "Prepare"} {
			out, err := b.gdbusCall(t, nobody, m, "{'to': <'5.9'>}")
			if m != "Prepare" {
				out, err = b.gdbusCall(t, nobody, m, "{}")
			}
			if err == nil || !strings.Contains(out, "AccessDenied: "+m+" refused") {
				t.Errorf("non-root %s of a prepared upgrade: %v %s", m, err, out)
			}
		}
		if d := diffDigest(before, stateDigest(t, s.Root)); d != "" {
			t.Errorf("refused calls changed the state directory:\n%s", d)
		}
		if prop(t, conn, "State") != "prepared" || prop(t, conn, "Armed") != false {
			t.Errorf("State %v Armed %v", prop(t, conn, "State"), prop(t, conn, "Armed"))
		}
	})
}

func errFmt(format string, a ...any) error { return &fmtError{format, a} }

type fmtError struct {
	f string
	a []any
}

func (e *fmtError) Error() string { return strings.TrimSpace(sprintf(e.f, e.a...)) }

// TestNameIsExclusive: a second service cannot take the name (do not
// queue), and a non-root process may not own it (the policy file).
func TestNameIsExclusive(t *testing.T) {
	s := newSystem(t)
	b := startBus(t)
	startDaemon(t, b, s, dbusapi.Options{})
	conn := b.connect(t)
	svc, err := dbusapi.New(conn, s.engine(t), dbusapi.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Serve(context.Background()); err == nil || !strings.Contains(err.Error(), "another process owns") {
		t.Errorf("second daemon: %v", err)
	}
	nobody := testUserCred(t)
	// busctl cannot request a name; gdbus can't either. Use dbus-send? It
	// cannot own names. Run this test binary's helper as the user instead.
	// The test binary, where the user can run it.
	dir, err := os.MkdirTemp("", "kos-upgrade-helper-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "dbusapi.test")
	testenv.Run(t, "cp", os.Args[0], bin)
	cmd := exec.Command(bin, "-test.run=^TestHelperOwnName$", "-test.v")
	cmd.Env = append(os.Environ(), "KOS_UPGRADE_HELPER_BUS="+b.Addr)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: nobody}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "OWN-DENIED") {
		t.Errorf("non-root owning %s: %v\n%s", dbusapi.BusName, err, out)
	}
}

// TestHelperOwnName is run by TestNameIsExclusive as an unprivileged user.
func TestHelperOwnName(t *testing.T) {
	addr := os.Getenv("KOS_UPGRADE_HELPER_BUS")
	if addr == "" {
		t.Skip("helper")
	}
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	_, err = conn.RequestName("org.kos.Upgrade1.Impostor", dbus.NameFlagDoNotQueue)
	_, err2 := conn.RequestName(dbusapi.BusName, dbus.NameFlagDoNotQueue)
	if err2 != nil && strings.Contains(err2.Error(), "not allowed to own") {
		t.Log("OWN-DENIED")
		return
	}
	t.Fatalf("RequestName: %v / %v", err, err2)
}
