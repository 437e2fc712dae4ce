package boot

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// NewGrub refuses a grubenv linked out of the root rather than reading or
// writing a file of the host.
func TestGrubEnvSymlinkOutOfRoot(t *testing.T) {
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "grubenv"), []byte("host file"), 0o644)
	for _, tc := range []struct{ name, link string }{
		{"relative through ..", "../../../../../../../../../../../../.." + outside + "/grubenv"},
		{"relative to the parent of the root", "../../../grubenv"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			os.WriteFile(filepath.Join(parent, "grubenv"), []byte("host file"), 0o644)
			root, _ := sysroot.New(filepath.Join(parent, "root"))
			os.MkdirAll(root.Path("/boot/grub2"), 0o755)
			os.MkdirAll(root.Path("/boot/loader/entries"), 0o755)
			os.Symlink(tc.link, root.Path("/boot/grub2/grubenv"))
			g, err := NewGrub(root)
			if err == nil || !strings.Contains(err.Error(), "outside the root") {
				t.Fatalf("NewGrub: env %v, %v; want an error", g, err)
			}
			if _, err := Detect(root); err == nil {
				t.Fatal("Detect accepted a grubenv outside the root")
			}
		})
	}
}

// Backup and Restore follow a grubenv link as it resolves inside the root
// (EL8 links it into the ESP; a hand-made link may be absolute), never to
// a file of the host, and neither blocks on a FIFO.
func TestBackupRestoreLinksConfined(t *testing.T) {
	for _, tc := range []struct {
		name string
		// setup changes the root after grubRoot; it returns the file of
		// the root grubenv is expected in (empty: Backup must fail).
		setup func(t *testing.T, root sysroot.Root, outside string) string
		// afterBackup changes /boot between Backup and Restore.
		afterBackup func(t *testing.T, root sysroot.Root, outside string)
		wantErr     string // of Backup, or of Restore when afterBackup is set
	}{
		{name: "relative link into the ESP", setup: func(t *testing.T, root sysroot.Root, _ string) string {
			return linkGrubenv(t, root, "../efi/EFI/redhat/grubenv")
		}},
		{name: "absolute link into the ESP", setup: func(t *testing.T, root sysroot.Root, _ string) string {
			return linkGrubenv(t, root, "/boot/efi/EFI/redhat/grubenv")
		}},
		{name: "link out of the root", setup: func(t *testing.T, root sysroot.Root, outside string) string {
			os.Remove(root.Path("/boot/grub2/grubenv"))
			mustSymlink(t, "../../../../../../../../../../../../../../.."+outside, root.Path("/boot/grub2/grubenv"))
			return ""
		}, wantErr: "outside the root"},
		{name: "FIFO", setup: func(t *testing.T, root sysroot.Root, _ string) string {
			os.Remove(root.Path("/boot/grub2/grub.cfg"))
			if err := syscall.Mkfifo(root.Path("/boot/grub2/grub.cfg"), 0o644); err != nil {
				t.Fatal(err)
			}
			return ""
		}, wantErr: "not a regular file"},
		{name: "link out of the root made after the backup", afterBackup: func(t *testing.T, root sysroot.Root, outside string) {
			os.Remove(root.Path("/boot/grub2/grubenv"))
			mustSymlink(t, "../../../../../../../../../../../../../../.."+outside, root.Path("/boot/grub2/grubenv"))
		}, wantErr: "outside the root"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			outside := filepath.Join(t.TempDir(), "grubenv")
			os.WriteFile(outside, []byte("host file"), 0o644)
			_, root := grubRoot(t, true)
			envFile := root.Path("/boot/grub2/grubenv")
			if tc.setup != nil {
				envFile = tc.setup(t, root, outside)
			}
			boot := root.Path("/boot")
			dest := filepath.Join(t.TempDir(), "backup")
			err := runWithin(t, func() error { return Backup(ctx, root, boot, dest) })
			if tc.afterBackup == nil && tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Backup: %v, want %q", err, tc.wantErr)
				}
				if b, _ := os.ReadFile(outside); string(b) != "host file" {
					t.Fatal("host file changed")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			before := readFile(t, envFile)
			env := NewEnv()
			env.Set(EnvSavedEntry, "changed")
			if err := WriteEnv(envFile, env); err != nil {
				t.Fatal(err)
			}
			if tc.afterBackup != nil {
				tc.afterBackup(t, root, outside)
			}
			err = runWithin(t, func() error { return Restore(ctx, root, boot, dest) })
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Restore: %v, want %q", err, tc.wantErr)
				}
				if b, _ := os.ReadFile(outside); string(b) != "host file" {
					t.Fatal("host file changed")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if readFile(t, envFile) != before {
				t.Error("grubenv not restored")
			}
			if fi, err := os.Lstat(root.Path("/boot/grub2/grubenv")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
				t.Error("grubenv link replaced by a file")
			}
		})
	}
}

// linkGrubenv moves grubenv of a grubRoot to the ESP and links it.
func linkGrubenv(t *testing.T, root sysroot.Root, target string) string {
	t.Helper()
	esp := root.Path("/boot/efi/EFI/redhat/grubenv")
	os.MkdirAll(filepath.Dir(esp), 0o755)
	if err := os.Rename(root.Path("/boot/grub2/grubenv"), esp); err != nil {
		t.Fatal(err)
	}
	mustSymlink(t, target, root.Path("/boot/grub2/grubenv"))
	return esp
}

func mustSymlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// runWithin runs f and fails the test if it does not return in 30 s.
func runWithin(t *testing.T, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("hangs")
		return nil
	}
}

// What boot reads of /boot and /etc is read without blocking and only
// from regular files: a FIFO or a device where a file is expected is an
// error (or, for /etc/default/grub and grub.cfg, not there), never a hang.
func TestBootReadsDoNotBlock(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, root sysroot.Root)
		call  func(g *Grub) error
		want  string // in the error; "" for none
	}{
		{name: "/etc/default/grub a FIFO", setup: func(t *testing.T, root sysroot.Root) {
			os.MkdirAll(root.Path("/etc/default"), 0o755)
			mkfifo(t, root.Path("/etc/default/grub"))
		}, call: func(g *Grub) error { _ = g.grubDefault(); return nil }},
		{name: "grub.cfg a FIFO", setup: func(t *testing.T, root sysroot.Root) {
			os.Remove(root.Path("/boot/grub2/grub.cfg"))
			mkfifo(t, root.Path("/boot/grub2/grub.cfg"))
		}, call: func(g *Grub) error {
			if g.HasTrialConfig() {
				return errors.New("a FIFO has the trial configuration")
			}
			return nil
		}},
		{name: "an entry a FIFO", setup: func(t *testing.T, root sysroot.Root) {
			mkfifo(t, root.Path("/boot/loader/entries/fifo.conf"))
		}, call: func(g *Grub) error { _, err := g.Entries(context.Background()); return err }, want: "not a regular file"},
		{name: "grubenv linked to a device", setup: func(t *testing.T, root sysroot.Root) {
			testenv.RequireRoot(t) // mknod
			os.MkdirAll(root.Path("/dev"), 0o755)
			if err := syscall.Mknod(root.Path("/dev/zero"), syscall.S_IFCHR|0o666, 1<<8|5); err != nil {
				t.Fatal(err)
			}
			os.Remove(root.Path("/boot/grub2/grubenv"))
			mustSymlink(t, "/dev/zero", root.Path("/boot/grub2/grubenv"))
		}, call: func(g *Grub) error { _, err := g.Env(); return err }, want: "not a regular file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, root := grubRoot(t, true)
			tc.setup(t, root)
			g2, err := NewGrub(root)
			if err != nil {
				t.Fatal(err)
			}
			g2.Check = g.Check
			err = runWithin(t, func() error { return tc.call(g2) })
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("%v, want %q", err, tc.want)
			}
		})
	}
}

func mkfifo(t *testing.T, p string) {
	t.Helper()
	if err := syscall.Mkfifo(p, 0o644); err != nil {
		t.Fatal(err)
	}
}

// A /boot that is a symbolic link is followed inside the root (absolute
// targets too), never to the host's: the boot loader is looked for, and
// its entries read and written, in the root only.
func TestBootDirLinked(t *testing.T) {
	outside := t.TempDir()
	for _, tc := range []struct {
		name    string
		target  func(root sysroot.Root) string // the link's target
		dir     func(root sysroot.Root) string // where the boot files are made
		want    string                         // the entries directory, inside the root
		wantErr string
	}{
		{name: "absolute link inside the root",
			target: func(sysroot.Root) string { return "/realboot" },
			dir:    func(root sysroot.Root) string { return root.Path("/realboot") },
			want:   "/realboot/loader/entries"},
		{name: "relative link inside the root",
			target: func(sysroot.Root) string { return "mnt/boot" },
			dir:    func(root sysroot.Root) string { return root.Path("/mnt/boot") },
			want:   "/mnt/boot/loader/entries"},
		{name: "link out of the root",
			target:  func(sysroot.Root) string { return "../../../../../../../../../../../.." + outside },
			dir:     func(sysroot.Root) string { return outside },
			wantErr: "outside the root"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root, _ := sysroot.New(t.TempDir())
			dir := tc.dir(root)
			os.MkdirAll(filepath.Join(dir, "grub2"), 0o755)
			os.MkdirAll(filepath.Join(dir, "loader/entries"), 0o755)
			os.WriteFile(filepath.Join(dir, "grub2/grub.cfg"), []byte("blscfg\n"), 0o644)
			mustSymlink(t, tc.target(root), root.Path("/boot"))
			bl, err := Detect(root)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Detect: %v, %v; want %q", bl, err, tc.wantErr)
				}
				return
			}
			if err != nil || bl.EntriesDir() != root.Path(tc.want) {
				t.Fatalf("Detect: entries %v, %v; want %s", bl, err, root.Path(tc.want))
			}
		})
	}
}

// A loader/entries directory that is a symbolic link must lead where it
// leads for the root's own processes: a relative link inside the root is
// used (the entries read and written in the root's directory), an
// absolute link of a root other than / (the host would follow it to its
// own directory of that name) and a link out of the root are refused
// before anything is read or written.
func TestEntriesDirLinkConfined(t *testing.T) {
	loaders := []struct {
		name string
		// setup makes a root of the loader whose entries directory
		// (returned, relative to the root) is still to be made.
		setup func(t *testing.T, root sysroot.Root) string
		open  func(root sysroot.Root) (Bootloader, error)
	}{
		{name: "grub2", setup: func(t *testing.T, root sysroot.Root) string {
			os.MkdirAll(root.Path("/boot/grub2"), 0o755)
			os.WriteFile(root.Path("/boot/grub2/grub.cfg"), []byte("set default=\"${saved_entry}\"\n"), 0o644)
			if err := WriteEnv(root.Path("/boot/grub2/grubenv"), NewEnv()); err != nil {
				t.Fatal(err)
			}
			os.MkdirAll(root.Path("/boot/loader"), 0o755)
			return "/boot/loader/entries"
		}, open: func(root sysroot.Root) (Bootloader, error) { return NewGrub(root) }},
		{name: "systemd-boot", setup: func(t *testing.T, root sysroot.Root) string {
			os.MkdirAll(root.Path("/efi/EFI/systemd"), 0o755)
			os.WriteFile(root.Path("/efi/EFI/systemd/systemd-bootx64.efi"), []byte("MZ"), 0o644)
			os.MkdirAll(root.Path("/efi/loader"), 0o755)
			os.WriteFile(root.Path("/efi/loader/loader.conf"), nil, 0o644)
			return "/efi/loader/entries"
		}, open: func(root sysroot.Root) (Bootloader, error) { return NewSystemdBoot(root) }},
	}
	for _, l := range loaders {
		t.Run(l.name+"/relative link inside the root", func(t *testing.T) {
			root, _ := sysroot.New(t.TempDir())
			entries := l.setup(t, root)
			os.MkdirAll(root.Path(filepath.Dir(entries)+"/entries.d"), 0o755)
			mustSymlink(t, "entries.d", root.Path(entries))
			bl, err := l.open(root)
			if err != nil {
				t.Fatal(err)
			}
			e, _ := ParseEntry("new", []byte("title new\nversion 2\nlinux /vmlinuz-new\n"))
			if err := bl.AddEntry(context.Background(), e); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(root.Path(filepath.Dir(entries) + "/entries.d/new.conf")); err != nil {
				t.Fatalf("the entry is not in the root's directory: %v", err)
			}
		})
		t.Run(l.name+"/dangling link", func(t *testing.T) {
			root, _ := sysroot.New(t.TempDir())
			entries := l.setup(t, root)
			mustSymlink(t, "entries.d", root.Path(entries))
			bl, err := l.open(root)
			if l.name == "grub2" {
				if !errors.Is(err, ErrNotSupported) {
					t.Fatalf("NewGrub: %v, %v; want ErrNotSupported (no entries directory)", bl, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			e, _ := ParseEntry("new", []byte("title new\nversion 2\nlinux /vmlinuz-new\n"))
			if err := bl.AddEntry(context.Background(), e); err == nil {
				t.Fatal("an entry was written through a dangling link")
			}
		})
		for _, tc := range []struct{ name, want string }{
			{"absolute link", "elsewhere from the host"},
			{"link out of the root", "outside the root"},
		} {
			t.Run(l.name+"/"+tc.name, func(t *testing.T) {
				outside := t.TempDir()
				root, _ := sysroot.New(t.TempDir())
				entries := l.setup(t, root)
				target := outside // absolute: the root's own /tmp/..., the host's outside
				os.MkdirAll(root.Path(outside), 0o755)
				if tc.name == "link out of the root" {
					target = strings.Repeat("../", 20) + strings.TrimPrefix(outside, "/")
				}
				mustSymlink(t, target, root.Path(entries))
				if bl, err := l.open(root); err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("%s opened (%v, %v), want an error saying %q", l.name, bl, err, tc.want)
				}
				if des, _ := os.ReadDir(outside); len(des) != 0 {
					t.Fatalf("something was written outside the root: %v", des)
				}
			})
		}
	}
}
