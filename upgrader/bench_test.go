package upgrader_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// benchPackages is how many generated packages BenchmarkApply upgrades.
const benchPackages = 200

// BenchmarkApply measures, in one run (b.N is expected to be 1: make bench
// runs -benchtime 1x; a larger b.N repeats the whole measurement), on a
// fixture 5.8 system plus benchPackages bench-NNNN v1 packages in subvolume
// @ of a btrfs filesystem on a loop device:
//
//   - apply: Engine.Apply of the plan prepared for 5.9 + bench v2 (verify,
//     snapshot, transaction in the snapshot, switch), wall time;
//   - rpm: the same staged files with the rpm CLI on another snapshot of @:
//     rpm -e of the packages the plan erases (rpm -U cannot erase; they must
//     go first, kos-release-5.9 conflicts with one of them), then rpm -U of
//     every staged file, timed together;
//   - dnf: dnf distro-sync --allowerasing on a third snapshot of @ from a
//     local repository made of the staged files (createrepo_c outside the
//     timer), i.e. dnf's own replay of the same set, metadata load included.
//
// It reports seconds of each, the ratios apply/rpm (target <= 1.25) and
// dnf/rpm, and the peak RSS of the Go process during Apply and of the Python
// helper processes Apply ran. The three roots must end with the same
// packages.
//
//	go test -run '^$' -bench BenchmarkApply -benchtime 1x ./upgrader
func BenchmarkApply(b *testing.B) {
	if testing.Short() {
		b.Skip("skipping real-component benchmark in -short mode")
	}
	testenv.RequireRoot(b)
	testenv.RequireTools(b, "rpm", "rpmkeys", "btrfs", "dnf", "createrepo_c", sysroot.Python())
	ctx := context.Background()
	sys := newBenchSystem(b, ctx)
	var apply, rpmU, dnfT time.Duration
	var goRSS, helperRSS int64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		m := runApplyBench(b, ctx, sys)
		apply += m.apply
		rpmU += m.rpm
		dnfT += m.dnf
		goRSS = max(goRSS, m.goRSSKB)
		helperRSS = max(helperRSS, m.helperRSSKB)
	}
	n := float64(b.N)
	b.ReportMetric(0, "ns/op") // the wall times below say more
	b.ReportMetric(apply.Seconds()/n, "apply-s")
	b.ReportMetric(rpmU.Seconds()/n, "rpm-s")
	b.ReportMetric(dnfT.Seconds()/n, "dnf-s")
	b.ReportMetric(apply.Seconds()/rpmU.Seconds(), "apply/rpm")
	b.ReportMetric(dnfT.Seconds()/rpmU.Seconds(), "dnf/rpm")
	b.ReportMetric(float64(goRSS)/1024, "go-peak-MiB")
	b.ReportMetric(float64(helperRSS)/1024, "helper-peak-MiB")
	if r := apply.Seconds() / rpmU.Seconds(); r > 1.25 {
		b.Logf("apply/rpm = %.2f is above the 1.25 target", r)
	}
}

type applyBenchResult struct {
	apply, rpm, dnf time.Duration
	goRSSKB         int64 // VmHWM of this process during Apply
	helperRSSKB     int64 // largest max RSS of a helper process Apply ran
}

// runApplyBench sets up one system and measures apply, rpm -U and dnf on it.
// The timer is started around Engine.Apply only; the comparisons are timed
// with their own clocks.
func runApplyBench(b *testing.B, ctx context.Context, sys *benchSystem) applyBenchResult {
	fs := testenv.NewBtrfs(b, 3072)
	root := filepath.Join(b.TempDir(), "root")
	fs.MakeDefaultRoot(b, "@", root)
	sys.install(b, ctx, root)

	sink := &benchSink{start: time.Now()}
	r, err := sysroot.New(root)
	if err != nil {
		b.Fatal(err)
	}
	eng := upgrader.New(r, sink, nil)
	rssLog, wrapper := rssWrapper(b)
	eng.PM = &pkgmgr.DNF{Python: wrapper}
	p := sys.prepare(b, ctx, eng, "btrfs")
	if _, err := eng.Arm(ctx); err != nil {
		b.Fatalf("arm: %v", err)
	}
	files, erase := benchStaged(b, root, p)

	// The copies for rpm and dnf: snapshots of the same armed root.
	rpmCopy := filepath.Join(fs.Top, "rpm-copy")
	dnfCopy := filepath.Join(fs.Top, "dnf-copy")
	testenv.Run(b, "btrfs", "subvolume", "snapshot", filepath.Join(fs.Top, "@"), rpmCopy)
	testenv.Run(b, "btrfs", "subvolume", "snapshot", filepath.Join(fs.Top, "@"), dnfCopy)
	repo := filepath.Join(fs.Top, "staged-repo")
	if err := os.MkdirAll(repo, 0o755); err != nil {
		b.Fatal(err)
	}
	testenv.Run(b, "cp", append(append([]string{"--reflink=auto"}, files...), repo)...)
	testenv.Run(b, "createrepo_c", "-q", repo)
	home := b.TempDir()
	if err := os.WriteFile(filepath.Join(home, ".rpmmacros"), []byte("%_dbpath /var/lib/rpm\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	dnfCache := b.TempDir()

	// (a) kos-upgrade apply.
	var m applyBenchResult
	os.Remove(rssLog)
	benchSettle(b, fs.Top)
	resetPeakRSS(b)
	var ru0 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru0)
	sink.reset()
	b.StartTimer()
	t0 := time.Now()
	res, err := eng.Apply(ctx)
	m.apply = time.Since(t0)
	b.StopTimer()
	if err != nil {
		b.Fatalf("apply: %v", err)
	}
	if !res.Ran || !res.Result.Success {
		b.Fatalf("apply did not run or failed: %+v", res)
	}
	m.goRSSKB = procStatusKB(b, "VmHWM")
	var ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru1)
	for _, l := range readLines(b, rssLog) {
		if _, v, ok := strings.Cut(l, ":"); ok {
			kb, _ := strconv.ParseInt(v, 10, 64)
			m.helperRSSKB = max(m.helperRSSKB, kb)
		}
	}
	b.Logf("apply: %.2fs; helper runs (command, max RSS KiB): %s; RUSAGE_CHILDREN maxrss %d -> %d KiB (a maximum over every child since the start, not a delta)",
		m.apply.Seconds(), strings.Join(readLines(b, rssLog), ", "), ru0.Maxrss, ru1.Maxrss)
	b.Logf("apply phases: %s", sink.phases())
	if tx := sink.txEvents; tx < len(p.Transaction) {
		b.Errorf("only %d per-package transaction events for %d items", tx, len(p.Transaction))
	}
	newRoot := filepath.Join(fs.Top, res.Result.Snapshot)

	// (b) rpm -e of the removals, then rpm -U of the staged files.
	benchSettle(b, fs.Top)
	m.rpm = benchReplay(b, rpmCopy, files, erase)

	// (c) dnf's replay from a repository of the staged files.
	benchSettle(b, fs.Top)
	t0 = time.Now()
	cmd := exec.Command("dnf", "--installroot", dnfCopy, "--releasever", "5.9",
		"--setopt=reposdir=/dev/null", "--repofrompath=staged,"+repo, "--setopt=cachedir="+dnfCache,
		"--setopt=install_weak_deps=False", "--nogpgcheck", "-y", "-q", "--allowerasing", "distro-sync")
	cmd.Env = append(os.Environ(), "HOME="+home)
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("dnf distro-sync: %v\n%s", err, out)
	}
	m.dnf = time.Since(t0)

	want := benchQA(b, newRoot)
	if got := benchQA(b, rpmCopy); !reflect.DeepEqual(got, want) {
		b.Errorf("rpm -U gave other packages than apply:\n rpm   %v\n apply %v", got, want)
	}
	if got := benchQA(b, dnfCopy); !reflect.DeepEqual(got, want) {
		b.Errorf("dnf gave other packages than apply:\n dnf   %v\n apply %v", got, want)
	}
	b.Logf("apply %.2fs, rpm -e + rpm -U %.2fs, dnf distro-sync %.2fs: apply/rpm %.2f, dnf/rpm %.2f; peak RSS go %d KiB, helper %d KiB",
		m.apply.Seconds(), m.rpm.Seconds(), m.dnf.Seconds(), m.apply.Seconds()/m.rpm.Seconds(), m.dnf.Seconds()/m.rpm.Seconds(), m.goRSSKB, m.helperRSSKB)
	return m
}

// benchSystem is the system the apply benchmarks upgrade: the fixture 5.8
// plus benchPackages bench-NNNN v1 packages, to 5.9 + bench v2.
type benchSystem struct {
	set *fixture.Set
	v1  []string // the bench v1 packages
	v2  string   // the bench v2 repository
}

func newBenchSystem(b *testing.B, ctx context.Context) *benchSystem {
	b.Helper()
	set := fixture.MustBuild(b)
	_, v2, _, err := fixture.BenchRepos(ctx, benchPackages)
	if err != nil {
		b.Fatal(err)
	}
	v1, err := filepath.Glob(filepath.Join(filepath.Dir(v2), "v1", "Packages", "*.rpm"))
	if err != nil || len(v1) != benchPackages {
		b.Fatalf("bench v1 repo has %d packages, want %d (%v)", len(v1), benchPackages, err)
	}
	return &benchSystem{set: set, v1: v1, v2: v2}
}

// install installs the 5.8 system into root.
func (s *benchSystem) install(b *testing.B, ctx context.Context, root string) {
	b.Helper()
	if err := fixture.InstallBase(ctx, s.set, root); err != nil {
		b.Fatal(err)
	}
	benchRPM(b, root, append([]string{"-i"}, s.v1...)...)
}

// prepare prepares the upgrade with the snapshot backend.
func (s *benchSystem) prepare(b *testing.B, ctx context.Context, eng *upgrader.Engine, backend string) *upgrader.Plan {
	b.Helper()
	p, err := eng.Prepare(ctx, upgrader.PrepareOptions{To: "5.9", Snapshot: backend, Repos: []pkgmgr.Repo{
		{ID: "fixture-5.9", BaseURL: "file://" + s.set.Repos[fixture.Repo59]},
		{ID: "bench-v2", BaseURL: "file://" + s.v2},
	}})
	if err != nil {
		b.Fatalf("prepare: %v", err)
	}
	return p
}

// benchStaged returns the staged files of plan p of root and the packages
// it erases, in rpm's spelling.
func benchStaged(b *testing.B, root string, p *upgrader.Plan) (files, erase []string) {
	b.Helper()
	stage := filepath.Join(root, sysroot.StateDirRel, p.StageDir)
	for _, it := range p.Transaction {
		if it.Installs() {
			files = append(files, filepath.Join(stage, it.File))
		} else {
			erase = append(erase, strings.Replace(it.NEVRA, "-0:", "-", 1))
		}
	}
	b.Logf("plan: %d items: %d files to install, erase %v", len(p.Transaction), len(files), erase)
	if len(files) < benchPackages {
		b.Fatalf("the plan installs only %d packages", len(files))
	}
	return files, erase
}

// benchReplay is the raw rpm the benchmarks compare with: rpm -e of the
// packages the plan erases (rpm -U cannot erase; they must go first,
// kos-release-5.9 conflicts with one of them), then rpm -U of the staged
// files, on root; it returns their wall time.
func benchReplay(b *testing.B, root string, files, erase []string) time.Duration {
	b.Helper()
	t0 := time.Now()
	if len(erase) > 0 {
		benchRPM(b, root, append([]string{"-e", "--nodeps"}, erase...)...)
	}
	benchRPM(b, root, append([]string{"-U"}, files...)...)
	return time.Since(t0)
}

func benchQA(b *testing.B, root string) []string {
	b.Helper()
	out := testenv.Run(b, "rpm", "--root", root, "--dbpath", fixture.DBPath, "-qa", "--qf", "%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}\n")
	lines := strings.Fields(out)
	sort.Strings(lines)
	return lines
}

// benchRPM runs rpm on root's database (Debian's rpm needs --dbpath with
// --root, and --force-debian to install).
func benchRPM(b *testing.B, root string, args ...string) {
	b.Helper()
	argv := []string{"--root", root, "--dbpath", fixture.DBPath}
	if args[0] == "-i" || args[0] == "-U" {
		argv = append(argv, "--force-debian")
	}
	if out, err := exec.Command("rpm", append(argv, args...)...).CombinedOutput(); err != nil {
		b.Fatalf("rpm %s: %v\n%s", args[0], err, out)
	}
}

// benchSettle writes everything back and waits for btrfs's cleaner, so that
// no measurement pays for the previous one's writeback.
func benchSettle(b *testing.B, top string) {
	b.Helper()
	syscall.Sync()
	testenv.Run(b, "btrfs", "filesystem", "sync", top)
	testenv.Run(b, "btrfs", "subvolume", "sync", top)
}

// resetPeakRSS resets this process's VmHWM (Linux >= 4.0).
func resetPeakRSS(b *testing.B) {
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		b.Logf("cannot reset the peak RSS, it covers the whole benchmark: %v", err)
	}
}

// procStatusKB reads a "kB" field of /proc/self/status.
func procStatusKB(b *testing.B, field string) int64 {
	for _, l := range readLines(b, "/proc/self/status") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

func readLines(b *testing.B, path string) []string {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		b.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// rssWrapperName is the name under which this test binary acts as the
// interpreter of the package helper: it runs the real interpreter, waits
// for it and appends "<helper command>:<max RSS in KiB>" to rss.log next to
// the link. getrusage(RUSAGE_CHILDREN) cannot isolate the helper of Apply:
// it is a maximum over every child since the process started (the dnf
// resolve helper, rpm -i of the base), not a sum that could be differenced.
const rssWrapperName = "kos-upgrade-bench-python"

func init() {
	if filepath.Base(os.Args[0]) == rssWrapperName {
		os.Exit(runRSSWrapper())
	}
}

func runRSSWrapper() int {
	cmd := exec.Command(sysroot.Python(), os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		fmt.Fprintln(os.Stderr, err)
		return 127
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		what := os.Args[len(os.Args)-1]
		if f, err := os.OpenFile(filepath.Join(filepath.Dir(os.Args[0]), "rss.log"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			fmt.Fprintf(f, "%s:%d\n", what, ru.Maxrss)
			f.Close()
		}
	}
	return cmd.ProcessState.ExitCode()
}

// rssWrapper makes the link that runs this binary as the helper's
// interpreter, and returns the log it writes and the link.
func rssWrapper(b *testing.B) (log, link string) {
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	link = filepath.Join(dir, rssWrapperName)
	if err := os.Symlink(exe, link); err != nil {
		b.Fatal(err)
	}
	return filepath.Join(dir, "rss.log"), link
}

// benchSink counts per-package transaction events and records when each
// apply step started.
type benchSink struct {
	start    time.Time
	steps    []string
	at       []time.Duration
	txEvents int
}

func (s *benchSink) reset() {
	s.start, s.steps, s.at, s.txEvents = time.Now(), nil, nil, 0
}

func (s *benchSink) Report(e progress.Event) {
	if e.Step == upgrader.StepTransaction && e.Package != "" && e.Total > 0 {
		s.txEvents++
		if s.txEvents == 1 {
			s.mark("first-package")
		}
		if e.N == e.Total {
			s.mark("last-package")
		}
		return
	}
	if len(s.steps) == 0 || s.steps[len(s.steps)-1] != e.Step {
		s.mark(e.Step)
	}
}

func (s *benchSink) mark(what string) {
	s.steps = append(s.steps, what)
	s.at = append(s.at, time.Since(s.start))
}

func (s *benchSink) phases() string {
	var out []string
	for i, st := range s.steps {
		out = append(out, fmt.Sprintf("%s@%.2fs", st, s.at[i].Seconds()))
	}
	return strings.Join(out, " ")
}

var _ progress.Sink = (*benchSink)(nil)
