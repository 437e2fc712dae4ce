package el8

import (
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// grub2Recipe builds grub2 (grub2-build.sh); its text is part of the key.
//
//go:embed grub2-build.sh
var grub2Recipe string

// Grub2 tarballs in Sources().
const (
	Grub2Tarball     = "grub2-rhel-8-main.tar.xz"
	Grub2DistTarball = "grub2-dist-git-rhel-8.8.0.tar.xz"
	DracutTarball    = "dracut-049.tar.xz"
)

// Grub2BuildTools are the commands the grub2 build runs (their Debian
// packages are in test/run.sh's need list: autoconf automake autopoint
// libtool bison flex gettext pkg-config librpm-dev libfreetype-dev
// liblzma-dev python3 build-essential).
var Grub2BuildTools = []string{"autoconf", "automake", "autopoint", "libtoolize", "bison", "flex", "gcc", "make",
	"pkg-config", "python3", "msgfmt", "tar", "xz"}

// Grub2 is EL8's grub2 (rhel-8-main, 2.02 with Red Hat's BLS patches)
// built for x86_64 EFI: an install tree with prefix /usr (Dir/usr/bin,
// Dir/usr/sbin, Dir/etc/grub.d, Dir/usr/lib/grub/x86_64-efi, program names
// grub2-*), plus 20-grub.install and grub.macros of the RHEL 8.8 package and
// efi-modules.txt (grub2.spec's x86_64 EFI image modules).
type Grub2 struct {
	Dir string
}

// Tool returns the path of a grub2 program (usr/bin or usr/sbin).
func (g *Grub2) Tool(name string) string {
	for _, d := range []string{"usr/bin", "usr/sbin"} {
		p := filepath.Join(g.Dir, d, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return filepath.Join(g.Dir, "usr/bin", name)
}

// ModulesDir is the directory of the x86_64-efi modules (grub2-mkimage -d).
func (g *Grub2) ModulesDir() string { return filepath.Join(g.Dir, "usr/lib/grub/x86_64-efi") }

// GrubInstallPlugin is EL8's kernel-install plugin 20-grub.install.
func (g *Grub2) GrubInstallPlugin() string { return filepath.Join(g.Dir, "20-grub.install") }

// EFIModules returns the modules grub2.spec puts into the x86_64 EFI image.
func (g *Grub2) EFIModules() ([]string, error) {
	data, err := os.ReadFile(filepath.Join(g.Dir, "efi-modules.txt"))
	if err != nil {
		return nil, fmt.Errorf("cannot read the EFI module list: %w", err)
	}
	return strings.Fields(string(data)), nil
}

// MkImage makes the EFI executable the firmware loads (grub2-mkimage -O
// x86_64-efi with grub2.spec's modules), whose prefix is /EFI/<vendor> on
// the ESP, as grub2-efi-x64's grubx64.efi.
func (g *Grub2) MkImage(ctx context.Context, out, vendor string) error {
	mods, err := g.EFIModules()
	if err != nil {
		return err
	}
	args := append([]string{"-O", "x86_64-efi", "-o", out, "-p", "/EFI/" + vendor, "-d", g.ModulesDir()}, mods...)
	if o, err := exec.CommandContext(ctx, g.Tool("grub2-mkimage"), args...).CombinedOutput(); err != nil {
		return fmt.Errorf("cannot make the grub2 EFI image: grub2-mkimage %s: %s: %w", strings.Join(args, " "), o, err)
	}
	return nil
}

// BuildGrub2 builds EL8's grub2 from Sources(), or returns the cached build
// (CacheDir()/grub2-<key>). A fresh build takes several minutes.
func BuildGrub2(ctx context.Context) (*Grub2, error) {
	src, err := Sources()
	if err != nil {
		return nil, err
	}
	tarball, dist := filepath.Join(src, Grub2Tarball), filepath.Join(src, Grub2DistTarball)
	key, err := Key("grub2\x00"+grub2Recipe, tarball, dist)
	if err != nil {
		return nil, err
	}
	dir, err := Cached("grub2", key, func(out string) error {
		work, err := os.MkdirTemp("", "kos-el8-grub2-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(work)
		cmd := exec.CommandContext(ctx, "bash", "-c", grub2Recipe)
		cmd.Env = append(os.Environ(), "SRC="+tarball, "DIST="+dist, "OUT="+out, "WORK="+work, "LC_ALL=C")
		var o bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &o
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("grub2-build.sh: %w\n%s", err, o.String())
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &Grub2{Dir: dir}, nil
}

// MustGrub2 is BuildGrub2 for tests: it skips (fails in CI) without root
// or the build tools, and fails the test when the build fails.
func MustGrub2(t testing.TB) *Grub2 {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTools(t, Grub2BuildTools...)
	g, err := BuildGrub2(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// KernelInstall is kernel-install as EL8 has it, with its plugins, as a
// tree rooted like a system: usr/bin/kernel-install and
// usr/lib/kernel/install.d/ with 50-depmod.install and 90-loaderentry.install
// (systemd 239, the systemd-udev package), 50-dracut.install (dracut 049)
// and 20-grub.install (the RHEL 8.8 grub2-tools package).
type KernelInstall struct {
	Dir string
}

// kernelInstallFiles maps tarball members to their place in the tree.
var kernelInstallFiles = []struct{ tarball, member, dst string }{
	{SystemdTarball, "systemd-v239-rhel8/src/kernel-install/kernel-install", "usr/bin/kernel-install"},
	{SystemdTarball, "systemd-v239-rhel8/src/kernel-install/50-depmod.install", "usr/lib/kernel/install.d/50-depmod.install"},
	{SystemdTarball, "systemd-v239-rhel8/src/kernel-install/90-loaderentry.install", "usr/lib/kernel/install.d/90-loaderentry.install"},
	{DracutTarball, "dracut-049/50-dracut.install", "usr/lib/kernel/install.d/50-dracut.install"},
	{Grub2DistTarball, "grub2-dist-git-rhel-8.8.0/20-grub.install", "usr/lib/kernel/install.d/20-grub.install"},
}

// BuildKernelInstall extracts them (cached like the builds).
func BuildKernelInstall(ctx context.Context) (*KernelInstall, error) {
	src, err := Sources()
	if err != nil {
		return nil, err
	}
	var ins []string
	var recipe strings.Builder
	seen := map[string]bool{}
	for _, f := range kernelInstallFiles {
		fmt.Fprintf(&recipe, "%s %s %s\n", f.tarball, f.member, f.dst)
		if !seen[f.tarball] {
			seen[f.tarball] = true
			ins = append(ins, filepath.Join(src, f.tarball))
		}
	}
	key, err := Key("kernel-install\x00"+recipe.String(), ins...)
	if err != nil {
		return nil, err
	}
	dir, err := Cached("kernel-install", key, func(out string) error {
		for _, f := range kernelInstallFiles {
			data, err := exec.CommandContext(ctx, "tar", "-xOJf", filepath.Join(src, f.tarball), f.member).Output()
			if err != nil {
				return fmt.Errorf("cannot extract %s from %s: %w", f.member, f.tarball, err)
			}
			dst := filepath.Join(out, f.dst)
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(dst, data, 0o755); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &KernelInstall{Dir: dir}, nil
}
