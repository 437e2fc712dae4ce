package e2e

// The fleet scenario: full-system guests (system.go) with sshd, reached by
// Ansible over 127.0.0.1 port forwards of QEMU's user network, upgraded by
// the collection kos.upgrade (ansible/, docs/fleet.md) in canary waves:
// real reboots through `kos-upgrade reboot`, OVMF and systemd-boot with
// boot counting, the health unit's verdict, the broken-root fixture for the
// host that falls back, the rerun after its problem is removed, and the
// HTML report in headless Chromium.
//
// Unlike the other scenarios each guest is one QEMU process for the whole
// test (no -no-reboot: the guest reboots inside it, as a server does), and
// the driver does not run (/etc/kos-e2e-no-driver): Ansible drives.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// fleetTools are the host commands of the fleet scenario.
var fleetTools = []string{"ansible-playbook", "ansible-galaxy", "ssh", "ssh-keygen", "chromium"}

// fleetHost is one guest of the fleet.
type fleetHost struct {
	name   string
	broken bool // upgraded with the 5.9-badinit repository: falls back
	sys    *QemuSystem
	cmd    *exec.Cmd
	done   chan error
}

// console is the host's serial console so far.
func (h *fleetHost) console() string {
	b, _ := os.ReadFile(filepath.Join(h.sys.Shared, "console.log"))
	return string(b)
}

// firmwareBoots counts the boots of the host (OVMF starting the boot loader).
func (h *fleetHost) firmwareBoots() int {
	return strings.Count(h.console(), "BdsDxe: starting")
}

// TestQemuFleetTwoHosts is the default run's fleet, the two-host
// variant of TestQemuFleetAnsible: waves [1, 1]. Wave 1 upgrades the
// canary, blessed; wave 2 the host with the broken root, which falls back
// and stops the run; the report shows both, the fallback with its reason.
// The rerun resumes from each host's state without a reboot: the canary
// runs the target, the fallen-back host is left alone
// (kos_upgrade_retry_fallen_back: false) and still stops the run.
func TestQemuFleetTwoHosts(t *testing.T) {
	f := startFleet(t, []fleetHost{{name: "canary"}, {name: "broken", broken: true}})
	f.firstRun(t)

	boots := f.boots()
	t1 := time.Now()
	rc, out := f.playbook(t, f.report, "run-2", map[string]any{"kos_upgrade_retry_fallen_back": false}, "kos.upgrade.upgrade")
	t.Logf("FIGURES: rerun (resume, the fallen-back host left alone) %s, exit %d", time.Since(t1).Round(time.Second), rc)
	if rc == 0 || !strings.Contains(out, "fell-back") {
		t.Errorf("the rerun did not stop on the fallen-back host (exit %d):\n%s", rc, tail(out, 60))
	}
	f.assertNoReboot(t, boots, nil)
	doc := readFleetReport(t, f.report)
	if r := doc.host(t, "canary"); r.Verdict != "blessed" || r.ReleaseBefore != "5.8" || r.ReleaseAfter != "5.9" || r.Phase != "done" {
		t.Errorf("canary after the rerun: %+v, want blessed on 5.9 (from 5.8), phase done", r)
	}
	if r := doc.host(t, "broken"); r.Verdict != "fell-back" || r.ReleaseAfter != "5.8" || r.Reason == "" || r.Phase != "fell-back" {
		t.Errorf("broken after the rerun: %+v, want fallen back to 5.8 with its reason, phase fell-back", r)
	}
	f.screenshot(t)
	t.Logf("FIGURES: two-host fleet scenario %s", time.Since(f.t0).Round(time.Second))
}

// TestQemuFleetAnsible is the fleet: three hosts, waves [1, 2]. Wave
// 1 upgrades one host, blessed; wave 2 two hosts, one of which gets the
// broken root (its new init exits: the kernel panics in both tries and
// systemd-boot falls back to the old entry): the run stops after wave 2 and
// the report shows two upgraded hosts and one fallen back with its reason.
// The rerun, the broken repository gone from the inventory, resumes: the
// two upgraded hosts are not rebooted again, the third upgrades.
func TestQemuFleetAnsible(t *testing.T) {
	RequireFull(t)
	f := startFleet(t, []fleetHost{{name: "canary"}, {name: "web"}, {name: "broken", broken: true}})
	f.firstRun(t)

	// Remove the problem (the broken repository) and run again: the
	// upgraded hosts stay as they are, without a reboot.
	boots := f.boots()
	writeInventory(t, f.inv, f.work, f.hosts, f.set, false)
	t2 := time.Now()
	rc, out := f.playbook(t, f.report, "run-2", nil, "kos.upgrade.upgrade")
	t.Logf("FIGURES: rerun (resume) %s, exit %d", time.Since(t2).Round(time.Second), rc)
	if rc != 0 {
		t.Fatalf("the rerun failed (exit %d):\n%s", rc, tail(out, 80))
	}
	doc := readFleetReport(t, f.report)
	for _, h := range f.hosts {
		r := doc.host(t, h.name)
		if r.Verdict != "blessed" || r.ReleaseAfter != "5.9" || r.ReleaseBefore != "5.8" {
			t.Errorf("%s after the rerun: %+v, want blessed on 5.9 (from 5.8)", h.name, r)
		}
	}
	f.assertNoReboot(t, boots, func(h *fleetHost) bool { return h.broken })
	if doc.Counts.Upgraded != len(f.hosts) {
		t.Errorf("rerun's counts: %+v", doc.Counts)
	}
	f.screenshot(t)

	// The rollback role on the canary: its pre-upgrade system again.
	t3 := time.Now()
	rbReport := filepath.Join(f.report, "rollback")
	rc, out = f.playbook(t, rbReport, "rollback", nil, "kos.upgrade.rollback", "--limit", f.hosts[0].name)
	t.Logf("FIGURES: rollback of one host %s, exit %d", time.Since(t3).Round(time.Second), rc)
	if rc != 0 {
		t.Fatalf("the rollback failed (exit %d):\n%s", rc, tail(out, 60))
	}
	doc = readFleetReport(t, rbReport)
	if r := doc.host(t, f.hosts[0].name); r.Verdict != "rolled-back" || r.ReleaseAfter != "5.8" {
		t.Errorf("%s after the rollback: %+v, want rolled back to 5.8", f.hosts[0].name, r)
	}
	t.Logf("FIGURES: fleet scenario %s", time.Since(f.t0).Round(time.Second))
}

// fleet is a running fleet: its hosts' QEMU processes, the collection
// installed on the controller (this machine), the inventory and the
// report directory (kept with the first host's artifacts).
type fleet struct {
	hosts                   []fleetHost
	set                     *fixture.Set
	work, coll, inv, report string
	t0                      time.Time
}

// startFleet builds the hosts' systems, each with sshd, the test's key and
// one CPU (TCG runs a guest on one host thread: two guests on the test
// machine's two cores), starts each as soon as it is built (the next one
// is built while it boots) and waits until every one answers over ssh.
func startFleet(t *testing.T, hosts []fleetHost) *fleet {
	QemuParallel(t, len(hosts))
	RequireSystem(t)
	testenv.RequireTools(t, fleetTools...)
	f := &fleet{hosts: hosts, t0: time.Now(), work: t.TempDir()}
	testenv.Run(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kos-fleet-test", "-f", filepath.Join(f.work, "id"))
	pub, err := os.ReadFile(filepath.Join(f.work, "id.pub"))
	if err != nil {
		t.Fatal(err)
	}
	f.coll = buildCollection(t, f.work)
	f.set = fixture.MustBuild(t)
	// Kept with the first host's artifacts (KOS_UPGRADE_E2E_ARTIFACTS):
	// every host's console, copied before the hosts' own cleanups.
	t.Cleanup(func() {
		if f.report == "" {
			return
		}
		for _, h := range f.hosts {
			if h.sys != nil {
				os.WriteFile(filepath.Join(f.report, "console-"+h.name+".log"), []byte(h.console()), 0o644)
			}
		}
	})
	for i := range f.hosts {
		h := &f.hosts[i]
		h.sys = NewQemuSystemWith(t, LayoutBtrfs, SystemOptions{SSHKey: string(pub), Files: fleetFiles(filepath.Join(f.set.Dir, "repos"))})
		h.sys.SSHPort = freePort(t)
		h.sys.CPUs = 1
		if i == 0 {
			f.report = filepath.Join(h.sys.Shared, "fleet-report")
			if err := os.MkdirAll(f.report, 0o755); err != nil {
				t.Fatal(err)
			}
			lockQemu(t)
		}
		startFleetHost(t, h)
	}
	t.Logf("FIGURES: %d systems built and started in %s", len(f.hosts), time.Since(f.t0).Round(time.Second))
	for i := range f.hosts {
		waitSSH(t, &f.hosts[i], f.work, 15*time.Minute)
	}
	t.Logf("FIGURES: fleet reachable over ssh after %s", time.Since(f.t0).Round(time.Second))
	f.inv = filepath.Join(f.work, "inventory.yml")
	return f
}

// firstRun runs the upgrade playbook with the broken host's broken
// repository, waves [1, 2]: the canary (and the other good hosts) blessed
// on 5.9 with their downtime, the broken host fallen back to 5.8 with the
// reason, the run stopped; the report says so.
func (f *fleet) firstRun(t *testing.T) {
	t.Helper()
	writeInventory(t, f.inv, f.work, f.hosts, f.set, true)
	t1 := time.Now()
	rc, out := f.playbook(t, f.report, "run-1", nil, "kos.upgrade.upgrade")
	t.Logf("FIGURES: first run (one host falls back) %s, exit %d", time.Since(t1).Round(time.Second), rc)
	if rc == 0 {
		t.Fatalf("the first run succeeded, but its broken host should have fallen back and stopped the rollout:\n%s", tail(out, 80))
	}
	doc := readFleetReport(t, f.report)
	for _, h := range f.hosts {
		r := doc.host(t, h.name)
		switch {
		case h.broken:
			if r.Verdict != "fell-back" || r.ReleaseAfter != "5.8" || r.Reason == "" || r.State != "rolled-back" {
				t.Errorf("%s after the first run: %+v, want fell back to 5.8 with a reason\n%s", h.name, r, tail(h.console(), 40))
			}
		default:
			if r.Verdict != "blessed" || r.ReleaseBefore != "5.8" || r.ReleaseAfter != "5.9" || r.Downtime == nil || *r.Downtime <= 0 {
				t.Errorf("%s after the first run: %+v, want blessed on 5.9 with its downtime\n%s", h.name, r, tail(h.console(), 40))
			}
		}
	}
	if doc.Counts.Upgraded != len(f.hosts)-1 || doc.Counts.Verdicts["fell-back"] != 1 {
		t.Errorf("first run's counts: %+v", doc.Counts)
	}
	if !strings.Contains(out, "fell-back") {
		t.Errorf("the first run does not say why it stopped:\n%s", tail(out, 40))
	}
	if t.Failed() {
		t.FailNow()
	}
}

// boots counts each host's boots so far.
func (f *fleet) boots() map[string]int {
	n := map[string]int{}
	for _, h := range f.hosts {
		n[h.name] = h.firmwareBoots()
	}
	return n
}

// assertNoReboot fails the test for each host (but those of except) that
// booted since boots were counted.
func (f *fleet) assertNoReboot(t *testing.T, boots map[string]int, except func(*fleetHost) bool) {
	t.Helper()
	for i := range f.hosts {
		h := &f.hosts[i]
		if except != nil && except(h) {
			continue
		}
		if n := h.firmwareBoots(); n != boots[h.name] {
			t.Errorf("%s booted %d more time(s) in the rerun: a host was rebooted again", h.name, n-boots[h.name])
		}
	}
}

// screenshot opens the fleet report in headless Chromium, its screenshot
// kept beside it.
func (f *fleet) screenshot(t *testing.T) {
	t.Helper()
	shot := filepath.Join(f.report, "fleet.png")
	screenshot(t, filepath.Join(f.report, "fleet.html"), shot)
	t.Logf("fleet report: %s (screenshot %s)", f.report, shot)
}

// fleetFiles are the files each fleet guest gets: two tries for a trial
// (the broken host falls back sooner), no e2e driver (Ansible drives), and
// a unit that mounts the fixture's repositories at repos, the path their
// .repo files name, at every boot.
func fleetFiles(repos string) map[string]string {
	return map[string]string{
		"etc/kos-upgrade/boot.conf":                       "tries=2\n",
		"etc/kos-e2e-no-driver":                           "Ansible drives this guest (test/e2e/fleet_test.go)\n",
		"etc/systemd/system/kos-fleet-repos.service":      mountReposUnit(repos),
		"etc/systemd/system/multi-user.target.d/kos.conf": "[Unit]\nWants=kos-fleet-repos.service\n",
	}
}

// mountReposUnit mounts the fixture repositories' share at dir.
func mountReposUnit(dir string) string {
	return fmt.Sprintf(`[Unit]
Description=kos-upgrade e2e: the fixture repositories
After=systemd-udevd.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStartPre=-/sbin/modprobe 9pnet_virtio
ExecStartPre=/bin/mkdir -p %[1]s
ExecStart=/bin/mount -t 9p -o trans=virtio,version=9p2000.L,ro %[2]s %[1]s
`, dir, systemReposTag)
}

// QemuLockEnv names a lock file the fleet scenario holds (flock) from the
// start of its first guest to the end of the test, so that the three
// guests' systems are built while another QEMU test runs under that lock
// on a shared machine: KOS_UPGRADE_QEMU_LOCK=/tmp/kos-qemu.lock.
const QemuLockEnv = "KOS_UPGRADE_QEMU_LOCK"

func lockQemu(t *testing.T) {
	t.Helper()
	p := os.Getenv(QemuLockEnv)
	if p == "" {
		return
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	t.Logf("waited %s for %s", time.Since(start).Round(time.Second), p)
	t.Cleanup(func() { f.Close() })
}

// buildCollection builds ansible/ with ansible-galaxy and installs the
// artifact; it returns the collections path.
func buildCollection(t *testing.T, work string) string {
	t.Helper()
	out := filepath.Join(work, "galaxy")
	testenv.Run(t, "ansible-galaxy", "collection", "build", "--output-path", out, filepath.Join(repoRoot(), "ansible"))
	art, _ := filepath.Glob(filepath.Join(out, "kos-upgrade-*.tar.gz"))
	if len(art) != 1 {
		t.Fatalf("ansible-galaxy built %v", art)
	}
	coll := filepath.Join(work, "collections")
	testenv.Run(t, "ansible-galaxy", "collection", "install", "-p", coll, art[0])
	return coll
}

// freePort returns a free TCP port on 127.0.0.1.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startFleetHost starts the host's QEMU, which runs until the test ends:
// without -no-reboot, the guest's reboots stay inside it.
func startFleetHost(t *testing.T, h *fleetHost) {
	t.Helper()
	args := slices.DeleteFunc(h.sys.args(t, filepath.Join(h.sys.Shared, "console.log")), func(a string) bool { return a == "-no-reboot" })
	ctx, cancel := context.WithCancel(context.Background())
	h.cmd = exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	stderr, err := os.Create(filepath.Join(h.sys.Shared, "qemu.log"))
	if err != nil {
		t.Fatal(err)
	}
	h.cmd.Stdout, h.cmd.Stderr = stderr, stderr
	if err := h.cmd.Start(); err != nil {
		t.Fatalf("qemu-system-x86_64: %v", err)
	}
	h.done = make(chan error, 1)
	go func() { h.done <- h.cmd.Wait(); stderr.Close() }()
	t.Cleanup(func() {
		cancel()
		<-h.done
	})
	t.Logf("%s: QEMU started, ssh on 127.0.0.1:%d", h.name, h.sys.SSHPort)
}

// sshArgs are the ssh options of the test (no host key bookkeeping: the
// guests are new every time).
func sshArgs(work string) []string {
	return []string{"-i", filepath.Join(work, "id"), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "ConnectTimeout=10", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"}
}

// waitSSH waits until the host answers over ssh.
func waitSSH(t *testing.T, h *fleetHost, work string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		select {
		case err := <-h.done:
			t.Fatalf("%s: QEMU exited (%v) before ssh answered; console:\n%s", h.name, err, tail(h.console(), 60))
		default:
		}
		args := append(sshArgs(work), "-p", fmt.Sprint(h.sys.SSHPort), "root@127.0.0.1", "true")
		if exec.Command("ssh", args...).Run() == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no ssh within %s; console:\n%s", h.name, timeout, tail(h.console(), 60))
		}
		time.Sleep(5 * time.Second)
	}
}

// writeInventory writes the Ansible inventory (YAML) of hosts, in their
// order (the waves take them in inventory order); with broken, the broken
// host upgrades from the 5.9 and 5.9-badinit repositories, else from its
// own configuration as the others.
func writeInventory(t *testing.T, path, work string, hosts []fleetHost, set *fixture.Set, broken bool) {
	t.Helper()
	q := func(v any) string { b, _ := json.Marshal(v); return string(b) } // JSON scalars and lists are YAML
	var b strings.Builder
	b.WriteString("all:\n  vars:\n")
	for _, kv := range [][2]string{
		{"ansible_host", "127.0.0.1"}, {"ansible_user", "root"},
		{"ansible_ssh_private_key_file", filepath.Join(work, "id")},
		{"ansible_ssh_common_args", strings.Join(sshArgs(work)[2:], " ")},
		{"ansible_python_interpreter", "/usr/bin/python3"},
	} {
		fmt.Fprintf(&b, "    %s: %s\n", kv[0], q(kv[1]))
	}
	b.WriteString("  hosts:\n")
	for _, h := range hosts {
		fmt.Fprintf(&b, "    %s:\n      ansible_port: %d\n", h.name, h.sys.SSHPort)
		if h.broken && broken {
			var repos []string
			for i, n := range []string{fixture.Repo59, fixture.Repo59BadInit} {
				repos = append(repos, fmt.Sprintf("r%d=file://%s", i, set.Repos[n]))
			}
			fmt.Fprintf(&b, "      kos_upgrade_repos: %s\n", q(repos))
		}
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// playbook runs ansible-playbook with args (a playbook and options) on the
// fleet, with the test's variables and more, the report in report; it
// returns the exit code and the output (also kept as NAME.log there).
func (f *fleet) playbook(t *testing.T, report, name string, more map[string]any, args ...string) (int, string) {
	t.Helper()
	if err := os.MkdirAll(report, 0o755); err != nil {
		t.Fatal(err)
	}
	vars := map[string]any{
		"kos_upgrade_target": "5.9", "kos_upgrade_serial": []any{1, 2}, "kos_upgrade_report_dir": report,
		"kos_upgrade_verdict_timeout": 2400, "kos_upgrade_poll_interval": 10, "kos_upgrade_reboot_delay": 3,
		"kos_upgrade_report_title": "kos-upgrade e2e fleet",
	}
	for k, v := range more {
		vars[k] = v
	}
	ev, _ := json.Marshal(vars)
	work := f.work
	cmd := exec.Command("ansible-playbook", append([]string{"-i", f.inv, "-e", string(ev)}, args...)...)
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "ANSIBLE_COLLECTIONS_PATH="+f.coll, "ANSIBLE_HOST_KEY_CHECKING=False", "ANSIBLE_NOCOLOR=1",
		"ANSIBLE_FORCE_COLOR=0", "ANSIBLE_LOCAL_TEMP="+filepath.Join(work, "ansible-tmp"),
		"ANSIBLE_SSH_CONTROL_PATH_DIR="+filepath.Join(work, "cp"), "ANSIBLE_RETRY_FILES_ENABLED=False", "ANSIBLE_FORKS=5",
		"ANSIBLE_PIPELINING=True")
	logf, err := os.Create(filepath.Join(report, name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	var all strings.Builder
	pr, pw, _ := os.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<24)
		for sc.Scan() {
			l := sc.Text()
			fmt.Fprintln(logf, l)
			all.WriteString(l + "\n")
			if strings.HasPrefix(l, "TASK [") || strings.HasPrefix(l, "PLAY [") || strings.HasPrefix(l, "fatal:") {
				t.Logf("%s %s", time.Now().Format("15:04:05"), l)
			}
		}
	}()
	err = cmd.Wait()
	wg.Wait()
	rc := 0
	if ee, ok := err.(*exec.ExitError); ok {
		rc = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return rc, all.String()
}

// fleetReport is what the test reads of fleet.json (docs/fleet.md).
type fleetReport struct {
	SchemaVersion int `json:"schema_version"`
	Counts        struct {
		Upgraded   int            `json:"upgraded"`
		Verdicts   map[string]int `json:"verdicts"`
		Inhibitors map[string]int `json:"inhibitors"`
	} `json:"counts"`
	Hosts []fleetRecord `json:"hosts"`
}

type fleetRecord struct {
	Host          string   `json:"host"`
	ReleaseBefore string   `json:"release_before"`
	ReleaseAfter  string   `json:"release_after"`
	State         string   `json:"state"`
	Verdict       string   `json:"verdict"`
	Reason        string   `json:"reason"`
	Downtime      *float64 `json:"downtime_seconds"`
	Phase         string   `json:"phase"`
	Error         string   `json:"error"`
}

func readFleetReport(t *testing.T, dir string) *fleetReport {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "fleet.json"))
	if err != nil {
		t.Fatal(err)
	}
	var r fleetReport
	if err := json.Unmarshal(b, &r); err != nil || r.SchemaVersion != 1 {
		t.Fatalf("fleet.json: %v (schema %d)\n%s", err, r.SchemaVersion, b)
	}
	for _, f := range []string{"fleet.csv", "fleet.html"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	return &r
}

func (r *fleetReport) host(t *testing.T, name string) fleetRecord {
	t.Helper()
	for _, h := range r.Hosts {
		if h.Host == name {
			return h
		}
	}
	t.Fatalf("the fleet report has no host %s", name)
	return fleetRecord{}
}

// screenshot opens page in headless Chromium and saves a screenshot.
func screenshot(t *testing.T, page, png string) {
	t.Helper()
	cmd := exec.Command("chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
		"--user-data-dir="+t.TempDir(), "--window-size=1280,900", "--screenshot="+png, "file://"+page)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("chromium --screenshot: %v\n%s", err, out)
	}
	fi, err := os.Stat(png)
	if err != nil || fi.Size() < 5000 {
		t.Fatalf("no screenshot of the fleet report: %v", err)
	}
}
