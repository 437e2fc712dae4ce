package boot

import (
	"fmt"
	"regexp"
	"strings"
)

// RootSpec says which root a new entry must boot. Exactly one of the btrfs
// or LVM parts is set.
type RootSpec struct {
	// BtrfsSubvol is the subvolume of the new root, as a path relative
	// to the top level ("root.kos-upgrade-1" or "/@/.snapshots/1"). The
	// entry gets rootflags=subvol=<it>; root= is kept (same filesystem).
	BtrfsSubvol string
	// LVM: the volume group and logical volume of the new root. The entry
	// gets root=/dev/mapper/<vg>-<lv> (or /dev/<vg>/<lv> when the old
	// entry used that form), and the rd.lvm.lv= naming the old root LV
	// becomes <vg>/<lv>; other rd.lvm.lv= (swap, /var) are kept.
	LVMVG, LVMLV string
	// OldLVMVG and OldLVMLV name the old root LV; when empty they are
	// taken from the old root= (/dev/mapper/<vg>-<lv> or /dev/<vg>/<lv>).
	OldLVMVG, OldLVMLV string
	// ExtraRootflags are added to rootflags= (for example "nouuid" for
	// an XFS snapshot mounted next to its origin).
	ExtraRootflags []string
}

// MapperName returns the device-mapper name of an LV: each '-' in the VG
// and LV names doubled, joined by '-' ("vg-os", "root-new" ->
// "vg--os-root--new").
func MapperName(vg, lv string) string {
	return strings.ReplaceAll(vg, "-", "--") + "-" + strings.ReplaceAll(lv, "-", "--")
}

// SplitMapperName splits a device-mapper name of an LV into VG and LV (the
// inverse of MapperName): the separator is the first '-' not doubled.
func SplitMapperName(name string) (vg, lv string, ok bool) {
	for i := 0; i < len(name); i++ {
		if name[i] != '-' {
			continue
		}
		if i+1 < len(name) && name[i+1] == '-' {
			i++
			continue
		}
		vg, lv = name[:i], name[i+1:]
		if vg == "" || lv == "" {
			return "", "", false
		}
		return strings.ReplaceAll(vg, "--", "-"), strings.ReplaceAll(lv, "--", "-"), true
	}
	return "", "", false
}

// lvOfRoot returns VG and LV named by a root= value, and whether it names an
// LV by path (UUID=, LABEL=, /dev/sda2 ... do not).
func lvOfRoot(root string) (vg, lv string, dmStyle, ok bool) {
	switch {
	case strings.HasPrefix(root, "/dev/mapper/"):
		vg, lv, ok = SplitMapperName(strings.TrimPrefix(root, "/dev/mapper/"))
		return vg, lv, true, ok
	case strings.HasPrefix(root, "/dev/") && strings.Count(root, "/") == 3:
		parts := strings.Split(strings.TrimPrefix(root, "/dev/"), "/")
		if parts[0] == "disk" || parts[0] == "md" {
			return "", "", false, false
		}
		return parts[0], parts[1], false, true
	}
	return "", "", false, false
}

// RetargetRoot returns opts with the root-identifying parameters pointed at
// spec. Everything else is kept as it is, in place.
func RetargetRoot(opts Options, spec RootSpec) (Options, error) {
	btrfs := spec.BtrfsSubvol != ""
	lvm := spec.LVMVG != "" || spec.LVMLV != ""
	if btrfs == lvm {
		return nil, fmt.Errorf("root spec needs either a btrfs subvolume or an LVM VG/LV")
	}
	if lvm && (spec.LVMVG == "" || spec.LVMLV == "") {
		return nil, fmt.Errorf("root spec needs both the VG and the LV (got %q/%q)", spec.LVMVG, spec.LVMLV)
	}
	out := append(Options(nil), opts...)
	if btrfs {
		flags := rootflags(out)
		sub := spec.BtrfsSubvol
		if old := flagValue(flags, "subvol"); strings.HasPrefix(old, "/") && !strings.HasPrefix(sub, "/") {
			sub = "/" + sub
		}
		kept := []string{"subvol=" + sub}
		for _, f := range flags {
			k, _, _ := strings.Cut(f, "=")
			if k != "subvol" && k != "subvolid" {
				kept = append(kept, f)
			}
		}
		out = setRootflags(out, appendMissing(kept, spec.ExtraRootflags))
		return out, nil
	}
	root, hasRoot := out.Get("root")
	oldVG, oldLV := spec.OldLVMVG, spec.OldLVMLV
	dmStyle := true
	if hasRoot {
		vg, lv, dm, ok := lvOfRoot(root)
		if ok {
			dmStyle = dm
			if oldVG == "" && oldLV == "" {
				oldVG, oldLV = vg, lv
			}
		}
	}
	newRoot := "/dev/mapper/" + MapperName(spec.LVMVG, spec.LVMLV)
	if !dmStyle {
		newRoot = "/dev/" + spec.LVMVG + "/" + spec.LVMLV
	}
	out = out.Set("root", newRoot)
	lvs := out.GetAll("rd.lvm.lv")
	if len(lvs) > 0 {
		// dracut activates only the listed LVs when any is listed: the
		// new root must be listed, in place of the old root.
		want := spec.LVMVG + "/" + spec.LVMLV
		replaced := false
		if oldVG != "" && oldLV != "" {
			out, replaced = out.ReplaceValue("rd.lvm.lv", oldVG+"/"+oldLV, want)
		}
		if !replaced && !contains(out.GetAll("rd.lvm.lv"), want) {
			out = insertAfterLast(out, "rd.lvm.lv", formatParam("rd.lvm.lv", want))
		}
	}
	if len(spec.ExtraRootflags) > 0 {
		out = setRootflags(out, appendMissing(rootflags(out), spec.ExtraRootflags))
	}
	return out, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func appendMissing(list, add []string) []string {
	for _, a := range add {
		if !contains(list, a) {
			list = append(list, a)
		}
	}
	return list
}

// rootflags returns the effective rootflags= (the last one), split at
// commas.
func rootflags(o Options) []string {
	v, ok := o.Get("rootflags")
	if !ok || v == "" {
		return nil
	}
	return strings.Split(v, ",")
}

func flagValue(flags []string, key string) string {
	for _, f := range flags {
		if k, v, _ := strings.Cut(f, "="); k == key {
			return v
		}
	}
	return ""
}

// setRootflags replaces every rootflags= by one, at the first one's place.
func setRootflags(o Options, flags []string) Options {
	if len(flags) == 0 {
		return o.Remove("rootflags")
	}
	return o.Set("rootflags", strings.Join(flags, ","))
}

func insertAfterLast(o Options, key, param string) Options {
	last := -1
	for i := range o {
		if o.Key(i) == key {
			last = i
		}
	}
	if last < 0 {
		return append(o, param)
	}
	out := append(Options(nil), o[:last+1]...)
	out = append(out, param)
	return append(out, o[last+1:]...)
}

var grubVarRe = regexp.MustCompile(`\$(\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)`)

// ExpandGrubVars replaces $name and ${name} in s by vars[name] for every
// name in vars; other variables stay as they are, for grub to expand at
// boot. EL8 entries read "options $kernelopts $tuned_params" with the
// command line in grubenv's kernelopts: a new entry must carry its own,
// changed, command line, so that is expanded.
func ExpandGrubVars(s string, vars map[string]string) string {
	return grubVarRe.ReplaceAllStringFunc(s, func(m string) string {
		name := strings.Trim(m[1:], "{}")
		if v, ok := vars[name]; ok {
			return v
		}
		return m
	})
}

// NewKernel describes the entry to create for the upgraded system.
type NewKernel struct {
	// ID of the new entry; it should start with EntryIDPrefix so that
	// Leftovers can find it after a failed attempt (for example
	// "kos-upgrade-<machine-id>-<version>").
	ID string
	// Version is the kernel version ("4.18.0-553.el8.x86_64").
	Version string
	// Linux is the kernel path relative to $BOOT ("/vmlinuz-<version>").
	Linux string
	// Initrd are the initramfs paths relative to $BOOT.
	Initrd []string
	// Title; empty: the old title with the old version replaced by the
	// new one, or "<old title> (<version>)" when it does not contain it.
	Title string
	// Root is the root the entry boots.
	Root RootSpec
	// Vars are the grubenv variables (Env.Map()) used to expand $name in
	// the old options; nil when the boot loader is not grub.
	Vars map[string]string
	// ExtraOptions are set on the new command line (for example
	// "panic=10" so that a kernel panic reboots into the next try).
	ExtraOptions []string
}

// rootVarsRe finds variables left in options after expansion.
var rootVarsRe = regexp.MustCompile(`\$\{?kernelopts\}?`)

// NewEntryFrom builds the entry for a new kernel from the entry that boots
// the current system: every key, comment and unknown key of old is kept;
// title, version, linux and initrd are replaced; options are old's,
// with grub variables from nk.Vars expanded, root retargeted to nk.Root,
// and nk.ExtraOptions set. It fails rather than write an entry whose root
// it could not point at the new system.
func NewEntryFrom(old *Entry, nk NewKernel) (*Entry, error) {
	if !validID(nk.ID) {
		return nil, fmt.Errorf("invalid boot entry id %q", nk.ID)
	}
	if nk.Version == "" || nk.Linux == "" {
		return nil, fmt.Errorf("new kernel entry %s needs a version and a linux path", nk.ID)
	}
	e := old.Clone()
	e.ID, e.Path, e.Counter = nk.ID, "", Counter{}
	title := nk.Title
	if title == "" {
		oldTitle, oldVer := old.Title(), old.Version()
		switch {
		case oldVer != "" && strings.Contains(oldTitle, oldVer):
			title = strings.ReplaceAll(oldTitle, oldVer, nk.Version)
		case oldTitle != "":
			title = oldTitle + " (" + nk.Version + ")"
		default:
			title = nk.Version
		}
	}
	e.Set(KeyTitle, title)
	e.Set(KeyVersion, nk.Version)
	e.Set(KeyLinux, nk.Linux)
	// Keep grub variables of the old initrd lines ($tuned_initrd).
	var keepVars []string
	for _, p := range old.Initrds() {
		if strings.HasPrefix(p, "$") {
			keepVars = append(keepVars, p)
		}
	}
	var initrd []string
	if len(nk.Initrd) > 0 || len(keepVars) > 0 {
		initrd = []string{strings.Join(append(append([]string(nil), nk.Initrd...), keepVars...), " ")}
	}
	e.SetAll(KeyInitrd, initrd)
	if _, ok := e.Get(KeyID); ok {
		e.Set(KeyID, nk.ID)
	}
	raw := strings.Join(old.GetAll(KeyOptions), " ")
	expanded := ExpandGrubVars(raw, nk.Vars)
	if rootVarsRe.MatchString(expanded) {
		return nil, fmt.Errorf("options of %s use $kernelopts but grubenv has no kernelopts: "+
			"cannot point the new entry at the new root", old.ID)
	}
	opts := ParseOptions(expanded)
	if !opts.Has("root") && nk.Root.LVMLV == "" {
		return nil, fmt.Errorf("options of %s have no root=: cannot point the new entry at the new root", old.ID)
	}
	opts, err := RetargetRoot(opts, nk.Root)
	if err != nil {
		return nil, err
	}
	for _, x := range nk.ExtraOptions {
		k, v, ok := strings.Cut(x, "=")
		if ok {
			opts = opts.Set(k, v)
		} else {
			opts = opts.SetFlag(k)
		}
	}
	e.SetOptions(opts)
	return e, nil
}

// GrubVars returns the grubenv variables of a grub boot loader (for
// NewKernel.Vars and MatchesCmdline), nil for other boot loaders.
func GrubVars(bl Bootloader) (map[string]string, error) {
	g, ok := bl.(*Grub)
	if !ok {
		return nil, nil
	}
	env, err := g.Env()
	if err != nil {
		return nil, err
	}
	return env.Map(), nil
}

// MatchesCmdline reports whether the running kernel's command line
// (/proc/cmdline) is the one entry e boots: same root=, same btrfs subvol
// in rootflags, and, when the command line has BOOT_IMAGE= (grub), the same
// kernel file name. Use it on first boot to tell the trial entry from the
// fallback.
func MatchesCmdline(e *Entry, cmdline string, vars map[string]string) bool {
	want := ParseOptions(ExpandGrubVars(strings.Join(e.GetAll(KeyOptions), " "), vars))
	got := ParseOptions(cmdline)
	wr, _ := want.Get("root")
	gr, _ := got.Get("root")
	if wr != gr {
		return false
	}
	if flagValue(rootflags(want), "subvol") != flagValue(rootflags(got), "subvol") {
		return false
	}
	if img, ok := got.Get("BOOT_IMAGE"); ok && e.Linux() != "" {
		// "(hd0,gpt2)/vmlinuz-X" or "/vmlinuz-X"
		if i := strings.LastIndexByte(img, '/'); i >= 0 {
			img = img[i+1:]
		}
		l := e.Linux()
		if i := strings.LastIndexByte(l, '/'); i >= 0 {
			l = l[i+1:]
		}
		if img != l {
			return false
		}
	}
	return true
}
