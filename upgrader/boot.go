package upgrader

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/atomicfile"
	"github.com/keyarchos/kos-upgrade/pkg/boot"
	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// The boot side of apply (docs/boot.md, "What apply does"):
//
//	backup       boot.Backup of /boot (and of an ESP with boot loader files)
//	transaction  the real /boot bind-mounted into the snapshot, so kernel
//	             scriptlets (kernel-install, dracut) write where the boot
//	             loader reads
//	boot         an entry for the new root: kernel-install's entry of a new
//	             kernel retargeted, else one made from the current default
//	             (NewEntryFrom), with the kernel copied and an initramfs
//	             built by the new root's dracut; with no new kernel, the
//	             current kernel with the new root
//	switch       TrialBoot of that entry, then the snapshot activated
//
// Any failure (and settle, after a crash) restores /boot from the backup
// and removes leftovers, before the snapshot is deleted: /boot never names
// a root that does not exist.

// BootConfigRel holds kos-upgrade's boot settings (key=value lines):
//
//	tries=N   boots of the new entry before the old one boots again (1..9)
const BootConfigRel = sysroot.ConfigDirRel + "/boot.conf"

// bootBackupDir is where the backups of a run live, below the state dir.
func bootBackupDir(runID string) string { return filepath.Join("boot-backup", runID) }

// bootloader returns the boot loader of the root, or nil when it has none
// kos-upgrade knows (no BLS entries: the upgrade then only switches the
// root, as without a boot loader).
func (e *Engine) bootloader() (boot.Bootloader, error) {
	bl, err := boot.Detect(e.Root)
	if errors.Is(err, boot.ErrNotSupported) {
		return nil, nil
	}
	return bl, err
}

// bootDirOf returns $BOOT: the directory holding loader/entries.
func bootDirOf(bl boot.Bootloader) string {
	return filepath.Dir(filepath.Dir(bl.EntriesDir()))
}

// trialTries reads tries= from BootConfigRel; DefaultTrialTries without it.
func trialTries(root sysroot.Root) (int, error) {
	f, err := os.Open(root.Path(BootConfigRel))
	if os.IsNotExist(err) {
		return boot.DefaultTrialTries, nil
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n := boot.DefaultTrialTries
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok || strings.HasPrefix(k, "#") || strings.TrimSpace(k) != "tries" {
			continue
		}
		t, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || t < 1 || t > boot.MaxTrialTries {
			return 0, fmt.Errorf("%s: tries=%s: want a number from 1 to %d", root.Path(BootConfigRel), strings.TrimSpace(v), boot.MaxTrialTries)
		}
		n = t
	}
	return n, sc.Err()
}

// planBoot fills the boot state of a run before anything is changed: the
// boot loader, the current default (the fallback), whether a trial can be
// armed, and where the backups go. It fails when the boot loader has no
// default entry to build the new one from.
func (e *Engine) planBoot(ctx context.Context, bl boot.Bootloader, runID string) (*BootState, error) {
	bs := &BootState{Loader: bl.Kind()}
	def, err := bl.Default(ctx)
	if err != nil {
		return nil, fmt.Errorf("cannot tell which boot entry boots this system (%w); the new root needs an entry made from it", err)
	}
	bs.Previous = def
	tries, err := trialTries(e.Root)
	if err != nil {
		return nil, err
	}
	bs.Tries = tries
	bs.Trial = TrialArmed
	if err := bl.CheckTrial(ctx); err != nil {
		// No safe trial here: the new entry becomes the default directly
		// after the upgrade; `kos-upgrade rollback` still returns.
		bs.Trial, bs.Note = TrialNone, "no trial boot: "+err.Error()
		e.report(progress.Event{Step: StepVerify, Message: "WARNING: " + bs.Note})
	}
	dirs := []string{bootDirOf(bl)}
	if bl.Kind() == boot.KindSystemdBoot {
		for _, d := range boot.ESPDirsRel {
			p := e.Root.Path(d)
			if _, err := os.Stat(filepath.Join(p, "loader", "loader.conf")); err == nil && !sameDir(p, dirs[0]) {
				dirs = append(dirs, p)
				break
			}
		}
	}
	for _, d := range dirs {
		rel, err := filepath.Rel(e.Root.Dir, d)
		if err != nil || strings.HasPrefix(rel, "..") {
			return nil, fmt.Errorf("boot directory %s is outside the root %s", d, e.Root.Dir)
		}
		bs.Backups = append(bs.Backups, BootBackup{
			Dir:  "/" + rel,
			Path: filepath.Join(bootBackupDir(runID), strings.ReplaceAll(strings.Trim(rel, "/"), "/", "-")),
		})
	}
	return bs, nil
}

func sameDir(a, b string) bool {
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}

// backupBoot takes the backups planned in bs. A complete backup is kept as
// it is (a retried step never backs up a half-changed /boot).
func (e *Engine) backupBoot(ctx context.Context, st store, bs *BootState) error {
	for _, b := range bs.Backups {
		if err := boot.Backup(ctx, e.Root, e.Root.Path(b.Dir), filepath.Join(st.dir, b.Path)); err != nil {
			return fmt.Errorf("cannot back up %s: %w", b.Dir, err)
		}
	}
	return nil
}

// restoreBoot puts the boot directories back as the backups of bs hold
// them and removes entries a failed attempt left, then deletes the
// backups. Backups that never completed are skipped: the backup step comes
// before anything touches /boot. Idempotent.
func (e *Engine) restoreBoot(ctx context.Context, st store, bs *BootState) error {
	if bs == nil {
		return nil
	}
	for _, b := range bs.Backups {
		src := filepath.Join(st.dir, b.Path)
		if _, err := boot.ReadBackupManifest(src); errors.Is(err, boot.ErrNoBackup) {
			continue
		} else if err != nil {
			return fmt.Errorf("cannot restore %s: %w", b.Dir, err)
		}
		if err := boot.Restore(ctx, e.Root, e.Root.Path(b.Dir), src); err != nil {
			return fmt.Errorf("cannot restore %s from %s: %w", b.Dir, src, err)
		}
		if err := removeStrayKernels(e.Root.Path(b.Dir), src); err != nil {
			return err
		}
	}
	return e.removeLeftovers(ctx)
}

// removeLeftovers removes the entries kos-upgrade made that are neither the
// default nor on trial, with the files only they use.
func (e *Engine) removeLeftovers(ctx context.Context) error {
	bl, err := e.bootloader()
	if err != nil {
		return err
	}
	if bl != nil {
		ls, err := boot.Leftovers(ctx, bl)
		if err != nil {
			return fmt.Errorf("cannot find leftover boot entries: %w", err)
		}
		if err := boot.RemoveLeftovers(ctx, bl, ls); err != nil {
			return fmt.Errorf("cannot remove leftover boot entries: %w", err)
		}
	}
	return nil
}

// removeStrayKernels removes the kernels and initramfs images at the top
// of bootDir that neither the backup in src holds nor any entry names:
// what a failed attempt copied or built before it could write its entry
// (Restore only removes the files of the entries it removes), and the
// System.map, config, symvers and .hmac files of kernels no longer there.
func removeStrayKernels(bootDir, src string) error {
	m, err := boot.ReadBackupManifest(src)
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, f := range m.Files {
		keep[filepath.Join(bootDir, f.Path)] = true
	}
	es, err := boot.ListEntries(filepath.Join(bootDir, boot.EntriesDirRel))
	if err != nil {
		return err
	}
	for _, e := range es {
		for _, p := range e.Files() {
			keep[filepath.Join(bootDir, p)] = true
			keep[filepath.Join(bootDir, strings.TrimPrefix(p, "/boot"))] = true
		}
	}
	var stray []string
	for _, pat := range []string{"vmlinuz-*", "initramfs-*.img"} {
		ms, _ := filepath.Glob(filepath.Join(bootDir, pat))
		for _, p := range ms {
			// kdump's images are named by no entry, and not ours.
			if !keep[p] && fileExists(p) && !strings.Contains(filepath.Base(p), "kdump") {
				stray = append(stray, p)
			}
		}
	}
	// What EL8's 20-grub.install copies next to a kernel it installs,
	// useless once that kernel is gone.
	for _, pat := range []string{"System.map-*", "config-*", "symvers-*.gz", ".vmlinuz-*.hmac"} {
		ms, _ := filepath.Glob(filepath.Join(bootDir, pat))
		for _, p := range ms {
			kv := strings.TrimSuffix(strings.TrimSuffix(strings.SplitN(filepath.Base(p), "-", 2)[1], ".gz"), ".hmac")
			k := filepath.Join(bootDir, "vmlinuz-"+kv)
			if !keep[p] && (!fileExists(k) || slices.Contains(stray, k)) {
				stray = append(stray, p)
			}
		}
	}
	for _, p := range stray {
		if err := atomicfile.Remove(p); err != nil {
			return fmt.Errorf("cannot remove %s left by the failed attempt: %w", p, err)
		}
	}
	return nil
}

// dropBootBackups deletes the backups of bs.
func dropBootBackups(st store, bs *BootState) error {
	if bs == nil {
		return nil
	}
	seen := map[string]bool{}
	for _, b := range bs.Backups {
		d := filepath.Join(st.dir, filepath.Dir(b.Path))
		if seen[d] || !strings.HasPrefix(b.Path, "boot-backup/") {
			continue
		}
		seen[d] = true
		if err := os.RemoveAll(d); err != nil {
			return fmt.Errorf("cannot remove the /boot backup %s: %w", d, err)
		}
	}
	return nil
}

// rootSpec returns how entries name the snapshot called name of backend.
// LVM (pkg/snapshot/lvm.go): the snapshot "kos-upgrade/<label>" is the LV
// "kos-upgrade-<label>" in the VG of the current root. The backend (snap,
// when it is the LVM one: VG and LV) knows both; without it the VG is
// read from the old entry's root= (/dev/mapper/<vg>-<lv> or
// /dev/<vg>/<lv>). The entry then gets root=/dev/mapper/<vg>-<lv> (or the
// /dev/<vg>/<lv> form of the old one) and rd.lvm.lv=<vg>/<lv>: by path,
// never by UUID, which the snapshot shares with its origin.
func rootSpec(backend, name string, oldOpts boot.Options, snap snapshot.Snapshotter) (boot.RootSpec, error) {
	switch backend {
	case snapshot.BackendBtrfs:
		return boot.RootSpec{BtrfsSubvol: name}, nil
	case snapshot.BackendLVM:
		if n, ok := snap.(snapshot.Volumes); ok && n.VG() != "" {
			lv, err := n.LV(name)
			if err != nil {
				return boot.RootSpec{}, err
			}
			return boot.RootSpec{LVMVG: n.VG(), LVMLV: lv}, nil
		}
		lv := strings.ReplaceAll(name, "/", "-")
		root, _ := oldOpts.Get("root")
		var vg string
		switch {
		case strings.HasPrefix(root, "/dev/mapper/"):
			vg, _, _ = boot.SplitMapperName(strings.TrimPrefix(root, "/dev/mapper/"))
		case strings.HasPrefix(root, "/dev/") && strings.Count(root, "/") == 3:
			vg = strings.Split(root, "/")[2]
		}
		if vg == "" {
			return boot.RootSpec{}, fmt.Errorf("cannot tell the volume group of the root from root=%q", root)
		}
		return boot.RootSpec{LVMVG: vg, LVMLV: lv}, nil
	}
	return boot.RootSpec{}, fmt.Errorf("cannot point a boot entry at a %s snapshot", backend)
}

// namesLV reports whether the root= of opts names the LV vg/lv by path.
func namesLV(opts boot.Options, vg, lv string) bool {
	root, _ := opts.Get("root")
	return root == "/dev/mapper/"+boot.MapperName(vg, lv) || root == "/dev/"+vg+"/"+lv
}

// pinsSubvol reports whether opts name the btrfs subvolume to mount.
func pinsSubvol(opts boot.Options) bool {
	v, _ := opts.Get("rootflags")
	for _, f := range strings.Split(v, ",") {
		if strings.HasPrefix(f, "subvol=") || strings.HasPrefix(f, "subvolid=") {
			return true
		}
	}
	return false
}

func findEntry(ctx context.Context, bl boot.Bootloader, id string) (*boot.Entry, error) {
	es, err := bl.Entries(ctx)
	if err != nil {
		return nil, err
	}
	for _, e := range es {
		if e.ID == id {
			return e, nil
		}
	}
	return nil, fmt.Errorf("boot entry %s: %w", id, boot.ErrNotFound)
}

// bootStep makes the entry that boots the new root (state.Boot.Entry):
// for each new kernel, kernel-install's entry retargeted or a new one; with
// no new kernel, the current kernel with the new root. A current default
// that does not name its btrfs subvolume is pinned to the old root, so
// that it keeps booting it once the default subvolume changes.
func (e *Engine) bootStep(ctx context.Context, bl boot.Bootloader, state *State, snap snapshot.Snapshotter, target, targetVersion string) error {
	bs := state.Boot
	if err := e.ownDefault(ctx, bl, bs.Previous); err != nil {
		return err
	}
	old, err := findEntry(ctx, bl, bs.Previous)
	if err != nil {
		return fmt.Errorf("cannot read the current default entry: %w", err)
	}
	vars, err := boot.GrubVars(bl)
	if err != nil {
		return err
	}
	oldOpts, err := boot.EntryOptions(old, vars)
	if err != nil {
		return err
	}
	spec, err := rootSpec(snap.Backend(), state.Snapshot, oldOpts, snap)
	if err != nil {
		return err
	}
	if n, ok := snap.(snapshot.Volumes); ok && spec.LVMLV != "" {
		// The old root's LV, for the rd.lvm.lv= to replace when root=
		// does not name it (UUID=).
		if prev, err := n.LV(state.Previous); err == nil {
			spec.OldLVMVG, spec.OldLVMLV = spec.LVMVG, prev
		}
	}
	mid := readMachineID(target)
	if mid == "" {
		mid = readMachineID(e.Root.Dir)
	}
	if mid == "" {
		return fmt.Errorf("the new root has no /etc/machine-id: cannot name its boot entries")
	}

	mounts, err := mountChroot(e.Root, target, true, true)
	if err != nil {
		return err
	}
	defer mounts.unmount()

	bs.Entries, bs.Entry = nil, ""
	vers, paths := boot.NewKernels(e.Root.Dir, target)
	for _, kv := range vers {
		id, err := e.kernelEntry(ctx, bl, old, vars, spec, mid, kv, paths[kv], target)
		if err != nil {
			return fmt.Errorf("new kernel %s: %w", kv, err)
		}
		bs.Entries = append(bs.Entries, id)
		bs.Entry = id // the newest one is tried
	}
	if bs.Entry == "" {
		if err := currentKernelEntry(ctx, bl, bs, old, vars, spec, mid, targetVersion); err != nil {
			return err
		}
	}
	e.report(progress.Event{Step: StepBoot, Message: "boot entry " + bs.Entry + " boots " + state.Snapshot})
	crashAt("mid-boot")

	pin, names, err := oldRootPin(spec, oldOpts, state.Previous, snap)
	if err != nil || names == "" {
		return err
	}
	return e.pinOldEntry(bl, bs, old, oldOpts, pin, names)
}

// currentKernelEntry makes the entry of the new root when the upgrade
// brings no new kernel: the current kernel boots the new root from an
// entry of its own (old entries keep booting the old root).
func currentKernelEntry(ctx context.Context, bl boot.Bootloader, bs *BootState, old *boot.Entry, vars map[string]string, spec boot.RootSpec, mid, targetVersion string) error {
	kv := old.Version()
	if kv == "" {
		kv = strings.TrimPrefix(filepath.Base(old.Linux()), "vmlinuz-")
	}
	var initrd []string
	for _, p := range old.Initrds() {
		if !strings.HasPrefix(p, "$") {
			initrd = append(initrd, p)
		}
	}
	id := boot.EntryIDPrefix + mid + "-" + kv + "-" + targetVersion
	ne, err := boot.NewEntryFrom(old, boot.NewKernel{ID: id, Version: kv, Linux: old.Linux(), Initrd: initrd,
		Title: old.Title() + " (" + targetVersion + ")", Root: spec, Vars: vars})
	if err != nil {
		return err
	}
	if err := addNewEntry(ctx, bl, ne, bs.Previous); err != nil {
		return err
	}
	bs.Entries, bs.Entry = []string{id}, id
	return nil
}

// oldRootPin says how the current default entry must name the old root
// (prev) to keep booting it once the new root exists, and names it for a
// message; names is "" when the entry needs no pinning. btrfs: an entry
// that does not name its subvolume boots the default subvolume, which
// changes. LVM: an entry naming the root by UUID= would boot either LV
// (both carry the filesystem's UUID), so it names the old LV by path.
func oldRootPin(spec boot.RootSpec, oldOpts boot.Options, prev string, snap snapshot.Snapshotter) (boot.RootSpec, string, error) {
	switch {
	case spec.BtrfsSubvol != "":
		if pinsSubvol(oldOpts) {
			return boot.RootSpec{}, "", nil
		}
		return boot.RootSpec{BtrfsSubvol: prev}, "subvolume " + prev, nil
	case spec.LVMLV != "":
		prevLV := strings.ReplaceAll(prev, "/", "-")
		if n, ok := snap.(snapshot.Volumes); ok {
			var err error
			if prevLV, err = n.LV(prev); err != nil {
				return boot.RootSpec{}, "", err
			}
		}
		if namesLV(oldOpts, spec.LVMVG, prevLV) {
			return boot.RootSpec{}, "", nil
		}
		return boot.RootSpec{LVMVG: spec.LVMVG, LVMLV: prevLV}, "LV " + spec.LVMVG + "/" + prevLV, nil
	}
	return boot.RootSpec{}, "", nil
}

// pinOldEntry rewrites the current default entry old so that it names the
// old root as pin says (oldRootPin), and records it as pinned.
func (e *Engine) pinOldEntry(bl boot.Bootloader, bs *BootState, old *boot.Entry, oldOpts boot.Options, pin boot.RootSpec, names string) error {
	pinned := old.Clone()
	opts, err := boot.RetargetRoot(oldOpts, pin)
	if err != nil {
		return err
	}
	pinned.SetOptions(opts)
	if err := boot.WriteEntry(bl.EntriesDir(), pinned); err != nil {
		return fmt.Errorf("cannot pin entry %s to the old root: %w", old.ID, err)
	}
	bs.Pinned = old.ID
	e.report(progress.Event{Step: StepBoot, Message: "entry " + old.ID + " now names its root " + names})
	return nil
}

// ownDefault makes prev, the default recorded in the state before the
// transaction, the default again when a kernel scriptlet moved it: EL8's
// 20-grub.install (kernel-install, with UPDATEDEFAULT=yes in
// /etc/sysconfig/kernel) sets saved_entry to the new kernel's entry, which
// still boots the old root. The trial falls back to prev, and only a bless
// makes the new entry the default.
func (e *Engine) ownDefault(ctx context.Context, bl boot.Bootloader, prev string) error {
	def, err := bl.Default(ctx)
	if err == nil && def == prev {
		return nil
	}
	if err := bl.SetDefault(ctx, prev); err != nil {
		return fmt.Errorf("cannot make %s the default boot entry again after the transaction changed it: %w", prev, err)
	}
	moved := def
	if err != nil {
		moved = "none (" + err.Error() + ")"
	}
	e.report(progress.Event{Step: StepBoot, Message: "the transaction changed the default boot entry to " + moved +
		" (a kernel scriptlet: kernel-install, UPDATEDEFAULT=yes); " + prev + " is the default again until the new system is blessed"})
	return nil
}

// addNewEntry adds an entry kos-upgrade made through the boot loader
// (replacing one of an earlier attempt with the same id and other
// content), never the current default.
func addNewEntry(ctx context.Context, bl boot.Bootloader, ne *boot.Entry, def string) error {
	if ne.ID == def {
		return fmt.Errorf("the new entry %s would replace the current default", ne.ID)
	}
	err := bl.AddEntry(ctx, ne)
	if errors.Is(err, boot.ErrExists) {
		if err = bl.RemoveEntry(ctx, ne.ID); err == nil {
			err = bl.AddEntry(ctx, ne)
		}
	}
	if err != nil {
		return fmt.Errorf("cannot write boot entry %s: %w", ne.ID, err)
	}
	return nil
}

// kernelEntry returns the id of the entry for new kernel kv: the one
// kernel-install wrote (<machine-id>-<kv>, pointing at the old root, since
// it copies /proc/cmdline or /etc/kernel/cmdline), retargeted to the new
// root; else one made from the current default, with the kernel copied to
// $BOOT and an initramfs built by the new root's dracut.
func (e *Engine) kernelEntry(ctx context.Context, bl boot.Bootloader, old *boot.Entry, vars map[string]string,
	spec boot.RootSpec, mid, kv, vmlinuz, target string) (string, error) {
	dracut := boot.FindTool(target, "dracut")
	initramfs := func(rel string) error {
		e.report(progress.Event{Step: StepBoot, Message: "building the initramfs of kernel " + kv + " with the new root's dracut"})
		return boot.Dracut(ctx, e.log(), target, dracut, rel, kv)
	}
	if ki, err := boot.KernelInstallEntry(bl.EntriesDir(), mid, kv); err == nil {
		r := boot.Retarget{Root: spec, Fallback: old, Vars: vars, BootDir: bootDirOf(bl), Vmlinuz: vmlinuz}
		if dracut != "" {
			r.Initramfs = initramfs
		}
		if err := boot.RetargetKernelInstall(bl.EntriesDir(), ki, r); err != nil {
			return "", err
		}
		return ki.ID, nil
	} else if !errors.Is(err, boot.ErrNotFound) {
		return "", err
	}

	bootDir := bootDirOf(bl)
	prefix := "/" // paths relative to $BOOT; EL8 with /boot on the root fs writes /boot/...
	if strings.HasPrefix(old.Linux(), "/boot/") {
		prefix = "/boot/"
	}
	kernelFile := "vmlinuz-" + kv
	var initrd []string
	oldHasInitrd := false
	for _, p := range old.Initrds() {
		if !strings.HasPrefix(p, "$") {
			oldHasInitrd = true
		}
	}
	img := "initramfs-" + kv + ".img"
	if oldHasInitrd && dracut == "" && !fileExists(filepath.Join(bootDir, img)) {
		return "", fmt.Errorf("the current entry %s boots with an initramfs, but no kernel scriptlet made one for %s "+
			"and the new root has no dracut to build it; refusing to write an entry that cannot mount the root", old.ID, kv)
	}
	if err := boot.InstallKernel(vmlinuz, filepath.Join(bootDir, kernelFile)); err != nil {
		return "", err
	}
	switch {
	case fileExists(filepath.Join(bootDir, img)):
		initrd = []string{prefix + img}
	case dracut != "":
		if err := initramfs("/" + img); err != nil {
			return "", err
		}
		initrd = []string{prefix + img}
	}
	id := boot.EntryIDPrefix + mid + "-" + kv
	ne, err := boot.NewEntryFrom(old, boot.NewKernel{ID: id, Version: kv, Linux: prefix + kernelFile, Initrd: initrd, Root: spec, Vars: vars})
	if err != nil {
		return "", err
	}
	if err := addNewEntry(ctx, bl, ne, old.ID); err != nil {
		return "", err
	}
	return id, nil
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// armBoot is the boot side of the switch step: the new entry boots next
// as a trial (or becomes the default where no trial can be armed).
func (e *Engine) armBoot(ctx context.Context, bl boot.Bootloader, bs *BootState) error {
	if bs.Trial == TrialArmed {
		err := bl.TrialBoot(ctx, bs.Entry, bs.Tries)
		if err == nil {
			e.report(progress.Event{Step: StepSwitch, Message: fmt.Sprintf("boot entry %s boots next, as a trial (%d tries; then %s again)", bs.Entry, bs.Tries, bs.Previous)})
			return nil
		}
		if !errors.Is(err, boot.ErrNotSupported) && !errors.Is(err, boot.ErrUnsafeEnv) {
			return fmt.Errorf("cannot arm the trial boot of %s: %w", bs.Entry, err)
		}
		bs.Trial, bs.Note = TrialNone, "no trial boot: "+err.Error()
		e.report(progress.Event{Step: StepSwitch, Message: "WARNING: " + bs.Note})
	}
	if err := bl.SetDefault(ctx, bs.Entry); err != nil {
		return fmt.Errorf("cannot make %s the default boot entry: %w", bs.Entry, err)
	}
	return nil
}
