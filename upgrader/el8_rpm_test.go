package upgrader_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/test/el8"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// newEL8RPMSystem is newSystem on EL8's rpm: the 5.8 system installed by rpm
// 4.14.3 (a Berkeley DB rpmdb in var/lib/rpm). Its engine prepares with
// Debian's dnf (EL8's needs EL8's libdnf, not built here; Debian's librpm
// reads a Berkeley DB rpmdb), and the tests switch it to EL8's rpm for apply.
func newEL8RPMSystem(t *testing.T, r *el8.RPM) *system {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping real-component test in -short mode")
	}
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "rpm", "rpmkeys", "btrfs", "/usr/bin/python3", "db5.3_dump")
	set := fixture.MustBuild(t)
	fs := testenv.NewBtrfs(t, 1024)
	root := filepath.Join(t.TempDir(), "root")
	fs.MakeDefaultRoot(t, "@", root)
	if err := fixture.InstallBaseWithRPM(context.Background(), set, root, r.Bin("rpm")); err != nil {
		t.Fatal(err)
	}
	// The rpmdb is Berkeley DB's, as on EL8.
	if out, err := exec.Command("db5.3_dump", "-p", filepath.Join(root, "var/lib/rpm/Packages")).CombinedOutput(); err != nil {
		t.Fatalf("the fixture's rpmdb is not Berkeley DB: %v: %.300s", err, out)
	}
	s := &system{Set: set, FS: fs, Root: root, Sink: &recordingSink{}}
	s.Engin = s.engine(t)
	return s
}

// el8QA lists the packages of root as EL8's rpm reads them (what the
// system itself sees), failing the test when rpm does not answer in time.
func el8QA(t *testing.T, r *el8.RPM, root string) []string {
	t.Helper()
	out := el8Run(t, r.Bin("rpm"), "--root", root, "-qa", "--qf", "%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}\n")
	lines := strings.Fields(out)
	sort.Strings(lines)
	return lines
}

// el8Run runs an EL8 rpm command, which must finish within a minute: a
// Berkeley DB environment with foreign locks makes rpm wait for good.
func el8Run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s %s: did not finish in a minute (a hung rpmdb?)\n%s", name, strings.Join(args, " "), out)
	}
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// holdRPMDB starts a process of the old system that has root's rpmdb open,
// an iterator in the middle of the packages, as a running dnf or rpm -q
// has: a snapshot taken now captures the Berkeley DB environment with its
// locks. It is stopped at cleanup.
func holdRPMDB(t *testing.T, r *el8.RPM, root string) {
	t.Helper()
	cmd := exec.Command(r.Python(el8.Bytes), "-I", "-c", `import rpm, sys, time
ts = rpm.TransactionSet(sys.argv[1])
ts.openDB()
mi = ts.dbMatch()
next(mi)
print("holding", flush=True)
time.sleep(3600)`, root)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "holding" {
		t.Fatalf("the rpmdb holder did not start: %q %v", line, err)
	}
	if m, _ := filepath.Glob(filepath.Join(root, "var/lib/rpm/__db.*")); len(m) == 0 {
		t.Fatal("the rpmdb holder made no Berkeley DB environment: the scenario tests nothing")
	}
}

// TestEL8RPMApply is the engine tier on EL8's rpm: the offline apply run by
// the engine, its helper under Python 3.6 with rpm 4.14.3's bindings on a
// Berkeley DB rpmdb, in both flavours of the bindings (header strings as
// bytes, EL 8.0-8.4, and as str, EL 8.5+).
func TestEL8RPMApply(t *testing.T) {
	r := el8.MustRPM(t)
	cases := []struct {
		name string
		// repos are fixture repos given with --repo; none means the
		// system's own kos.repo, whose baseurl uses a /etc/dnf/vars
		// variable ($contentdir).
		repos []string
		// hold keeps the old root's rpmdb open in another process
		// while the snapshot is taken.
		hold bool
		// fail: apply must fail naming this; else it succeeds.
		fail string
		// want are packages the new root must have; gone ones it
		// must not.
		want, gone []string
		// warn: the result must carry a warning containing each.
		warn []string
	}{
		{name: "success with the system's repository and its dnf variables",
			want: []string{"kos-release-5.9-1.noarch", "app-2.0-1.noarch", "newtool-2.0-1.noarch"},
			gone: []string{"kos-release-5.8-1.noarch", "legacy-1.0-1.noarch", "oldtool-1.0-1.noarch"}},
		{name: "failing pre", repos: []string{"5.9", "5.9-failpre"}, fail: "%pre scriptlet of failpre-0:2.0-1.noarch failed"},
		{name: "failing posttrans", repos: []string{"5.9", "5.9-failposttrans"},
			want: []string{"keepme-1.2-1.noarch", "kos-release-5.9-1.noarch"},
			warn: []string{"the %posttrans scriptlet of keepme-0:1.2-1.noarch failed"}},
		{name: "scriptlets printing on stdout", repos: []string{"5.9", "5.9-stdout"},
			want: []string{"keepme-1.3-1.noarch", "kos-release-5.9-1.noarch"}},
		{name: "snapshot of an rpmdb held open", repos: []string{"5.9"}, hold: true,
			want: []string{"kos-release-5.9-1.noarch", "app-2.0-1.noarch"}},
	}
	for _, f := range el8.Flavours {
		for _, tc := range cases {
			t.Run(string(f)+"/"+tc.name, func(t *testing.T) {
				s := newEL8RPMSystem(t, r)
				oldPkgs := el8QA(t, r, s.Root)
				oldTree := treeDigest(t, s.Root, "var/lib/kos-upgrade", "var/lib/rpm")
				opts := upgrader.PrepareOptions{}
				if len(tc.repos) > 0 {
					opts.Repos = s.repos(tc.repos...)
				}
				s.prepareAndArm(t, opts)
				if tc.hold {
					holdRPMDB(t, r, s.Root)
				}
				// Offline: the helper under Python 3.6 with rpm
				// 4.14.3, selected explicitly (no PYTHONPATH).
				s.Engin.PM = &pkgmgr.DNF{Python: r.Python(f)}
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
				defer cancel()
				res, err := s.Engin.Apply(ctx)
				if ctx.Err() != nil {
					t.Fatalf("apply did not finish in 3 minutes (a hung rpmdb?): %v", err)
				}
				// The old root is untouched and its rpmdb readable by
				// the old system, whatever happened.
				if got := el8QA(t, r, s.Root); !reflect.DeepEqual(got, oldPkgs) {
					t.Errorf("the old root's packages changed: %v", got)
				}
				if d := diffDigest(oldTree, treeDigest(t, s.Root, "var/lib/kos-upgrade", "var/lib/rpm")); len(d) > 0 {
					t.Errorf("apply changed the old root:\n%s", strings.Join(d, "\n"))
				}
				if tc.fail != "" {
					if err == nil {
						t.Fatalf("apply succeeded, want a failure naming %q", tc.fail)
					}
					if !strings.Contains(err.Error(), tc.fail) || strings.Contains(err.Error(), "(") && strings.Contains(err.Error(), "',") {
						t.Errorf("apply's error does not say %q in words: %v", tc.fail, err)
					}
					if def := s.defaultSubvol(t); def != "@" {
						t.Errorf("default subvolume is %q after a failed apply", def)
					}
					if left := s.subvols(t); len(left) > 0 {
						t.Errorf("half-made snapshots left: %v", left)
					}
					return
				}
				if err != nil {
					t.Fatalf("apply: %v", err)
				}
				if !res.Ran || !res.Result.Success {
					t.Fatalf("apply did not run or failed: %+v", res)
				}
				newRoot := filepath.Join(s.FS.Top, s.defaultSubvol(t))
				got := el8QA(t, r, newRoot)
				for _, p := range tc.want {
					if !contains(got, p) {
						t.Errorf("the new root lacks %s: %v", p, got)
					}
				}
				for _, p := range tc.gone {
					if contains(got, p) {
						t.Errorf("the new root still has %s: %v", p, got)
					}
				}
				// The new root's rpmdb is usable by EL8's rpm: it
				// verifies, takes an install and lists it.
				el8Run(t, r.Bin("rpmdb"), "--root", newRoot, "--verifydb")
				tp, _ := s.Set.Packages(fixture.RepoThirdParty)
				el8Run(t, r.Bin("rpm"), append([]string{"--root", newRoot, "-i"}, tp...)...)
				if got := el8QA(t, r, newRoot); !contains(got, "thirdparty-tool-1.0-1.noarch") {
					t.Errorf("an install into the new root is not listed: %v", got)
				}
				el8Run(t, r.Bin("rpmdb"), "--root", s.Root, "--verifydb")

				// Warnings: in the result, the history and status.
				// The tier's Python 3.6 has rpm but no dnf (EL8's dnf is
				// not built here): the helper says it wrote no dnf
				// history, and that is the only other warning allowed.
				var others []string
				for _, w := range res.Result.Warnings {
					if len(matching([]string{w}, tc.warn)) == 0 && !strings.HasPrefix(w, "no dnf history was written: dnf cannot be imported") {
						others = append(others, w)
					}
				}
				if len(matching(res.Result.Warnings, tc.warn)) != len(tc.warn) || len(others) > 0 {
					t.Errorf("warnings %q, want one containing each of %q", res.Result.Warnings, tc.warn)
				}
				if len(tc.warn) > 0 {
					out, err := s.kosUpgrade(t, nil, "history", "--json")
					var h []upgrader.Result
					if err != nil || json.Unmarshal([]byte(out), &h) != nil || len(h) != 1 || !reflect.DeepEqual(h[0].Warnings, res.Result.Warnings) {
						t.Errorf("history --json does not carry the warnings: %v\n%s", err, out)
					}
					out, _ = s.kosUpgrade(t, nil, "status")
					for _, w := range tc.warn {
						if !strings.Contains(out, "warning: "+w) {
							t.Errorf("status does not show the warning %q:\n%s", w, out)
						}
					}
				}
			})
		}
	}
}

// matching returns the warnings that contain one of want, in order.
func matching(warnings, want []string) []string {
	var out []string
	for _, w := range warnings {
		for _, s := range want {
			if strings.Contains(w, s) {
				out = append(out, w)
				break
			}
		}
	}
	return out
}

// TestEL8RPMProblemsAreSentences: what librpm 4.14.3 finds wrong with a
// transaction comes back as rpm's sentences, never as the tuples that
// ts.check() and ts.run() return.
func TestEL8RPMProblemsAreSentences(t *testing.T) {
	r := el8.MustRPM(t)
	s := newEL8RPMSystem(t, r)
	stage := t.TempDir()
	item := func(repo, file, action, nevra string) pkgmgr.Item {
		data, err := os.ReadFile(filepath.Join(s.Set.Repos[repo], "Packages", file))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(stage, file), data, 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		name, _, _ := strings.Cut(nevra, "-")
		return pkgmgr.Item{Action: action, NEVRA: nevra, Name: name, Arch: "noarch", File: file,
			SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data))}
	}
	cases := []struct {
		name  string
		items []pkgmgr.Item
		kind  string
		want  string
	}{
		{name: "dependency problem (ts.check)", kind: "depsolve",
			items: []pkgmgr.Item{item(fixture.Repo59, "app-2.0-1.noarch.rpm", pkgmgr.ActionUpgrade, "app-0:2.0-1.noarch")},
			want:  "libbar is needed by app-2.0-1.noarch"},
		{name: "file conflict (ts.run)", kind: "test",
			items: []pkgmgr.Item{item(fixture.Repo59FailPosttrans, "keepme-1.2-1.noarch.rpm", pkgmgr.ActionInstall, "keepme-0:1.2-1.noarch")},
			want:  "file /usr/share/keepme/data from install of keepme-1.2-1.noarch conflicts with file from package keepme-1.0-1.noarch"},
	}
	for _, f := range el8.Flavours {
		d := &pkgmgr.DNF{Python: r.Python(f)}
		// ts.run() returning an empty list: rpm stopped before the
		// transaction (here: its transaction lock cannot be created)
		// without naming a problem. That is a failure, said as one.
		t.Run(string(f)+"/rpm stops outright (ts.run)", func(t *testing.T) {
			lock := filepath.Join(s.Root, "var/lib/rpm/.rpm.lock")
			os.Remove(lock) // an empty file, made again by rpm
			if err := os.Mkdir(lock, 0o755); err != nil {
				t.Fatal(err)
			}
			defer os.Remove(lock)
			items := []pkgmgr.Item{item(fixture.Repo59FailPosttrans, "keepme-1.2-1.noarch.rpm", pkgmgr.ActionUpgrade, "keepme-0:1.2-1.noarch")}
			_, err := d.Apply(context.Background(), s.Root, stage, items, nil)
			var he *pkgmgr.HelperError
			if !errors.As(err, &he) || he.Kind != "transaction" || !contains(he.Problems, "rpm stopped the transaction without naming a problem (its messages are in the log)") {
				t.Fatalf("Apply that rpm refuses to start: %v", err)
			}
			if got := el8QA(t, r, s.Root); !contains(got, "keepme-1.0-1.noarch") {
				t.Errorf("keepme 1.0 is gone: %v", got)
			}
		})
		for _, tc := range cases {
			t.Run(string(f)+"/"+tc.name, func(t *testing.T) {
				err := d.Test(context.Background(), s.Root, stage, tc.items, nil)
				var he *pkgmgr.HelperError
				if !errors.As(err, &he) || he.Kind != tc.kind {
					t.Fatalf("Test: %v, want a helper error of kind %s", err, tc.kind)
				}
				if !contains(he.Problems, tc.want) {
					t.Errorf("problems %q, want the sentence %q", he.Problems, tc.want)
				}
				for _, p := range he.Problems {
					if strings.ContainsAny(p, "()[]'") {
						t.Errorf("a problem is not a sentence: %q", p)
					}
				}
			})
		}
	}
}
