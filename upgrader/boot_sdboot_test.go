package upgrader_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/boot"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// sdLoaderConf is the ESP's loader.conf: kernel-install's entries of this
// machine, newest first.
const sdLoaderConf = "timeout 3\ndefault " + fixture.MachineID + "-*\n"

// newSDBootSystem is a bootSystem whose /boot is a systemd-boot ESP (ext4
// here: the engine reads and writes files only) with loader/loader.conf and
// the 5.8 kernel's entry as kernel-install writes it for systemd-boot
// (machine-id and sort-key, which systemd-boot orders by).
func newSDBootSystem(t *testing.T, dracut bool) *bootSystem {
	t.Helper()
	b := newKernelSystem(t, dracut)
	writeFile(t, filepath.Join(b.Boot, "EFI/systemd/systemd-bootx64.efi"), "sd-boot\n", 0o644)
	writeFile(t, filepath.Join(b.Boot, "EFI/BOOT/BOOTX64.EFI"), "sd-boot\n", 0o644)
	writeFile(t, filepath.Join(b.Boot, boot.LoaderConfRel), sdLoaderConf, 0o644)
	writeFile(t, filepath.Join(b.Boot, "loader/entries", b.OldEntry+".conf"),
		"title KOS 5.8\nversion "+oldKver+"\nmachine-id "+fixture.MachineID+"\nsort-key kos\n"+
			"options root=UUID="+b.UUID+" ro rootflags=subvol=@ console=ttyS0\n"+
			"linux /vmlinuz-"+oldKver+"\ninitrd /initramfs-"+oldKver+".img\n", 0o644)
	return b
}

// sdBoot is the systemd-boot of the system, as the engine finds it.
func (b *bootSystem) sdBoot(t *testing.T) *boot.SystemdBoot {
	t.Helper()
	bl, err := boot.Detect(sysroot.Root{Dir: b.Root})
	if err != nil {
		t.Fatal(err)
	}
	sd, ok := bl.(*boot.SystemdBoot)
	if !ok {
		t.Fatalf("boot loader detected: %s, want systemd-boot", bl.Kind())
	}
	return sd
}

// sdCmdline is what the kernel gets when systemd-boot boots entry e.
func sdCmdline(e *boot.Entry) string {
	return strings.Join(e.GetAll(boot.KeyOptions), " ") + ` initrd=\initramfs.img`
}

// entryFile returns the file name of entry id in loader/entries.
func (b *bootSystem) entryFile(t *testing.T, id string) string {
	t.Helper()
	return filepath.Base(b.entry(t, id).Path)
}

func TestSystemdBootTrialBlessRollback(t *testing.T) {
	b := newSDBootSystem(t, true)
	ctx := context.Background()
	before := b.digest(t)
	res := b.applyKernel(t)
	snap := res.Snapshot
	newID := boot.EntryIDPrefix + fixture.MachineID + "-" + newKver

	// The new entry: the new kernel and root, systemd-boot's keys kept,
	// three tries in its file name.
	ne := b.entry(t, newID)
	if f := filepath.Base(ne.Path); f != newID+"+3.conf" {
		t.Errorf("new entry file %s, want %s+3.conf", f, newID)
	}
	if rf, _ := ne.Options().Get("rootflags"); rf != "subvol="+snap {
		t.Errorf("new entry rootflags=%q, want subvol=%s", rf, snap)
	}
	if ne.Linux() != "/vmlinuz-"+newKver || strings.Join(ne.Initrds(), " ") != "/initramfs-"+newKver+".img" ||
		ne.Value(boot.KeyMachineID) != fixture.MachineID || ne.Value(boot.KeySortKey) != "kos" || ne.Version() != newKver {
		t.Errorf("new entry:\n%s", ne.Format())
	}
	if ird, _ := os.ReadFile(filepath.Join(b.Boot, "initramfs-"+newKver+".img")); !strings.Contains(string(ird), "initramfs of "+newKver) {
		t.Errorf("initramfs not built by the new root's dracut: %q", ird)
	}
	if f := b.entryFile(t, b.OldEntry); f != b.OldEntry+".conf" {
		t.Errorf("old entry renamed to %s", f)
	}

	// loader.conf's default picks the new entry while it has tries, and
	// the old one once systemd-boot has counted them down.
	sd := b.sdBoot(t)
	if def, err := sd.Default(ctx); err != nil || def != newID {
		t.Errorf("systemd-boot boots %q (%v) after apply, want %s", def, err, newID)
	}
	if tr, err := sd.Trial(ctx); err != nil || !tr.Active || tr.Entry != newID || tr.Fallback != b.OldEntry || tr.TriesLeft != 3 {
		t.Errorf("trial after apply: %+v %v", tr, err)
	}
	conf, _ := os.ReadFile(filepath.Join(b.Boot, boot.LoaderConfRel))
	if !strings.Contains(string(conf), "#kos-upgrade-trial "+newID+" "+b.OldEntry+" "+fixture.MachineID+"-*\n") {
		t.Errorf("loader.conf does not record the trial and the previous default:\n%s", conf)
	}
	dir := filepath.Join(b.Boot, "loader/entries")
	spent := filepath.Join(dir, newID+"+0-3.conf")
	if err := os.Rename(ne.Path, spent); err != nil {
		t.Fatal(err)
	}
	if def, err := sd.Default(ctx); err != nil || def != b.OldEntry {
		t.Errorf("systemd-boot boots %q (%v) once the tries are spent, want %s", def, err, b.OldEntry)
	}
	if err := os.Rename(spent, ne.Path); err != nil {
		t.Fatal(err)
	}
	st := b.statusJSON(t)
	if bs := st.State.Boot; bs == nil || bs.Loader != boot.KindSystemdBoot || bs.Entry != newID || bs.Previous != b.OldEntry ||
		bs.Trial != upgrader.TrialArmed || bs.Tries != 3 || len(bs.Backups) != 1 || bs.Backups[0].Dir != "/boot" {
		t.Errorf("state.boot after apply: %+v", st.State.Boot)
	}

	// First boot of the new system: systemd-boot counted one try down.
	if err := os.Rename(ne.Path, filepath.Join(dir, newID+"+2-1.conf")); err != nil {
		t.Fatal(err)
	}
	newRoot, ne2 := b.mountRoot(t, snap)
	h, err := ne2.Health(ctx, upgrader.HealthOptions{Cmdline: sdCmdline(ne)})
	if err != nil {
		t.Fatalf("health: %v", err)
	}
	if h.Action != upgrader.HealthBlessed || h.Reboot {
		t.Errorf("health on the trial entry: %+v", h)
	}
	if f := b.entryFile(t, newID); f != newID+".conf" {
		t.Errorf("blessed entry file %s, want %s.conf (no counter)", f, newID)
	}
	conf, _ = os.ReadFile(filepath.Join(b.Boot, boot.LoaderConfRel))
	if strings.Contains(string(conf), "#kos-upgrade-trial") || !strings.Contains(string(conf), "\ndefault "+newID+"[+.]*\n") {
		t.Errorf("loader.conf after bless:\n%s", conf)
	}
	if def, err := sd.Default(ctx); err != nil || def != newID {
		t.Errorf("systemd-boot boots %q (%v) after bless", def, err)
	}
	if s, _ := ne2.Status(ctx); s.State.Boot == nil || s.State.Boot.Trial != upgrader.TrialBlessed {
		t.Errorf("new root state after bless: %+v", s.State.Boot)
	}

	// Rollback from the new system: the old root, /boot as before.
	if _, err := ne2.Rollback(ctx); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	if def := b.defaultSubvol(t); def != "@" {
		t.Errorf("default subvolume after rollback: %q", def)
	}
	if d := diffDigest(before, b.digest(t)); len(d) > 0 {
		t.Errorf("/boot after rollback differs from before the upgrade:\n%s", strings.Join(d, "\n"))
	}
	if def, err := sd.Default(ctx); err != nil || def != b.OldEntry {
		t.Errorf("systemd-boot boots %q (%v) after rollback", def, err)
	}
	b.expectRolledBack(t, b.Root, newRoot)
}

// systemd-boot tried the new entry three times and went back to the old
// one by itself: health on the old system records the fallback.
func TestSystemdBootFellBack(t *testing.T) {
	b := newSDBootSystem(t, true)
	ctx := context.Background()
	before := b.digest(t)
	res := b.applyKernel(t)
	newID := boot.EntryIDPrefix + fixture.MachineID + "-" + newKver
	old := b.entry(t, b.OldEntry)
	dir := filepath.Join(b.Boot, "loader/entries")
	ne := b.entry(t, newID)

	// One try spent (the menu picked the old entry by hand): pending.
	if err := os.Rename(ne.Path, filepath.Join(dir, newID+"+2-1.conf")); err != nil {
		t.Fatal(err)
	}
	h, err := b.Engin.Health(ctx, upgrader.HealthOptions{Cmdline: sdCmdline(old)})
	if err != nil || h.Action != upgrader.HealthPending {
		t.Fatalf("health with tries left: %+v %v", h, err)
	}
	if def := b.defaultSubvol(t); def != res.Snapshot {
		t.Errorf("a pending trial changed the default subvolume to %s", def)
	}

	// All spent: systemd-boot boots the old entry, which reports it.
	if err := os.Rename(filepath.Join(dir, newID+"+2-1.conf"), filepath.Join(dir, newID+"+0-3.conf")); err != nil {
		t.Fatal(err)
	}
	if def, err := b.sdBoot(t).Default(ctx); err != nil || def != b.OldEntry {
		t.Fatalf("systemd-boot boots %q (%v) with the tries spent", def, err)
	}
	h, err = b.Engin.Health(ctx, upgrader.HealthOptions{Cmdline: sdCmdline(old)})
	if err != nil {
		t.Fatalf("health on the old entry: %v", err)
	}
	if h.Action != upgrader.HealthFellBack || h.Reboot || h.Result == nil || h.Result.Kind != "fallback" {
		t.Errorf("health after systemd-boot fell back: %+v", h)
	}
	if def := b.defaultSubvol(t); def != "@" {
		t.Errorf("default subvolume after the fallback: %q", def)
	}
	if d := diffDigest(before, b.digest(t)); len(d) > 0 {
		t.Errorf("/boot after the fallback differs from before the upgrade:\n%s", strings.Join(d, "\n"))
	}
	st := b.statusJSON(t)
	if st.State.Status != upgrader.StatusRolledBack || st.State.Boot == nil || st.State.Boot.Trial != upgrader.TrialFailed {
		t.Errorf("state after the fallback: %+v %+v", st.State, st.State.Boot)
	}
}
