package boot

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

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
