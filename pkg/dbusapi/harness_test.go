package dbusapi_test

import (
	"context"
	"log/slog"
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

	"github.com/keyarchos/kos-upgrade/pkg/dbusapi"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// bus is a private dbus-daemon configured like a system bus, with the
// project's policy file included (testenv.StartSystemBus).
type bus struct {
	Addr string
}

func startBus(t testing.TB) *bus {
	t.Helper()
	return &bus{Addr: testenv.StartSystemBus(t)}
}

// connect opens a connection to the bus as this process (root).
func (b *bus) connect(t testing.TB) *dbus.Conn {
	t.Helper()
	conn, err := dbus.Connect(b.Addr)
	if err != nil {
		t.Fatalf("cannot connect to the test bus: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// system is a fixture 5.8 system in subvolume @ of a btrfs filesystem on a
// loop device, the default subvolume, mounted at Root (as upgrader's tests
// make it).
type system struct {
	Set  *fixture.Set
	FS   *testenv.Btrfs
	Root string
}

func newSystem(t testing.TB) *system {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping real-component test in -short mode")
	}
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "rpm", "rpmkeys", "btrfs", "/usr/bin/python3", "dbus-daemon")
	set := fixture.MustBuild(t)
	fs := testenv.NewBtrfs(t, 1024)
	// A world-traversable parent: the non-root test user reads the state.
	parent, err := os.MkdirTemp("", "kos-upgrade-dbus-root-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(parent) })
	os.Chmod(parent, 0o755)
	root := filepath.Join(parent, "root")
	fs.MakeDefaultRoot(t, "@", root)
	if err := fixture.InstallBase(context.Background(), set, root); err != nil {
		t.Fatal(err)
	}
	return &system{Set: set, FS: fs, Root: root}
}

func (s *system) engine(t testing.TB) *upgrader.Engine {
	r, err := sysroot.New(s.Root)
	if err != nil {
		t.Fatal(err)
	}
	return upgrader.New(r, nil, nil)
}

// daemon is a Service served in this process.
type daemon struct {
	Svc    *dbusapi.Service
	Conn   *dbus.Conn
	cancel context.CancelFunc
	done   chan error
}

// startDaemon serves the system at root on b, in-process, and waits until
// it owns the name.
func startDaemon(t testing.TB, b *bus, s *system, opts dbusapi.Options) *daemon {
	t.Helper()
	conn := b.connect(t)
	if opts.Log == nil && testing.Verbose() {
		opts.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = 100 * time.Millisecond
	}
	svc, err := dbusapi.New(conn, s.engine(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &daemon{Svc: svc, Conn: conn, cancel: cancel, done: make(chan error, 1)}
	go func() { d.done <- svc.Serve(ctx) }()
	t.Cleanup(d.stop)
	waitOwner(t, b, true)
	return d
}

func (d *daemon) stop() {
	d.cancel()
	select {
	case <-d.done:
	case <-time.After(60 * time.Second):
	}
}

// waitOwner waits until org.kos.Upgrade1 has (or has not) an owner.
func waitOwner(t testing.TB, b *bus, want bool) {
	t.Helper()
	conn := b.connect(t)
	deadline := time.Now().Add(30 * time.Second)
	for {
		var has bool
		if err := conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, dbusapi.BusName).Store(&has); err != nil {
			t.Fatal(err)
		}
		if has == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: owner %v, want %v", dbusapi.BusName, has, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// busctl runs busctl against the test bus, as root or (uid != 0) as
// another user, and returns stdout, stderr and the error.
func (b *bus) busctl(t testing.TB, cred *syscall.Credential, args ...string) (string, string, error) {
	t.Helper()
	testenv.RequireTools(t, "busctl")
	cmd := exec.Command("busctl", append([]string{"--address=" + b.Addr}, args...)...)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// mustBusctl is busctl as root, failing the test on error.
func (b *bus) mustBusctl(t testing.TB, args ...string) string {
	t.Helper()
	out, errOut, err := b.busctl(t, nil, args...)
	if err != nil {
		t.Fatalf("busctl %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

const testUser = "kosupgrade-test"

var userOnce sync.Once

// testUserCred returns the credentials of a real unprivileged user, made
// with useradd the first time.
func testUserCred(t testing.TB) *syscall.Credential {
	t.Helper()
	testenv.RequireRoot(t)
	userOnce.Do(func() {
		if _, err := user.Lookup(testUser); err != nil {
			exec.Command("useradd", "--system", "-M", "-s", "/usr/sbin/nologin", "-d", "/nonexistent", testUser).Run()
		}
	})
	u, err := user.Lookup(testUser)
	if err != nil {
		testenv.Skip(t, "skipping: cannot create the user "+testUser+" (useradd): "+err.Error())
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
}

// signals collects the signals of the service seen on conn.
type signals struct {
	mu   sync.Mutex
	list []*dbus.Signal
	ch   chan *dbus.Signal
}

func watchSignals(t testing.TB, conn *dbus.Conn) *signals {
	t.Helper()
	if err := conn.AddMatchSignal(dbus.WithMatchObjectPath(dbusapi.ObjectPath)); err != nil {
		t.Fatal(err)
	}
	s := &signals{ch: make(chan *dbus.Signal, 4096)}
	conn.Signal(s.ch)
	go func() {
		for sig := range s.ch {
			s.mu.Lock()
			s.list = append(s.list, sig)
			s.mu.Unlock()
		}
	}()
	return s
}

func (s *signals) snapshot() []*dbus.Signal {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*dbus.Signal(nil), s.list...)
}

// waitFinished waits for a Finished signal after the first n signals.
func (s *signals) waitFinished(t testing.TB, after int, timeout time.Duration) (bool, string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		l := s.snapshot()
		for _, sig := range l[min(after, len(l)):] {
			if sig.Name == dbusapi.Interface+".Finished" {
				return sig.Body[0].(bool), sig.Body[1].(string)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no Finished signal within %s", timeout)
	return false, ""
}

// prop reads a property of the service over conn.
func prop(t testing.TB, conn *dbus.Conn, name string) any {
	t.Helper()
	v, err := conn.Object(dbusapi.BusName, dbusapi.ObjectPath).GetProperty(dbusapi.Interface + "." + name)
	if err != nil {
		t.Fatalf("Get %s: %v", name, err)
	}
	return v.Value()
}

// gdbusCall calls a method of the service that takes one a{sv} (given in
// GVariant text, e.g. "{}" or "{'to': <'5.9'>}") with gdbus, as root or as
// another user; it returns the combined output.
func (b *bus) gdbusCall(t testing.TB, cred *syscall.Credential, method, options string) (string, error) {
	t.Helper()
	testenv.RequireTools(t, "gdbus")
	cmd := exec.Command("gdbus", "call", "--address", b.Addr, "--dest", dbusapi.BusName, "--object-path", string(dbusapi.ObjectPath),
		"--method", dbusapi.Interface+"."+method, options)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	cmd.Env = append(os.Environ(), "HOME=/nonexistent")
	out, err := cmd.CombinedOutput()
	return string(out), err
}
