package preflight_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/pkg/preflight"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// sys is a fixture 5.8 system in a directory (no snapshot backend needed:
// the engine's probe result is given as a fact).
type sys struct {
	t    *testing.T
	set  *fixture.Set
	root string
}

func newSys(t *testing.T) *sys {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping real-component test in -short mode")
	}
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "rpm", "rpmkeys", "/usr/bin/python3", "mount", "umount")
	set := fixture.MustBuild(t)
	root := filepath.Join(t.TempDir(), "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	return &sys{t: t, set: set, root: root}
}

func (s *sys) install() *sys {
	s.t.Helper()
	if err := fixture.InstallBase(context.Background(), s.set, s.root); err != nil {
		s.t.Fatal(err)
	}
	return s
}

// mountTmpfs mounts a tmpfs of size at rel inside the root.
func (s *sys) mountTmpfs(rel, size string) {
	s.t.Helper()
	dir := filepath.Join(s.root, rel)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		s.t.Fatal(err)
	}
	testenv.Run(s.t, "mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir)
	s.t.Cleanup(func() { testenv.UnmountAll(dir) })
}

// rpmInstall installs the packages of repo into the root.
func (s *sys) rpmInstall(repo string) {
	s.t.Helper()
	pkgs, err := s.set.Packages(repo)
	if err != nil || len(pkgs) == 0 {
		s.t.Fatalf("repo %s: %v", repo, err)
	}
	testenv.Run(s.t, "rpm", append([]string{"--root", s.root, "--dbpath", fixture.DBPath, "-i", "--nodeps", "--force-debian"}, pkgs...)...)
}

func (s *sys) write(rel, content string) {
	s.t.Helper()
	p := filepath.Join(s.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		s.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		s.t.Fatal(err)
	}
}

func (s *sys) repos(names ...string) []pkgmgr.Repo {
	var out []pkgmgr.Repo
	for _, n := range names {
		out = append(out, pkgmgr.Repo{ID: "fixture-" + n, BaseURL: "file://" + s.set.Repos[n]})
	}
	return out
}

// check runs the assessment to 5.9 (repos: nil means the system's own
// configuration) with the answers.
func (s *sys) check(repos []pkgmgr.Repo, answers ...string) *preflight.Report {
	s.t.Helper()
	a, err := preflight.ParseAnswerFlags(answers)
	if err != nil {
		s.t.Fatal(err)
	}
	r, f, err := preflight.Run(context.Background(), preflight.Options{
		Root: sysroot.Root{Dir: s.root}, To: "5.9", Repos: repos,
		Snapshot: preflight.SnapshotFacts{Requested: "auto", Backend: "btrfs"},
		State:    preflight.StateFacts{Status: "idle"},
	}, a)
	if err != nil {
		s.t.Fatal(err)
	}
	if testing.Verbose() {
		var b strings.Builder
		r.WriteText(&b)
		s.t.Logf("report:\n%s", b.String())
		if f.AssessError != "" {
			s.t.Logf("assess error: %s", f.AssessError)
		}
	}
	validate(s.t, r)
	return r
}

func has(r *preflight.Report, key string) *preflight.Finding { return r.Finding(key) }

func wantInhibitor(t *testing.T, r *preflight.Report, key string) *preflight.Finding {
	t.Helper()
	f := r.Finding(key)
	if f == nil || !f.Inhibitor() {
		t.Fatalf("want inhibitor %s, report has %s", key, keys(r))
	}
	if !r.Inhibited || r.Err() == nil {
		t.Errorf("report with inhibitor %s is not inhibited", key)
	}
	return f
}

func wantQuiet(t *testing.T, r *preflight.Report, key string) {
	t.Helper()
	if f := r.Finding(key); f != nil && (f.Inhibitor() || f.Severity != preflight.Info) {
		t.Errorf("want %s quiet, got %+v", key, *f)
	}
}

func keys(r *preflight.Report) string {
	var out []string
	for _, f := range r.Findings {
		s := f.Key + "(" + string(f.Severity)
		if f.Inhibitor() {
			s += ",inhibitor"
		}
		out = append(out, s+")")
	}
	return strings.Join(out, " ")
}

func TestCheckPlainUpgradeIsNotInhibited(t *testing.T) {
	s := newSys(t).install()
	r := s.check(nil)
	if r.Inhibited {
		t.Fatalf("plain 5.8 → 5.9 is inhibited: %s\n%v", keys(r), r.Err())
	}
	for _, k := range []string{preflight.KeySpaceRoot, preflight.KeyDeps, preflight.KeyThirdParty, preflight.KeyKeyMissing, preflight.KeyBootSpace} {
		wantQuiet(t, r, k)
	}
	rm := has(r, preflight.KeyRemoved)
	if rm == nil || rm.Severity != preflight.Medium || len(rm.Details) != 1 || !strings.Contains(rm.Details[0], "legacy") || !strings.Contains(rm.Details[0], "conflicts") {
		t.Errorf("packages.removed = %+v, want legacy with its reason", rm)
	}
	ob := has(r, preflight.KeyObsoleted)
	if ob == nil || len(ob.Details) != 1 || !strings.Contains(ob.Details[0], "oldtool") || !strings.Contains(ob.Details[0], "newtool") {
		t.Errorf("packages.obsoleted = %+v", ob)
	}
	// failpre is signed by KOS but not in 5.9: dropped, kept, listed.
	or := has(r, preflight.KeyOrphaned)
	if or == nil || or.Inhibitor() || len(or.Details) != 1 || !strings.HasPrefix(or.Details[0], "failpre-") {
		t.Errorf("packages.orphaned = %+v", or)
	}
	if tx := has(r, preflight.KeyTransaction); tx == nil || !strings.Contains(tx.Title, "3 upgrade") {
		t.Errorf("transaction.summary = %+v", tx)
	}
	if has(r, preflight.KeyBootMissing) == nil {
		t.Errorf("no boot.missing for a root without /boot: %s", keys(r))
	}
	if has(r, preflight.KeyModulesUnknown) == nil {
		t.Errorf("no modules.unknown without /proc/modules: %s", keys(r))
	}
}

func TestCheckThirdPartyPackage(t *testing.T) {
	s := newSys(t).install()
	s.rpmInstall(fixture.RepoThirdParty)
	r := s.check(nil)
	f := wantInhibitor(t, r, preflight.KeyThirdParty)
	if len(f.Details) != 1 || !strings.Contains(f.Details[0], "thirdparty-tool-0:1.0-1.noarch (unsigned, vendor Example Third Party Inc.)") {
		t.Errorf("details = %q", f.Details)
	}
	if len(f.Remediations) == 0 || f.Remediations[0].Type != preflight.RemediationCommand ||
		f.Remediations[0].Text != "kos-upgrade check --answer packages.third-party=keep" {
		t.Errorf("first remediation = %+v, want the command that answers", f.Remediations)
	}
	if o := has(r, preflight.KeyOrphaned); o == nil || strings.Contains(strings.Join(o.Details, " "), "thirdparty") {
		t.Errorf("orphaned = %+v: must list failpre only", o)
	}
	// Answered on the command line.
	r = s.check(nil, "packages.third-party=keep")
	if f := has(r, preflight.KeyThirdParty); f == nil || f.Inhibitor() || f.Question.Answer != "keep" {
		t.Errorf("answered keep: %+v", f)
	}
	if r.Inhibited {
		t.Errorf("still inhibited: %s", keys(r))
	}
	// A wrong answer does not count.
	r = s.check(nil, "packages.third-party=remove")
	if f := wantInhibitor(t, r, preflight.KeyThirdParty); !strings.Contains(f.Summary, `"remove"`) {
		t.Errorf("summary does not say the answer is invalid: %s", f.Summary)
	}
	// Answered in the answers file.
	s.write(preflight.AnswersFileRel, "# kept on purpose\npackages.third-party = keep\n")
	a, err := preflight.LoadAnswers(sysroot.Root{Dir: s.root}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a[preflight.KeyThirdParty].Value != "keep" || a[preflight.KeyThirdParty].Source != "/etc/kos-upgrade/answers.conf:2" {
		t.Errorf("answers file: %+v", a)
	}
}

func TestCheckUnresolvableDependency(t *testing.T) {
	s := newSys(t).install()
	r := s.check(s.repos(fixture.Repo59, fixture.Repo59Broken))
	f := wantInhibitor(t, r, preflight.KeyDeps)
	if !strings.Contains(strings.Join(f.Details, "\n"), "libmissing") {
		t.Errorf("problems do not name libmissing: %q", f.Details)
	}
	// With the plain repository it resolves.
	wantQuiet(t, s.check(s.repos(fixture.Repo59)), preflight.KeyDeps)
}

func TestCheckMissingGPGKey(t *testing.T) {
	s := newSys(t).install()
	s.write("/etc/yum.repos.d/extra.repo", fmt.Sprintf(`[extra]
name=extra
baseurl=file://%s
enabled=1
gpgcheck=1
gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-extra-missing
`, s.set.Repos[fixture.Repo59Kernel]))
	r := s.check(nil)
	f := wantInhibitor(t, r, preflight.KeyKeyMissing)
	if len(f.Details) != 1 || !strings.Contains(f.Details[0], "RPM-GPG-KEY-extra-missing") || !strings.Contains(f.Details[0], "extra") {
		t.Errorf("details = %q", f.Details)
	}
	// A file that is no key is no better.
	s.write("/etc/pki/rpm-gpg/RPM-GPG-KEY-extra-missing", "not a key\n")
	wantInhibitor(t, s.check(nil), preflight.KeyKeyMissing)
	// The real key makes it quiet.
	b, err := os.ReadFile(s.set.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	s.write("/etc/pki/rpm-gpg/RPM-GPG-KEY-extra-missing", string(b))
	wantQuiet(t, s.check(nil), preflight.KeyKeyMissing)
}

func TestCheckFullFilesystems(t *testing.T) {
	// The state directory (staged packages) on a 1 MiB filesystem.
	s := newSys(t).install()
	s.mountTmpfs(sysroot.StateDirRel, "1M")
	f := wantInhibitor(t, s.check(nil), preflight.KeySpaceState)
	if !strings.Contains(f.Summary, "/var/lib/kos-upgrade") {
		t.Errorf("summary = %s", f.Summary)
	}
	// The whole root on a filesystem with less than the margin free.
	s2 := newSys(t)
	s2.mountTmpfs("/", "64M")
	s2.install()
	r := s2.check(nil)
	wantInhibitor(t, r, preflight.KeySpaceRoot)
	if has(r, preflight.KeySpaceState) != nil {
		t.Errorf("state dir on the root's filesystem reported separately: %s", keys(r))
	}
	// Quiet: a root with room.
	s3 := newSys(t)
	s3.mountTmpfs("/", "1G")
	s3.install()
	wantQuiet(t, s3.check(nil), preflight.KeySpaceRoot)
}

func TestCheckSmallBoot(t *testing.T) {
	s := newSys(t).install()
	s.rpmInstall(fixture.Repo58Kernel)
	s.mountTmpfs("/boot", "1M")
	s.write("/boot/grub2/grubenv", "# GRUB Environment Block\n"+strings.Repeat("#", 1024-25))
	s.write("/boot/loader/entries/6b6f-5.8.0-1.noarch.conf", "title KOS 5.8\n")
	s.write("/boot/loader/entries/kos-upgrade-20260101T000000Z.conf", "title leftover\n")
	s.write("/boot/initramfs-kos-upgrade-20260101T000000Z.img", strings.Repeat("x", 300<<10))
	r := s.check(s.repos(fixture.Repo59, fixture.Repo59Kernel))
	f := wantInhibitor(t, r, preflight.KeyBootSpace)
	if !strings.Contains(f.Summary, "kernel-0:5.9.0-1.noarch") || !strings.Contains(f.Summary, "Leftovers") {
		t.Errorf("summary = %s", f.Summary)
	}
	l := has(r, preflight.KeyBootLeftovers)
	if l == nil || len(l.Details) != 2 {
		t.Errorf("leftovers = %+v", l)
	}
	if b := has(r, preflight.KeyBootLoader); b == nil || !strings.Contains(b.Title, "GRUB 2 with 2 BLS entries") {
		t.Errorf("boot.loader = %+v", b)
	}
	wantQuiet(t, r, preflight.KeyGrubEnv)

	// Quiet: a /boot with room.
	s2 := newSys(t).install()
	s2.rpmInstall(fixture.Repo58Kernel)
	s2.mountTmpfs("/boot", "256M")
	s2.write("/boot/grub2/grubenv", "# GRUB Environment Block\n"+strings.Repeat("#", 1024-25))
	r = s2.check(s2.repos(fixture.Repo59, fixture.Repo59Kernel))
	wantQuiet(t, r, preflight.KeyBootSpace)
	if has(r, preflight.KeyBootLoader) == nil || has(r, preflight.KeyBootLeftovers) != nil {
		t.Errorf("boot findings: %s", keys(r))
	}

	// An empty /boot (not mounted?) is said so, and does not inhibit.
	s3 := newSys(t).install()
	r = s3.check(nil)
	if u := has(r, preflight.KeyBootMissing); u == nil || u.Inhibitor() {
		t.Errorf("empty /boot: boot.missing = %+v, want a non-inhibiting finding (%s)", u, keys(r))
	}
}

func TestCheckKernelModules(t *testing.T) {
	s := newSys(t).install()
	s.rpmInstall(fixture.Repo58Kernel)
	s.write("/proc/modules", "e1000 155648 0 - Live 0x0000000000000000\noldraid 16384 0 - Live 0x0000000000000000\ndummy_net 16384 0 - Live 0x0\nvirtio_blk 20480 2 - Live 0x0\n")
	repos := s.repos(fixture.Repo59, fixture.Repo59Kernel)
	r := s.check(repos)
	f := wantInhibitor(t, r, preflight.KeyModulesUnshipped)
	if len(f.Details) != 1 || f.Details[0] != "oldraid" {
		t.Errorf("details = %q, want [oldraid]", f.Details)
	}
	if !strings.Contains(f.Summary, "kernel-0:5.9.0-1.noarch") {
		t.Errorf("summary = %s", f.Summary)
	}
	if r := s.check(repos, "modules.unshipped=accept"); r.Inhibited {
		t.Errorf("accepted, still inhibited: %s", keys(r))
	}
	// Quiet: nothing loaded that 5.9.0 lacks.
	s.write("/proc/modules", "e1000 155648 0 - Live 0x0\nvirtio_blk 20480 2 - Live 0x0\n")
	r = s.check(repos)
	if has(r, preflight.KeyModulesUnshipped) != nil || has(r, preflight.KeyModulesUnknown) != nil {
		t.Errorf("modules: %s", keys(r))
	}
}

// The report's JSON round-trips through the documented types.
func TestReportSavedAtomically(t *testing.T) {
	s := newSys(t).install()
	r := s.check(nil)
	dir := filepath.Join(s.root, sysroot.StateDirRel)
	if err := r.Save(dir); err != nil {
		t.Fatal(err)
	}
	got, err := preflight.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(r)
	b, _ := json.Marshal(got)
	if string(a) != string(b) {
		t.Errorf("saved report differs:\n%s\n%s", a, b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("state dir holds %v, want report.json only", ents)
	}
}
