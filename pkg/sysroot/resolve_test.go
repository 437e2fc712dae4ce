package sysroot

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A link is resolved as it would be inside the root (EL8 links grubenv into
// the ESP); a link that leaves the root through .. is refused.
func TestResolve(t *testing.T) {
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
			root, _ := New(t.TempDir())
			os.MkdirAll(root.Path("/boot/efi/EFI/redhat"), 0o755)
			os.MkdirAll(root.Path("/boot/grub2"), 0o755)
			os.WriteFile(root.Path("/boot/efi/EFI/redhat/grubenv"), []byte("inside"), 0o644)
			for l, target := range tc.links {
				os.RemoveAll(root.Path(l))
				if err := os.Symlink(target, root.Path(l)); err != nil {
					t.Fatal(err)
				}
			}
			got, err := root.Resolve(root.Path(tc.p))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Resolve: %q, %v; want error %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != root.Path(tc.want) {
				t.Fatalf("Resolve: %q, %v; want %q", got, err, root.Path(tc.want))
			}
		})
	}
}

// ReadFile follows links inside the root only, reads regular files only,
// never blocks, and caps the size.
func TestReadFile(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(outside, []byte("host"), 0o600)
	for _, tc := range []struct {
		name    string
		setup   func(root Root) error
		want    string
		wantErr string
	}{
		{name: "regular", setup: func(root Root) error { return os.WriteFile(root.Path("/etc/os-release"), []byte("ID=kos\n"), 0o644) }, want: "ID=kos\n"},
		{name: "relative link, as distributions ship os-release", setup: func(root Root) error {
			os.MkdirAll(root.Path("/usr/lib"), 0o755)
			os.WriteFile(root.Path("/usr/lib/os-release"), []byte("ID=kos\n"), 0o644)
			return os.Symlink("../usr/lib/os-release", root.Path("/etc/os-release"))
		}, want: "ID=kos\n"},
		{name: "absolute link, read in the root", setup: func(root Root) error {
			os.MkdirAll(root.Path(filepath.Dir(outside)), 0o755)
			os.WriteFile(root.Path(outside), []byte("root's"), 0o644)
			return os.Symlink(outside, root.Path("/etc/os-release"))
		}, want: "root's"},
		{name: "link out of the root", setup: func(root Root) error {
			return os.Symlink("../../../../../../../../../../../.."+outside, root.Path("/etc/os-release"))
		}, wantErr: "outside the root"},
		{name: "FIFO", setup: func(root Root) error { return syscall.Mkfifo(root.Path("/etc/os-release"), 0o644) }, wantErr: "not a regular file"},
		{name: "link to a device", setup: func(root Root) error {
			os.MkdirAll(root.Path("/dev"), 0o755)
			if err := syscall.Mknod(root.Path("/dev/zero"), syscall.S_IFCHR|0o666, 1<<8|5); err != nil {
				return err
			}
			return os.Symlink("/dev/zero", root.Path("/etc/os-release"))
		}, wantErr: "not a regular file"},
		{name: "too large", setup: func(root Root) error {
			return os.WriteFile(root.Path("/etc/os-release"), make([]byte, 100), 0o644)
		}, wantErr: "larger than"},
		{name: "missing", setup: func(Root) error { return nil }, wantErr: "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "link to a device" && os.Geteuid() != 0 {
				t.Skip("mknod needs root")
			}
			root, _ := New(t.TempDir())
			os.MkdirAll(root.Path("/etc"), 0o755)
			if err := tc.setup(root); err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			var b []byte
			var err error
			go func() { b, err = root.ReadFile(root.Path("/etc/os-release"), 64); close(done) }()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				t.Fatal("ReadFile hangs")
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ReadFile: %q, %v; want error %q", b, err, tc.wantErr)
				}
				return
			}
			if err != nil || string(b) != tc.want {
				t.Fatalf("ReadFile: %q, %v; want %q", b, err, tc.want)
			}
		})
	}
}

// OSRelease does not block on a FIFO at /etc/os-release: it reads
// /usr/lib/os-release instead.
func TestOSReleaseFIFO(t *testing.T) {
	root, _ := New(t.TempDir())
	os.MkdirAll(root.Path("/etc"), 0o755)
	os.MkdirAll(root.Path("/usr/lib"), 0o755)
	os.WriteFile(root.Path("/usr/lib/os-release"), []byte("ID=kos\nVERSION_ID=5.8\n"), 0o644)
	if err := syscall.Mkfifo(root.Path("/etc/os-release"), 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var rel OSRelease
	var err error
	go func() { rel, err = root.OSRelease(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("OSRelease hangs on a FIFO")
	}
	if err != nil || rel.ID != "kos" || rel.VersionID != "5.8" {
		t.Fatalf("OSRelease: %+v, %v", rel, err)
	}
}
