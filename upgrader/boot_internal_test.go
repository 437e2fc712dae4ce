package upgrader

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/boot"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

func TestPinsSubvol(t *testing.T) {
	for opts, want := range map[string]bool{
		"root=UUID=1 ro rootflags=subvol=@":                true,
		"root=UUID=1 rootflags=subvolid=256,compress":      true,
		"root=UUID=1 rootflags=compress=zstd":              false,
		"root=UUID=1 ro":                                   false,
		"root=UUID=1 rootflags=subvol=@ rootflags=noatime": false, // the kernel uses the last
	} {
		if got := pinsSubvol(boot.ParseOptions(opts)); got != want {
			t.Errorf("pinsSubvol(%q) = %v", opts, got)
		}
	}
}

func TestRootSpec(t *testing.T) {
	for _, c := range []struct {
		backend, name, root string
		want                boot.RootSpec
		err                 bool
	}{
		{"btrfs", "kos-upgrade/1-5.9", "UUID=1", boot.RootSpec{BtrfsSubvol: "kos-upgrade/1-5.9"}, false},
		{"lvm", "kos-upgrade/1-5.9", "/dev/mapper/vg--os-root", boot.RootSpec{LVMVG: "vg-os", LVMLV: "kos-upgrade-1-5.9"}, false},
		{"lvm", "kos-upgrade/1-5.9", "/dev/vg0/root", boot.RootSpec{LVMVG: "vg0", LVMLV: "kos-upgrade-1-5.9"}, false},
		{"lvm", "kos-upgrade/1-5.9", "UUID=1", boot.RootSpec{}, true},
		{"none", "@", "UUID=1", boot.RootSpec{}, true},
	} {
		got, err := rootSpec(c.backend, c.name, boot.ParseOptions("root="+c.root), nil)
		if (err != nil) != c.err || !reflect.DeepEqual(got, c.want) {
			t.Errorf("rootSpec(%s, %s, %s) = %+v, %v", c.backend, c.name, c.root, got, err)
		}
	}
}

func TestTrialTries(t *testing.T) {
	for _, c := range []struct {
		conf string // "" = no file
		want int
		err  bool
	}{
		{"", boot.DefaultTrialTries, false},
		{"# comment\ntries=5\n", 5, false},
		{"tries = 1\n", 1, false},
		{"other=2\n", boot.DefaultTrialTries, false},
		{"tries=0\n", 0, true},
		{"tries=10\n", 0, true},
		{"tries=x\n", 0, true},
	} {
		dir := t.TempDir()
		if c.conf != "" {
			p := filepath.Join(dir, BootConfigRel)
			os.MkdirAll(filepath.Dir(p), 0o755)
			os.WriteFile(p, []byte(c.conf), 0o644)
		}
		got, err := trialTries(sysroot.Root{Dir: dir})
		if (err != nil) != c.err || (!c.err && got != c.want) {
			t.Errorf("%q: %d, %v", c.conf, got, err)
		}
	}
}

func TestRemoveStrayKernels(t *testing.T) {
	bootDir, backup := t.TempDir(), t.TempDir()
	write := func(rel, content string) {
		p := filepath.Join(bootDir, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(content), 0o644)
	}
	write("vmlinuz-1", "k1")
	write("initramfs-1.img", "i1")
	write("initramfs-1kdump.img", "kd")
	write("loader/entries/m-1.conf", "linux /vmlinuz-1\ninitrd /initramfs-1.img\n")
	if err := boot.Backup(t.Context(), sysroot.Root{Dir: bootDir}, bootDir, backup); err != nil {
		t.Fatal(err)
	}
	write("vmlinuz-2", "k2")       // copied, no entry: stray
	write("initramfs-2.img", "i2") // built, no entry: stray
	write("vmlinuz-3", "k3")       // named by an entry made since: kept
	write("loader/entries/m-3.conf", "linux /vmlinuz-3\n")
	if err := removeStrayKernels(bootDir, backup); err != nil {
		t.Fatal(err)
	}
	for rel, want := range map[string]bool{"vmlinuz-1": true, "initramfs-1.img": true, "initramfs-1kdump.img": true,
		"vmlinuz-2": false, "initramfs-2.img": false, "vmlinuz-3": true} {
		if _, err := os.Stat(filepath.Join(bootDir, rel)); (err == nil) != want {
			t.Errorf("%s exists = %v, want %v", rel, err == nil, want)
		}
	}
}

// addNewEntry adds the engine's entries through Bootloader.AddEntry: a new
// id is written, the same entry again is a no-op, an earlier attempt's
// entry of the same id is replaced, and the default is never touched.
func TestAddNewEntry(t *testing.T) {
	ctx := context.Background()
	root, _ := sysroot.New(t.TempDir())
	g2 := root.Path("/boot/grub2")
	if err := os.MkdirAll(root.Path("/boot/loader/entries"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(g2, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(g2, "grub.cfg"), []byte("set default=\"${saved_entry}\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	env := boot.NewEnv()
	env.Set(boot.EnvSavedEntry, "old")
	if err := boot.WriteEnv(filepath.Join(g2, "grubenv"), env); err != nil {
		t.Fatal(err)
	}
	bl, err := boot.NewGrub(root)
	if err != nil {
		t.Fatal(err)
	}
	entry := func(id, title string) *boot.Entry {
		e, err := boot.ParseEntry(id, []byte("title "+title+"\nversion 1\nlinux /vmlinuz-1\noptions root=/dev/sda1 ro\n"))
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	if err := bl.AddEntry(ctx, entry("old", "old")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, id, title string
		wantErr         bool
	}{
		{name: "new", id: "kos-new", title: "first"},
		{name: "the same again", id: "kos-new", title: "first"},
		{name: "an earlier attempt's replaced", id: "kos-new", title: "second"},
		{name: "never the default", id: "old", title: "changed", wantErr: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := addNewEntry(ctx, bl, entry(c.id, c.title), "old")
			if (err != nil) != c.wantErr {
				t.Fatalf("addNewEntry: %v, want error %v", err, c.wantErr)
			}
			got, err := boot.ReadEntry(bl.EntriesDir(), c.id)
			if err != nil {
				t.Fatal(err)
			}
			want := c.title
			if c.wantErr {
				want = "old"
			}
			if got.Title() != want {
				t.Errorf("entry %s has title %q, want %q", c.id, got.Title(), want)
			}
		})
	}
	if def, err := bl.Default(ctx); err != nil || def != "old" {
		t.Errorf("default %q, %v; want old", def, err)
	}
}
