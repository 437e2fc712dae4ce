package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/preflight"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

func TestExitCodeInhibited(t *testing.T) {
	stderr := os.Stderr
	devnull, _ := os.Open(os.DevNull)
	os.Stderr = devnull
	defer func() { os.Stderr = stderr }()
	if got := exitCode(fmt.Errorf("cannot prepare: %w", preflight.ErrInhibited)); got != 1 {
		t.Errorf("exit code of an inhibited check = %d, want 1", got)
	}
}

var (
	checkBinOnce sync.Once
	checkBin     string
	checkBinErr  error
)

// kosUpgradeBinary builds the command once per test process.
func kosUpgradeBinary(t *testing.T) string {
	t.Helper()
	checkBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kos-upgrade-check-bin-")
		if err != nil {
			checkBinErr = err
			return
		}
		checkBin = filepath.Join(dir, "kos-upgrade")
		out, err := exec.Command("go", "build", "-tags", testenv.HooksTag, "-o", checkBin, ".").CombinedOutput()
		if err != nil {
			checkBinErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if checkBinErr != nil {
		t.Fatal(checkBinErr)
	}
	return checkBin
}

type cliRoot struct {
	t    *testing.T
	set  *fixture.Set
	root string
}

func newCLIRoot(t *testing.T) *cliRoot {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping real-component test in -short mode")
	}
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "rpm", "rpmkeys", "/usr/bin/python3", "go")
	set := fixture.MustBuild(t)
	root := t.TempDir()
	if err := fixture.InstallBase(context.Background(), set, root); err != nil {
		t.Fatal(err)
	}
	return &cliRoot{t: t, set: set, root: root}
}

// run runs kos-upgrade --root ROOT args... and returns stdout, stderr and
// the exit code.
func (c *cliRoot) run(args ...string) (string, string, int) {
	c.t.Helper()
	cmd := exec.Command(kosUpgradeBinary(c.t), append([]string{"--root", c.root}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		c.t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

// report decodes a JSON report strictly: every field must be a documented one.
func decodeReport(t *testing.T, out string) *preflight.Report {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	var r preflight.Report
	if err := dec.Decode(&r); err != nil {
		t.Fatalf("stdout is not a report: %v\n%s", err, out)
	}
	if r.Version != preflight.ReportVersion || r.Root == "" || r.GeneratedAt.IsZero() || r.Findings == nil {
		t.Errorf("report lacks required fields: %+v", r)
	}
	for _, f := range r.Findings {
		switch f.Severity {
		case preflight.Info, preflight.Low, preflight.Medium, preflight.High:
		default:
			t.Errorf("%s: severity %q", f.Key, f.Severity)
		}
		if f.Groups == nil || f.Title == "" || f.Summary == "" {
			t.Errorf("%s: incomplete finding %+v", f.Key, f)
		}
	}
	return &r
}

func TestCheckCommand(t *testing.T) {
	c := newCLIRoot(t)
	out, errOut, code := c.run("check", "--to", "5.9", "--snapshot", "none", "--json")
	if code != 0 {
		t.Fatalf("check exit %d, want 0\n%s\n%s", code, out, errOut)
	}
	r := decodeReport(t, out)
	if r.Inhibited || r.Target != "5.9" || r.Finding(preflight.KeyTransaction) == nil {
		t.Errorf("report: inhibited %v target %q findings %d", r.Inhibited, r.Target, len(r.Findings))
	}
	saved, err := preflight.Load(filepath.Join(c.root, sysroot.StateDirRel))
	if err != nil || saved.Finding(preflight.KeyTransaction) == nil {
		t.Errorf("report.json not saved: %v", err)
	}

	// Text, without a target.
	out, errOut, code = c.run("check", "--snapshot", "none")
	if code != 0 || !strings.Contains(out, "Result: OK") || !strings.Contains(out, "key: space.unknown") {
		t.Errorf("check without --to: exit %d\n%s\n%s", code, out, errOut)
	}

	// An armed plan of ours.
	link := filepath.Join(c.root, "system-update")
	if err := os.Symlink(sysroot.StateDirRel, link); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = c.run("check", "--snapshot", "none", "--json")
	if code != 1 || decodeReport(t, out).Finding(preflight.KeyArmed) == nil || !strings.Contains(errOut, "state.armed") {
		t.Errorf("armed: exit %d\n%s\n%s", code, out, errOut)
	}
	os.Remove(link)

	// Another tool's offline update: reported, and left alone.
	if err := os.Symlink("/var/lib/PackageKit/prepared-update", link); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = c.run("check", "--snapshot", "none")
	if code != 1 || !strings.Contains(out, "key: state.foreign-update") || !strings.Contains(out, "PackageKit") {
		t.Errorf("foreign update: exit %d\n%s\n%s", code, out, errOut)
	}
	if tgt, err := os.Readlink(link); err != nil || tgt != "/var/lib/PackageKit/prepared-update" {
		t.Errorf("check touched another tool's /system-update: %q %v", tgt, err)
	}
	os.Remove(link)

	// Bad answers are usage errors.
	if _, errOut, code := c.run("check", "--answer", "nonsense"); code != exitUsage {
		t.Errorf("--answer nonsense: exit %d: %s", code, errOut)
	}
}

// prepare runs the same checks, refuses on an inhibitor, accepts answers and
// keeps the report in the plan, which status shows.
func TestPrepareRefusesOnInhibitor(t *testing.T) {
	c := newCLIRoot(t)
	pkgs, _ := c.set.Packages(fixture.RepoThirdParty)
	testenv.Run(t, "rpm", append([]string{"--root", c.root, "--dbpath", fixture.DBPath, "-i", "--force-debian"}, pkgs...)...)

	out, errOut, code := c.run("prepare", "--to", "5.9", "--snapshot", "none")
	if code != 1 || !strings.Contains(errOut, "packages.third-party") || !strings.Contains(errOut, "inhibited") {
		t.Fatalf("prepare with a third-party package: exit %d\n%s\n%s", code, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(c.root, sysroot.StateDirRel, "plan.json")); !os.IsNotExist(err) {
		t.Errorf("an inhibited prepare wrote a plan: %v", err)
	}
	// check says the same, and how to answer.
	out, _, code = c.run("check", "--to", "5.9", "--snapshot", "none")
	if code != 1 || !strings.Contains(out, "Run: kos-upgrade check --answer packages.third-party=keep") {
		t.Errorf("check: exit %d\n%s", code, out)
	}

	out, errOut, code = c.run("prepare", "--to", "5.9", "--snapshot", "none", "--answer", "packages.third-party=keep")
	if code != 0 {
		t.Fatalf("prepare with the answer: exit %d\n%s\n%s", code, out, errOut)
	}
	b, err := os.ReadFile(filepath.Join(c.root, sysroot.StateDirRel, "plan.json"))
	if err != nil {
		t.Fatal(err)
	}
	var plan struct {
		Report *preflight.Report `json:"report"`
	}
	if err := json.Unmarshal(b, &plan); err != nil || plan.Report == nil {
		t.Fatalf("plan has no report: %v", err)
	}
	tp := plan.Report.Finding(preflight.KeyThirdParty)
	if tp == nil || tp.Inhibitor() || tp.Question == nil || tp.Question.Answer != "keep" {
		t.Errorf("plan report third-party = %+v", tp)
	}
	out, errOut, code = c.run("status")
	for _, want := range []string{"legacy", "kept, from no repository of 5.9", "thirdparty-tool", "answered packages.third-party=keep"} {
		if !strings.Contains(out, want) {
			t.Errorf("status does not show %q (exit %d):\n%s\n%s", want, code, out, errOut)
		}
	}
}

// TestCheckAndPrepareISO: check --iso reports the image (label, release)
// and a directory mirror as the sources; prepare --iso takes the release
// from the image's .treeinfo.
func TestCheckAndPrepareISO(t *testing.T) {
	c := newCLIRoot(t)
	testenv.RequireTools(t, fixture.ISOTools...)
	image := filepath.Join(t.TempDir(), "KOS-5.9.iso")
	if err := fixture.MakeISO(context.Background(), image, fixture.ISOOptions{Label: "KOS-5.9-x86_64", Release: "5.9",
		Dirs: map[string]string{"BaseOS": c.set.Repos[fixture.Repo59]}}); err != nil {
		t.Fatal(err)
	}
	mirror := c.set.Repos[fixture.Repo59Kernel]
	out, errOut, code := c.run("check", "--iso", image, "--repo", "kernel="+mirror, "--snapshot", "none", "--json")
	if code != 0 {
		t.Fatalf("check --iso: exit %d\n%s\n%s", code, out, errOut)
	}
	r := decodeReport(t, out)
	f := r.Finding(preflight.KeySources)
	if r.Target != "5.9" || f == nil {
		t.Fatalf("report: target %q, sources %+v", r.Target, f)
	}
	details := strings.Join(f.Details, "\n")
	for _, want := range []string{"iso0-BaseOS: image " + image + ", label KOS-5.9-x86_64, release KOS 5.9, directory /BaseOS",
		"kernel: directory mirror " + mirror} {
		if !strings.Contains(details, want) {
			t.Errorf("sources do not say %q:\n%s", want, details)
		}
	}
	out, errOut, code = c.run("--json", "prepare", "--iso", image, "--snapshot", "none")
	if code != 0 || !strings.Contains(out, `"label": "KOS-5.9-x86_64"`) || !strings.Contains(out, `"version_id": "5.9"`) {
		t.Errorf("prepare --iso: exit %d\n%s\n%s", code, out, errOut)
	}
	if out, errOut, code := c.run("status"); code != 0 || !strings.Contains(out, "image "+image+" (label KOS-5.9-x86_64)") {
		t.Errorf("status does not name the image: exit %d\n%s\n%s", code, out, errOut)
	}
	if _, errOut, code := c.run("prepare", "--to", "6.0", "--iso", image, "--snapshot", "none"); code == 0 || !strings.Contains(errOut, "holds release 5.9, not 6.0") {
		t.Errorf("prepare --to 6.0 --iso (a 5.9 image): exit %d: %s", code, errOut)
	}
}
