package upgrader_test

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/bundle"
	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// The --iso benchmark's shape: an image of isoBenchImage bytes holding a
// repository of isoBenchTotal bench packages (and the fixture 5.9
// repository), of which a host with isoBenchNeeded of them installed needs
// those.
const (
	isoBenchTotal  = 2000
	isoBenchNeeded = 200
	isoBenchImage  = 2 << 30
)

// BenchmarkPrepareISO measures, on a fixture 5.8 system (a plain directory,
// --snapshot none: prepare only) with isoBenchNeeded bench-NNNN v1 packages
// installed:
//
//   - dir-s: prepare from the fixture 5.9 and bench v2 repositories on disk
//     (file://);
//
//   - iso-s: prepare from a 2 GiB image holding the same two repositories
//     (and a filler, images/install.img, as a release DVD has), read in
//     place; iso/dir is the ratio (target <= 1.2);
//
//   - iso-read-MiB: bytes this process read while preparing from the image
//     (/proc/self/io rchar: the image server is in-process; the helpers are
//     children and read nothing of the image), against dir-read-MiB (the
//     same count for the prepare from the directories: what the process
//     reads anyway, the assessment's facts, the helpers' output), image-MiB
//     and needed-MiB (the packages the plan stages);
//
//   - bundle: two hosts whose bench packages overlap by half
//     (1..200 and 101..300): bundle-MiB against hosts-MiB, the sum of their
//     own downloads.
//
//     go test -run '^$' -bench BenchmarkPrepareISO -benchtime 1x ./upgrader
func BenchmarkPrepareISO(b *testing.B) {
	if testing.Short() {
		b.Skip("skipping real-component benchmark in -short mode")
	}
	testenv.RequireRoot(b)
	testenv.RequireTools(b, "rpm", "rpmkeys", "createrepo_c", "xorriso", "truncate", sysroot.Python())
	ctx := context.Background()
	set := fixture.MustBuild(b)
	v1, v2, _, err := fixture.BenchRepos(ctx, isoBenchTotal)
	if err != nil {
		b.Fatal(err)
	}
	v1Pkgs, err := filepath.Glob(filepath.Join(v1, "Packages", "*.rpm"))
	if err != nil || len(v1Pkgs) != isoBenchTotal {
		b.Fatalf("bench v1 repo has %d packages, want %d (%v)", len(v1Pkgs), isoBenchTotal, err)
	}
	sort.Strings(v1Pkgs)

	// The image: the two repositories and a filler up to 2 GiB.
	dir := b.TempDir()
	fillerDir := filepath.Join(dir, "images")
	os.Mkdir(fillerDir, 0o755)
	used := dirSize(b, set.Repos[fixture.Repo59]) + dirSize(b, v2)
	testenv.Run(b, "truncate", "-s", strconv.FormatInt(isoBenchImage-used-4<<20, 10), filepath.Join(fillerDir, "install.img"))
	image := filepath.Join(dir, "KOS-5.9-x86_64-dvd.iso")
	t0 := time.Now()
	if err := fixture.MakeISO(ctx, image, fixture.ISOOptions{Label: "KOS-5.9-x86_64", Release: "5.9",
		Dirs: map[string]string{"BaseOS": set.Repos[fixture.Repo59], "bench": v2, "images": fillerDir}}); err != nil {
		b.Fatal(err)
	}
	os.Remove(filepath.Join(fillerDir, "install.img"))
	st, _ := os.Stat(image)
	b.Logf("image: %d MiB, made in %s", st.Size()>>20, time.Since(t0).Round(time.Second))

	root := benchHost(b, set, v1Pkgs[:isoBenchNeeded])
	r, err := sysroot.New(root)
	if err != nil {
		b.Fatal(err)
	}
	eng := upgrader.New(r, nil, nil)
	dirRepos := []pkgmgr.Repo{
		{ID: "fixture-5.9", BaseURL: "file://" + set.Repos[fixture.Repo59]},
		{ID: "bench-v2", BaseURL: "file://" + v2},
	}
	var dirT, isoT time.Duration
	var read, dirRead, needed int64
	var prevDir, prevISO float64
	for i := 0; i < b.N; i++ {
		r0 := rchar(b)
		t0 := time.Now()
		p, err := eng.Prepare(ctx, upgrader.PrepareOptions{To: "5.9", Snapshot: "none", Repos: dirRepos})
		dirT += time.Since(t0)
		dirRead += rchar(b) - r0
		if err != nil {
			b.Fatalf("prepare from the directories: %v", err)
		}
		dirPlan := benchPlanKey(p)
		if err := eng.Cancel(ctx); err != nil {
			b.Fatal(err)
		}
		r0 = rchar(b)
		t0 = time.Now()
		p, err = eng.Prepare(ctx, upgrader.PrepareOptions{Snapshot: "none", Images: []string{image}})
		isoT += time.Since(t0)
		read += rchar(b) - r0
		if err != nil {
			b.Fatalf("prepare from the image: %v", err)
		}
		if got := benchPlanKey(p); strings.Join(got, "\n") != strings.Join(dirPlan, "\n") {
			b.Fatalf("the plans differ: %d items from the image, %d from the directories", len(got), len(dirPlan))
		}
		needed = p.DownloadSize
		b.Logf("run %d: dir %.2fs, iso %.2fs", i+1, dirT.Seconds()-prevDir, isoT.Seconds()-prevISO)
		prevDir, prevISO = dirT.Seconds(), isoT.Seconds()
		if err := eng.Cancel(ctx); err != nil {
			b.Fatal(err)
		}
	}
	n := float64(b.N)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(dirT.Seconds()/n, "dir-s")
	b.ReportMetric(isoT.Seconds()/n, "iso-s")
	b.ReportMetric(isoT.Seconds()/dirT.Seconds(), "iso/dir")
	b.ReportMetric(float64(read)/n/(1<<20), "iso-read-MiB")
	b.ReportMetric(float64(dirRead)/n/(1<<20), "dir-read-MiB")
	b.ReportMetric(float64(read-dirRead)/n/(1<<20), "image-read-MiB") // what the image added
	b.ReportMetric(float64(st.Size())/(1<<20), "image-MiB")
	b.ReportMetric(float64(needed)/(1<<20), "needed-MiB")
	if r := isoT.Seconds() / dirT.Seconds(); r > 1.2 {
		b.Logf("iso/dir = %.2f is above the 1.2 target", r)
	}

	// The bundle for two hosts whose needs overlap by half.
	other := benchHost(b, set, v1Pkgs[isoBenchNeeded/2:isoBenchNeeded/2+isoBenchNeeded])
	var needs []*bundle.Needs
	for i, h := range []string{root, other} {
		r, _ := sysroot.New(h)
		e := upgrader.New(r, nil, nil)
		if i == 1 {
			os.WriteFile(filepath.Join(h, "etc/machine-id"), []byte("0123456789abcdef0123456789abcdef\n"), 0o444)
		}
		nd, err := e.ExportNeeds(ctx, "5.9", filepath.Join(dir, "needs-"+strconv.Itoa(i)+".json"))
		if err != nil {
			b.Fatal(err)
		}
		needs = append(needs, nd)
	}
	t0 = time.Now()
	m, err := bundle.Build(ctx, bundle.Options{Needs: needs, Repos: dirRepos, Out: filepath.Join(dir, "bundle.iso"),
		Label: "KOS-5.9-BUNDLE", WorkDir: dir, PM: pkgmgr.NewDNF(nil)})
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("bundle: %d packages for %d hosts in %s", len(m.Packages), len(m.Hosts), time.Since(t0).Round(time.Second))
	b.ReportMetric(float64(m.BundleSize)/(1<<20), "bundle-MiB")
	b.ReportMetric(float64(m.HostsDownload)/(1<<20), "hosts-MiB")
	b.ReportMetric(float64(m.BundleSize)/float64(m.HostsDownload), "bundle/hosts")
}

// benchHost installs the fixture 5.8 system and pkgs into a new directory.
func benchHost(b *testing.B, set *fixture.Set, pkgs []string) string {
	root := filepath.Join(b.TempDir(), "root")
	os.Mkdir(root, 0o755)
	if err := fixture.InstallBase(context.Background(), set, root); err != nil {
		b.Fatal(err)
	}
	benchRPM(b, root, append([]string{"-i"}, pkgs...)...)
	return root
}

func benchPlanKey(p *upgrader.Plan) []string {
	var k []string
	for _, it := range p.Transaction {
		k = append(k, it.Action+" "+it.NEVRA+" "+it.SHA256)
	}
	sort.Strings(k)
	return k
}

func dirSize(b *testing.B, dir string) int64 {
	var n int64
	err := filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// rchar is the bytes this process has read so far (read syscalls, page
// cache included).
func rchar(b *testing.B) int64 {
	f, err := os.Open("/proc/self/io")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "rchar: "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	b.Fatal("no rchar in /proc/self/io")
	return 0
}
