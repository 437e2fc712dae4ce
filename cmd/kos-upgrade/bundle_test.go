package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/bundle"
	"github.com/keyarchos/kos-upgrade/pkg/iso"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// planKey is what a plan changes: action, NEVRA and the staged file's sha256.
func planKey(t *testing.T, out string) []string {
	t.Helper()
	var p upgrader.Plan
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("not a plan: %v\n%s", err, out)
	}
	var k []string
	for _, it := range p.Transaction {
		k = append(k, it.Action+" "+it.NEVRA+" "+it.SHA256)
	}
	sort.Strings(k)
	return k
}

// TestNeedsRoundTrip: two isolated hosts whose package sets differ export
// their needs; one bundle holds each package once, signed; both hosts
// prepare from it exactly the plans dnf gives them online.
func TestNeedsRoundTrip(t *testing.T) {
	a, b := newCLIRoot(t), newCLIRoot(t)
	testenv.RequireTools(t, "gpg", "createrepo_c")
	// Host b: another machine, with a kernel, without keepme.
	kernel, err := b.set.Packages(fixture.Repo58Kernel)
	if err != nil {
		t.Fatal(err)
	}
	db := []string{"--root", b.root, "--dbpath", fixture.DBPath}
	testenv.Run(t, "rpm", append(append(db, "-i", "--force-debian", "--define", "_pkgverify_level signature"), kernel...)...)
	testenv.Run(t, "rpm", append(db, "-e", "--nodeps", "keepme")...)
	os.Chmod(filepath.Join(b.root, "etc/machine-id"), 0o644)
	if err := os.WriteFile(filepath.Join(b.root, "etc/machine-id"), []byte("0123456789abcdef0123456789abcdef\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	repoArgs := []string{"--repo", "kos=" + a.set.Repos[fixture.Repo59], "--repo", "kernel=" + a.set.Repos[fixture.Repo59Kernel]}

	// The isolated halves: needs files.
	var needs []string
	for i, h := range []*cliRoot{a, b} {
		p := filepath.Join(dir, []string{"a.json", "b.json"}[i])
		if out, errOut, code := h.run("prepare", "--to", "5.9", "--export-needs", p); code != 0 {
			t.Fatalf("--export-needs: exit %d\n%s\n%s", code, out, errOut)
		}
		n, err := bundle.ReadNeeds(p)
		if err != nil {
			t.Fatal(err)
		}
		if n.Target != "5.9" || n.Release.VersionID != "5.8" || len(n.Installed) < 5 || !reflect.DeepEqual(n.Repos, []string{"kos"}) {
			t.Errorf("needs %s: %+v", p, n)
		}
		needs = append(needs, "--needs", p)
	}

	// The connected half: one signed bundle.
	gpgHome := filepath.Join(dir, "gnupg")
	os.Mkdir(gpgHome, 0o700)
	testenv.Run(t, "gpg", "--homedir", gpgHome, "--batch", "--pinentry-mode", "loopback", "--passphrase", "", "--import", a.set.SecretKeyFile)
	image := filepath.Join(dir, "kos-5.9-bundle.iso")
	args := append(append(append([]string{"--json", "bundle"}, needs...), repoArgs...),
		"--out", image, "--sign-key", fixture.KOSKeyUID, "--gpg-homedir", gpgHome)
	out, errOut, code := a.run(args...)
	if code != 0 {
		t.Fatalf("bundle: exit %d\n%s\n%s", code, out, errOut)
	}
	var m bundle.Manifest
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("bundle --json: %v\n%s", err, out)
	}
	im, err := iso.Open(image)
	if err != nil {
		t.Fatal(err)
	}
	onImage, err := bundle.ReadManifest(im, true)
	if err != nil {
		t.Fatal(err)
	}
	sig, _ := im.ReadFile("manifest.json.asc", 1<<20)
	repomd, _ := im.ReadFile("repodata/repomd.xml", 1<<20)
	repomdSig, _ := im.ReadFile("repodata/repomd.xml.asc", 1<<20)
	manifest, _ := im.ReadFile("manifest.json", 1<<20)
	im.Close()
	if len(onImage.Packages) != len(m.Packages) || len(m.Hosts) != 2 {
		t.Fatalf("manifest on the image %+v, printed %+v", onImage, m)
	}
	perHost := 0
	for _, h := range m.Hosts {
		perHost += len(h.Packages)
	}
	if len(m.Packages) >= perHost || m.BundleSize >= m.HostsDownload {
		t.Errorf("bundle holds %d packages (%d bytes) for %d per-host packages (%d bytes): shared ones twice?",
			len(m.Packages), m.BundleSize, perHost, m.HostsDownload)
	}
	t.Logf("bundle: %d packages, %d bytes; hosts one by one: %d packages, %d bytes", len(m.Packages), m.BundleSize, perHost, m.HostsDownload)
	kernels := 0
	for _, p := range m.Packages {
		if !strings.HasPrefix(p.NEVRA, "kernel-") {
			continue
		}
		kernels++
		if !reflect.DeepEqual(hostsNeeding(m, p.NEVRA), []string{"0123456789abcdef0123456789abcdef"}) {
			t.Errorf("%s is needed by %v, want host b only", p.NEVRA, hostsNeeding(m, p.NEVRA))
		}
	}
	if kernels != 1 {
		t.Errorf("the bundle holds %d kernels, want the one host b needs", kernels)
	}
	// The signatures verify with the public key.
	verify := filepath.Join(dir, "verify")
	os.Mkdir(verify, 0o700)
	testenv.Run(t, "gpg", "--homedir", verify, "--batch", "--import", a.set.KeyFile)
	for name, pair := range map[string][2][]byte{"manifest.json": {manifest, sig}, "repomd.xml": {repomd, repomdSig}} {
		data, asc := filepath.Join(dir, name), filepath.Join(dir, name+".asc")
		os.WriteFile(data, pair[0], 0o644)
		os.WriteFile(asc, pair[1], 0o644)
		testenv.Run(t, "gpg", "--homedir", verify, "--batch", "--verify", asc, data)
	}

	// The target repositories from a release image instead: the same
	// packages, unsigned this time.
	dvd := filepath.Join(dir, "dvd.iso")
	if err := fixture.MakeISO(context.Background(), dvd, fixture.ISOOptions{Label: "KOS-5.9", Release: "5.9",
		Dirs: map[string]string{"BaseOS": a.set.Repos[fixture.Repo59], "Kernel": a.set.Repos[fixture.Repo59Kernel]}}); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = a.run(append(append([]string{"--json", "bundle"}, needs...), "--iso", dvd, "--out", filepath.Join(dir, "from-dvd.iso"))...)
	if code != 0 {
		t.Fatalf("bundle --iso: exit %d\n%s\n%s", code, out, errOut)
	}
	var fromDVD bundle.Manifest
	if err := json.Unmarshal([]byte(out), &fromDVD); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(fromDVD.Packages, m.Packages) || fromDVD.Signed != "" {
		t.Errorf("bundle from the image: %+v\nwant the packages %+v", fromDVD.Packages, m.Packages)
	}

	// Back on each host: the plan from the bundle is the plan online.
	for _, h := range []*cliRoot{a, b} {
		out, errOut, code := h.run(append([]string{"--json", "prepare", "--to", "5.9", "--snapshot", "none"}, repoArgs...)...)
		if code != 0 {
			t.Fatalf("prepare online: exit %d\n%s", code, errOut)
		}
		online := planKey(t, out)
		if _, errOut, code := h.run("cancel"); code != 0 {
			t.Fatalf("cancel: %s", errOut)
		}
		out, errOut, code = h.run("--json", "prepare", "--iso", image, "--snapshot", "none")
		if code != 0 {
			t.Fatalf("prepare --iso bundle: exit %d\n%s", code, errOut)
		}
		if got := planKey(t, out); !reflect.DeepEqual(got, online) {
			t.Errorf("host %s: plan from the bundle differs from the plan online:\n got %v\nwant %v", h.root, got, online)
		}
	}
}

func hostsNeeding(m bundle.Manifest, nevra string) []string {
	var out []string
	for _, h := range m.Hosts {
		for _, p := range h.Packages {
			if p == nevra {
				out = append(out, h.MachineID)
			}
		}
	}
	return out
}
