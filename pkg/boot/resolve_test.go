package boot

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// A grubenv link is resolved as it would be inside the root; a link that
// leaves the root (absolute, or relative through ..) is refused.
func TestResolveInConfined(t *testing.T) {
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "grubenv"), []byte("outside"), 0o644)
	for _, tc := range []struct {
		name    string
		links   map[string]string // in-root path -> link target
		p       string
		want    string // in-root path
		wantErr string
	}{
		{name: "EL8 relative", links: map[string]string{"/boot/grub2/grubenv": "../efi/EFI/redhat/grubenv"},
			p: "/boot/grub2/grubenv", want: "/boot/efi/EFI/redhat/grubenv"},
		{name: "absolute re-rooted", links: map[string]string{"/boot/grub2/grubenv": "/boot/efi/EFI/redhat/grubenv"},
			p: "/boot/grub2/grubenv", want: "/boot/efi/EFI/redhat/grubenv"},
		{name: "chain", links: map[string]string{"/boot/grub2/grubenv": "../x", "/boot/x": "efi/EFI/redhat/grubenv"},
			p: "/boot/grub2/grubenv", want: "/boot/efi/EFI/redhat/grubenv"},
		{name: "linked directory", links: map[string]string{"/boot/grub2": "efi/EFI/redhat"},
			p: "/boot/grub2/grubenv", want: "/boot/efi/EFI/redhat/grubenv"},
		{name: "missing target", links: map[string]string{"/boot/grub2/grubenv": "../nope/grubenv"},
			p: "/boot/grub2/grubenv", want: "/boot/nope/grubenv"},
		{name: "not a link", p: "/boot/efi/EFI/redhat/grubenv", want: "/boot/efi/EFI/redhat/grubenv"},
		{name: "dot dot out of the root", links: map[string]string{"/boot/grub2/grubenv": "../../../../../../../../../../.." + outside + "/grubenv"},
			p: "/boot/grub2/grubenv", wantErr: "outside the root"},
		{name: "dot dot to the root's parent", links: map[string]string{"/boot/grub2/grubenv": "../../../grubenv"},
			p: "/boot/grub2/grubenv", wantErr: "outside the root"},
		{name: "loop", links: map[string]string{"/boot/grub2/grubenv": "grubenv"},
			p: "/boot/grub2/grubenv", wantErr: "too many symbolic links"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root, _ := sysroot.New(t.TempDir())
			os.MkdirAll(root.Path("/boot/efi/EFI/redhat"), 0o755)
			os.MkdirAll(root.Path("/boot/grub2"), 0o755)
			os.WriteFile(root.Path("/boot/efi/EFI/redhat/grubenv"), []byte("inside"), 0o644)
			for l, target := range tc.links {
				os.RemoveAll(root.Path(l))
				if err := os.Symlink(target, root.Path(l)); err != nil {
					t.Fatal(err)
				}
			}
			got, err := resolveIn(root.Dir, root.Path(tc.p))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("resolveIn: %q, %v; want error %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != root.Path(tc.want) {
				t.Fatalf("resolveIn: %q, %v; want %q", got, err, root.Path(tc.want))
			}
		})
	}
}

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
