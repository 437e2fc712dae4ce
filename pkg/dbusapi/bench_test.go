package dbusapi_test

// P5 benchmarks (make bench runs them with -benchtime 1x; each does its
// whole measurement in one iteration): property reads over a private bus,
// `kos-upgrade status` cold start, daemon idle RSS.

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/dbusapi"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// benchRoot is a minimal system root: os-release and an empty state
// directory are all the daemon reads for its properties.
func benchRoot(b *testing.B) *system {
	b.Helper()
	testenv.RequireRoot(b)
	testenv.RequireTools(b, "dbus-daemon")
	parent, err := os.MkdirTemp("", "kos-upgrade-bench-root-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(parent) })
	root := filepath.Join(parent, "root")
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		b.Fatal(err)
	}
	os.MkdirAll(filepath.Join(root, "var/lib/kos-upgrade"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/os-release"), []byte("NAME=\"KeyarchOS\"\nID=kos\nVERSION_ID=5.8\n"), 0o644)
	return &system{Root: root}
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// BenchmarkDBusPropertyReads: 1000 Properties.Get round trips over the
// private bus (client → dbus-daemon → service → back). Target p99 ≤ 2 ms.
func BenchmarkDBusPropertyReads(b *testing.B) {
	s := benchRoot(b)
	bs := startBus(b)
	startDaemon(b, bs, s, dbusapi.Options{})
	conn := bs.connect(b)
	obj := conn.Object(dbusapi.BusName, dbusapi.ObjectPath)
	names := []string{"State", "Step", "Progress", "CurrentRelease", "TargetRelease", "Armed", "Plan", "LastResult", "RollbackAvailable"}
	lat := make([]time.Duration, 1000)
	b.ResetTimer()
	for range b.N {
		for i := range lat {
			start := time.Now()
			if _, err := obj.GetProperty(dbusapi.Interface + "." + names[i%len(names)]); err != nil {
				b.Fatal(err)
			}
			lat[i] = time.Since(start)
		}
	}
	b.StopTimer()
	p50, p99 := percentile(lat, 0.50), percentile(lat, 0.99)
	b.ReportMetric(ms(p50), "p50-ms")
	b.ReportMetric(ms(p99), "p99-ms")
	b.ReportMetric(0, "ns/op")
	if p99 > 2*time.Millisecond {
		b.Logf("p99 %s exceeds the 2 ms target", p99)
	}
}

// BenchmarkDBusStatusColdStart: `kos-upgrade status` as a new process,
// answered by the daemon (and, for comparison, from the state file when no
// daemon runs). Target ≤ 50 ms.
func BenchmarkDBusStatusColdStart(b *testing.B) {
	s := benchRoot(b)
	bs := startBus(b)
	bin := binary(b)
	run := func(env ...string) []time.Duration {
		var d []time.Duration
		for range 30 {
			cmd := exec.Command(bin, "--root", s.Root, "status")
			cmd.Env = append(os.Environ(), env...)
			start := time.Now()
			if out, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("status: %v\n%s", err, out)
			}
			d = append(d, time.Since(start))
		}
		return d
	}
	b.ResetTimer()
	var viaDaemon, inProcess []time.Duration
	for range b.N {
		inProcess = run("DBUS_SYSTEM_BUS_ADDRESS=" + bs.Addr) // bus, no daemon
		b.StopTimer()
		startDaemonProc(b, bs, s.Root, nil)
		b.StartTimer()
		viaDaemon = run("DBUS_SYSTEM_BUS_ADDRESS=" + bs.Addr)
	}
	b.StopTimer()
	b.ReportMetric(ms(percentile(viaDaemon, 0.5)), "daemon-p50-ms")
	b.ReportMetric(ms(percentile(viaDaemon, 0.95)), "daemon-p95-ms")
	b.ReportMetric(ms(percentile(inProcess, 0.5)), "statefile-p50-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkDBusDaemonIdleRSS: resident memory of `kos-upgrade daemon`
// after it has served some reads and gone idle. Target ≤ 15 MB.
func BenchmarkDBusDaemonIdleRSS(b *testing.B) {
	s := benchRoot(b)
	bs := startBus(b)
	var rssKB int
	for range b.N {
		d := startDaemonProc(b, bs, s.Root, nil)
		conn := bs.connect(b)
		for range 200 {
			prop(b, conn, "State")
		}
		if _, err := conn.Object(dbusapi.BusName, dbusapi.ObjectPath).GetProperty(dbusapi.Interface + ".Plan"); err != nil {
			b.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		st, err := os.ReadFile("/proc/" + strconv.Itoa(d.cmd.Process.Pid) + "/status")
		if err != nil {
			b.Fatal(err)
		}
		for _, l := range strings.Split(string(st), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
				rssKB, _ = strconv.Atoi(f[1])
			}
		}
		d.kill()
	}
	b.ReportMetric(float64(rssKB)/1024, "idle-RSS-MB")
	b.ReportMetric(0, "ns/op")
}
