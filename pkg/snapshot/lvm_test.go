package snapshot_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// LVMDiskEnv names blank block devices the LVM tests may destroy (separated
// by spaces or commas): each test makes a volume group on one of them, and
// as many tests run in parallel as there are disks. They need
// device-mapper, which the test machines lack, so test/e2e's
// TestQemuLVMConformance runs these tests in a QEMU guest with scratch disks
// and sets it there. Unset, the tests that need it skip (a plain skip, not a
// failure under KOS_UPGRADE_REQUIRE_ALL: the QEMU test is what CI runs).
const LVMDiskEnv = "KOS_UPGRADE_LVM_TEST_DISK"

var lvmDisks struct {
	once sync.Once
	free chan int // indexes in all
	all  []string
}

// lvmDisk makes t a parallel test and gives it a scratch disk of its own
// and the name of the VG to make on it, or skips t.
func lvmDisk(t *testing.T) (disk, vg string) {
	t.Helper()
	env := os.Getenv(LVMDiskEnv)
	if env == "" {
		t.Skipf("skipping: LVM needs device-mapper and a scratch disk; set %s=/dev/<disk to destroy> (test/e2e TestQemuLVMConformance does, in a QEMU guest)", LVMDiskEnv)
	}
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "lvm", "mkfs.xfs", "mkfs.ext4", "wipefs")
	lvmDisks.once.Do(func() {
		lvmDisks.all = strings.Fields(strings.ReplaceAll(env, ",", " "))
		lvmDisks.free = make(chan int, len(lvmDisks.all))
		for i := range lvmDisks.all {
			lvmDisks.free <- i
		}
	})
	t.Parallel()
	i := <-lvmDisks.free
	t.Cleanup(func() { lvmDisks.free <- i }) // runs last: after the VG is gone
	return lvmDisks.all[i], fmt.Sprintf("kostest%d", i)
}

// lvmRoot is a root filesystem on an LV of a fresh VG on the scratch disk.
type lvmRoot struct {
	Dir string // where the root is mounted
	VG  string
	LV  string
}

// newLVMRoot makes VG kostest on the scratch disk with the root LV "root"
// (thin: a 1 GiB thin LV in a 700 MiB pool; thick: 320 MiB, the rest of the
// VG free for snapshots), fstype on it, mounted with a few files. Everything
// is removed at cleanup.
func newLVMRoot(t *testing.T, thin bool, fstype string) *lvmRoot {
	t.Helper()
	disk, vg := lvmDisk(t)
	r := &lvmRoot{Dir: filepath.Join(t.TempDir(), "sysroot"), VG: vg, LV: "root"}
	testenv.Run(t, "wipefs", "-a", disk)
	testenv.Run(t, "lvm", "pvcreate", "-ff", "-y", disk)
	testenv.Run(t, "lvm", "vgcreate", r.VG, disk)
	t.Cleanup(func() {
		// Whatever the test mounted from the VG goes first.
		if out, err := exec.Command("sh", "-c", "grep ' /dev/mapper/"+r.VG+"-' /proc/self/mounts | cut -d' ' -f2").Output(); err == nil {
			for _, p := range strings.Fields(string(out)) {
				testenv.UnmountAll(p)
			}
		}
		for _, argv := range [][]string{{"vgremove", "-ff", "-y", r.VG}, {"pvremove", "-ff", "-y", disk}} {
			if out, err := exec.Command("lvm", argv...).CombinedOutput(); err != nil {
				t.Logf("cleanup: lvm %s: %v\n%s", strings.Join(argv, " "), err, out)
			}
		}
	})
	if thin {
		testenv.Run(t, "lvm", "lvcreate", "-y", "--type", "thin-pool", "-L", "700m", "-n", "pool", r.VG)
		testenv.Run(t, "lvm", "lvcreate", "-y", "--type", "thin", "-V", "1g", "--thinpool", "pool", "-n", r.LV, r.VG)
	} else {
		testenv.Run(t, "lvm", "lvcreate", "-y", "-L", "320m", "-n", r.LV, r.VG)
	}
	dev := "/dev/" + r.VG + "/" + r.LV
	switch fstype {
	case "xfs":
		testenv.Run(t, "mkfs.xfs", "-q", "-f", dev)
	default:
		testenv.Run(t, "mkfs."+fstype, "-q", "-F", dev)
	}
	if err := os.MkdirAll(r.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "mount", dev, r.Dir)
	t.Cleanup(func() { testenv.UnmountAll(r.Dir) })
	writeTree(t, r.Dir)
	return r
}

// lvmFactory binds a new LVM backend to rootDir at each call, with one work
// directory for all of them (as successive runs would).
func lvmFactory(rootDir string) func(t *testing.T) (snapshot.Snapshotter, string) {
	var workDir string
	return func(t *testing.T) (snapshot.Snapshotter, string) {
		if workDir == "" {
			workDir = t.TempDir()
		}
		l, err := snapshot.NewLVM(context.Background(), rootDir, workDir)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		return l, rootDir
	}
}

func newLVM(t *testing.T, rootDir string) *snapshot.LVM {
	t.Helper()
	l, err := snapshot.NewLVM(context.Background(), rootDir, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// lvAttr returns lv_attr of vg/lv, "" if it does not exist.
func lvAttr(t *testing.T, vg, lv string) string {
	t.Helper()
	out, err := exec.Command("lvm", "lvs", "--all", "--noheadings", "-o", "lv_attr", vg+"/"+lv).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func TestLVMThinConformance(t *testing.T) {
	r := newLVMRoot(t, true, "xfs")
	l := newLVM(t, r.Dir)
	if !l.Thin() || l.UpgradesInPlace() || l.VG() != r.VG {
		t.Fatalf("thin root: Thin %v, UpgradesInPlace %v, VG %q", l.Thin(), l.UpgradesInPlace(), l.VG())
	}
	l.Close()
	runConformance(t, lvmFactory(r.Dir))
}

func TestLVMThickConformance(t *testing.T) {
	r := newLVMRoot(t, false, "xfs")
	l := newLVM(t, r.Dir)
	if l.Thin() || !l.UpgradesInPlace() {
		t.Fatalf("thick root: Thin %v, UpgradesInPlace %v", l.Thin(), l.UpgradesInPlace())
	}
	l.Close()
	runConformance(t, lvmFactory(r.Dir))
}

func TestLVMThinExt4Conformance(t *testing.T) {
	if os.Getenv("KOS_UPGRADE_E2E") != "full" {
		t.Skip("slow under TCG: runs with KOS_UPGRADE_E2E=full")
	}
	r := newLVMRoot(t, true, "ext4")
	runConformance(t, lvmFactory(r.Dir))
}

// Thin: the LV names and the tag Activate leaves; DefaultLV overrides the
// tag; a snapshot of an upgraded snapshot works (the second upgrade).
func TestLVMThinActivate(t *testing.T) {
	ctx := context.Background()
	r := newLVMRoot(t, true, "xfs")
	l := newLVM(t, r.Dir)
	s, err := l.Create(ctx, snapshot.LVMName("next"))
	if err != nil {
		t.Fatal(err)
	}
	if lv, _ := l.LV(s.Name); lv != "kos-upgrade-next" || lvAttr(t, r.VG, lv) == "" {
		t.Fatalf("LV(%q) = %q (attr %q)", s.Name, lv, lvAttr(t, r.VG, lv))
	}
	if attr := lvAttr(t, r.VG, "kos-upgrade-next"); attr[4] != 'a' || attr[9] == 'k' {
		t.Errorf("the thin snapshot has lv_attr %s: want active, without activation skip", attr)
	}
	if err := l.Activate(ctx, s.Name); err != nil {
		t.Fatal(err)
	}
	tags := strings.TrimSpace(testenv.Run(t, "lvm", "vgs", "--noheadings", "-o", "vg_tags", r.VG))
	if tags != snapshot.LVMDefaultTag+"kos-upgrade-next" {
		t.Errorf("VG tags %q after Activate", tags)
	}
	l.DefaultLV = func(context.Context) (string, error) { return r.LV, nil }
	if d, err := l.Default(ctx); err != nil || d.Name != r.LV {
		t.Errorf("Default() with DefaultLV = %+v, %v; want %s", d, err, r.LV)
	}
	l.DefaultLV = nil
	if d, err := l.Default(ctx); err != nil || d.Name != s.Name {
		t.Errorf("Default() = %+v, %v; want %s", d, err, s.Name)
	}
	// Boot the snapshot, as the retargeted entry would: mount it as the
	// root and snapshot it again.
	l.Close()
	next := filepath.Join(t.TempDir(), "next")
	os.MkdirAll(next, 0o755)
	testenv.Run(t, "mount", "-o", "nouuid", "/dev/"+r.VG+"/kos-upgrade-next", next)
	t.Cleanup(func() { testenv.UnmountAll(next) })
	l2 := newLVM(t, next)
	if c, err := l2.Current(ctx); err != nil || c.Name != s.Name || !c.Default {
		t.Fatalf("Current() in the booted snapshot = %+v, %v", c, err)
	}
	s2, err := l2.Create(ctx, snapshot.LVMName("again"))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(s2.Path, "etc/os-release")); !strings.Contains(string(got), "KOS") {
		t.Fatalf("second snapshot has os-release %q", got)
	}
	// The old root stays reachable (the rollback target).
	p, err := l2.Path(ctx, r.LV)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(p, "etc/os-release")); err != nil {
		t.Fatal(err)
	}
	if err := l2.Delete(ctx, r.LV); err == nil || !strings.Contains(err.Error(), "not made by kos-upgrade") {
		t.Fatalf("Delete() of the original root = %v, want a refusal", err)
	}
}

// Thick: the rollback is a deferred merge; after the origin is activated
// again (the next boot) it holds the old content.
func TestLVMThickRollback(t *testing.T) {
	ctx := context.Background()
	r := newLVMRoot(t, false, "xfs")
	l := newLVM(t, r.Dir)
	s, err := l.Create(ctx, snapshot.LVMName("before"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Path != r.Dir {
		t.Fatalf("Create().Path = %q, want the live root %q", s.Path, r.Dir)
	}
	if err := os.WriteFile(filepath.Join(r.Dir, "etc/os-release"), []byte("NAME=KOS\nVERSION_ID=5.9\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(r.Dir, "upgraded"), []byte("x"), 0o644)
	// Thin-only and wrong calls.
	if err := l.Rollback(ctx, snapshot.LVMName("missing")); !errors.Is(err, snapshot.ErrNotFound) {
		t.Errorf("Rollback(missing) = %v, want ErrNotFound", err)
	}
	if err := l.Rollback(ctx, r.LV); err == nil {
		t.Errorf("Rollback(origin) succeeded")
	}
	if err := l.Rollback(ctx, s.Name); err != nil {
		t.Fatal(err)
	}
	if err := l.Rollback(ctx, s.Name); err != nil {
		t.Fatalf("Rollback() again: %v, want nil (pending merge)", err)
	}
	if attr := lvAttr(t, r.VG, "kos-upgrade-before"); !strings.HasPrefix(attr, "S") {
		t.Fatalf("the rollback point has lv_attr %q, want a merging snapshot (S)", attr)
	}
	if err := l.Delete(ctx, s.Name); err == nil || !strings.Contains(err.Error(), "merged") {
		t.Fatalf("Delete() of a merging snapshot = %v, want a refusal", err)
	}
	// The root is still the upgraded one until the next activation.
	if got, _ := os.ReadFile(filepath.Join(r.Dir, "etc/os-release")); !strings.Contains(string(got), "5.9") {
		t.Fatalf("os-release %q before the reboot", got)
	}
	l.Close()
	// "Reboot": unmount, deactivate and activate the origin.
	testenv.UnmountAll(r.Dir)
	testenv.Run(t, "lvm", "lvchange", "-an", r.VG+"/"+r.LV)
	testenv.Run(t, "lvm", "lvchange", "-ay", r.VG+"/"+r.LV)
	deadline := time.Now().Add(2 * time.Minute)
	for lvAttr(t, r.VG, "kos-upgrade-before") != "" {
		if time.Now().After(deadline) {
			t.Fatalf("the merge did not complete: %s", testenv.Run(t, "lvm", "lvs", "-a", r.VG))
		}
		time.Sleep(time.Second)
	}
	testenv.Run(t, "mount", "/dev/"+r.VG+"/"+r.LV, r.Dir)
	if got, _ := os.ReadFile(filepath.Join(r.Dir, "etc/os-release")); string(got) != "NAME=KOS\nVERSION_ID=5.8\n" {
		t.Fatalf("os-release %q after the rollback", got)
	}
	if _, err := os.Stat(filepath.Join(r.Dir, "upgraded")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a file of the upgrade survived the rollback (stat: %v)", err)
	}
}

// Thick: a snapshot that cannot fit is refused before anything is made.
func TestLVMThickTooSmall(t *testing.T) {
	ctx := context.Background()
	r := newLVMRoot(t, false, "xfs")
	// Leave 5% of the free space: about 84 MiB.
	testenv.Run(t, "lvm", "lvcreate", "-y", "-l", "95%FREE", "-n", "filler", r.VG)
	l := newLVM(t, r.Dir)
	l.ChangeSize = 100 << 20 // 125 MiB needed
	_, err := l.Create(ctx, snapshot.LVMName("huge"))
	if !errors.Is(err, snapshot.ErrNotSupported) || !strings.Contains(err.Error(), "not enough free space in VG "+r.VG) {
		t.Fatalf("Create() = %v, want ErrNotSupported saying not enough free space", err)
	}
	t.Log(err)
	if lvAttr(t, r.VG, "kos-upgrade-huge") != "" {
		t.Fatalf("a refused Create left an LV")
	}
	// Sized from the hint: 40 MiB of change gets 50 MiB, raised to the
	// 64 MiB minimum.
	l.ChangeSize = 40 << 20
	if _, err := l.Create(ctx, snapshot.LVMName("sized")); err != nil {
		t.Fatal(err)
	}
	size := strings.TrimSpace(testenv.Run(t, "lvm", "lvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "lv_size", r.VG+"/kos-upgrade-sized"))
	if size != "67108864" {
		t.Errorf("snapshot size %s bytes, want 64 MiB", size)
	}
}

// What the root is on, when it is not an LV, is said plainly.
func TestLVMNotSupported(t *testing.T) {
	ctx := context.Background()
	t.Run("directory", func(t *testing.T) {
		_, err := snapshot.NewLVM(ctx, t.TempDir(), t.TempDir())
		if !errors.Is(err, snapshot.ErrNotSupported) {
			t.Fatalf("err = %v, want ErrNotSupported", err)
		}
		t.Log(err)
	})
	testenv.RequireRoot(t)
	t.Run("tmpfs", func(t *testing.T) {
		dir := t.TempDir()
		testenv.Run(t, "mount", "-t", "tmpfs", "kos-test", dir)
		t.Cleanup(func() { testenv.UnmountAll(dir) })
		_, err := snapshot.NewLVM(ctx, dir, t.TempDir())
		if !errors.Is(err, snapshot.ErrNotSupported) || !strings.Contains(err.Error(), "is on tmpfs") || !strings.Contains(err.Error(), "not on an LVM logical volume") {
			t.Fatalf("err = %v, want ErrNotSupported saying tmpfs, not LVM", err)
		}
		t.Log(err)
	})
	t.Run("btrfs", func(t *testing.T) {
		_, rootDir := newBtrfsRoot(t, 300)
		_, err := snapshot.NewLVM(ctx, rootDir, t.TempDir())
		if !errors.Is(err, snapshot.ErrNotSupported) || !strings.Contains(err.Error(), "btrfs backend") {
			t.Fatalf("err = %v, want ErrNotSupported pointing at btrfs", err)
		}
		t.Log(err)
	})
}
