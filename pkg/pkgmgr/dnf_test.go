package pkgmgr_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

type events []progress.Event

func (e *events) Report(ev progress.Event) { *e = append(*e, ev) }

// newRoot installs the fixture 5.8 system into a plain directory.
func newRoot(t *testing.T) (*fixture.Set, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping real dnf/rpm test in -short mode")
	}
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "rpm", "rpmkeys", "rpmdb", "/usr/bin/python3")
	set := fixture.MustBuild(t)
	root := filepath.Join(t.TempDir(), "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := fixture.InstallBase(context.Background(), set, root); err != nil {
		t.Fatal(err)
	}
	return set, root
}

func resolve(t *testing.T, d *pkgmgr.DNF, set *fixture.Set, root string, repos ...string) (*pkgmgr.Resolution, string) {
	t.Helper()
	stage := filepath.Join(t.TempDir(), "stage")
	req := pkgmgr.ResolveRequest{Root: root, Release: "5.9", CacheDir: t.TempDir(), StageDir: stage}
	for _, r := range repos {
		req.Repos = append(req.Repos, pkgmgr.Repo{ID: "r-" + r, BaseURL: "file://" + set.Repos[r]})
	}
	res, err := d.Resolve(context.Background(), req, nil)
	if err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	return res, stage
}

func TestResolve(t *testing.T) {
	set, root := newRoot(t)
	d := pkgmgr.NewDNF(nil)
	res, stage := resolve(t, d, set, root) // the system's own kos.repo
	got := map[string]string{}
	for _, it := range res.Items {
		got[it.NEVRA] = it.Action
		if it.Installs() {
			fi, err := os.Stat(filepath.Join(stage, it.File))
			if err != nil || fi.Size() != it.Size || it.SHA256 == "" {
				t.Errorf("%s: staged file %s: %v (size %d, plan %d)", it.NEVRA, it.File, err, fi.Size(), it.Size)
			}
		}
	}
	want := map[string]string{
		"app-0:2.0-1.noarch":         "upgrade",
		"libfoo-0:2.0-1.noarch":      "upgrade",
		"kos-release-0:5.9-1.noarch": "upgrade",
		"libbar-0:1.0-1.noarch":      "install",
		"newtool-0:2.0-1.noarch":     "install",
		"oldtool-0:1.0-1.noarch":     "obsoleted",
		"legacy-0:1.0-1.noarch":      "remove",
	}
	for nevra, action := range want {
		if got[nevra] != action {
			t.Errorf("%s: action %q, want %q", nevra, got[nevra], action)
		}
	}
	if len(got) != len(want) {
		t.Errorf("resolution has %d items, want %d: %v", len(got), len(want), got)
	}
	for _, it := range res.Items {
		switch it.Name {
		case "legacy":
			if !strings.Contains(it.Reason, "kos-release") || !strings.Contains(it.Reason, "conflicts") {
				t.Errorf("legacy removal reason %q does not name the conflict", it.Reason)
			}
		case "oldtool":
			if it.ObsoletedBy != "newtool-0:2.0-1.noarch" {
				t.Errorf("oldtool obsoleted by %q", it.ObsoletedBy)
			}
		case "app":
			if len(it.Replaces) != 1 || it.Replaces[0] != "app-0:1.0-1.noarch" {
				t.Errorf("app replaces %v", it.Replaces)
			}
		}
	}
	if len(res.GPGKeys) != 1 || res.GPGKeys[0] != "file:///etc/pki/rpm-gpg/RPM-GPG-KEY-kos" {
		t.Errorf("gpg keys %v", res.GPGKeys)
	}
}

func TestResolveErrors(t *testing.T) {
	set, root := newRoot(t)
	d := pkgmgr.NewDNF(nil)
	t.Run("missing repository", func(t *testing.T) {
		_, err := d.Resolve(context.Background(), pkgmgr.ResolveRequest{
			Root: root, Release: "5.9", CacheDir: t.TempDir(), StageDir: t.TempDir(),
			Repos: []pkgmgr.Repo{{ID: "nope", BaseURL: "file://" + set.Dir + "/does-not-exist"}},
		}, nil)
		var he *pkgmgr.HelperError
		if !errors.As(err, &he) || he.Kind != "repo" {
			t.Fatalf("Resolve with a missing repository: %v", err)
		}
	})
	t.Run("unknown release", func(t *testing.T) {
		_, err := d.Resolve(context.Background(), pkgmgr.ResolveRequest{
			Root: root, Release: "7.7", CacheDir: t.TempDir(), StageDir: t.TempDir(),
		}, nil)
		if err == nil {
			t.Fatal("Resolve for a release without repository succeeded")
		}
	})
}

func TestVerify(t *testing.T) {
	set, root := newRoot(t)
	d := pkgmgr.NewDNF(nil)
	res, stage := resolve(t, d, set, root, "5.9")
	if err := d.Verify(context.Background(), root, stage, res.Items, []string{"file://" + set.KeyFile}, nil); err != nil {
		t.Errorf("Verify of signed packages: %v", err)
	}
	// The key installed in the root is enough on its own.
	if err := d.Verify(context.Background(), root, stage, res.Items, nil, nil); err != nil {
		t.Errorf("Verify with the root's keys only: %v", err)
	}
	res, stage = resolve(t, d, set, root, "5.9", "5.9-unsigned")
	var ve *pkgmgr.VerifyError
	err := d.Verify(context.Background(), root, stage, res.Items, nil, nil)
	if !errors.As(err, &ve) || len(ve.Failures) != 1 || ve.Failures[0].NEVRA != "libbar-0:1.1-1.noarch" {
		t.Fatalf("Verify with an unsigned package: %v", err)
	}
}

func rpmQA(t *testing.T, root string) []string {
	t.Helper()
	out := testenv.Run(t, "rpm", "--root", root, "--dbpath", "/var/lib/rpm", "-qa", "--qf", "%{NAME}-%{VERSION}\n")
	l := strings.Fields(out)
	sort.Strings(l)
	return l
}

func TestTestApplyFingerprint(t *testing.T) {
	set, root := newRoot(t)
	ctx := context.Background()
	d := pkgmgr.NewDNF(nil)
	fp1, err := d.Fingerprint(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	if fp2, _ := d.Fingerprint(ctx, root); fp2 != fp1 {
		t.Fatalf("fingerprint not stable: %s %s", fp1, fp2)
	}
	res, stage := resolve(t, d, set, root, "5.9")
	before := rpmQA(t, root)
	if err := d.Test(ctx, root, stage, res.Items, nil); err != nil {
		t.Fatalf("Test: %v", err)
	}
	if fp, _ := d.Fingerprint(ctx, root); fp != fp1 {
		t.Fatal("the test transaction changed the rpmdb")
	}
	var ev events
	if rep, err := d.Apply(ctx, root, stage, res.Items, &ev); err != nil || len(rep.Warnings) > 0 {
		t.Fatalf("Apply: %v %+v", err, rep)
	}
	after := rpmQA(t, root)
	want := []string{"app-2.0", "failpre-1.0", "gpg-pubkey-" + strings.TrimPrefix(findPrefix(before, "gpg-pubkey-"), "gpg-pubkey-"), "keepme-1.0", "kos-release-5.9", "kos-sh-1.0", "libbar-1.0", "libfoo-2.0", "newtool-2.0"}
	sort.Strings(want)
	if strings.Join(after, " ") != strings.Join(want, " ") {
		t.Errorf("after Apply: %v\nwant %v", after, want)
	}
	fp3, _ := d.Fingerprint(ctx, root)
	if fp3 == fp1 {
		t.Error("fingerprint did not change after the transaction")
	}
	var installs, erases int
	for _, e := range ev {
		if e.Step == "transaction" && e.Total > 0 {
			if e.Action == "erase" {
				erases++
			} else {
				installs++
			}
			if e.N < 1 || e.N > e.Total {
				t.Errorf("bad progress %d/%d", e.N, e.Total)
			}
		}
	}
	if installs != 5 || erases < 2 {
		t.Errorf("progress events: %d installs, %d erases (%v)", installs, erases, ev)
	}
	// Applying the same plan again is refused: its removals are gone.
	_, err = d.Apply(ctx, root, stage, res.Items, nil)
	var he *pkgmgr.HelperError
	if !errors.As(err, &he) || he.Kind != "stale" {
		t.Errorf("second Apply: %v, want a stale-plan error", err)
	}
}

func findPrefix(l []string, p string) string {
	for _, s := range l {
		if strings.HasPrefix(s, p) {
			return s
		}
	}
	return ""
}

func TestApplyFailingScriptlet(t *testing.T) {
	set, root := newRoot(t)
	ctx := context.Background()
	d := pkgmgr.NewDNF(nil)
	res, stage := resolve(t, d, set, root, "5.9", "5.9-failpre")
	_, err := d.Apply(ctx, root, stage, res.Items, nil)
	var he *pkgmgr.HelperError
	if !errors.As(err, &he) || he.Kind != "transaction" || !strings.Contains(err.Error(), "failpre") {
		t.Fatalf("Apply with a failing %%pre: %v", err)
	}
}

func TestCheckStaged(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a.rpm"), []byte("hello"), 0o644)
	const sumHello = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
	item := func(file, sum string, size int64) pkgmgr.Item {
		return pkgmgr.Item{Action: "install", NEVRA: "a-0:1-1.noarch", Name: "a", File: file, SHA256: sum, Size: size}
	}
	tests := []struct {
		name string
		item pkgmgr.Item
		want string
	}{
		{name: "good", item: item("a.rpm", sumHello, 5)},
		{name: "missing", item: item("b.rpm", sumHello, 5), want: "no such file"},
		{name: "size", item: item("a.rpm", sumHello, 6), want: "size is 5"},
		{name: "checksum", item: item("a.rpm", strings.Repeat("0", 64), 5), want: "sha256 is " + sumHello},
		{name: "path in file", item: item("../a.rpm", sumHello, 5), want: "no valid staged file"},
		{name: "removal needs no file", item: pkgmgr.Item{Action: "remove", NEVRA: "x-0:1-1.noarch", Name: "x"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := pkgmgr.CheckStaged(dir, []pkgmgr.Item{tc.item})
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("CheckStaged = %v, want %q", err, tc.want)
			}
		})
	}
}

// TestHelperProtocol drives the JSON-lines protocol with a stand-in
// interpreter, to pin down how progress, errors and crashes are handled.
func TestHelperProtocol(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	tests := []struct {
		name    string
		script  string
		wantErr string
		wantEv  int
	}{
		{name: "result", script: `echo '{"type":"progress","step":"x","n":1,"total":2}' >&3; echo 'not json' >&3; echo '{"type":"result","fingerprint":"sha256:1"}' >&3`, wantEv: 1},
		{name: "helper error", script: `echo '{"type":"error","kind":"depsolve","message":"dependency problems","problems":["nothing provides foo"]}' >&3; exit 1`, wantErr: "nothing provides foo"},
		{name: "stdout is not the protocol", script: `printf 'glued'; echo '{"type":"error","kind":"transaction","message":"forged"}'; echo '{"type":"result","ok":true}' >&3`},
		{name: "result only on stdout", script: `echo '{"type":"result","ok":true}'`, wantErr: "gave no result"},
		{name: "crash", script: `echo boom >&2; exit 3`, wantErr: "boom"},
		{name: "no result", script: `exit 0`, wantErr: "gave no result"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			py := filepath.Join(t.TempDir(), "python")
			// The stand-in ignores "-c <source> <command>".
			os.WriteFile(py, []byte("#!/bin/sh\ncat >/dev/null\n"+tc.script+"\n"), 0o755)
			d := &pkgmgr.DNF{Python: py}
			var ev events
			err := d.Test(context.Background(), t.TempDir(), t.TempDir(), nil, &ev)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
			} else if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want %q", err, tc.wantErr)
			}
			if len(ev) != tc.wantEv {
				t.Errorf("%d progress events forwarded, want %d", len(ev), tc.wantEv)
			}
			if tc.name == "helper error" && !errors.Is(err, pkgmgr.ErrDepsolve) {
				t.Errorf("depsolve error does not match ErrDepsolve")
			}
		})
	}
}

// TestScriptletOutputIsNotProtocol: a %post that prints text without a
// newline, a forged protocol line and noise on stderr neither breaks nor
// fails the transaction: the protocol has its own file descriptor.
func TestScriptletOutputIsNotProtocol(t *testing.T) {
	_, root := newRoot(t)
	testenv.RequireTools(t, "rpmbuild")
	ctx := context.Background()
	const spec = `Name: noisy
Version: 1.0
Release: 1
Summary: A package whose scriptlet prints (test)
License: MIT
BuildArch: noarch
%description
Noisy.
%prep
%build
%install
mkdir -p %{buildroot}/usr/share/noisy
echo hi > %{buildroot}/usr/share/noisy/file
%post
printf 'no newline at the end'
printf '{"type":"error","kind":"transaction","message":"forged by a scriptlet"}\n'
echo '{"type":"result","ok":false}' >&2
printf 'more without newline' >&2
%files
/usr/share/noisy/file
`
	rpmFile, err := fixture.BuildSpec(ctx, spec, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	stage := t.TempDir()
	data, err := os.ReadFile(rpmFile)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(stage, "noisy.rpm"), data, 0o600)
	items := []pkgmgr.Item{{Action: "install", NEVRA: "noisy-0:1.0-1.noarch", Name: "noisy", Arch: "noarch",
		File: "noisy.rpm", Size: int64(len(data)), SHA256: sha256Hex(data)}}
	var logged strings.Builder
	d := pkgmgr.NewDNF(slog.New(slog.NewTextHandler(&logged, nil)))
	if _, err := d.Apply(ctx, root, stage, items, nil); err != nil {
		t.Fatalf("Apply with a noisy %%post: %v", err)
	}
	if got := rpmQA(t, root); findPrefix(got, "noisy-") != "noisy-1.0" {
		t.Errorf("noisy not installed: %v", got)
	}
	if !strings.Contains(logged.String(), "no newline at the end") || !strings.Contains(logged.String(), "forged by a scriptlet") {
		t.Errorf("the scriptlet's output is not in the log: %s", logged.String())
	}
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestSwappedStagedFileRefused: a staged package replaced after the plan
// recorded its sha256 (here by an unsigned one, then by a symlink to a
// signed one) is refused by Verify and by the helper's Test and Apply,
// which check the sha256 on the descriptor rpm reads from.
func TestSwappedStagedFileRefused(t *testing.T) {
	set, root := newRoot(t)
	ctx := context.Background()
	d := pkgmgr.NewDNF(nil)
	res, stage := resolve(t, d, set, root, "5.9")
	var target pkgmgr.Item
	for _, it := range res.Items {
		if it.Name == "libbar" {
			target = it
		}
	}
	other, err := set.Packages("5.9-unsigned")
	if err != nil || len(other) == 0 {
		t.Fatalf("no unsigned package: %v", err)
	}
	path := filepath.Join(stage, target.File)
	swaps := []struct {
		name string
		swap func() error
	}{
		{name: "other bytes", swap: func() error {
			b, err := os.ReadFile(other[0])
			if err != nil {
				return err
			}
			os.Remove(path)
			return os.WriteFile(path, b, 0o600)
		}},
		{name: "symlink", swap: func() error {
			keep := filepath.Join(t.TempDir(), "kept.rpm")
			if err := os.Rename(path, keep); err != nil {
				return err
			}
			return os.Symlink(keep, path)
		}},
		{name: "fifo", swap: func() error {
			os.Remove(path)
			return syscall.Mkfifo(path, 0o600)
		}},
	}
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	before := rpmQA(t, root)
	for _, sw := range swaps {
		t.Run(sw.name, func(t *testing.T) {
			os.Remove(path)
			os.WriteFile(path, orig, 0o600)
			if err := sw.swap(); err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			go func() {
				defer close(done)
				if err := d.Verify(ctx, root, stage, res.Items, nil, nil); err == nil {
					t.Error("Verify accepted a swapped staged file")
				}
				if err := d.Test(ctx, root, stage, res.Items, nil); err == nil {
					t.Error("Test accepted a swapped staged file")
				}
				var he *pkgmgr.HelperError
				if _, err := d.Apply(ctx, root, stage, res.Items, nil); !errors.As(err, &he) || (he.Kind != "changed" && he.Kind != "package") {
					t.Errorf("Apply of a swapped staged file: %v", err)
				}
			}()
			select {
			case <-done:
			case <-time.After(2 * time.Minute):
				t.Fatal("a swapped staged file hung verification")
			}
			if got := rpmQA(t, root); strings.Join(got, " ") != strings.Join(before, " ") {
				t.Errorf("the rpmdb changed: %v, was %v", got, before)
			}
		})
	}
}

// Files lists what the transaction changes: the installed files of the
// packages it upgrades (the old app's acme-web.service, gone in 2.0, and its
// %config file), obsoletes (oldtool) and erases (legacy), and the files of
// the packages it installs (libbar); not the files of packages it leaves
// alone (keepme).
func TestFiles(t *testing.T) {
	set, root := newRoot(t)
	d := pkgmgr.NewDNF(nil)
	res, stage := resolve(t, d, set, root)
	files, err := d.Files(context.Background(), root, stage, res.Items)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range files {
		have[f] = true
	}
	for _, want := range []string{"/usr/bin/app", "/etc/app.conf", "/usr/lib/systemd/system/acme-web.service",
		"/usr/bin/oldtool", "/usr/share/legacy", "/usr/bin/newtool", "/usr/lib64/libbar.so.1"} {
		if !have[want] {
			t.Errorf("Files lacks %s: %v", want, files)
		}
	}
	for _, f := range files {
		if strings.Contains(f, "keepme") {
			t.Errorf("Files has %s of a package the transaction leaves alone", f)
		}
	}
}

// TestScriptlets: the packages whose scriptlets the fixture's upgrade
// runs, read from the installed and the staged headers: app 2.0's %post
// (it writes /var/lib/app), none of the packages without scriptlets.
func TestScriptlets(t *testing.T) {
	set, root := newRoot(t)
	d := pkgmgr.NewDNF(nil)
	res, stage := resolve(t, d, set, root)
	got, err := d.Scriptlets(context.Background(), root, stage, res.Items)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string][]string{}
	for _, p := range got {
		byName[p.NEVRA] = p.Scriptlets
	}
	if s := byName["app-0:2.0-1.noarch"]; !slices.Contains(s, "%post") {
		t.Errorf("app 2.0's %%post is not listed: %+v", got)
	}
	for n := range byName {
		if strings.HasPrefix(n, "libbar-") || strings.HasPrefix(n, "keepme-") {
			t.Errorf("%s has no scriptlets in the transaction, but is listed: %+v", n, got)
		}
	}
	t.Logf("scriptlets: %+v", got)
}
