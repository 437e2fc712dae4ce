package upgrader_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/boot"
	"github.com/keyarchos/kos-upgrade/test/el8"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// el8Vendor is the ESP directory of the EL8 layout (EFI/<vendor>).
const el8Vendor = "kos"

// el8System is a bootSystem laid out as an EL8 UEFI server with EL8's own
// boot tools (fixture.RepoEL8): grubenv on the ESP (EFI/kos/grubenv,
// /boot/grub2/grubenv -> ../efi/EFI/kos/grubenv), kernelopts in it, and
// kernel-core 5.8.0 installed by rpm, whose %posttrans ran kernel-install
// with EL8's 20-grub.install (built grub2-editenv, UPDATEDEFAULT=yes): its
// entry <machine-id>-<kver> with `options $kernelopts` is the default.
type el8System struct {
	*bootSystem
	Grub *el8.Grub2
	ESP  string // <root>/boot/efi/EFI/kos
}

// newEL8System builds it. bootCounter, when not empty, is set in grubenv
// as greenboot (08_fallback_counting's user) leaves it.
func newEL8System(t *testing.T, bootCounter string) *el8System {
	t.Helper()
	s := newSystem(t)
	testenv.RequireTools(t, "mkfs.ext4", "losetup", "blkid")
	grub := el8.MustGrub2(t)
	fixture.MustBuildEL8(t, s.Set)
	b := &bootSystem{system: s, Boot: filepath.Join(s.Root, "boot"), OldEntry: fixture.MachineID + "-" + fixture.EL8Kernel58}
	mountBoot(t, b)
	testenv.Run(t, "mount", "--make-shared", b.Boot)
	mountESP(t, filepath.Join(b.Boot, "efi"))
	esp := filepath.Join(b.Boot, "efi/EFI", el8Vendor)
	if err := os.MkdirAll(esp, 0o700); err != nil {
		t.Fatal(err)
	}
	b.EnvPath = filepath.Join(esp, "grubenv")
	editenv := grub.Tool("grub2-editenv")
	testenv.Run(t, editenv, b.EnvPath, "create")
	testenv.Run(t, editenv, b.EnvPath, "set", "kernelopts=root=UUID="+b.UUID+" ro rootflags=subvol=@ console=ttyS0")
	if bootCounter != "" {
		testenv.Run(t, editenv, b.EnvPath, "set", "boot_counter="+bootCounter, "boot_success=0")
	}
	if err := os.MkdirAll(filepath.Join(b.Boot, "grub2"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../efi/EFI/"+el8Vendor+"/grubenv", filepath.Join(b.Boot, "grub2/grubenv")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(esp, "grub.cfg"), "load_env\nblscfg\n### BEGIN /etc/grub.d/09_kos_upgrade_trial ###\n"+boot.GrubTrialConfig, 0o600)
	if err := os.MkdirAll(filepath.Join(b.Boot, "loader/entries"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := fixture.InstallEL8(context.Background(), s.Set, s.Root); err != nil {
		t.Fatal(err)
	}
	// What kernel-install did with EL8's plugins.
	e := b.entry(t, b.OldEntry)
	if strings.Join(e.GetAll(boot.KeyOptions), " ") != "$kernelopts" || e.Linux() != "/vmlinuz-"+fixture.EL8Kernel58 {
		t.Fatalf("kernel-install's entry of kernel-core 5.8.0:\n%s", e.Format())
	}
	for _, f := range []string{"vmlinuz-", "initramfs-"} {
		p := filepath.Join(b.Boot, f+fixture.EL8Kernel58)
		if f == "initramfs-" {
			p += ".img"
		}
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("kernel-install did not install %s: %v", p, err)
		}
	}
	if env := b.env(t); env.Value("saved_entry") != b.OldEntry {
		t.Fatalf("20-grub.install (UPDATEDEFAULT=yes) did not make the kernel the default: %v", env.Map())
	}
	return &el8System{bootSystem: b, Grub: grub, ESP: esp}
}

// mountESP mounts a filesystem of its own at dir, shared like every mount
// under systemd, as EL8 mounts its ESP at /boot/efi (a tmpfs: this
// machine's kernel has no vfat; the QEMU tier has the real FAT ESP).
func mountESP(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "mount", "-t", "tmpfs", "-o", "mode=0700,size=64m", "kosesp", dir)
	t.Cleanup(func() { testenv.UnmountAll(dir) })
	testenv.Run(t, "mount", "--make-shared", dir)
}

// editenvList is `grub2-editenv list` of the system's grubenv, by EL8's
// own grub2-editenv, through the /boot/grub2/grubenv link.
func (s *el8System) editenvList(t *testing.T) string {
	t.Helper()
	return testenv.Run(t, s.Grub.Tool("grub2-editenv"), filepath.Join(s.Boot, "grub2/grubenv"), "list")
}

// A kernel upgrade through kernel-core's own %posttrans: kernel-install
// writes the new kernel's entry and 20-grub.install (UPDATEDEFAULT=yes)
// moves saved_entry to it, on the real /boot, during the transaction.
// The trial must still fall back to the entry that was the default before
// the upgrade (it was refused as "the default already" before kos-upgrade
// owned saved_entry), bless makes the new entry the default, and rollback
// gives /boot back as it was. With greenboot's boot_counter set, the trial
// sets it aside (08_fallback_counting would pick menu entry 1 over the
// trial and the fallback); bless ends the count, a fallback puts it back.
func TestEL8KernelUpgradeOwnsSavedEntry(t *testing.T) {
	for _, tc := range []struct {
		name        string
		bootCounter string
		bless       bool
	}{
		{name: "trial, bless, rollback", bless: true},
		{name: "boot_counter set, bless", bootCounter: "0", bless: true},
		{name: "boot_counter set, fallback", bootCounter: "2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newEL8System(t, tc.bootCounter)
			ctx := context.Background()
			before := s.digest(t)
			s.prepareAndArm(t, upgrader.PrepareOptions{Repos: s.repos(fixture.Repo59, fixture.Repo59EL8Kernel)})
			res, err := s.Engin.Apply(ctx)
			if err != nil {
				t.Fatalf("apply: %v", err)
			}
			snap := res.Result.Snapshot
			newID := fixture.MachineID + "-" + fixture.EL8Kernel59

			// kernel-install's entry of the new kernel, retargeted.
			ne := s.entry(t, newID)
			if rf, _ := ne.Options().Get("rootflags"); rf != "subvol="+snap {
				t.Errorf("new entry does not boot %s:\n%s", snap, ne.Format())
			}
			if ne.Linux() != "/vmlinuz-"+fixture.EL8Kernel59 || strings.Join(ne.Initrds(), " ") != "/initramfs-"+fixture.EL8Kernel59+".img" {
				t.Errorf("new entry:\n%s", ne.Format())
			}
			if ird, _ := os.ReadFile(filepath.Join(s.Boot, "initramfs-"+fixture.EL8Kernel59+".img")); !strings.Contains(string(ird), "initramfs of "+fixture.EL8Kernel59) {
				t.Errorf("initramfs of the new kernel: %q", ird)
			}
			if old := s.entry(t, s.OldEntry); strings.Join(old.GetAll(boot.KeyOptions), " ") != "$kernelopts" {
				t.Errorf("old entry changed:\n%s", old.Format())
			}
			// grubenv, as EL8's grub2-editenv reads it: the old entry is
			// the default, the new one on trial.
			list := s.editenvList(t)
			want := []string{"saved_entry=" + s.OldEntry, "next_entry=" + newID, "kos_upgrade_trial=" + newID, "kos_upgrade_tries=2", "boot_success=0"}
			if tc.bootCounter != "" {
				want = append(want, "kos_upgrade_boot_counter="+tc.bootCounter)
				if strings.Contains(list, "boot_counter="+tc.bootCounter+"\n") && !strings.Contains(list, "kos_upgrade_boot_counter="+tc.bootCounter+"\n") {
					t.Errorf("boot_counter still set during the trial:\n%s", list)
				}
			}
			for _, l := range want {
				if !strings.Contains(list, l+"\n") {
					t.Errorf("grub2-editenv list lacks %s:\n%s", l, list)
				}
			}
			if strings.Contains(list, "\nboot_counter=") || strings.HasPrefix(list, "boot_counter=") {
				t.Errorf("boot_counter set during the trial (08_fallback_counting would pick entry 1):\n%s", list)
			}
			st := s.statusJSON(t)
			if bs := st.State.Boot; bs == nil || bs.Entry != newID || bs.Previous != s.OldEntry || bs.Trial != upgrader.TrialArmed {
				t.Errorf("state.boot: %+v", st.State.Boot)
			}
			said := false
			for _, e := range s.Sink.events {
				said = said || strings.Contains(e.Message, "the transaction changed the default boot entry to "+newID)
			}
			if !said {
				t.Errorf("apply did not say that the transaction moved the default")
			}

			if !tc.bless {
				// grub spent the tries: the old entry boots, unblessed.
				testenv.Run(t, s.Grub.Tool("grub2-editenv"), s.EnvPath, "unset", "next_entry")
				testenv.Run(t, s.Grub.Tool("grub2-editenv"), s.EnvPath, "set", "kos_upgrade_tries=0")
				h, err := s.Engin.Health(ctx, upgrader.HealthOptions{Cmdline: cmdline(s.entry(t, s.OldEntry))})
				if err != nil || h.Action != upgrader.HealthFellBack {
					t.Fatalf("health on the old entry after the tries: %+v %v", h, err)
				}
				list := s.editenvList(t)
				if !strings.Contains(list, "saved_entry="+s.OldEntry+"\n") || !strings.Contains(list, "boot_counter="+tc.bootCounter+"\n") ||
					strings.Contains(list, "kos_upgrade") {
					t.Errorf("grubenv after the fallback:\n%s", list)
				}
				if def := s.defaultSubvol(t); def != "@" {
					t.Errorf("default subvolume after the fallback: %q", def)
				}
				return
			}
			newRoot, ne2 := s.mountRoot(t, snap)
			h, err := ne2.Health(ctx, upgrader.HealthOptions{Cmdline: cmdline(ne)})
			if err != nil || h.Action != upgrader.HealthBlessed {
				t.Fatalf("health on the new entry: %+v %v", h, err)
			}
			list = s.editenvList(t)
			if !strings.Contains(list, "saved_entry="+newID+"\n") || !strings.Contains(list, "boot_success=1\n") ||
				strings.Contains(list, "kos_upgrade") || strings.Contains(list, "boot_counter") {
				t.Errorf("grubenv after bless:\n%s", list)
			}
			if _, err := ne2.Rollback(ctx); err != nil {
				t.Fatalf("rollback: %v", err)
			}
			if d := diffDigest(before, s.digest(t)); len(d) > 0 {
				t.Errorf("/boot after rollback differs from before the upgrade:\n%s", strings.Join(d, "\n"))
			}
			if env := s.env(t); env.Value("saved_entry") != s.OldEntry {
				t.Errorf("grubenv after rollback: %v", env.Map())
			}
			s.expectRolledBack(t, s.Root, newRoot)
		})
	}
}
