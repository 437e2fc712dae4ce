package upgrader_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/migrate"
	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/pkg/preflight"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

func TestParseTarget(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    upgrader.Target
		wantErr bool
	}{
		{in: "5.9", want: upgrader.Target{Version: "5.9"}},
		{in: "kos-5.9", want: upgrader.Target{Distro: "kos", Version: "5.9"}},
		{in: "5.9-rc1", want: upgrader.Target{Version: "5.9-rc1"}},
		{in: "kos-", wantErr: true},
		{in: "kos", wantErr: true},
		{in: "-5.9", wantErr: true},
		{in: "", wantErr: true},
		{in: "kos 5.9", wantErr: true},
	} {
		got, err := upgrader.ParseTarget(tc.in)
		if (err != nil) != tc.wantErr || err == nil && got != tc.want {
			t.Errorf("ParseTarget(%q) = %+v, %v; want %+v (error %v)", tc.in, got, err, tc.want, tc.wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), "--to kos-5.9") {
			t.Errorf("ParseTarget(%q): error does not say how to name a target: %v", tc.in, err)
		}
	}
}

// newCentOSSystem is newSystem with the fixture CentOS Linux 8.5 installed
// instead of KOS 5.8, plus the unsigned third-party package.
func newCentOSSystem(t *testing.T) *system {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping real-component test in -short mode")
	}
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "rpm", "rpmkeys", "btrfs", "/usr/bin/python3")
	set := fixture.MustBuild(t)
	fs := testenv.NewBtrfs(t, 1024)
	root := filepath.Join(t.TempDir(), "root")
	fs.MakeDefaultRoot(t, "@", root)
	if err := fixture.InstallCentOS(context.Background(), set, root); err != nil {
		t.Fatal(err)
	}
	tp, err := set.Packages(fixture.RepoThirdParty)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "rpm", append([]string{"--root", root, "--dbpath", fixture.DBPath, "-i", "--force-debian"}, tp...)...)
	s := &system{Set: set, FS: fs, Root: root, Sink: &recordingSink{}}
	s.Engin = s.engine(t)
	return s
}

func (s *system) migrationOptions(t *testing.T) upgrader.PrepareOptions {
	t.Helper()
	mapFile, err := fixture.WriteCentOSMigrationMap(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return upgrader.PrepareOptions{
		To: "kos-5.9", Snapshot: "auto", Repos: s.repos(fixture.Repo59),
		MigrationMap: mapFile, GPGKeys: []string{s.Set.KeyFile},
	}
}

func names(t *testing.T, root string) []string {
	t.Helper()
	out := strings.Fields(testenv.Run(t, "rpm", "--root", root, "--dbpath", fixture.DBPath, "-qa", "--qf", "%{NAME}\n"))
	sort.Strings(out)
	return out
}

// keyIDs lists the gpg-pubkey versions (key ids) imported in root.
func keyIDs(t *testing.T, root string) []string {
	t.Helper()
	out, _ := exec.Command("rpm", "--root", root, "--dbpath", fixture.DBPath, "-q", "gpg-pubkey", "--qf", "%{VERSION}\n").Output()
	ids := strings.Fields(string(out))
	sort.Strings(ids)
	return ids
}

func fileKeyID(t *testing.T, file string) string {
	t.Helper()
	db := t.TempDir()
	testenv.Run(t, "rpmkeys", "--dbpath", db, "--import", file)
	return strings.TrimSpace(testenv.Run(t, "rpm", "--dbpath", db, "-q", "gpg-pubkey", "--qf", "%{VERSION}\n"))
}

func TestMigrateFromCentOS(t *testing.T) {
	s := newCentOSSystem(t)
	ctx := context.Background()
	oldPkgs := rpmQA(t, s.Root)
	oldTree := treeDigest(t, s.Root, "var/lib/kos-upgrade")
	opts := s.migrationOptions(t)

	// The third-party package is a question to answer first.
	_, err := s.Engin.Prepare(ctx, opts)
	if !errors.Is(err, preflight.ErrInhibited) || !strings.Contains(err.Error(), preflight.KeyThirdParty) {
		t.Fatalf("prepare without answering %s: %v", preflight.KeyThirdParty, err)
	}
	opts.Answers = []string{"packages.third-party=keep"}
	p, err := s.Engin.Prepare(ctx, opts)
	if err != nil {
		t.Fatalf("prepare the migration: %v", err)
	}
	// Prepare changed nothing.
	if d := diffDigest(oldTree, treeDigest(t, s.Root, "var/lib/kos-upgrade")); len(d) > 0 {
		t.Errorf("prepare changed the root:\n%s", strings.Join(d, "\n"))
	}
	// The plan says what the migration does and why.
	m := p.Migration
	if m == nil || m.From.ID != "centos" || p.Target.ID != "kos" || p.Target.VersionID != "5.9" || len(m.Keys) != 1 {
		t.Fatalf("plan: target %+v, migration %+v", p.Target, m)
	}
	var kinds []string
	for _, sw := range m.Applied {
		kinds = append(kinds, sw.Kind+":"+strings.Join(sw.From, "+"))
	}
	wantKinds := []string{"release:centos-release+centos-repos+centos-gpg-keys", "rename:centos-logos", "split:toolsuite", "merge:liba+libb", "remove:centos-only-tool"}
	if !reflect.DeepEqual(kinds, wantKinds) {
		t.Errorf("applied swaps %v, want %v", kinds, wantKinds)
	}
	reasons := map[string]string{}
	for _, it := range p.Transaction {
		if it.Action == pkgmgr.ActionRemove || it.Action == pkgmgr.ActionObsoleted {
			reasons[it.Name] = it.Reason
		}
	}
	for n, want := range map[string]string{
		"centos-logos": "renamed to kos-logos", "toolsuite": "split into toolsuite-core and toolsuite-extra",
		"liba": "merged into libab", "libb": "merged into libab", "centos-only-tool": "no replacement",
		"centos-release": "replaced by kos-release",
	} {
		if !strings.Contains(reasons[n], want) {
			t.Errorf("removal reason of %s is %q, want it to say %q", n, reasons[n], want)
		}
	}
	if f := p.Report.Finding(preflight.KeyMigration); f == nil || len(f.Details) != 5 {
		t.Errorf("report has no migration finding with the 5 swaps: %+v", f)
	}
	if f := p.Report.Finding(preflight.KeyThirdParty); f == nil || !strings.Contains(strings.Join(f.Details, " "), "thirdparty-tool") {
		t.Errorf("third-party finding: %+v", f)
	}

	if _, err := s.Engin.Arm(ctx); err != nil {
		t.Fatalf("arm: %v", err)
	}
	res, err := s.Engin.Apply(ctx)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if !res.Ran || !res.Result.Success {
		t.Fatalf("apply: %+v", res)
	}
	newRoot := filepath.Join(s.FS.Top, s.defaultSubvol(t))

	// The old root is untouched.
	if got := rpmQA(t, s.Root); !reflect.DeepEqual(got, oldPkgs) {
		t.Errorf("old root's packages changed: %v", got)
	}
	if d := diffDigest(oldTree, treeDigest(t, s.Root, "var/lib/kos-upgrade")); len(d) > 0 {
		t.Errorf("apply changed the old root:\n%s", strings.Join(d, "\n"))
	}

	// The new root has what dnf itself makes of the same map.
	got := rpmQA(t, newRoot)
	if want := dnfMigrate(t, s, opts.MigrationMap); !reflect.DeepEqual(got, want) {
		t.Errorf("new root differs from dnf's own migration:\n got %v\nwant %v", got, want)
	}
	want := []string{"gpg-pubkey", "gpg-pubkey", "kos-logos", "kos-release", "kos-sh", "libab", "libfoo",
		"thirdparty-tool", "toolsuite-core", "toolsuite-extra"}
	if n := names(t, newRoot); !reflect.DeepEqual(n, want) {
		t.Errorf("new root has %v, want %v", n, want)
	}
	// Nothing of the tool is left behind: every package comes from the
	// KOS repository, but the third-party one kept and the keys.
	kos, _ := s.Set.Packages(fixture.Repo59)
	from := map[string]bool{"thirdparty-tool": true, "gpg-pubkey": true}
	for _, f := range kos {
		from[strings.TrimSpace(testenv.Run(t, "rpm", "-qp", "--nosignature", "--qf", "%{NAME}", f))] = true
	}
	for _, n := range names(t, newRoot) {
		if !from[n] {
			t.Errorf("the new root has %s, which neither KOS nor the user installed", n)
		}
	}
	for _, f := range []string{"etc/yum.repos.d/CentOS-Linux-BaseOS.repo", "etc/centos-release", "etc/pki/rpm-gpg/RPM-GPG-KEY-centosofficial"} {
		if _, err := os.Lstat(filepath.Join(newRoot, f)); !os.IsNotExist(err) {
			t.Errorf("%s is left in the new root: %v", f, err)
		}
	}
	if rel, _ := os.ReadFile(filepath.Join(newRoot, "etc/os-release")); !strings.Contains(string(rel), `ID="kos"`) || !strings.Contains(string(rel), `VERSION_ID="5.9"`) {
		t.Errorf("new root os-release:\n%s", rel)
	}
	// KOS's key is imported into the new root, not into the old one.
	kosKey := fileKeyID(t, s.Set.KeyFile)
	if ids := keyIDs(t, newRoot); !contains(ids, kosKey) || !contains(ids, fileKeyID(t, s.Set.CentOSKeyFile)) {
		t.Errorf("new root keys %v, want the KOS key %s and the CentOS one", ids, kosKey)
	}
	if ids := keyIDs(t, s.Root); contains(ids, kosKey) {
		t.Errorf("the KOS key was imported into the old root: %v", ids)
	}
	// The new root verifies itself: every file as its package shipped it.
	testenv.Run(t, "rpm", "--root", newRoot, "--dbpath", fixture.DBPath, "-Va", "--nodeps")
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

// dnfMigrate runs the real dnf CLI on a copy of the CentOS system (a
// snapshot of @): one `dnf shell` transaction that installs the new names
// and removes the old ones of every map entry that applies, and
// distro-syncs, erasing allowed, against the KOS repository only, checking
// signatures with the KOS key (which dnf imports). It returns the copy's
// package list.
func dnfMigrate(t *testing.T, s *system, mapFile string) []string {
	t.Helper()
	m, err := migrate.Load(mapFile)
	if err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(s.FS.Top, "dnf-copy")
	testenv.Run(t, "btrfs", "subvolume", "snapshot", filepath.Join(s.FS.Top, "@"), cp)
	var install, remove []string
	for _, sw := range m.Applies(names(t, cp)) {
		install = append(install, sw.To...)
		remove = append(remove, sw.From...)
	}
	script := filepath.Join(t.TempDir(), "migrate.dnf")
	body := "install " + strings.Join(install, " ") + "\nremove " + strings.Join(remove, " ") + "\ndistro-sync\nrun\n"
	if err := os.WriteFile(script, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	os.WriteFile(filepath.Join(home, ".rpmmacros"), []byte("%_dbpath /var/lib/rpm\n"), 0o644)
	cmd := exec.Command("dnf", "--installroot", cp, "--releasever", "5.9", "--setopt=reposdir="+t.TempDir(),
		"--repofrompath", "kos,file://"+s.Set.Repos[fixture.Repo59], "--setopt=kos.gpgcheck=1",
		"--setopt=kos.gpgkey=file://"+s.Set.KeyFile,
		"--setopt=cachedir="+t.TempDir(), "--setopt=install_weak_deps=False", "-y", "--allowerasing", "shell", script)
	cmd.Env = append(os.Environ(), "HOME="+home)
	out, err := cmd.CombinedOutput()
	if err != nil || strings.Contains(string(out), "Error") {
		t.Fatalf("dnf shell %s: %v\n%s\n%s", script, err, body, out)
	}
	t.Logf("dnf shell:\n%s", out)
	return rpmQA(t, cp)
}

func TestMigrationRefusals(t *testing.T) {
	s := newCentOSSystem(t)
	ctx := context.Background()
	opts := s.migrationOptions(t)
	opts.Answers = []string{"packages.third-party=keep"}
	refused := func(t *testing.T, opts upgrader.PrepareOptions, want ...string) error {
		t.Helper()
		_, err := s.Engin.Prepare(ctx, opts)
		if err == nil {
			t.Fatal("prepare succeeded")
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error does not say %q: %v", w, err)
			}
		}
		if st, _ := s.Engin.Status(ctx); st.State.Status == upgrader.StatusPrepared {
			t.Error("a refused prepare left a plan")
		}
		return err
	}
	t.Run("upgrade instead of migration", func(t *testing.T) {
		o := opts
		o.To, o.MigrationMap, o.GPGKeys = "5.9", "", nil
		err := refused(t, o, preflight.KeyOtherDistribution, "--to kos-5.9")
		if !errors.Is(err, preflight.ErrInhibited) {
			t.Errorf("not an inhibitor: %v", err)
		}
	})
	t.Run("no repository", func(t *testing.T) {
		o := opts
		o.Repos, o.MigrationMap = nil, "" // the built-in map names none
		refused(t, o, "names no kos repository", "--repo")
	})
	t.Run("no key", func(t *testing.T) {
		o := opts
		o.GPGKeys = nil
		refused(t, o, "no public key of KeyarchOS", "--gpgkey")
	})
	t.Run("missing --gpgkey", func(t *testing.T) {
		o := opts
		o.GPGKeys = []string{"/nonexistent/key"}
		refused(t, o, "cannot read --gpgkey /nonexistent/key")
	})
	t.Run("el7", func(t *testing.T) {
		if err := os.WriteFile(filepath.Join(s.Root, "etc/os-release"), []byte("NAME=\"CentOS Linux\"\nID=\"centos\"\nVERSION_ID=\"7\"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		err := refused(t, opts, preflight.KeyMigrationMajorVersion)
		if !errors.Is(err, preflight.ErrInhibited) {
			t.Errorf("not an inhibitor: %v", err)
		}
		r, err := preflight.Load(filepath.Join(s.Root, "var/lib/kos-upgrade"))
		if err != nil {
			t.Fatal(err)
		}
		if f := r.Finding(preflight.KeyMigrationMajorVersion); f == nil || !strings.Contains(f.Title, "el7 → el8") {
			t.Errorf("saved report: %+v", f)
		}
	})
}
