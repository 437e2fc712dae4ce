package upgrader_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/boot"
	"github.com/keyarchos/kos-upgrade/test/testenv"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

const initramfsEntry = upgrader.InitramfsEntryPrefix + "5.9"

// initramfsSystem is a bootSystem whose engine builds the upgrade
// initramfs with a stand-in dracut: it writes its arguments as the image
// (its last argument) and counts its runs in Runs.
type initramfsSystem struct {
	*bootSystem
	Runs  string
	Image string // host path of the upgrade initramfs
}

func newInitramfsSystem(t *testing.T) *initramfsSystem {
	t.Helper()
	b := newBootSystem(t, false)
	dir := t.TempDir()
	s := &initramfsSystem{bootSystem: b, Runs: filepath.Join(dir, "runs"),
		Image: filepath.Join(b.Boot, upgrader.InitramfsImagePrefix+"5.9.img")}
	stub := filepath.Join(dir, "dracut")
	writeFile(t, stub, "#!/bin/sh\n# test stand-in: dracut ... IMAGE\nfor a; do img=$a; done\necho run >> '"+s.Runs+"'\necho \"upgrade initramfs: $*\" > \"$img\"\n", 0o755)
	b.Engin.Dracut = stub
	return s
}

func (s *initramfsSystem) prepare(t *testing.T) *upgrader.Plan {
	t.Helper()
	p, err := s.Engin.Prepare(context.Background(), upgrader.PrepareOptions{To: "5.9", Snapshot: "auto", Mode: upgrader.ModeInitramfs})
	if err != nil {
		t.Fatalf("prepare --mode initramfs: %v", err)
	}
	if p.Mode != upgrader.ModeInitramfs {
		t.Fatalf("plan mode %q", p.Mode)
	}
	return p
}

func (s *initramfsSystem) runs(t *testing.T) int {
	b, _ := os.ReadFile(s.Runs)
	return strings.Count(string(b), "run\n")
}

// checkArmed checks the image, the one-time entry and next_entry.
func (s *initramfsSystem) checkArmed(t *testing.T) {
	t.Helper()
	img, err := os.ReadFile(s.Image)
	if want := "--force --add kos-upgrade --kver " + oldKver + " " + s.Image; err != nil || !strings.Contains(string(img), want) {
		t.Errorf("upgrade initramfs %s: %q, %v; want the stand-in's output with %q", s.Image, img, err, want)
	}
	e := s.entry(t, initramfsEntry)
	opts := e.Options()
	if e.Linux() != "/vmlinuz-"+oldKver || strings.Join(e.Initrds(), " ") != "/"+filepath.Base(s.Image) {
		t.Errorf("one-time entry boots %s %v:\n%s", e.Linux(), e.Initrds(), e.Format())
	}
	for k, want := range map[string]string{"root": "UUID=" + s.UUID, "rootflags": "subvol=@", "console": "ttyS0",
		upgrader.CmdlineApply: "1", upgrader.CmdlineEntry: initramfsEntry} {
		if v, _ := opts.Get(k); v != want {
			t.Errorf("one-time entry %s=%q, want %q:\n%s", k, v, want, e.Format())
		}
	}
	if !opts.Has("ro") || e.Value(boot.KeyGrubClass) != "kernel" || e.Value(boot.KeyGrubUsers) != "$grub_users" {
		t.Errorf("one-time entry lost keys of the default one:\n%s", e.Format())
	}
	env := s.env(t)
	if env.Value("next_entry") != initramfsEntry || env.Value("saved_entry") != s.OldEntry {
		t.Errorf("grubenv after arm: %v", env.Map())
	}
	list := testenv.Run(t, "grub-editenv", s.EnvPath, "list")
	for _, l := range []string{"saved_entry=" + s.OldEntry, "next_entry=" + initramfsEntry} {
		if !strings.Contains(list, l+"\n") {
			t.Errorf("grub-editenv list lacks %s:\n%s", l, list)
		}
	}
	if l, err := os.Readlink(filepath.Join(s.Root, "system-update")); err != nil || l != "/var/lib/kos-upgrade" {
		t.Errorf("/system-update: %q, %v", l, err)
	}
	st := s.statusJSON(t)
	if is := st.State.Initramfs; st.State.Status != upgrader.StatusArmed || is == nil || is.Step != upgrader.InitramfsStepArmed ||
		is.Entry != initramfsEntry || is.Image != "/boot/"+filepath.Base(s.Image) || is.Kver != oldKver {
		t.Errorf("state after arm: %s %+v", st.State.Status, st.State.Initramfs)
	}
}

// checkGone checks that the image, the entry and next_entry are gone.
func (s *initramfsSystem) checkGone(t *testing.T, what string) {
	t.Helper()
	if _, err := os.Stat(s.Image); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: the upgrade initramfs is still there (%v)", what, err)
	}
	if _, err := boot.ReadEntry(filepath.Join(s.Boot, "loader/entries"), initramfsEntry); !errors.Is(err, boot.ErrNotFound) {
		t.Errorf("%s: the one-time entry is still there (%v)", what, err)
	}
	if env := s.env(t); env.Value("next_entry") == initramfsEntry || env.Value("saved_entry") != s.OldEntry {
		t.Errorf("%s: grubenv %v", what, env.Map())
	}
	if list := testenv.Run(t, "grub-editenv", s.EnvPath, "list"); strings.Contains(list, "next_entry="+initramfsEntry) {
		t.Errorf("%s: grub-editenv list:\n%s", what, list)
	}
	if st := s.statusJSON(t); st.State.Initramfs != nil {
		t.Errorf("%s: state.initramfs %+v", what, st.State.Initramfs)
	}
}

func TestInitramfsArmRearmCancel(t *testing.T) {
	s := newInitramfsSystem(t)
	ctx := context.Background()
	before := s.digest(t)
	s.prepare(t)
	if _, err := s.Engin.Arm(ctx); err != nil {
		t.Fatalf("arm: %v", err)
	}
	s.checkArmed(t)
	if n := s.runs(t); n != 1 {
		t.Errorf("dracut ran %d times", n)
	}
	// Re-arming: the same entry and one-shot, the image reused.
	if _, err := s.Engin.Arm(ctx); err != nil {
		t.Fatalf("arm again: %v", err)
	}
	s.checkArmed(t)
	if n := s.runs(t); n != 1 {
		t.Errorf("dracut ran %d times after a re-arm, want the image reused", n)
	}
	// An image whose build did not complete is rebuilt.
	os.Remove(s.Image)
	if _, err := s.Engin.Arm(ctx); err != nil {
		t.Fatalf("arm without the image: %v", err)
	}
	s.checkArmed(t)
	if n := s.runs(t); n != 2 {
		t.Errorf("dracut ran %d times, want the missing image rebuilt", n)
	}

	if err := s.Engin.Cancel(ctx); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	s.checkGone(t, "after cancel")
	if _, err := os.Lstat(filepath.Join(s.Root, "system-update")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("/system-update after cancel: %v", err)
	}
	// grubenv differs (next_entry was set and unset): compare the rest.
	after := s.digest(t)
	delete(before, "grub2/grubenv")
	delete(after, "grub2/grubenv")
	if d := diffDigest(before, after); len(d) > 0 {
		t.Errorf("/boot after cancel differs:\n%s", strings.Join(d, "\n"))
	}
}

// grubenv on the btrfs root: grub cannot clear next_entry at boot, so no
// one-time boot, so no initramfs mode.
func TestInitramfsRefusedWithoutOneShot(t *testing.T) {
	s := newInitramfsSystem(t)
	ctx := context.Background()
	s.prepare(t)
	data, err := os.ReadFile(s.EnvPath)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(s.Root, "var/lib/grubenv"), string(data), 0o644)
	os.Remove(s.EnvPath)
	if err := os.Symlink("/var/lib/grubenv", s.EnvPath); err != nil {
		t.Fatal(err)
	}
	_, err = s.Engin.Arm(ctx)
	if err == nil {
		t.Fatal("arm in initramfs mode with grubenv on btrfs succeeded")
	}
	for _, want := range []string{"initramfs mode", "one-time boot", "btrfs", "--mode target"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("arm refused without %q in the message: %v", want, err)
		}
	}
	if n := s.runs(t); n != 0 {
		t.Errorf("dracut ran %d times", n)
	}
	if _, err := os.Stat(s.Image); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("image made: %v", err)
	}
	if m, _ := filepath.Glob(filepath.Join(s.Boot, "loader/entries", upgrader.InitramfsEntryPrefix+"*")); len(m) > 0 {
		t.Errorf("entries made: %v", m)
	}
	if _, err := os.Lstat(filepath.Join(s.Root, "system-update")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("/system-update: %v", err)
	}
	if st := s.statusJSON(t); st.State.Status != upgrader.StatusPrepared || st.State.Initramfs != nil {
		t.Errorf("state after the refusal: %s %+v", st.State.Status, st.State.Initramfs)
	}
	// prepare refuses too, for the same reason.
	_, err = s.Engin.Prepare(ctx, upgrader.PrepareOptions{To: "5.9", Snapshot: "auto", Mode: upgrader.ModeInitramfs})
	if err == nil || !strings.Contains(err.Error(), "--mode target") {
		t.Errorf("prepare --mode initramfs with grubenv on btrfs: %v", err)
	}
	if _, err := s.Engin.Prepare(ctx, upgrader.PrepareOptions{To: "5.9", Mode: "bogus"}); err == nil || !strings.Contains(err.Error(), "choose target or initramfs") {
		t.Errorf("prepare --mode bogus: %v", err)
	}
}

// Apply of an initramfs plan: refused outside the upgrade initramfs (the
// one-time boot did not reach it), applied from it, with /.autorelabel in
// the new root when SELinux is enforcing.
func TestInitramfsApplyAutorelabel(t *testing.T) {
	s := newInitramfsSystem(t)
	ctx := context.Background()
	writeFile(t, filepath.Join(s.Root, "etc/selinux/config"), "# test\nSELINUX=enforcing\nSELINUXTYPE=targeted\n", 0o644)
	s.prepare(t)
	if _, err := s.Engin.Arm(ctx); err != nil {
		t.Fatalf("arm: %v", err)
	}
	cmdline := filepath.Join(t.TempDir(), "cmdline")

	// The default entry booted (target mode): refused, nothing changed.
	writeFile(t, cmdline, "BOOT_IMAGE=(hd0,gpt2)/vmlinuz-"+oldKver+" root=UUID="+s.UUID+" ro rootflags=subvol=@\n", 0o644)
	s.Engin.Cmdline = cmdline
	if _, err := s.Engin.Apply(ctx); err == nil || !strings.Contains(err.Error(), "prepared for initramfs mode") {
		t.Fatalf("apply outside the initramfs: %v", err)
	}
	s.checkGone(t, "after the refused apply")
	st := s.statusJSON(t)
	if st.State.Status != upgrader.StatusFailed || st.State.LastResult == nil || !strings.Contains(st.State.LastResult.Error, "not upgrading with the root's own userspace") {
		t.Errorf("state after the refused apply: %+v %+v", st.State, st.State.LastResult)
	}
	if def := s.defaultSubvol(t); def != "@" {
		t.Errorf("default subvolume %q", def)
	}
	if left := s.subvols(t); len(left) > 0 {
		t.Errorf("snapshots made: %v", left)
	}

	// Armed again; the one-time boot reaches the hook, which removes the
	// entry and the image (grub cleared next_entry), then applies.
	if _, err := s.Engin.Arm(ctx); err != nil {
		t.Fatalf("arm again: %v", err)
	}
	s.checkArmed(t)
	e := s.entry(t, initramfsEntry)
	os.Remove(e.Path)
	os.Remove(s.Image)
	writeFile(t, cmdline, cmdline1(e), 0o644)
	res, err := s.Engin.Apply(ctx)
	if err != nil || !res.Ran {
		t.Fatalf("apply from the initramfs: %+v, %v", res, err)
	}
	snap := res.Result.Snapshot
	if def := s.defaultSubvol(t); def != snap {
		t.Errorf("default subvolume %q, want %q", def, snap)
	}
	if fi, err := os.Stat(filepath.Join(s.FS.Top, snap, ".autorelabel")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("/.autorelabel in the new root: %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.Root, ".autorelabel")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("/.autorelabel in the old root: %v", err)
	}
	if st := s.statusJSON(t); st.State.Status != upgrader.StatusSucceeded || st.State.Initramfs != nil {
		t.Errorf("state after apply: %s %+v", st.State.Status, st.State.Initramfs)
	}
	if env := s.env(t); env.Value("next_entry") == initramfsEntry {
		t.Errorf("grubenv after apply: %v", env.Map())
	}
}

// Without SELinux, no relabel.
func TestInitramfsApplyNoSELinux(t *testing.T) {
	s := newInitramfsSystem(t)
	ctx := context.Background()
	writeFile(t, filepath.Join(s.Root, "etc/selinux/config"), "SELINUX=disabled\n", 0o644)
	s.prepare(t)
	if _, err := s.Engin.Arm(ctx); err != nil {
		t.Fatalf("arm: %v", err)
	}
	cmdline := filepath.Join(t.TempDir(), "cmdline")
	writeFile(t, cmdline, cmdline1(s.entry(t, initramfsEntry)), 0o644)
	s.Engin.Cmdline = cmdline
	res, err := s.Engin.Apply(ctx)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.FS.Top, res.Result.Snapshot, ".autorelabel")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("/.autorelabel with SELinux disabled: %v", err)
	}
	s.checkGone(t, "after apply")
}

func cmdline1(e *boot.Entry) string { return cmdline(e) + "\n" }
