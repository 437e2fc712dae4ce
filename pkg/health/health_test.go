package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/test/testenv"
)

func live(units []Unit, sockets []Socket, mounts []Mount) *Baseline {
	return &Baseline{Version: 1, Live: true, Units: units, Sockets: sockets, Mounts: mounts, DefaultTarget: "multi-user.target", SELinux: "enforcing"}
}

func svc(name string, enabled bool, active, sub string) Unit {
	return Unit{Name: name, Type: UnitType(name), Enabled: enabled, Active: active, Sub: sub}
}

func kinds(cs []Change) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Kind+" "+c.Subject)
	}
	return out
}

func TestCompare(t *testing.T) {
	web := svc("acme-web.service", true, "active", "running")
	port := Socket{Proto: "tcp", Addr: "0.0.0.0", Port: 8080, Unit: "acme-web.service"}
	data := Mount{Where: "/srv", What: "/dev/vdb", Mounted: true}
	tests := []struct {
		name          string
		before, after *Baseline
		ignore        map[string]bool
		regressions   []string
		expected      []string
		pre           []string
		waiting       []string
	}{
		{name: "nothing changed",
			before: live([]Unit{web}, []Socket{port}, []Mount{data}), after: live([]Unit{web}, []Socket{port}, []Mount{data})},
		{name: "service disabled by the new package",
			before:      live([]Unit{web}, []Socket{port}, nil),
			after:       live([]Unit{{Name: "acme-web.service", Type: "service", Active: "inactive", Sub: "dead"}}, nil, nil),
			regressions: []string{"service-inactive acme-web.service", "unit-disabled acme-web.service", "listener-gone tcp 0.0.0.0:8080"}},
		{name: "already failing before",
			before: live([]Unit{svc("broken.service", true, "failed", "failed")}, nil, nil),
			after:  live([]Unit{svc("broken.service", true, "failed", "failed")}, nil, nil),
			pre:    []string{"broken.service"}},
		{name: "newly failed",
			before:      live([]Unit{svc("x.service", true, "active", "running")}, nil, nil),
			after:       live([]Unit{svc("x.service", true, "failed", "failed")}, nil, nil),
			regressions: []string{"service-inactive x.service", "unit-failed x.service"}},
		{name: "removed package's unit is expected",
			before: func() *Baseline {
				b := live([]Unit{svc("legacy.service", true, "active", "running")}, []Socket{{Proto: "tcp", Addr: "::", Port: 99, Unit: "legacy.service"}}, nil)
				b.Expected = []Expectation{{Unit: "legacy.service", Rule: "package legacy is removed by the plan"}}
				return b
			}(),
			after:    live(nil, nil, nil),
			expected: []string{"service-inactive legacy.service", "unit-disabled legacy.service", "listener-gone tcp :::99"}},
		{name: "static service gone is not a service regression",
			before:      live([]Unit{svc("packagekit.service", false, "active", "running")}, nil, nil),
			after:       live(nil, nil, nil),
			regressions: []string{"unit-inactive packagekit.service"}},
		{name: "still to be started (a start job queued) is not judged",
			before:  live([]Unit{web}, nil, nil),
			after:   live([]Unit{{Name: "acme-web.service", Type: "service", Enabled: true, Active: "inactive", Sub: "dead", Job: "start"}}, nil, nil),
			waiting: []string{"acme-web.service"}},
		{name: "ignored unit",
			before: live([]Unit{web}, nil, nil), after: live(nil, nil, nil), ignore: map[string]bool{"acme-web.service": true}},
		{name: "mount missing",
			before: live(nil, nil, []Mount{data}), after: live(nil, nil, []Mount{{Where: "/srv", What: "/dev/vdb"}}),
			regressions: []string{"mount-missing /srv"}},
		{name: "offline baseline: only enablement, fstab and default target",
			before: &Baseline{Version: 1, NotMeasured: []string{PartActive, PartSockets, PartMounted, PartSELinux, PartModules},
				Units: []Unit{{Name: "acme-web.service", Type: "service", Enabled: true}}, Mounts: []Mount{{Where: "/srv", What: "/dev/vdb"}},
				DefaultTarget: "graphical.target"},
			after:       live([]Unit{{Name: "acme-web.service", Type: "service", Active: "inactive"}}, nil, nil),
			regressions: []string{"unit-disabled acme-web.service", "mount-missing /srv", "default-target default.target"}},
		{name: "selinux and modules",
			before: func() *Baseline {
				b := live(nil, nil, nil)
				b.Modules = []Module{{Name: "acme", Package: "acme-kmod"}, {Name: "builtin"}}
				return b
			}(),
			after:       func() *Baseline { b := live(nil, nil, nil); b.SELinux = "permissive"; return b }(),
			regressions: []string{"selinux selinux", "module-gone acme"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := Compare(tc.before, tc.after, tc.ignore)
			if got := kinds(d.Regressions); !slices.Equal(got, tc.regressions) {
				t.Errorf("regressions %q, want %q", got, tc.regressions)
			}
			if got := kinds(d.Expected); !slices.Equal(got, tc.expected) {
				t.Errorf("expected %q, want %q", got, tc.expected)
			}
			for _, c := range d.Expected {
				if c.Rule == "" {
					t.Errorf("expected change %s without its rule", c.Subject)
				}
			}
			if !slices.Equal(d.Waiting, tc.waiting) {
				t.Errorf("waiting %q, want %q", d.Waiting, tc.waiting)
			}
			if !slices.Equal(d.PreExisting, tc.pre) {
				t.Errorf("pre-existing %q, want %q", d.PreExisting, tc.pre)
			}
		})
	}
	d := Compare(live([]Unit{web}, []Socket{port}, nil), live(nil, nil, nil), nil)
	if d.Regressions[0].Message != "acme-web.service was active before the upgrade and is inactive after" ||
		d.Regressions[2].Message != "tcp 0.0.0.0:8080 (acme-web.service) was listening before the upgrade and is not after" {
		t.Errorf("messages: %q, %q", d.Regressions[0].Message, d.Regressions[2].Message)
	}
}

func TestParsePolicy(t *testing.T) {
	tests := []struct {
		name, text string
		wantErr    string
		check      func(p Policy) bool
	}{
		{name: "empty is the default", text: "", check: func(p Policy) bool {
			return p.Fatal[KindServiceInactive] && p.Fatal[KindMountMissing] && !p.Fatal[KindListenerGone] && p.ActivatingWait == 5*time.Minute
		}},
		{name: "everything", text: "# site\nfatal = listener-gone, mount-missing\nrequired = db.service web.socket\nignore = dnf-makecache.service # noisy\nactivating_wait = 90s\ncheck_timeout=2s\nhook_timeout = 1s\n",
			check: func(p Policy) bool {
				return p.Fatal[KindListenerGone] && !p.Fatal[KindServiceInactive] && p.Fatal[KindRequiredInactive] &&
					slices.Equal(p.Required, []string{"db.service", "web.socket"}) && p.Ignore["dnf-makecache.service"] &&
					p.ActivatingWait == 90*time.Second && p.CheckTimeout == 2*time.Second && p.HookTimeout == time.Second
			}},
		{name: "confirmation window", text: "confirm_after = 30m\nconfirm_on_timeout = bless\n", check: func(p Policy) bool {
			return p.ConfirmAfter == 30*time.Minute && p.ConfirmBless
		}},
		{name: "no window by default", text: "", check: func(p Policy) bool { return p.ConfirmAfter == 0 && !p.ConfirmBless }},
		{name: "window too long", text: "confirm_after = 200h\n", wantErr: "between 0 and 168h"},
		{name: "bad timeout action", text: "confirm_on_timeout = maybe\n", wantErr: `confirm_on_timeout = "maybe" is not fallback or bless`},
		{name: "unknown key", text: "fatl = unit-failed\n", wantErr: `line 1: unknown key "fatl"`},
		{name: "unknown kind", text: "\nfatal = everything\n", wantErr: `line 2: unknown kind "everything"`},
		{name: "not a unit", text: "required = ../../etc/passwd\n", wantErr: "is not a unit name"},
		{name: "bad duration", text: "activating_wait = forever\n", wantErr: "is not a duration"},
		{name: "no equals", text: "fatal\n", wantErr: "is not key = value"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := ParsePolicy([]byte(tc.text))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !tc.check(p) {
				t.Errorf("policy %+v, %v", p, err)
			}
		})
	}
	// A damaged file gives the default policy and the error.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "health.conf"), []byte("fatal = nonsense\n"), 0o600)
	p, err := LoadPolicy(filepath.Join(dir, "health.conf"))
	if err == nil || !p.Fatal[KindServiceInactive] {
		t.Errorf("damaged health.conf: %+v, %v", p, err)
	}
	if p, err := LoadPolicy(filepath.Join(dir, "missing.conf")); err != nil || !p.Fatal[KindUnitFailed] {
		t.Errorf("missing health.conf: %+v, %v", p, err)
	}
}

func TestJudge(t *testing.T) {
	web := svc("acme-web.service", true, "active", "running")
	down := live([]Unit{{Name: "acme-web.service", Type: "service", Enabled: true, Active: "inactive", Sub: "dead"}}, nil, nil)
	failing := live([]Unit{svc("other.service", false, "failed", "failed")}, nil, nil)
	tests := []struct {
		name     string
		in       Input
		green    bool
		reasons  []string
		warnings []string
	}{
		{name: "green", in: Input{Baseline: live([]Unit{web}, nil, nil), Observed: live([]Unit{web}, nil, nil)}, green: true},
		{name: "service down is red", in: Input{Baseline: live([]Unit{web}, nil, nil), Observed: down},
			reasons: []string{"acme-web.service was active before the upgrade and is inactive after"}},
		{name: "not fatal by policy", in: Input{Baseline: live([]Unit{web}, nil, nil), Observed: down, Policy: Policy{Fatal: map[string]bool{KindMountMissing: true}}},
			green: true, warnings: []string{"acme-web.service was active before the upgrade and is inactive after"}},
		{name: "required unit", in: Input{Baseline: live(nil, nil, nil), Observed: down, Policy: Policy{Fatal: map[string]bool{}, Required: []string{"acme-web.service", "db.service"}}},
			reasons: []string{"acme-web.service is required by health.conf and is inactive", "db.service is required by health.conf and is not loaded"}},
		{name: "damaged baseline: failed units count", in: Input{BaselineErr: errors.New("version 9"), Observed: failing},
			reasons:  []string{"other.service failed after the upgrade"},
			warnings: []string{"the baseline cannot be used (version 9): judged on failed units, required units and checks only"}},
		{name: "damaged policy: defaults, warned", in: Input{Baseline: live([]Unit{web}, nil, nil), Observed: live([]Unit{web}, nil, nil), PolicyErr: errors.New("cannot read health.conf: line 1")},
			green: true, warnings: []string{"cannot read health.conf: line 1; the default policy was used"}},
		{name: "systemd unreachable", in: Input{Baseline: live(nil, nil, nil), ObservedErr: errors.New("no bus")},
			reasons: []string{"cannot observe the running system: no bus"}},
		{name: "not running: checks only", in: Input{Checks: []CheckResult{
			{Name: "required.d/db", Class: ClassRequired, Result: ResultTimedOut, Detail: "killed after 1s"},
			{Name: "wanted.d/x", Class: ClassWanted, Result: ResultFailed, Detail: "exit status 1"},
			{Name: "health.d/y", Class: ClassRequired, Result: ResultPassed}}},
			reasons:  []string{"check required.d/db timed out (killed after 1s)"},
			warnings: []string{"check wanted.d/x failed (exit status 1)"}},
		{name: "probe not passing yet is neither", in: Input{Checks: []CheckResult{
			{Name: "confirm.d/app", Class: ClassProbe, Result: ResultFailed, Detail: "exit status 1"}}},
			green: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := Judge(tc.in)
			if v.Green != tc.green || !slices.Equal(v.Reasons, tc.reasons) {
				t.Errorf("green %v reasons %q, want %v %q", v.Green, v.Reasons, tc.green, tc.reasons)
			}
			var w []string
			for _, x := range v.Warnings {
				if !strings.HasPrefix(x, "acme-web.service was enabled") {
					w = append(w, x)
				}
			}
			if !slices.Equal(w, tc.warnings) {
				t.Errorf("warnings %q, want %q", w, tc.warnings)
			}
		})
	}
}

func TestParseNet(t *testing.T) {
	tcp := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0277 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 2222 1 0000000000000000 100 0 0 10 0
`
	udp6 := `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 00000000000000000000000000000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3333 2 0000000000000000 0
  2: 00000000000000000000000000000000:C350 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4444 2 0000000000000000 0
`
	got := append(parseNet("tcp", tcp), parseNet("udp6", udp6)...)
	var keys []string
	for _, s := range got {
		keys = append(keys, s.Key()+" "+s.inode)
	}
	want := []string{"tcp 0.0.0.0:8080 1111", "udp6 :::53 3333"}
	if !slices.Equal(keys, want) {
		t.Errorf("listeners %q, want %q", keys, want)
	}
	if a, p, ok := parseHexAddr("0100007F:0277"); !ok || a != "127.0.0.1" || p != 631 {
		t.Errorf("parseHexAddr: %s %d %v", a, p, ok)
	}
	for _, bad := range []string{"", "zz:01", "0100007F", "0100007F:FFFFF", "01:0001"} {
		if _, _, ok := parseHexAddr(bad); ok {
			t.Errorf("parseHexAddr(%q) accepted", bad)
		}
	}
}

func TestUnitOfCgroup(t *testing.T) {
	tests := []struct{ name, text, want string }{
		{"unified", "0::/system.slice/acme-web.service\n", "acme-web.service"},
		{"v1 name=systemd", "12:cpu,cpuacct:/\n1:name=systemd:/system.slice/sshd.service\n", "sshd.service"},
		{"init", "0::/init.scope\n", "init.scope"},
		{"user session", "0::/user.slice/user-0.slice/session-1.scope\n", "session-1.scope"},
		{"garbage", "nonsense\n0::/../..\n", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := UnitOfCgroup(tc.text); got != tc.want {
				t.Errorf("UnitOfCgroup = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestParseFstab(t *testing.T) {
	text := "# comment\nUUID=1 / btrfs subvol=@ 0 0\n/dev/vdb /srv\\040data xfs defaults 0 2\n/dev/vdc none swap sw 0 0\n/dev/vdd /mnt/usb ext4 noauto,user 0 0\nbroken\n"
	var got []string
	for _, m := range ParseFstab([]byte(text)) {
		got = append(got, m.Where+"="+m.What)
	}
	if want := []string{"/=UUID=1", "/srv data=/dev/vdb"}; !slices.Equal(got, want) {
		t.Errorf("fstab mounts %q, want %q", got, want)
	}
}

func TestBaselineRoundTrip(t *testing.T) {
	b := live([]Unit{svc("b.service", true, "active", "running"), svc("a.socket", true, "active", "listening")},
		[]Socket{{Proto: "tcp", Addr: "0.0.0.0", Port: 22, Unit: "sshd.service"}}, []Mount{{Where: "/", What: "UUID=1", Mounted: true}})
	b.Expected = []Expectation{{Unit: "legacy.service", Rule: "package legacy is removed by the plan"}}
	out, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(out, "baseline.json")
	if err != nil || got.Units[0].Name != "a.socket" || got.Sockets[0].Unit != "sshd.service" || len(got.Expected) != 1 {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	for name, doc := range map[string]string{
		"newer version":   `{"version":2,"units":[]}`,
		"no version":      `{"units":[]}`,
		"bad unit":        `{"version":1,"units":[{"name":"../x.service","type":"service"}]}`,
		"type mismatch":   `{"version":1,"units":[{"name":"x.service","type":"socket"}]}`,
		"bad proto":       `{"version":1,"units":[],"sockets":[{"proto":"sctp","addr":"x","port":1}]}`,
		"relative mount":  `{"version":1,"units":[],"mounts":[{"where":"srv","what":"x"}]}`,
		"bad selinux":     `{"version":1,"units":[],"selinux":"off"}`,
		"rule-less":       `{"version":1,"units":[],"expected":[{"unit":"x.service"}]}`,
		"not json":        `{"version":1,`,
		"wrong types":     `{"version":"1"}`,
		"bad default tgt": `{"version":1,"units":[],"default_target":"/etc/passwd"}`,
	} {
		if _, err := Parse([]byte(doc), "baseline.json"); err == nil || !strings.Contains(err.Error(), "baseline.json") {
			t.Errorf("%s: accepted or error without the file name: %v", name, err)
		}
	}
}

// TestCollectOffline measures a fixture root: enabled units from .wants
// and .requires links, the default target, fstab; the live parts are not
// measured.
func TestCollectOffline(t *testing.T) {
	root := t.TempDir()
	for _, l := range []struct{ link, target string }{
		{"/etc/systemd/system/multi-user.target.wants/acme-web.service", "/usr/lib/systemd/system/acme-web.service"},
		{"/etc/systemd/system/sockets.target.wants/acme.socket", "/usr/lib/systemd/system/acme.socket"},
		{"/etc/systemd/system/local-fs.target.requires/srv.mount", "/etc/systemd/system/srv.mount"},
		{"/etc/systemd/system/multi-user.target.wants/README", "/nowhere"},
		{"/etc/systemd/system/default.target", "/usr/lib/systemd/system/graphical.target"},
	} {
		os.MkdirAll(filepath.Join(root, filepath.Dir(l.link)), 0o755)
		if err := os.Symlink(l.target, filepath.Join(root, l.link)); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(root, "/etc/fstab"), []byte("/dev/vdb /srv xfs defaults 0 0\n"), 0o644)
	b := CollectOffline(root, time.Unix(0, 0))
	var names []string
	for _, u := range b.Units {
		if !u.Enabled || u.Active != "" {
			t.Errorf("offline unit %+v", u)
		}
		names = append(names, u.Name)
	}
	slices.Sort(names)
	if want := []string{"acme-web.service", "acme.socket", "srv.mount"}; !slices.Equal(names, want) {
		t.Errorf("enabled units %q, want %q", names, want)
	}
	if b.DefaultTarget != "graphical.target" || len(b.Mounts) != 1 || b.Mounts[0].Where != "/srv" || b.Live {
		t.Errorf("baseline %+v", b)
	}
	for _, p := range []string{PartActive, PartSockets, PartMounted, PartSELinux, PartModules} {
		if b.Measured(p) {
			t.Errorf("%s measured offline", p)
		}
	}
	if out, err := b.Marshal(); err != nil {
		t.Fatal(err)
	} else if _, err := Parse(out, "x"); err != nil {
		t.Errorf("an offline baseline does not validate: %v", err)
	}
}

// TestListenersOfThisProcess: a socket this test listens on is found in
// the real /proc, with the unit of this process's cgroup, and is gone
// once closed.
func TestListenersOfThisProcess(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	key := fmt.Sprintf("tcp 127.0.0.1:%d", ln.Addr().(*net.TCPAddr).Port)
	b, _ := os.ReadFile("/proc/self/cgroup")
	unit := UnitOfCgroup(string(b))
	find := func() (Socket, bool) {
		socks, err := listeners("/proc")
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range socks {
			if s.Key() == key {
				return s, true
			}
		}
		return Socket{}, false
	}
	s, ok := find()
	if !ok || s.Unit != unit {
		t.Errorf("listener %s: found %v, unit %q, want %q", key, ok, s.Unit, unit)
	}
	ln.Close()
	if _, ok := find(); ok {
		t.Errorf("listener %s still found once closed", key)
	}
}

// TestRunChecks runs real scripts: in parallel, a hanging one (with a
// child holding its output) killed at the timeout, a failing wanted one,
// an unsafe one refused unrun.
func TestRunChecks(t *testing.T) {
	testenv.RequireRoot(t)
	root := t.TempDir()
	write := func(rel, body string, mode os.FileMode) {
		p := filepath.Join(root, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
	}
	write("required.d/10-hang", "echo starting; sleep 600 & sleep 600\n", 0o755)
	write("required.d/20-ok", "echo fine; sleep 1\n", 0o755)
	write("wanted.d/10-fail", "echo degraded >&2; exit 3\n", 0o755)
	write("health.d/10-ok", "sleep 1; test \"$KOS_UPGRADE_ROOT\" = /x\n", 0o755)
	write("health.d/20-unsafe", "touch "+root+"/ran\n", 0o757)
	write("health.d/README", "not a check\n", 0o644)
	dirs := []CheckDir{
		{Dir: filepath.Join(root, "health.d"), Name: "health.d", Class: ClassRequired},
		{Dir: filepath.Join(root, "required.d"), Name: "required.d", Class: ClassRequired},
		{Dir: filepath.Join(root, "wanted.d"), Name: "wanted.d", Class: ClassWanted},
		{Dir: filepath.Join(root, "missing.d"), Name: "missing.d", Class: ClassWanted},
	}
	t0 := time.Now()
	res := RunChecks(context.Background(), dirs, 3*time.Second, "KOS_UPGRADE_ROOT=/x")
	took := time.Since(t0)
	var got []string
	for _, r := range res {
		got = append(got, r.Name+" "+r.Result)
	}
	want := []string{"health.d/10-ok passed", "health.d/20-unsafe refused", "required.d/10-hang timed out", "required.d/20-ok passed", "wanted.d/10-fail failed"}
	if !slices.Equal(got, want) {
		t.Errorf("results %q, want %q", got, want)
	}
	if took > 3*time.Second+killGrace {
		t.Errorf("checks took %s: not in parallel, or the hanging one's child kept them waiting", took)
	}
	if res[2].Output != "starting" || res[4].Output != "degraded" || !strings.Contains(res[4].Detail, "exit status 3") {
		t.Errorf("outputs: %+v", res)
	}
	if _, err := os.Stat(filepath.Join(root, "ran")); err == nil {
		t.Errorf("the world-writable check ran")
	}
	v := Judge(Input{Checks: res})
	if v.Green || len(v.Reasons) != 2 || len(v.Warnings) != 1 {
		t.Errorf("verdict: %+v", v)
	}
}
