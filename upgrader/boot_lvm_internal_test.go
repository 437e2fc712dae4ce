package upgrader

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/boot"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// fakeThinLVM is the part of the LVM backend on a thin LV that the boot
// step uses: Backend, VG and LV (the other methods are not called).
type fakeThinLVM struct {
	snapshot.Snapshotter
	vg string
}

func (f fakeThinLVM) Backend() string { return "lvm" }
func (f fakeThinLVM) VG() string      { return f.vg }
func (f fakeThinLVM) LV(name string) (string, error) {
	return (&snapshot.LVM{}).LV(name)
}

func TestRootSpecFromLVMBackend(t *testing.T) {
	// The backend knows the VG even when root= names the filesystem UUID.
	got, err := rootSpec("lvm", "kos-upgrade/1-5.9", boot.ParseOptions("root=UUID=1"), fakeThinLVM{vg: "vg-os"})
	if err != nil || got.LVMVG != "vg-os" || got.LVMLV != "kos-upgrade-1-5.9" || got.BtrfsSubvol != "" {
		t.Errorf("rootSpec = %+v, %v", got, err)
	}
	if _, err := rootSpec("lvm", "kos-upgrade/a/b", nil, fakeThinLVM{vg: "vg"}); err == nil {
		t.Error("rootSpec accepted a name that is no LV")
	}
}

// TestBootStepThinLVM runs the boot step (no new kernel: the current
// kernel with the new root) for a thin LVM snapshot against a fake /boot
// with grub2 BLS entries.
func TestBootStepThinLVM(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the boot step bind-mounts /boot into the new root")
	}
	const (
		mid   = "0123456789abcdef0123456789abcdef"
		kver  = "5.8.0-1.x86_64"
		label = "20261126T000000.000Z-5.9"
		name  = "kos-upgrade/" + label
	)
	for _, tc := range []struct {
		name, oldOpts, wantOld string
	}{
		{name: "mapper path", oldOpts: "root=/dev/mapper/vg-root ro rd.lvm.lv=vg/root rd.lvm.lv=vg/swap rhgb",
			wantOld: "root=/dev/mapper/vg-root ro rd.lvm.lv=vg/root rd.lvm.lv=vg/swap rhgb"},
		{name: "uuid pinned", oldOpts: "root=UUID=1234 ro rd.lvm.lv=vg/root rd.lvm.lv=vg/swap rhgb",
			wantOld: "root=/dev/mapper/vg-root ro rd.lvm.lv=vg/root rd.lvm.lv=vg/swap rhgb"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			bootDir := filepath.Join(root, "boot")
			old := mid + "-" + kver
			mustWrite(t, filepath.Join(bootDir, "loader/entries", old+".conf"),
				"title KOS 5.8\nversion "+kver+"\nlinux /vmlinuz-"+kver+"\ninitrd /initramfs-"+kver+".img\noptions "+tc.oldOpts+"\n")
			mustWrite(t, filepath.Join(bootDir, "vmlinuz-"+kver), "kernel\n")
			mustWrite(t, filepath.Join(bootDir, "initramfs-"+kver+".img"), "initramfs\n")
			mustWrite(t, filepath.Join(bootDir, "grub2/grub.cfg"), "load_env\nblscfg\n")
			env := boot.NewEnv()
			env.Set("saved_entry", old)
			if err := boot.WriteEnv(filepath.Join(bootDir, "grub2/grubenv"), env); err != nil {
				t.Fatal(err)
			}
			target := t.TempDir()
			mustWrite(t, filepath.Join(target, "etc/machine-id"), mid+"\n")

			e := &Engine{Root: sysroot.Root{Dir: root}}
			bl, err := boot.Detect(e.Root)
			if err != nil {
				t.Fatal(err)
			}
			state := &State{Snapshot: name, Previous: "root", Boot: &BootState{Previous: old}}
			if err := e.bootStep(context.Background(), bl, state, fakeThinLVM{vg: "vg"}, target, "5.9"); err != nil {
				t.Fatalf("bootStep: %v", err)
			}
			ne, err := boot.ReadEntry(bl.EntriesDir(), state.Boot.Entry)
			if err != nil {
				t.Fatal(err)
			}
			opts := strings.Join(ne.GetAll(boot.KeyOptions), " ")
			want := "root=/dev/mapper/" + boot.MapperName("vg", "kos-upgrade-"+label) + " ro rd.lvm.lv=vg/kos-upgrade-" + label + " rd.lvm.lv=vg/swap rhgb"
			if opts != want {
				t.Errorf("new entry options\n got %q\nwant %q", opts, want)
			}
			oe, err := boot.ReadEntry(bl.EntriesDir(), old)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(oe.GetAll(boot.KeyOptions), " "); got != tc.wantOld {
				t.Errorf("old entry options\n got %q\nwant %q", got, tc.wantOld)
			}
			if pinned := state.Boot.Pinned != ""; pinned != (tc.oldOpts != tc.wantOld) {
				t.Errorf("boot.pinned = %q", state.Boot.Pinned)
			}
		})
	}
}

func mustWrite(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
