package boot

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

func writeFile(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestBackupRestore(t *testing.T) {
	ctx := context.Background()
	g, root := grubRoot(t, true)
	boot := root.Path("/boot")
	writeFile(t, filepath.Join(boot, "vmlinuz-old"), "kernel old")
	writeFile(t, filepath.Join(boot, "vmlinuz-other"), "kernel other")
	dest := filepath.Join(t.TempDir(), "backup")
	if err := Backup(ctx, root, boot, dest); err != nil {
		t.Fatal(err)
	}
	m, err := ReadBackupManifest(dest)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"grub2/grubenv": true, "grub2/grub.cfg": true, "loader/entries/old.conf": true,
		"loader/entries/other.conf": true, "vmlinuz-old": true, "vmlinuz-other": true}
	if len(m.Files) != len(want) {
		t.Errorf("backed up %+v", m.Files)
	}
	for _, f := range m.Files {
		if !want[f.Path] {
			t.Errorf("unexpected %s", f.Path)
		}
	}
	envBefore := readFile(t, g.EnvPath())

	// The upgrade: a new kernel and entry, a trial, a changed old kernel.
	writeFile(t, filepath.Join(boot, "vmlinuz-new"), "kernel new")
	writeFile(t, filepath.Join(boot, "vmlinuz-old"), "clobbered")
	e, _ := ParseEntry("kos-upgrade-new", []byte("title new\nlinux /vmlinuz-new\n"))
	if err := g.AddEntry(ctx, e); err != nil {
		t.Fatal(err)
	}
	if err := g.TrialBoot(ctx, "kos-upgrade-new", 3); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(boot, "loader/entries/other.conf"))
	// A second Backup (a retried step) keeps the first one.
	if err := Backup(ctx, root, boot, dest); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(dest, "files/vmlinuz-old")); got != "kernel old" {
		t.Fatalf("backup overwritten: %s", got)
	}

	for i := 0; i < 2; i++ {
		if err := Restore(ctx, root, boot, dest); err != nil {
			t.Fatal(err)
		}
		if got := readFile(t, filepath.Join(boot, "vmlinuz-old")); got != "kernel old" {
			t.Errorf("vmlinuz-old = %s", got)
		}
		if readFile(t, g.EnvPath()) != envBefore {
			t.Error("grubenv not restored")
		}
		if _, err := os.Stat(filepath.Join(boot, "loader/entries/other.conf")); err != nil {
			t.Error("deleted entry not restored")
		}
		for _, gone := range []string{"loader/entries/kos-upgrade-new.conf", "vmlinuz-new"} {
			if _, err := os.Stat(filepath.Join(boot, gone)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s left after restore", gone)
			}
		}
	}
	if err := Restore(ctx, root, boot, t.TempDir()); !errors.Is(err, ErrNoBackup) {
		t.Errorf("restore without backup: %v", err)
	}
}

func TestBackupBootOnRootFS(t *testing.T) {
	// /boot not separate: EL8 entries say "linux /boot/vmlinuz-...".
	dir := t.TempDir()
	boot := filepath.Join(dir, "boot")
	writeFile(t, filepath.Join(boot, "vmlinuz-1"), "k")
	writeFile(t, filepath.Join(boot, "initramfs-1.img"), "i")
	writeFile(t, filepath.Join(boot, "loader/entries/a.conf"), "linux /boot/vmlinuz-1\ninitrd /boot/initramfs-1.img $tuned_initrd\ninitrd /missing.img\n")
	dest := filepath.Join(dir, "b")
	if err := Backup(context.Background(), sysroot.Root{Dir: dir}, boot, dest); err != nil {
		t.Fatal(err)
	}
	m, _ := ReadBackupManifest(dest)
	if len(m.Files) != 3 || len(m.Missing) != 1 || m.Missing[0] != "/missing.img" {
		t.Errorf("manifest %+v", m)
	}
}

func TestLeftovers(t *testing.T) {
	ctx := context.Background()
	g, root := grubRoot(t, true)
	boot := root.Path("/boot")
	writeFile(t, filepath.Join(boot, "vmlinuz-old"), "k")
	writeFile(t, filepath.Join(boot, "vmlinuz-failed"), "k")
	writeFile(t, filepath.Join(boot, "initramfs-failed.img"), "i")
	writeFile(t, filepath.Join(boot, "vmlinuz-trial"), "k")
	for id, body := range map[string]string{
		"kos-upgrade-failed": "linux /vmlinuz-failed\ninitrd /initramfs-failed.img\n",
		"kos-upgrade-shared": "linux /vmlinuz-old\n", // shares the kernel of "old"
		"kos-upgrade-trial":  "linux /vmlinuz-trial\n",
	} {
		e, _ := ParseEntry(id, []byte(body))
		if err := g.AddEntry(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.TrialBoot(ctx, "kos-upgrade-trial", 2); err != nil {
		t.Fatal(err)
	}
	ls, err := Leftovers(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, l := range ls {
		got[l.Entry.ID] = len(l.Files)
	}
	if len(got) != 2 || got["kos-upgrade-failed"] != 2 || got["kos-upgrade-shared"] != 0 {
		t.Fatalf("leftovers %v", got)
	}
	for i := 0; i < 2; i++ {
		if err := RemoveLeftovers(ctx, g, ls); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"vmlinuz-failed", "initramfs-failed.img"} {
		if _, err := os.Stat(filepath.Join(boot, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s not removed", p)
		}
	}
	for _, p := range []string{"vmlinuz-old", "vmlinuz-trial", "loader/entries/kos-upgrade-trial.conf"} {
		if _, err := os.Stat(filepath.Join(boot, p)); err != nil {
			t.Errorf("%s removed", p)
		}
	}
}

// TestEntryFilesStayInBoot: an entry naming a file outside the boot
// directory ("linux /../../etc/x") neither brings it into a backup nor
// makes it a leftover to delete.
func TestEntryFilesStayInBoot(t *testing.T) {
	ctx := context.Background()
	g, root := grubRoot(t, true)
	boot := root.Path("/boot")
	outside := filepath.Join(filepath.Dir(root.Dir), "precious")
	writeFile(t, outside, "keep me")
	rel, _ := filepath.Rel(boot, outside)
	e, _ := ParseEntry("kos-upgrade-evil", []byte("linux /"+rel+"\ninitrd /boot/"+rel+"\n"))
	if err := g.AddEntry(ctx, e); err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(t.TempDir(), "b")
	if err := Backup(ctx, root, boot, dest); err != nil {
		t.Fatal(err)
	}
	m, err := ReadBackupManifest(dest)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range m.Files {
		if strings.Contains(f.Path, "..") {
			t.Errorf("the backup holds %s", f.Path)
		}
	}
	ls, err := Leftovers(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	if err := RemoveLeftovers(ctx, g, ls); err != nil {
		t.Fatal(err)
	}
	if readFile(t, outside) != "keep me" {
		t.Errorf("%s was changed", outside)
	}
}
