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

	"github.com/keyarchos/kos-upgrade/pkg/iso"
	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// makeISO writes a fixture image (Rock Ridge, Joliet, label, .treeinfo).
func makeISO(t *testing.T, opts fixture.ISOOptions) string {
	t.Helper()
	testenv.RequireTools(t, fixture.ISOTools...)
	out := filepath.Join(t.TempDir(), "kos.iso")
	if err := fixture.MakeISO(context.Background(), out, opts); err != nil {
		t.Fatal(err)
	}
	return out
}

// transactionKey is a plan's transaction without the repository ids and
// file digests' provenance: what to install, upgrade and erase.
func transactionKey(p *upgrader.Plan) []string {
	var out []string
	for _, it := range p.Transaction {
		out = append(out, it.Action+" "+it.NEVRA+" "+it.SHA256)
	}
	sort.Strings(out)
	return out
}

func stagedFiles(t *testing.T, root string) []string {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(root, "var/lib/kos-upgrade/packages"))
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// TestPrepareFromISO: prepare from the image alone gives the plan prepare
// from the repository directory gives; the image is deleted, apply still
// gives what dnf distro-sync gives.
func TestPrepareFromISO(t *testing.T) {
	s := newSystem(t)
	ctx := context.Background()
	fromDir, err := s.Engin.Prepare(ctx, upgrader.PrepareOptions{To: "5.9", Snapshot: "auto",
		Repos: []pkgmgr.Repo{{ID: "mirror", BaseURL: s.Set.Repos[fixture.Repo59]}}})
	if err != nil {
		t.Fatalf("prepare from the directory mirror: %v", err)
	}
	if err := s.Engin.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
	image := makeISO(t, fixture.ISOOptions{Label: "KOS-5.9-x86_64", Release: "5.9",
		Dirs: map[string]string{"BaseOS": s.Set.Repos[fixture.Repo59]}})
	p, err := s.Engin.Prepare(ctx, upgrader.PrepareOptions{Snapshot: "auto", Images: []string{image}})
	if err != nil {
		t.Fatalf("prepare --iso: %v", err)
	}
	if got, want := transactionKey(p), transactionKey(fromDir); !reflect.DeepEqual(got, want) {
		t.Errorf("plan from the image differs from the plan from the directory:\n got %v\nwant %v", got, want)
	}
	if p.Target.VersionID != "5.9" {
		t.Errorf("target %+v, want 5.9 from the image's .treeinfo", p.Target)
	}
	if len(p.Images) != 1 || p.Images[0].Label != "KOS-5.9-x86_64" || p.Images[0].Path != image ||
		len(p.Images[0].VolumeSHA256) != 64 || !reflect.DeepEqual(p.Images[0].Repos, []string{"BaseOS"}) {
		t.Errorf("plan's image record: %+v", p.Images)
	}
	// Only what the transaction installs was copied out of the image.
	var want []string
	for _, it := range p.Transaction {
		if it.Installs() {
			want = append(want, it.File)
			if it.Repo != "iso0-BaseOS" {
				t.Errorf("%s comes from %q, want iso0-BaseOS", it.NEVRA, it.Repo)
			}
		}
	}
	sort.Strings(want)
	if got := stagedFiles(t, s.Root); !reflect.DeepEqual(got, want) {
		t.Errorf("staged %v, want exactly %v", got, want)
	}
	if err := os.Remove(image); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Engin.Arm(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := s.Engin.Apply(ctx)
	if err != nil || !res.Result.Success {
		t.Fatalf("apply without the image: %v %+v", err, res)
	}
	if got, want := rpmQA(t, filepath.Join(s.FS.Top, s.defaultSubvol(t))), dnfDistroSync(t, s); !reflect.DeepEqual(got, want) {
		t.Errorf("upgraded from the image:\n got %v\nwant %v (dnf distro-sync)", got, want)
	}
}

// TestPrepareFromISORefusals: each a clear error; the refusals of the image
// itself stage nothing.
func TestPrepareFromISORefusals(t *testing.T) {
	s := newSystem(t)
	ctx := context.Background()
	repo59 := s.Set.Repos[fixture.Repo59]

	// A copy of repo 5.9 whose libfoo package is changed after the
	// metadata was written (same size: only the checksum tells).
	tampered := filepath.Join(t.TempDir(), "tampered")
	if out, err := exec.Command("cp", "-a", repo59, tampered).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	victim := filepath.Join(tampered, "Packages", "libfoo-2.0-1.noarch.rpm")
	b, err := os.ReadFile(victim)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-10] ^= 0xff
	if err := os.WriteFile(victim, b, 0o644); err != nil {
		t.Fatal(err)
	}
	// Copies of repo 5.9 with a signed repomd.xml: a good signature, and
	// the signature of other bytes by the same key.
	testenv.RequireTools(t, "gpg")
	gpgHome := filepath.Join(t.TempDir(), "gnupg")
	os.Mkdir(gpgHome, 0o700)
	testenv.Run(t, "gpg", "--homedir", gpgHome, "--batch", "--pinentry-mode", "loopback", "--passphrase", "", "--import", s.Set.SecretKeyFile)
	signedRepo := func(what string) string {
		dir := filepath.Join(t.TempDir(), "signed")
		testenv.Run(t, "cp", "-a", repo59, dir)
		data := filepath.Join(dir, "repodata", "repomd.xml")
		if what == "other bytes" {
			data = filepath.Join(t.TempDir(), "other")
			os.WriteFile(data, []byte("not the metadata"), 0o644)
		}
		testenv.Run(t, "gpg", "--homedir", gpgHome, "--batch", "--yes", "--pinentry-mode", "loopback", "--local-user", fixture.KOSKeyUID,
			"--armor", "--detach-sign", "--output", filepath.Join(dir, "repodata", "repomd.xml.asc"), data)
		return dir
	}
	badMeta := signedRepo("other bytes")

	notISO := filepath.Join(t.TempDir(), "not.iso")
	os.WriteFile(notISO, make([]byte, 1<<20), 0o644)

	for _, tc := range []struct {
		name    string
		opts    upgrader.PrepareOptions
		image   *fixture.ISOOptions
		path    string
		want    []string // in the error
		is      error
		oneLine bool
		staged  bool // may leave packages in the staging directory
	}{
		{name: "tampered package", image: &fixture.ISOOptions{Label: "T", Release: "5.9", Dirs: map[string]string{"BaseOS": tampered}},
			want: []string{"libfoo-2.0-1.noarch", "hecksum"}, staged: true},
		{name: "unsigned package", image: &fixture.ISOOptions{Label: "U", Release: "5.9",
			Dirs: map[string]string{"BaseOS": repo59, "Extra": s.Set.Repos[fixture.Repo59Unsigned]}},
			want: []string{"libbar-0:1.1-1.noarch", "--no-gpg-check"}, staged: true},
		{name: "metadata signature does not match", image: &fixture.ISOOptions{Label: "S", Release: "5.9", Dirs: map[string]string{"BaseOS": badMeta}},
			want: []string{"iso0-BaseOS", "repomd.xml GPG signature", "Bad GPG signature"}},
		{name: "wrong release", opts: upgrader.PrepareOptions{To: "5.9"},
			image: &fixture.ISOOptions{Label: "KOS-6.0", Release: "6.0", Dirs: map[string]string{"BaseOS": repo59}},
			want:  []string{"holds release 6.0, not 5.9", "KOS-6.0"}, oneLine: true},
		{name: "not an ISO", path: notISO, want: []string{"not an ISO 9660 image", notISO}, is: iso.ErrNotISO, oneLine: true},
		{name: "no repository", image: &fixture.ISOOptions{Label: "EMPTY", Release: "5.9", Dirs: map[string]string{"keys": filepath.Join(s.Set.Dir, "keys")}},
			want: []string{"no package repository on the image"}, is: iso.ErrNoRepo, oneLine: true},
		{name: "no release anywhere", image: &fixture.ISOOptions{Label: "NOREL", Dirs: map[string]string{".": repo59}},
			want: []string{"name no release", "--to VERSION"}, oneLine: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.RemoveAll(filepath.Join(s.Root, "var/lib/kos-upgrade/packages"))
			path := tc.path
			if tc.image != nil {
				path = makeISO(t, *tc.image)
			}
			opts := tc.opts
			opts.Snapshot = "auto"
			opts.Images = []string{path}
			_, err := s.Engin.Prepare(ctx, opts)
			if err == nil {
				t.Fatal("prepare succeeded")
			}
			t.Logf("error: %v", err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q", w)
				}
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error is not %v", tc.is)
			}
			if tc.oneLine && strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line")
			}
			if st, _ := s.Engin.Status(ctx); st.State.Status == upgrader.StatusPrepared {
				t.Errorf("a refused prepare left a plan")
			}
			if got := stagedFiles(t, s.Root); !tc.staged && len(got) > 0 {
				t.Errorf("staged %v", got)
			}
		})
	}
	t.Run("signed metadata", func(t *testing.T) {
		path := makeISO(t, fixture.ISOOptions{Label: "S", Release: "5.9", Dirs: map[string]string{"BaseOS": signedRepo("repomd.xml")}})
		if _, err := s.Engin.Prepare(ctx, upgrader.PrepareOptions{Snapshot: "auto", Images: []string{path}}); err != nil {
			t.Fatal(err)
		}
		if err := s.Engin.Cancel(ctx); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("unsigned with --no-gpg-check", func(t *testing.T) {
		path := makeISO(t, fixture.ISOOptions{Label: "U", Release: "5.9",
			Dirs: map[string]string{"BaseOS": repo59, "Extra": s.Set.Repos[fixture.Repo59Unsigned]}})
		p, err := s.Engin.Prepare(ctx, upgrader.PrepareOptions{Snapshot: "auto", Images: []string{path}, SkipSignatures: true})
		if err != nil {
			t.Fatal(err)
		}
		if p.SignatureCheck != "skipped" {
			t.Errorf("signature check %q", p.SignatureCheck)
		}
	})
}
