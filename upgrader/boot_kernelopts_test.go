package upgrader_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/boot"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// EL8's grub2 layout: entries read "options $kernelopts $tuned_params" and
// the command line is grubenv's kernelopts, which every entry shares. The
// new entry must carry its own command line naming the new root, the old
// entry must keep booting the old root, and grubenv must stay readable by
// grub-editenv with kernelopts as it was.
func TestGrubKerneloptsEntries(t *testing.T) {
	for _, tc := range []struct {
		name       string
		kernelopts string // %s: the filesystem UUID
		pinned     bool   // the old entry is pinned to @ (its kernelopts name no subvolume)
	}{
		{name: "kernelopts name the subvolume", kernelopts: "root=UUID=%s ro rootflags=subvol=@ console=ttyS0"},
		{name: "kernelopts rely on the default subvolume", kernelopts: "root=UUID=%s ro console=ttyS0", pinned: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBootSystem(t, true)
			ctx := context.Background()
			kernelopts := strings.ReplaceAll(tc.kernelopts, "%s", b.UUID)
			writeFile(t, filepath.Join(b.Boot, "loader/entries", b.OldEntry+".conf"),
				"title KOS 5.8 ("+oldKver+")\nversion "+oldKver+"\nlinux /vmlinuz-"+oldKver+"\ninitrd /initramfs-"+oldKver+".img $tuned_initrd\n"+
					"options $kernelopts $tuned_params\nid kos-"+oldKver+"\ngrub_users $grub_users\ngrub_arg --unrestricted\ngrub_class kernel\n", 0o644)
			testenv.Run(t, "grub-editenv", b.EnvPath, "set", "kernelopts="+kernelopts)
			oldFile, _ := os.ReadFile(filepath.Join(b.Boot, "loader/entries", b.OldEntry+".conf"))
			before := b.digest(t)

			res := b.applyKernel(t)
			snap := res.Snapshot
			newID := boot.EntryIDPrefix + fixture.MachineID + "-" + newKver
			ne := b.entry(t, newID)
			raw := strings.Join(ne.GetAll(boot.KeyOptions), " ")
			opts := ne.Options()
			if strings.Contains(raw, "kernelopts") || !opts.Has("ro") || !opts.Has("console") || !strings.Contains(raw, "$tuned_params") {
				t.Errorf("new entry options %q: want kernelopts expanded, $tuned_params left to grub", raw)
			}
			if r, _ := opts.Get("root"); r != "UUID="+b.UUID {
				t.Errorf("new entry root=%q", r)
			}
			if rf, _ := opts.Get("rootflags"); rf != "subvol="+snap {
				t.Errorf("new entry rootflags=%q, want subvol=%s", rf, snap)
			}
			if strings.Join(ne.Initrds(), " ") != "/initramfs-"+newKver+".img $tuned_initrd" || ne.Value(boot.KeyID) != newID {
				t.Errorf("new entry:\n%s", ne.Format())
			}

			// The old entry, as grub expands it with grubenv, boots @.
			env := b.env(t)
			if env.Value("kernelopts") != kernelopts {
				t.Errorf("grubenv kernelopts changed to %q", env.Value("kernelopts"))
			}
			old := b.entry(t, b.OldEntry)
			oldOpts := boot.ParseOptions(boot.ExpandGrubVars(strings.Join(old.GetAll(boot.KeyOptions), " "), env.Map()))
			if rf, _ := oldOpts.Get("rootflags"); rf != "subvol=@" {
				t.Errorf("old entry boots rootflags=%q (%s), want subvol=@", rf, oldOpts)
			}
			now, _ := os.ReadFile(filepath.Join(b.Boot, "loader/entries", b.OldEntry+".conf"))
			if changed := string(now) != string(oldFile); changed != tc.pinned {
				t.Errorf("old entry changed: %v, want %v:\n%s", changed, tc.pinned, now)
			}
			st := b.statusJSON(t)
			if bs := st.State.Boot; bs == nil || (bs.Pinned == b.OldEntry) != tc.pinned {
				t.Errorf("state.boot: %+v", st.State.Boot)
			}
			list := testenv.Run(t, "grub-editenv", b.EnvPath, "list")
			for _, l := range []string{"kernelopts=" + kernelopts, "saved_entry=" + b.OldEntry, "next_entry=" + newID, "kos_upgrade_trial=" + newID} {
				if !strings.Contains(list, l+"\n") {
					t.Errorf("grub-editenv list lacks %s:\n%s", l, list)
				}
			}

			// The trial boots: the new root is blessed.
			_, ne2 := b.mountRoot(t, snap)
			cmd := "BOOT_IMAGE=(hd0,gpt2)/vmlinuz-" + newKver + " " + boot.ExpandGrubVars(raw, env.Map())
			if h, err := ne2.Health(ctx, upgrader.HealthOptions{Cmdline: cmd}); err != nil || h.Action != upgrader.HealthBlessed {
				t.Fatalf("health on the trial entry: %+v %v", h, err)
			}
			list = testenv.Run(t, "grub-editenv", b.EnvPath, "list")
			if !strings.Contains(list, "kernelopts="+kernelopts+"\n") || !strings.Contains(list, "saved_entry="+newID+"\n") {
				t.Errorf("grub-editenv list after bless:\n%s", list)
			}

			// Rollback: /boot as before, grubenv still grub's.
			if _, err := ne2.Rollback(ctx); err != nil {
				t.Fatalf("rollback: %v", err)
			}
			if d := diffDigest(before, b.digest(t)); len(d) > 0 {
				t.Errorf("/boot after rollback differs from before the upgrade:\n%s", strings.Join(d, "\n"))
			}
			list = testenv.Run(t, "grub-editenv", b.EnvPath, "list")
			if !strings.Contains(list, "kernelopts="+kernelopts+"\n") || !strings.Contains(list, "saved_entry="+b.OldEntry+"\n") {
				t.Errorf("grub-editenv list after rollback:\n%s", list)
			}
		})
	}
}
