package upgrader_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/boot"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

const (
	oldKver = "5.8.0-1.noarch"
	newKver = "5.9.0-1.noarch"
)

// bootSystem is a system (newSystem) with kernel 5.8.0 installed and a
// separate /boot (ext4 on a loop device) holding its kernel and initramfs
// and the boot loader: newBootSystem lays it out as EL8's grub2 with BLS
// entries (the kernel's entry as default in grubenv, a grub.cfg with the
// multi-try trial logic), newSDBootSystem as systemd-boot's.
type bootSystem struct {
	*system
	Boot     string // <root>/boot
	UUID     string // root= UUID of the btrfs filesystem
	OldEntry string // id of the 5.8 entry
	EnvPath  string // grubenv; "" without grub
}

// newBootSystem builds it. dracut puts a stand-in dracut into the root (it
// writes a small file as the initramfs) so that apply can build the new
// kernel's initramfs in the new root.
func newBootSystem(t *testing.T, dracut bool) *bootSystem {
	t.Helper()
	b := newKernelSystem(t, dracut)
	writeFile(t, filepath.Join(b.Boot, "loader/entries", b.OldEntry+".conf"),
		"title KOS 5.8 ("+oldKver+")\nversion "+oldKver+"\nlinux /vmlinuz-"+oldKver+"\ninitrd /initramfs-"+oldKver+".img\n"+
			"options root=UUID="+b.UUID+" ro rootflags=subvol=@ console=ttyS0\ngrub_users $grub_users\ngrub_arg --unrestricted\ngrub_class kernel\n", 0o644)
	writeFile(t, filepath.Join(b.Boot, "grub2/grub.cfg"), "load_env\nblscfg\n### BEGIN /etc/grub.d/09_kos_upgrade_trial ###\n"+boot.GrubTrialConfig, 0o600)
	b.EnvPath = filepath.Join(b.Boot, "grub2/grubenv")
	testenv.Run(t, "grub-editenv", b.EnvPath, "create")
	testenv.Run(t, "grub-editenv", b.EnvPath, "set", "saved_entry="+b.OldEntry, "boot_success=1")
	return b
}

// newKernelSystem is a bootSystem without its boot loader: kernel 5.8.0
// installed, its vmlinuz and initramfs in a separate /boot (ext4 on a loop
// device), no entry, no boot loader configuration.
func newKernelSystem(t *testing.T, dracut bool) *bootSystem {
	t.Helper()
	s := newSystem(t)
	testenv.RequireTools(t, "mkfs.ext4", "losetup", "grub-editenv", "blkid", "chroot")
	pkgs, err := s.Set.Packages(fixture.Repo58Kernel)
	if err != nil || len(pkgs) == 0 {
		t.Fatalf("kernel repo: %v", err)
	}
	testenv.Run(t, "rpm", append([]string{"--root", s.Root, "--dbpath", fixture.DBPath, "-i", "--nodeps", "--force-debian"}, pkgs...)...)
	if dracut {
		writeFile(t, filepath.Join(s.Root, "usr/bin/dracut"), "#!/bin/sh\n# test stand-in: dracut -f IMAGE KVER\n[ \"$1\" = -f ] && shift\necho \"initramfs of $2\" > \"$1\"\n", 0o755)
	}
	b := &bootSystem{system: s, Boot: filepath.Join(s.Root, "boot"), OldEntry: fixture.MachineID + "-" + oldKver}
	mountBoot(t, b)
	writeFile(t, filepath.Join(b.Boot, "vmlinuz-"+oldKver), "old kernel\n", 0o755)
	writeFile(t, filepath.Join(b.Boot, "initramfs-"+oldKver+".img"), "old initramfs\n", 0o600)
	return b
}

// mountBoot mounts a new ext4 filesystem (on a loop device) at b.Boot and
// sets b.UUID to the root filesystem's UUID.
func mountBoot(t *testing.T, b *bootSystem) {
	t.Helper()
	img := filepath.Join(t.TempDir(), "boot.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(160 << 20)
	f.Close()
	dev := strings.TrimSpace(testenv.Run(t, "losetup", "--find", "--show", img))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	testenv.Run(t, "mkfs.ext4", "-q", "-F", dev)
	testenv.Run(t, "mount", dev, b.Boot)
	t.Cleanup(func() { testenv.UnmountAll(b.Boot) })
	os.RemoveAll(filepath.Join(b.Boot, "lost+found"))

	b.UUID = strings.TrimSpace(testenv.Run(t, "blkid", "-s", "UUID", "-o", "value", b.FS.Device))
}

func writeFile(t *testing.T, p, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

// expectRolledBack checks that the state in each root says rolled back.
func (b *bootSystem) expectRolledBack(t *testing.T, roots ...string) {
	t.Helper()
	for _, r := range roots {
		e := b.engine(t)
		e.Root.Dir = r
		if s, _ := e.Status(context.Background()); s.State.Status != upgrader.StatusRolledBack {
			t.Errorf("state in %s after rollback: %s", r, s.State.Status)
		}
	}
}

func (b *bootSystem) digest(t *testing.T) map[string]string {
	return treeDigest(t, b.Boot, "lost+found")
}

func (b *bootSystem) env(t *testing.T) *boot.Env {
	t.Helper()
	env, err := boot.ReadEnv(b.EnvPath)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func (b *bootSystem) entry(t *testing.T, id string) *boot.Entry {
	t.Helper()
	e, err := boot.ReadEntry(filepath.Join(b.Boot, "loader/entries"), id)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// cmdline is what the kernel gets when grub boots entry e.
func cmdline(e *boot.Entry) string {
	return "BOOT_IMAGE=(hd0,gpt2)" + e.Linux() + " " + strings.Join(e.GetAll(boot.KeyOptions), " ")
}

// mountRoot mounts subvolume sub with the real /boot bound into it, as the
// booted new system would have it, and returns an engine for it.
func (b *bootSystem) mountRoot(t *testing.T, sub string) (string, *upgrader.Engine) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "newroot")
	b.FS.MountSubvol(t, sub, dir)
	testenv.Run(t, "mount", "--rbind", b.Boot, filepath.Join(dir, "boot"))
	testenv.Run(t, "mount", "--make-rslave", filepath.Join(dir, "boot"))
	t.Cleanup(func() { testenv.UnmountAll(filepath.Join(dir, "boot")) })
	r, err := sysroot.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir, upgrader.New(r, b.Sink, nil)
}

func (b *bootSystem) applyKernel(t *testing.T) *upgrader.Result {
	t.Helper()
	b.prepareAndArm(t, upgrader.PrepareOptions{Repos: b.repos(fixture.Repo59, fixture.Repo59Kernel)})
	res, err := b.Engin.Apply(context.Background())
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	return res.Result
}

func TestApplyKernelTrialBlessRollback(t *testing.T) {
	b := newBootSystem(t, true)
	ctx := context.Background()
	before := b.digest(t)
	oldEntry, _ := os.ReadFile(filepath.Join(b.Boot, "loader/entries", b.OldEntry+".conf"))
	res := b.applyKernel(t)
	snap := res.Snapshot
	if def := b.defaultSubvol(t); def != snap {
		t.Fatalf("default subvolume %q, want %q", def, snap)
	}

	// The new kernel, its initramfs (built by the new root's dracut, in
	// the real /boot) and its entry pointing at the new root.
	newID := boot.EntryIDPrefix + fixture.MachineID + "-" + newKver
	k, _ := os.ReadFile(filepath.Join(b.Boot, "vmlinuz-"+newKver))
	want, _ := os.ReadFile(filepath.Join(b.FS.Top, snap, "usr/lib/modules", newKver, "vmlinuz"))
	if len(k) == 0 || string(k) != string(want) {
		t.Errorf("/boot/vmlinuz-%s is not the new kernel (%d bytes)", newKver, len(k))
	}
	if ird, _ := os.ReadFile(filepath.Join(b.Boot, "initramfs-"+newKver+".img")); !strings.Contains(string(ird), "initramfs of "+newKver) {
		t.Errorf("initramfs not built by the new root's dracut: %q", ird)
	}
	if m, _ := filepath.Glob(filepath.Join(b.FS.Top, snap, "boot", "*")); len(m) > 0 {
		t.Errorf("the snapshot's own /boot was written: %v", m)
	}
	ne := b.entry(t, newID)
	opts := ne.Options()
	if r, _ := opts.Get("root"); r != "UUID="+b.UUID {
		t.Errorf("new entry root=%q", r)
	}
	if rf, _ := opts.Get("rootflags"); rf != "subvol="+snap {
		t.Errorf("new entry rootflags=%q, want subvol=%s", rf, snap)
	}
	if ne.Linux() != "/vmlinuz-"+newKver || strings.Join(ne.Initrds(), " ") != "/initramfs-"+newKver+".img" {
		t.Errorf("new entry boots %s %v", ne.Linux(), ne.Initrds())
	}
	if ne.Value(boot.KeyGrubClass) != "kernel" || !opts.Has("console") {
		t.Errorf("new entry lost keys of the old one:\n%s", ne.Format())
	}
	if now, _ := os.ReadFile(filepath.Join(b.Boot, "loader/entries", b.OldEntry+".conf")); string(now) != string(oldEntry) {
		t.Errorf("old entry changed:\n%s", now)
	}
	// grubenv: the trial, read by us and by grub-editenv.
	env := b.env(t)
	if env.Value("saved_entry") != b.OldEntry || env.Value("next_entry") != newID || env.Value("kos_upgrade_trial") != newID {
		t.Errorf("grubenv after apply: %v", env.Map())
	}
	list := testenv.Run(t, "grub-editenv", b.EnvPath, "list")
	for _, l := range []string{"saved_entry=" + b.OldEntry, "next_entry=" + newID, "kos_upgrade_trial=" + newID, "kos_upgrade_tries=2"} {
		if !strings.Contains(list, l+"\n") {
			t.Errorf("grub-editenv list lacks %s:\n%s", l, list)
		}
	}
	st := b.statusJSON(t)
	if bs := st.State.Boot; bs == nil || bs.Entry != newID || bs.Previous != b.OldEntry || bs.Trial != upgrader.TrialArmed || bs.Tries != 3 || len(bs.Backups) != 1 {
		t.Errorf("state.boot after apply: %+v", st.State.Boot)
	}

	// First boot of the new system, trial entry: healthy → blessed.
	newRoot, ne2 := b.mountRoot(t, snap)
	checked := false
	h, err := ne2.Health(ctx, upgrader.HealthOptions{Cmdline: cmdline(ne), Checks: []upgrader.HealthCheck{
		{Name: "test", Run: func(context.Context) error { checked = true; return nil }}}})
	if err != nil {
		t.Fatalf("health: %v", err)
	}
	if h.Action != upgrader.HealthBlessed || !checked || h.Reboot {
		t.Errorf("health on the trial entry: %+v (checked %v)", h, checked)
	}
	env = b.env(t)
	if env.Value("saved_entry") != newID || env.Value("next_entry") != "" || env.Value("kos_upgrade_trial") != "" {
		t.Errorf("grubenv after bless: %v", env.Map())
	}
	if s, _ := ne2.Status(ctx); s.State.Boot == nil || s.State.Boot.Trial != upgrader.TrialBlessed {
		t.Errorf("new root state after bless: %+v", s.State.Boot)
	}
	// Health again: nothing to do.
	if h, err := ne2.Health(ctx, upgrader.HealthOptions{Cmdline: cmdline(ne)}); err != nil || h.Action != upgrader.HealthNone {
		t.Errorf("second health: %+v %v", h, err)
	}

	// Rollback from the new system: old root, old entry, /boot as before.
	if _, err := ne2.Rollback(ctx); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	if def := b.defaultSubvol(t); def != "@" {
		t.Errorf("default subvolume after rollback: %q", def)
	}
	if d := diffDigest(before, b.digest(t)); len(d) > 0 {
		t.Errorf("/boot after rollback differs from before the upgrade:\n%s", strings.Join(d, "\n"))
	}
	if env := b.env(t); env.Value("saved_entry") != b.OldEntry {
		t.Errorf("grubenv after rollback: %v", env.Map())
	}
	b.expectRolledBack(t, b.Root, newRoot)
}

func TestBootLoaderFellBack(t *testing.T) {
	b := newBootSystem(t, true)
	before := b.digest(t)
	res := b.applyKernel(t)
	old := b.entry(t, b.OldEntry)

	// Another entry runs while the trial has tries left: nothing changes.
	out, err := b.kosUpgrade(t, nil, "--json", "health", "--cmdline", cmdline(old))
	if err != nil || !strings.Contains(out, `"action": "pending"`) {
		t.Fatalf("health with tries left: %v\n%s", err, out)
	}
	if def := b.defaultSubvol(t); def != res.Snapshot {
		t.Errorf("a pending trial changed the default subvolume to %s", def)
	}
	// grub booted the trial once (next_entry cleared) and counted the
	// other tries down: the old entry boots.
	testenv.Run(t, "grub-editenv", b.EnvPath, "unset", "next_entry")
	testenv.Run(t, "grub-editenv", b.EnvPath, "set", "kos_upgrade_tries=0")
	out, err = b.kosUpgrade(t, nil, "--json", "health", "--cmdline", cmdline(old))
	if err != nil {
		t.Fatalf("health on the old entry: %v\n%s", err, out)
	}
	var h upgrader.HealthResult
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &h); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if h.Action != upgrader.HealthFellBack || h.Reboot || h.Result == nil || h.Result.Kind != "fallback" {
		t.Errorf("health after the boot loader fell back: %+v", h)
	}
	if def := b.defaultSubvol(t); def != "@" {
		t.Errorf("default subvolume after the fallback: %q", def)
	}
	if d := diffDigest(before, b.digest(t)); len(d) > 0 {
		t.Errorf("/boot after the fallback differs from before the upgrade:\n%s", strings.Join(d, "\n"))
	}
	st := b.statusJSON(t)
	if st.State.Status != upgrader.StatusRolledBack || st.State.LastResult == nil || st.State.LastResult.Success ||
		!strings.Contains(st.State.LastResult.Error, "did not complete a healthy boot") || st.State.Boot.Trial != upgrader.TrialFailed {
		t.Errorf("state after the fallback: %+v %+v", st.State, st.State.LastResult)
	}
}

func TestHealthCheckFailsFallsBack(t *testing.T) {
	b := newBootSystem(t, true)
	before := b.digest(t)
	res := b.applyKernel(t)
	newRoot, _ := b.mountRoot(t, res.Snapshot)
	writeFile(t, filepath.Join(newRoot, "etc/kos-upgrade/health.d/50-app"), "#!/bin/sh\necho app does not answer\nexit 3\n", 0o755)
	ne := b.entry(t, boot.EntryIDPrefix+fixture.MachineID+"-"+newKver)
	cmd := exec.Command(binary(t), "--root", newRoot, "health", "--cmdline", cmdline(ne))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "app does not answer") {
		t.Fatalf("health with a failing check: %v\n%s", err, out)
	}
	if def := b.defaultSubvol(t); def != "@" {
		t.Errorf("default subvolume after the failed check: %q", def)
	}
	if d := diffDigest(before, b.digest(t)); len(d) > 0 {
		t.Errorf("/boot after the fallback differs:\n%s", strings.Join(d, "\n"))
	}
	// Both roots know.
	for _, r := range []string{b.Root, newRoot} {
		e := b.engine(t)
		e.Root.Dir = r
		s, _ := e.Status(context.Background())
		if s.State.Status != upgrader.StatusRolledBack || !strings.Contains(s.State.LastResult.Error, "app does not answer") {
			t.Errorf("state in %s: %+v", r, s.State)
		}
	}
}

// TestHealthScriptOthersCouldWriteNotRun: a health.d script that is
// world-writable is not run as root; the check fails on it (through the
// binary, on the first boot of a real upgrade) and the system falls back.
func TestHealthScriptOthersCouldWriteNotRun(t *testing.T) {
	b := newBootSystem(t, true)
	res := b.applyKernel(t)
	newRoot, _ := b.mountRoot(t, res.Snapshot)
	marker := filepath.Join(t.TempDir(), "ran-as-root")
	script := filepath.Join(newRoot, "etc/kos-upgrade/health.d/50-planted")
	writeFile(t, script, "#!/bin/sh\ntouch "+marker+"\nexit 0\n", 0o755)
	if err := os.Chmod(script, 0o757); err != nil {
		t.Fatal(err)
	}
	ne := b.entry(t, boot.EntryIDPrefix+fixture.MachineID+"-"+newKver)
	out, err := exec.Command(binary(t), "--root", newRoot, "health", "--cmdline", cmdline(ne)).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "writable by its group or others") {
		t.Fatalf("health with a world-writable check: %v\n%s", err, out)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the world-writable script ran as root")
	}
	if def := b.defaultSubvol(t); def != "@" {
		t.Errorf("default subvolume after the refused check: %q", def)
	}
}

func TestFailingPreRestoresBoot(t *testing.T) {
	b := newBootSystem(t, true)
	before := b.digest(t)
	b.prepareAndArm(t, upgrader.PrepareOptions{Repos: b.repos(fixture.Repo59, fixture.Repo59Kernel, fixture.Repo59FailPre)})
	if _, err := b.Engin.Apply(context.Background()); err == nil || !strings.Contains(err.Error(), "failpre") {
		t.Fatalf("apply with a failing %%pre: %v", err)
	}
	if d := diffDigest(before, b.digest(t)); len(d) > 0 {
		t.Errorf("/boot after the failed apply differs:\n%s", strings.Join(d, "\n"))
	}
	if left, _ := filepath.Glob(filepath.Join(b.Boot, "loader/entries", boot.EntryIDPrefix+"*")); len(left) > 0 {
		t.Errorf("leftover entries: %v", left)
	}
	if m, _ := filepath.Glob(filepath.Join(b.Root, "var/lib/kos-upgrade/boot-backup/*")); len(m) > 0 {
		t.Errorf("backup of the failed run left: %v", m)
	}
	if def := b.defaultSubvol(t); def != "@" {
		t.Errorf("default subvolume: %q", def)
	}
}

// No dracut in the new root and no kernel scriptlet: the old entry boots
// with an initramfs, so an entry without one would not mount the root.
func TestNewKernelWithoutInitramfsRefused(t *testing.T) {
	b := newBootSystem(t, false)
	before := b.digest(t)
	b.prepareAndArm(t, upgrader.PrepareOptions{Repos: b.repos(fixture.Repo59, fixture.Repo59Kernel)})
	_, err := b.Engin.Apply(context.Background())
	if err == nil || !strings.Contains(err.Error(), "no dracut") {
		t.Fatalf("apply: %v", err)
	}
	st := b.statusJSON(t)
	if st.State.LastResult == nil || st.State.LastResult.Step != upgrader.StepBoot {
		t.Errorf("failed at %+v", st.State.LastResult)
	}
	if d := diffDigest(before, b.digest(t)); len(d) > 0 {
		t.Errorf("/boot after the failed apply differs:\n%s", strings.Join(d, "\n"))
	}
	if left := b.subvols(t); len(left) > 0 {
		t.Errorf("snapshots left: %v", left)
	}
}

// No new kernel: the current kernel gets an entry for the new root (the
// old one pins subvol=@, so switching the default subvolume alone would
// boot nothing new).
func TestNoNewKernelSameKernelEntry(t *testing.T) {
	b := newBootSystem(t, false)
	b.prepareAndArm(t, upgrader.PrepareOptions{})
	res, err := b.Engin.Apply(context.Background())
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	id := boot.EntryIDPrefix + fixture.MachineID + "-" + oldKver + "-5.9"
	e := b.entry(t, id)
	if rf, _ := e.Options().Get("rootflags"); rf != "subvol="+res.Result.Snapshot || e.Linux() != "/vmlinuz-"+oldKver ||
		strings.Join(e.Initrds(), " ") != "/initramfs-"+oldKver+".img" {
		t.Errorf("same-kernel entry:\n%s", e.Format())
	}
	if env := b.env(t); env.Value("next_entry") != id {
		t.Errorf("grubenv: %v", env.Map())
	}
}
