package boot

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/atomicfile"
	"github.com/keyarchos/kos-upgrade/pkg/execlog"
	"github.com/keyarchos/kos-upgrade/pkg/safefile"
)

// Kernels, their initramfs images and kernel-install's entries: what the
// boot step of an upgrade needs to know of the kernels a transaction
// installed into a new root, and to do about them.

// Kernels returns the kernel versions of the system at root, each with its
// vmlinuz: the directories of /lib/modules holding one (EL8's kernel-core
// ships it there).
func Kernels(root string) map[string]string {
	out := map[string]string{}
	for _, d := range modulesDirs(root) {
		m, _ := filepath.Glob(filepath.Join(d, "*", "vmlinuz"))
		for _, p := range m {
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
				out[filepath.Base(filepath.Dir(p))] = p
			}
		}
	}
	return out
}

func modulesDirs(root string) []string {
	dirs := []string{filepath.Join(root, "usr/lib/modules")}
	if fi, err := os.Lstat(filepath.Join(root, "lib")); err == nil && fi.IsDir() {
		dirs = append(dirs, filepath.Join(root, "lib/modules"))
	}
	return dirs
}

// NewKernels returns the kernels of newRoot that oldRoot does not have,
// oldest first (VerCmp), and every kernel of newRoot with its vmlinuz.
func NewKernels(oldRoot, newRoot string) ([]string, map[string]string) {
	old, cur := Kernels(oldRoot), Kernels(newRoot)
	var vs []string
	for v := range cur {
		if _, ok := old[v]; !ok {
			vs = append(vs, v)
		}
	}
	sort.Slice(vs, func(i, j int) bool { return VerCmp(vs[i], vs[j]) < 0 })
	return vs, cur
}

// VerCmp compares versions the way rpm does, enough for kernel versions:
// digit runs numerically, letter runs alphabetically, digits newer. It
// returns -1, 0 or 1.
func VerCmp(a, b string) int {
	sa, sb := verSegments(a), verSegments(b)
	for i := 0; i < len(sa) && i < len(sb); i++ {
		x, y := sa[i], sb[i]
		xd, yd := isDigit(x[0]), isDigit(y[0])
		switch {
		case xd && !yd:
			return 1
		case !xd && yd:
			return -1
		case xd:
			x, y = strings.TrimLeft(x, "0"), strings.TrimLeft(y, "0")
			if len(x) != len(y) {
				if len(x) > len(y) {
					return 1
				}
				return -1
			}
		}
		if c := strings.Compare(x, y); c != 0 {
			return c
		}
	}
	switch {
	case len(sa) > len(sb):
		return 1
	case len(sa) < len(sb):
		return -1
	}
	return 0
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// verSegments splits s into its runs of digits and of letters.
func verSegments(s string) []string {
	var out []string
	for i := 0; i < len(s); {
		d, a := isDigit(s[i]), isAlpha(s[i])
		if !d && !a {
			i++
			continue
		}
		j := i
		for j < len(s) && (d && isDigit(s[j]) || a && isAlpha(s[j])) {
			j++
		}
		out = append(out, s[i:j])
		i = j
	}
	return out
}

// FindTool returns the path inside root of a program in /usr/bin or
// /usr/sbin, or "".
func FindTool(root, name string) string {
	for _, d := range []string{"/usr/bin", "/usr/sbin"} {
		if fi, err := os.Stat(filepath.Join(root, d, name)); err == nil && fi.Mode().IsRegular() {
			return filepath.Join(d, name)
		}
	}
	return ""
}

// Dracut builds the initramfs rel (relative to $BOOT, which is mounted at
// /boot in target) of kernel kv with dracut, the new root's own (a path
// inside target, FindTool), chrooted into target. log receives the command.
func Dracut(ctx context.Context, log *slog.Logger, target, dracut, rel, kv string) error {
	_, err := execlog.Runner{Log: log}.Run(ctx, "build the initramfs", "chroot", target, dracut, "-f", filepath.Join("/boot", rel), kv)
	return err
}

// InstallKernel copies the kernel image vmlinuz to dst (atomically; not
// when dst holds it already).
func InstallKernel(vmlinuz, dst string) error {
	data, err := safefile.ReadFollowing(vmlinuz, maxKernel)
	if err != nil {
		return fmt.Errorf("cannot read the new kernel: %w", err)
	}
	if cur, err := safefile.ReadFollowing(dst, maxKernel); err == nil && bytes.Equal(cur, data) {
		return nil
	}
	if err := atomicfile.WriteFile(dst, data, 0o755); err != nil {
		return fmt.Errorf("cannot copy the new kernel to %s: %w", dst, err)
	}
	return nil
}

// EntryOptions returns the kernel options of e with the grubenv variables
// vars expanded; an entry using $kernelopts where grubenv has none cannot
// tell its root and is an error.
func EntryOptions(e *Entry, vars map[string]string) (Options, error) {
	raw := ExpandGrubVars(strings.Join(e.GetAll(KeyOptions), " "), vars)
	if strings.Contains(raw, "$kernelopts") || strings.Contains(raw, "${kernelopts}") {
		return nil, fmt.Errorf("entry %s uses $kernelopts but grubenv has no kernelopts: cannot tell its root", e.ID)
	}
	return ParseOptions(raw), nil
}

// KernelInstallEntry returns the entry kernel-install wrote for kernel kv
// of machine mid (<mid>-<kv>.conf in dir, as EL8's 20-grub.install and
// 90-loaderentry.install name it), or an error wrapping ErrNotFound.
func KernelInstallEntry(dir, mid, kv string) (*Entry, error) {
	return ReadEntry(dir, mid+"-"+kv)
}

// Retarget describes how RetargetKernelInstall completes kernel-install's
// entry of a new kernel so that it boots the new root.
type Retarget struct {
	// Root names the new root (root=, rootflags=, rd.lvm.lv=).
	Root RootSpec
	// Fallback is the current default entry, whose options stand in when
	// kernel-install wrote no root=; Vars are grubenv's variables.
	Fallback *Entry
	Vars     map[string]string
	// BootDir is $BOOT on the host; Vmlinuz the new root's kernel image.
	BootDir string
	Vmlinuz string
	// Initramfs builds the image rel (relative to $BOOT) the entry names
	// and lacks; nil when there is no dracut to build it with.
	Initramfs func(rel string) error
}

// RetargetKernelInstall points kernel-install's entry ki at the new root
// (kernel-install ran inside the new root, with the old root's command
// line), puts the kernel where the entry names it when the scriptlet did
// not copy it, builds the initramfs images it names and lacks (its dracut
// may have failed in the transaction: no /proc there), and writes it.
func RetargetKernelInstall(dir string, ki *Entry, r Retarget) error {
	opts, err := EntryOptions(ki, r.Vars)
	if err != nil {
		return err
	}
	if !opts.Has("root") && r.Root.LVMLV == "" {
		// kernel-install wrote no root=: take the current default's.
		if opts, err = EntryOptions(r.Fallback, r.Vars); err != nil {
			return err
		}
	}
	if opts, err = RetargetRoot(opts, r.Root); err != nil {
		return err
	}
	ki.SetOptions(opts)
	// An entry whose kernel is missing from $BOOT cannot boot.
	if l := ki.Linux(); l != "" && !strings.HasPrefix(l, "$") {
		dst := filepath.Join(r.BootDir, strings.TrimPrefix(l, "/boot"))
		if !regularFile(dst) {
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return fmt.Errorf("cannot place the kernel kernel-install's entry %s names: %w", ki.ID, err)
			}
			if err := InstallKernel(r.Vmlinuz, dst); err != nil {
				return err
			}
		}
	}
	for _, p := range ki.Initrds() {
		rel := strings.TrimPrefix(p, "/boot")
		if strings.HasPrefix(p, "$") || regularFile(filepath.Join(r.BootDir, rel)) {
			continue
		}
		if r.Initramfs == nil {
			return fmt.Errorf("kernel-install's entry %s names %s, which does not exist, and the new root has no dracut to build it", ki.ID, p)
		}
		if err := r.Initramfs(rel); err != nil {
			return err
		}
	}
	if err := WriteEntry(dir, ki); err != nil {
		return fmt.Errorf("cannot retarget kernel-install's entry %s: %w", ki.ID, err)
	}
	return nil
}

func regularFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}
