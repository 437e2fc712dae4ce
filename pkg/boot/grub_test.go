package boot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// fakeSys builds a mount table with "/" on fstype from device maj:min and a
// sysfs where that device is the given kernel name (sda1, dm-0, md127).
func fakeSys(t *testing.T, fstype string, maj, min int, kname, dmUUID string) EnvCheck {
	t.Helper()
	dir := t.TempDir()
	mi := filepath.Join(dir, "mountinfo")
	line := fmt.Sprintf("1 0 %d:%d / / rw,relatime shared:1 - %s /dev/%s rw\n", maj, min, fstype, kname)
	if err := os.WriteFile(mi, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	sys := filepath.Join(dir, "sys")
	parent := "devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda"
	if strings.HasPrefix(kname, "dm-") || strings.HasPrefix(kname, "md") {
		parent = "devices/virtual/block"
	}
	target := filepath.Join(sys, parent, kname)
	os.MkdirAll(filepath.Join(target, "dm"), 0o755)
	if dmUUID != "" {
		os.WriteFile(filepath.Join(target, "dm/uuid"), []byte(dmUUID+"\n"), 0o644)
	}
	os.MkdirAll(filepath.Join(sys, "dev/block"), 0o755)
	if err := os.Symlink(filepath.Join("../..", parent, kname), filepath.Join(sys, "dev/block", fmt.Sprintf("%d:%d", maj, min))); err != nil {
		t.Fatal(err)
	}
	return EnvCheck{MountInfo: mi, SysDir: sys}
}

func TestCheckEnvWritable(t *testing.T) {
	tests := []struct {
		name, fstype, kname, uuid string
		maj, min                  int
		unsafe                    string
	}{
		{name: "ext4 on a partition", fstype: "ext4", kname: "sda1", maj: 8, min: 1},
		{name: "xfs on a partition", fstype: "xfs", kname: "sda2", maj: 8, min: 2},
		{name: "vfat ESP", fstype: "vfat", kname: "sda1", maj: 8, min: 1},
		{name: "btrfs", fstype: "btrfs", kname: "sda3", maj: 8, min: 3, unsafe: "btrfs"},
		{name: "zfs", fstype: "zfs", kname: "sda3", maj: 8, min: 3, unsafe: "zfs"},
		{name: "xfs on LVM", fstype: "xfs", kname: "dm-0", uuid: "LVM-abcdef", maj: 253, min: 0, unsafe: "LVM"},
		{name: "ext4 on dm-crypt", fstype: "ext4", kname: "dm-1", uuid: "CRYPT-LUKS2-abc", maj: 253, min: 1, unsafe: "dm-crypt"},
		{name: "ext4 on other device-mapper", fstype: "ext4", kname: "dm-2", maj: 253, min: 2, unsafe: "device-mapper"},
		{name: "ext4 on MD RAID", fstype: "ext4", kname: "md127", maj: 9, min: 127, unsafe: "MD RAID"},
		{name: "tmpfs (tests) is not judged", fstype: "tmpfs", kname: "tmpfs", maj: 0, min: 40},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := fakeSys(t, tt.fstype, tt.maj, tt.min, tt.kname, tt.uuid)
			err := c.CheckEnvWritable(filepath.Join(t.TempDir(), "grubenv"))
			if tt.unsafe == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrUnsafeEnv) || !strings.Contains(err.Error(), tt.unsafe) {
				t.Fatalf("err = %v, want ErrUnsafeEnv mentioning %q", err, tt.unsafe)
			}
		})
	}
}

// grubRoot makes a system root with grub2 BLS: entries old and other,
// saved_entry=old, and grub.cfg with or without the trial logic.
func grubRoot(t *testing.T, trialCfg bool) (*Grub, sysroot.Root) {
	t.Helper()
	root, _ := sysroot.New(t.TempDir())
	g2 := root.Path("/boot/grub2")
	os.MkdirAll(g2, 0o755)
	cfg := "set default=\"${saved_entry}\"\n"
	if trialCfg {
		cfg += GrubTrialConfig
	}
	os.WriteFile(filepath.Join(g2, "grub.cfg"), []byte(cfg), 0o644)
	env := NewEnv()
	env.Set(EnvSavedEntry, "old")
	env.Set(EnvKernelOpts, "root=/dev/mapper/vg-root ro rd.lvm.lv=vg/root")
	env.Set("boot_success", "1")
	if err := WriteEnv(filepath.Join(g2, "grubenv"), env); err != nil {
		t.Fatal(err)
	}
	dir := root.Path("/boot/loader/entries")
	for _, id := range []string{"old", "other"} {
		e, _ := ParseEntry(id, []byte("title "+id+"\nversion 1\nlinux /vmlinuz-"+id+"\noptions $kernelopts\n"))
		if err := WriteEntry(dir, e); err != nil {
			t.Fatal(err)
		}
	}
	bl, err := Detect(root)
	if err != nil {
		t.Fatal(err)
	}
	g, ok := bl.(*Grub)
	if !ok {
		t.Fatalf("Detect gave %s", bl.Kind())
	}
	g.Check = fakeSys(t, "ext4", 8, 1, "sda1", "")
	return g, root
}

// grubBoot models what grub does with grubenv at boot: 00_header
// (next_entry / saved_entry), then kos-upgrade-trial.cfg when installed.
// It returns the entry booted and updates the file as save_env would.
func grubBoot(t *testing.T, g *Grub, trialCfg bool) string {
	t.Helper()
	env, err := g.Env()
	if err != nil {
		t.Fatal(err)
	}
	var def string
	bootOnce := false
	if n := env.Value(EnvNextEntry); n != "" {
		def = n
		env.Set(EnvNextEntry, "")
		bootOnce = true
	} else {
		def = env.Value(EnvSavedEntry)
	}
	// 08_fallback_counting: with boot_counter set and boot_success=0 it
	// counts down, then boots menu entry 1 (whatever sorts second).
	if c, ok := env.Get(EnvBootCounter); ok && c != "" && env.Value(EnvBootSuccess) == "0" {
		if c == "0" || c == "-1" {
			def = "menu entry 1"
			env.Set(EnvBootCounter, "-1")
		} else {
			n, _ := strconv.Atoi(c)
			env.Set(EnvBootCounter, strconv.Itoa(n-1))
		}
	}
	if trialCfg && env.Value(EnvTrialEntry) != "" && !bootOnce {
		n, _ := strconv.Atoi(env.Value(EnvTrialTries))
		if n >= 1 && n <= 8 {
			env.Set(EnvTrialTries, strconv.Itoa(n-1))
			def = env.Value(EnvTrialEntry)
		} else {
			env.Set(EnvTrialTries, "0")
		}
	}
	env.Set(EnvBootSuccess, "0") // 10_reset_boot_success
	if err := WriteEnv(g.EnvPath(), env); err != nil {
		t.Fatal(err)
	}
	return def
}

func TestGrubTrialFallsBack(t *testing.T) {
	for _, tt := range []struct {
		name     string
		trialCfg bool
		tries    int
		want     []string // entries booted, no bless
		// boot_counter in grubenv before the trial ("": unset)
		bootCounter string
	}{
		{"stock grub.cfg: one try", false, 3, []string{"new", "old", "old"}, ""},
		{"trial cfg: 1 try", true, 1, []string{"new", "old", "old"}, ""},
		{"trial cfg: 3 tries", true, 3, []string{"new", "new", "new", "old", "old"}, ""},
		{"trial cfg: 9 tries", true, 9, []string{"new", "new", "new", "new", "new", "new", "new", "new", "new", "old"}, ""},
		// greenboot's counter, left by it: the trial sets it aside.
		{"boot_counter=0", true, 3, []string{"new", "new", "new", "old", "old"}, "0"},
		{"boot_counter=-1", true, 2, []string{"new", "new", "old"}, "-1"},
		{"boot_counter=2", true, 3, []string{"new", "new", "new", "old", "old"}, "2"},
		{"boot_counter=1, stock grub.cfg", false, 1, []string{"new", "old", "old"}, "1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			g, _ := grubRoot(t, tt.trialCfg)
			if tt.bootCounter != "" {
				env, _ := g.Env()
				env.Set(EnvBootCounter, tt.bootCounter)
				if err := WriteEnv(g.EnvPath(), env); err != nil {
					t.Fatal(err)
				}
			}
			e, _ := ParseEntry("new", []byte("title new\nlinux /vmlinuz-new\n"))
			if err := g.AddEntry(ctx, e); err != nil {
				t.Fatal(err)
			}
			if err := g.TrialBoot(ctx, "new", tt.tries); err != nil {
				t.Fatal(err)
			}
			if def, _ := g.Default(ctx); def != "old" {
				t.Errorf("default during trial = %s", def)
			}
			var got []string
			for range tt.want {
				got = append(got, grubBoot(t, g, tt.trialCfg))
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Fatalf("booted %v, want %v", got, tt.want)
			}
			st, _ := g.Trial(ctx)
			if !st.Active || st.TriesLeft != 0 || st.Fallback != "old" {
				t.Errorf("trial state after the tries: %+v", st)
			}
			if err := g.Fallback(ctx); err != nil {
				t.Fatal(err)
			}
			if err := g.Fallback(ctx); err != nil {
				t.Fatal(err)
			}
			if env, _ := g.Env(); env.Value(EnvBootCounter) != tt.bootCounter || env.Value(EnvTrialBootCounter) != "" {
				t.Errorf("boot_counter after the fallback: %v, want it back as %q", env.Map(), tt.bootCounter)
			}
			env, _ := g.Env()
			for _, k := range []string{EnvTrialEntry, EnvTrialTries, EnvTrialPrev} {
				if _, ok := env.Get(k); ok {
					t.Errorf("%s left after Fallback", k)
				}
			}
			if env.Value(EnvSavedEntry) != "old" || env.Value(EnvKernelOpts) == "" {
				t.Errorf("env after fallback: %v", env.Map())
			}
			if err := g.RemoveEntry(ctx, "new"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestGrubTrialBless(t *testing.T) {
	ctx := context.Background()
	g, _ := grubRoot(t, true)
	e, _ := ParseEntry("new", []byte("title new\nlinux /vmlinuz-new\n"))
	if err := g.AddEntry(ctx, e); err != nil {
		t.Fatal(err)
	}
	if err := g.AddEntry(ctx, e); err != nil {
		t.Fatalf("same entry again: %v", err)
	}
	e2 := e.Clone()
	e2.Set(KeyTitle, "different")
	if err := g.AddEntry(ctx, e2); !errors.Is(err, ErrExists) {
		t.Fatalf("different entry, same id: %v", err)
	}
	if err := g.TrialBoot(ctx, "new", 3); err != nil {
		t.Fatal(err)
	}
	env, _ := g.Env()
	want := map[string]string{EnvSavedEntry: "old", EnvNextEntry: "new", EnvTrialEntry: "new", EnvTrialTries: "2",
		EnvTrialPrev: "old", EnvBootSuccess: "0"}
	for k, v := range want {
		if env.Value(k) != v {
			t.Errorf("armed: %s=%q, want %q", k, env.Value(k), v)
		}
	}
	if st, _ := g.Trial(ctx); st.TriesLeft != 3 || st.Entry != "new" {
		t.Errorf("armed trial: %+v", st)
	}
	if err := g.RemoveEntry(ctx, "new"); err == nil {
		t.Error("removed the entry on trial")
	}
	if got := grubBoot(t, g, true); got != "new" {
		t.Fatalf("first boot: %s", got)
	}
	if st, _ := g.Trial(ctx); st.TriesLeft != 2 {
		t.Errorf("after the first boot: %+v", st)
	}
	if err := g.Bless(ctx, "new"); err != nil {
		t.Fatal(err)
	}
	if err := g.Bless(ctx, "new"); err != nil {
		t.Fatal(err)
	}
	env, _ = g.Env()
	if env.Value(EnvSavedEntry) != "new" || env.Value(EnvBootSuccess) != "1" || env.Value(EnvTrialEntry) != "" {
		t.Errorf("blessed: %v", env.Map())
	}
	if _, ok := env.Get(EnvNextEntry); ok {
		t.Error("next_entry left after bless")
	}
	for i := 0; i < 3; i++ {
		if got := grubBoot(t, g, true); got != "new" {
			t.Fatalf("boot %d after bless: %s", i, got)
		}
	}
	if def, _ := g.Default(ctx); def != "new" {
		t.Errorf("default = %s", def)
	}
	if err := g.RemoveEntry(ctx, "new"); err == nil {
		t.Error("removed the default")
	}
	if st, _ := g.Trial(ctx); st.Active {
		t.Errorf("trial still active: %+v", st)
	}
}

func TestGrubRefusals(t *testing.T) {
	ctx := context.Background()
	g, root := grubRoot(t, true)
	if err := g.TrialBoot(ctx, "missing", 3); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing entry: %v", err)
	}
	if err := g.TrialBoot(ctx, "other", 0); err == nil {
		t.Error("0 tries accepted")
	}
	if err := g.TrialBoot(ctx, "other", MaxTrialTries+1); err == nil {
		t.Error("too many tries accepted")
	}
	if err := g.TrialBoot(ctx, "old", 3); err == nil {
		t.Error("trial of the default accepted")
	}
	g.Check = fakeSys(t, "btrfs", 0, 31, "sda3", "")
	before, _ := os.ReadFile(g.EnvPath())
	if err := g.TrialBoot(ctx, "other", 3); !errors.Is(err, ErrUnsafeEnv) {
		t.Errorf("btrfs: %v", err)
	}
	if err := g.SetOneShot(ctx, "other"); !errors.Is(err, ErrUnsafeEnv) {
		t.Errorf("one-shot on btrfs: %v", err)
	}
	if err := g.CheckTrial(ctx); !errors.Is(err, ErrUnsafeEnv) {
		t.Errorf("CheckTrial: %v", err)
	}
	after, _ := os.ReadFile(g.EnvPath())
	if string(before) != string(after) {
		t.Error("a refused trial changed grubenv")
	}
	g.Check = fakeSys(t, "ext4", 8, 1, "sda1", "")
	os.MkdirAll(root.Path("/etc/default"), 0o755)
	os.WriteFile(root.Path("/etc/default/grub"), []byte("GRUB_TIMEOUT=5\nGRUB_DEFAULT=0\n"), 0o644)
	if err := g.TrialBoot(ctx, "other", 3); !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "GRUB_DEFAULT=0") {
		t.Errorf("GRUB_DEFAULT=0: %v", err)
	}
	os.WriteFile(root.Path("/etc/default/grub"), []byte("GRUB_DEFAULT=saved\n"), 0o644)
	if err := g.SetOneShot(ctx, "other"); err != nil {
		t.Fatal(err)
	}
	if got := grubBoot(t, g, true); got != "other" {
		t.Errorf("one-shot boot: %s", got)
	}
	if got := grubBoot(t, g, true); got != "old" {
		t.Errorf("boot after one-shot: %s", got)
	}
	if err := g.SetDefault(ctx, "other"); err != nil {
		t.Fatal(err)
	}
	if def, _ := g.Default(ctx); def != "other" {
		t.Errorf("default %s", def)
	}
	if err := g.SetDefault(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetDefault missing: %v", err)
	}
}

func TestGrubEnvSymlinkIntoESP(t *testing.T) {
	for _, tc := range []struct{ name, link string }{
		// EL8 UEFI (grub.macros): ln -sf ../efi/EFI/<vendor>/grubenv /boot/grub2/grubenv
		{"relative, as EL8 ships it", "../efi/EFI/redhat/grubenv"},
		// An absolute link (made by hand) must resolve inside the root too.
		{"absolute", "/boot/efi/EFI/redhat/grubenv"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root, _ := sysroot.New(t.TempDir())
			os.MkdirAll(root.Path("/boot/efi/EFI/redhat"), 0o755)
			os.MkdirAll(root.Path("/boot/grub2"), 0o755)
			os.MkdirAll(root.Path("/boot/loader/entries"), 0o755)
			env := NewEnv()
			env.Set(EnvSavedEntry, "x")
			WriteEnv(root.Path("/boot/efi/EFI/redhat/grubenv"), env)
			os.Symlink(tc.link, root.Path("/boot/grub2/grubenv"))
			g, err := NewGrub(root)
			if err != nil {
				t.Fatal(err)
			}
			if g.EnvPath() != root.Path("/boot/efi/EFI/redhat/grubenv") {
				t.Errorf("env path %s", g.EnvPath())
			}
			if fi, err := os.Lstat(root.Path("/boot/grub2/grubenv")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
				t.Error("link replaced")
			}
		})
	}
}

func TestDetect(t *testing.T) {
	root, _ := sysroot.New(t.TempDir())
	if _, err := Detect(root); !errors.Is(err, ErrNotSupported) {
		t.Errorf("empty root: %v", err)
	}
	os.MkdirAll(root.Path("/boot/grub"), 0o755)
	os.WriteFile(root.Path("/boot/grub/grub.cfg"), []byte("menuentry x {}\n"), 0o644)
	if _, err := Detect(root); !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "no grub2 with BLS") {
		t.Errorf("grub without BLS: %v", err)
	}
	os.MkdirAll(root.Path("/efi/EFI/systemd"), 0o755)
	os.WriteFile(root.Path("/efi/EFI/systemd/systemd-bootx64.efi"), []byte("MZ"), 0o644)
	bl, err := Detect(root)
	if err != nil || bl.Kind() != KindSystemdBoot || bl.EntriesDir() != root.Path("/efi/loader/entries") {
		t.Fatalf("systemd-boot: %v %v", bl, err)
	}
	os.MkdirAll(root.Path("/boot/loader/entries"), 0o755)
	bl, err = Detect(root)
	if err != nil || bl.Kind() != KindGrub2BLS {
		t.Fatalf("grub2 BLS wins: %v %v", bl, err)
	}
	os.RemoveAll(root.Path("/boot/grub"))
	bl, err = Detect(root)
	if err != nil || bl.Kind() != KindSystemdBoot || bl.EntriesDir() != root.Path("/boot/loader/entries") {
		t.Fatalf("systemd-boot with XBOOTLDR /boot: %v %v", bl, err)
	}
}
