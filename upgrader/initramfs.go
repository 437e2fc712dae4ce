package upgrader

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/atomicfile"
	"github.com/keyarchos/kos-upgrade/pkg/boot"
	"github.com/keyarchos/kos-upgrade/pkg/execlog"
	"github.com/keyarchos/kos-upgrade/pkg/progress"
)

// The engine side of initramfs mode (docs/initramfs.md). Arming a plan
// prepared with --mode initramfs, on the live system:
//
//	image    the upgrade initramfs, built by the running system's dracut:
//	         dracut --force --add kos-upgrade --kver KVER $BOOT/kos-upgrade-initramfs-TO.img
//	         (KVER: the kernel of the default entry)
//	entry    the one-time entry kos-upgrade-initramfs-TO, cloned from the
//	         default entry: same linux, its options plus
//	         kos-upgrade.apply=1 kos-upgrade.entry=ID, initrd the new image
//	oneshot  SetOneShot(ID) (grub2: next_entry)
//	armed    /system-update as in target mode (apply needs it: it is what
//	         says an upgrade is armed), status armed
//
// Each step is journaled in state.Initramfs before its side effect, so
// that cancel, a re-arm and apply remove what an interrupted arm made.
// The hook in the initramfs (dracut/90kos-upgrade) relies on these names:
// it removes the entry and the kos-upgrade-* images it names, then runs
// kos-upgrade --root /sysroot apply and reboots.

// Plan modes (Plan.Mode, prepare --mode).
const (
	ModeTarget    = "target"    // apply runs in the root's own system-update.target
	ModeInitramfs = "initramfs" // apply runs from an upgrade initramfs, before switch-root
)

// ValidMode reports whether m is a plan mode.
func ValidMode(m string) bool { return m == ModeTarget || m == ModeInitramfs }

// Steps of arming in initramfs mode (InitramfsState.Step).
const (
	InitramfsStepImage   = "image"
	InitramfsStepEntry   = "entry"
	InitramfsStepOneShot = "oneshot"
	InitramfsStepArmed   = "armed"
)

// InitramfsEntryPrefix starts the id of the one-time entry (the hook only
// removes kos-upgrade-* entries); InitramfsImagePrefix the image's name
// (the hook only removes kos-upgrade-* images).
const (
	InitramfsEntryPrefix = boot.EntryIDPrefix + "initramfs-"
	InitramfsImagePrefix = "kos-upgrade-initramfs-"
)

// Kernel command line parameters of the one-time entry, read by the hook.
const (
	CmdlineApply = "kos-upgrade.apply"
	CmdlineEntry = "kos-upgrade.entry"
)

// DracutEnv names the dracut command to use instead of the root's
// (tests; a root that is not the running system).
const DracutEnv = "KOS_UPGRADE_DRACUT"

// InitramfsState is what arming in initramfs mode made (docs/state.md).
type InitramfsState struct {
	// Loader is the boot loader kind.
	Loader string `json:"loader"`
	// Entry is the id of the one-time entry.
	Entry string `json:"entry"`
	// Image is the upgrade initramfs, relative to the root
	// ("/boot/kos-upgrade-initramfs-5.9.img").
	Image string `json:"image"`
	// Kver is the kernel the image was built for (the default entry's).
	Kver string `json:"kver"`
	// Step is the step in progress or done last (InitramfsStep*).
	Step string `json:"step"`
}

// oneShotLoader returns the boot loader and its default entry when a
// one-time boot can be armed here, else an error saying why and what to do.
func (e *Engine) oneShotLoader(ctx context.Context) (boot.Bootloader, *boot.Entry, error) {
	const hint = "; use --mode target (the upgrade then runs in the root's own system-update.target)"
	bl, err := e.bootloader()
	if err != nil {
		return nil, nil, fmt.Errorf("initramfs mode needs a one-time boot entry: %w%s", err, hint)
	}
	if bl == nil {
		return nil, nil, fmt.Errorf("initramfs mode boots the upgrade initramfs through a one-time boot entry, but no boot loader kos-upgrade handles (grub2 with BLS entries, systemd-boot) was found under %s%s", e.Root.Path("/boot"), hint)
	}
	c, ok := bl.(boot.OneShotChecker)
	if !ok {
		return nil, nil, fmt.Errorf("initramfs mode needs a one-time boot, which kos-upgrade cannot check for %s%s", bl.Kind(), hint)
	}
	if err := c.CheckOneShot(ctx); err != nil {
		return nil, nil, fmt.Errorf("initramfs mode needs a one-time boot of the upgrade entry, which the boot loader (%s) cannot do here: %w%s", bl.Kind(), err, hint)
	}
	id, err := bl.Default(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("initramfs mode clones the default boot entry, but which one it is cannot be told: %w%s", err, hint)
	}
	def, err := findEntry(ctx, bl, id)
	if err != nil {
		return nil, nil, fmt.Errorf("initramfs mode clones the default boot entry: %w%s", err, hint)
	}
	return bl, def, nil
}

// dracutCommand returns the dracut that builds the upgrade initramfs:
// Engine.Dracut, $KOS_UPGRADE_DRACUT, else the root's own when the root is
// the running system (the image must match the running kernel's modules
// and the module 90kos-upgrade must be installed).
func (e *Engine) dracutCommand() (string, error) {
	if e.Dracut != "" {
		return e.Dracut, nil
	}
	if d := os.Getenv(DracutEnv); d != "" {
		return d, nil
	}
	if e.Root.Dir != "/" {
		return "", fmt.Errorf("initramfs mode builds the upgrade initramfs with the running system's dracut, and %s is not the running system (arm it from the system itself, or name a dracut in $%s)", e.Root.Dir, DracutEnv)
	}
	d := boot.FindTool("/", "dracut")
	if d == "" {
		return "", fmt.Errorf("initramfs mode builds the upgrade initramfs with dracut, which is not installed; install dracut or use --mode target")
	}
	if !fileExists("/usr/lib/dracut/modules.d/90kos-upgrade/module-setup.sh") {
		return "", fmt.Errorf("initramfs mode needs kos-upgrade's dracut module, /usr/lib/dracut/modules.d/90kos-upgrade is missing; reinstall kos-upgrade or use --mode target")
	}
	return d, nil
}

// entryKernel returns the kernel version of entry e.
func entryKernel(e *boot.Entry) string {
	if v := e.Version(); v != "" {
		return v
	}
	return strings.TrimPrefix(filepath.Base(e.Linux()), "vmlinuz-")
}

// armInitramfs makes the image, the one-time entry and the one-shot boot
// for plan p (steps image, entry, oneshot), journaling each in state. What
// an earlier arm made for another plan is removed first; what it made for
// this one is reused (an image only when its build completed).
func (e *Engine) armInitramfs(ctx context.Context, st store, state *State, p *Plan, bl boot.Bootloader, def *boot.Entry, dracut string) error {
	id := InitramfsEntryPrefix + p.Target.VersionID
	bootDir := bootDirOf(bl)
	name := InitramfsImagePrefix + p.Target.VersionID + ".img"
	rel, err := filepath.Rel(e.Root.Dir, filepath.Join(bootDir, name))
	if err != nil || strings.HasPrefix(rel, "..") {
		return fmt.Errorf("boot directory %s is outside the root %s", bootDir, e.Root.Dir)
	}
	want := &InitramfsState{Loader: bl.Kind(), Entry: id, Image: "/" + rel, Kver: entryKernel(def)}
	if want.Kver == "" {
		return fmt.Errorf("cannot tell the kernel of the default entry %s", def.ID)
	}
	if def.ID == id {
		return fmt.Errorf("the default boot entry is %s, the one-time upgrade entry; make the system's own entry the default first", id)
	}
	old := state.Initramfs
	if old != nil && (old.Entry != want.Entry || old.Image != want.Image) {
		if err := e.cleanupInitramfs(ctx, st, state); err != nil {
			return err
		}
		old = nil
	}
	image := e.Root.Path(want.Image)
	reuse := old != nil && old.Kver == want.Kver && old.Step != InitramfsStepImage && nonEmptyFile(image)

	state.Initramfs = want
	if !reuse {
		want.Step = InitramfsStepImage
		if err := st.save(state, e.now()); err != nil {
			return err
		}
		e.report(progress.Event{Step: "arm", Message: "building the upgrade initramfs " + want.Image + " for kernel " + want.Kver})
		r := execlog.Runner{Log: e.log()}
		if _, err := r.Run(ctx, "build the upgrade initramfs", dracut, "--force", "--add", "kos-upgrade", "--kver", want.Kver, image); err != nil {
			return err
		}
		if !nonEmptyFile(image) {
			return fmt.Errorf("dracut did not write the upgrade initramfs %s", image)
		}
	}

	want.Step = InitramfsStepEntry
	if err := st.save(state, e.now()); err != nil {
		return err
	}
	prefix := "/"
	if strings.HasPrefix(def.Linux(), "/boot/") {
		prefix = "/boot/"
	}
	ne := def.Clone()
	ne.ID, ne.Path, ne.Counter = id, "", boot.Counter{}
	ne.Remove(boot.KeyID)
	ne.Set(boot.KeyTitle, strings.TrimSpace(def.Title()+" (kos-upgrade: offline upgrade to "+p.Target.VersionID+")"))
	ne.SetAll(boot.KeyInitrd, []string{prefix + name})
	opts := boot.ParseOptions(strings.Join(def.GetAll(boot.KeyOptions), " "))
	ne.SetOptions(opts.Set(CmdlineApply, "1").Set(CmdlineEntry, id))
	if err := addNewEntry(ctx, bl, ne, def.ID); err != nil {
		return err
	}

	want.Step = InitramfsStepOneShot
	if err := st.save(state, e.now()); err != nil {
		return err
	}
	if err := bl.SetOneShot(ctx, id); err != nil {
		return fmt.Errorf("cannot make %s the one-time boot entry: %w; use --mode target", id, err)
	}
	e.report(progress.Event{Step: "arm", Message: "boot entry " + id + " boots once, next, into the upgrade initramfs; then " + def.ID + " again"})
	return nil
}

func nonEmptyFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Size() > 0
}

// cleanupInitramfs removes what state.Initramfs says arming made: the
// one-shot boot, the entry, the image; then forgets it. Idempotent.
func (e *Engine) cleanupInitramfs(ctx context.Context, st store, state *State) error {
	is := state.Initramfs
	if is == nil {
		return nil
	}
	bl, err := e.bootloader()
	if err != nil {
		return err
	}
	if bl != nil && strings.HasPrefix(is.Entry, InitramfsEntryPrefix) {
		if c, ok := bl.(boot.OneShotClearer); ok {
			if err := c.ClearOneShot(ctx, is.Entry); err != nil {
				return fmt.Errorf("cannot cancel the one-time boot of %s: %w", is.Entry, err)
			}
		}
		if err := bl.RemoveEntry(ctx, is.Entry); err != nil && !errors.Is(err, boot.ErrNotFound) {
			return fmt.Errorf("cannot remove the one-time boot entry %s: %w", is.Entry, err)
		}
	}
	if strings.HasPrefix(filepath.Base(is.Image), InitramfsImagePrefix) {
		if err := atomicfile.Remove(e.Root.Path(is.Image)); err != nil {
			return err
		}
	}
	state.Initramfs = nil
	return st.save(state, e.now())
}

// inUpgradeInitramfs reports whether this boot is the one-time boot of the
// upgrade initramfs: its kernel command line says kos-upgrade.apply=1.
// (Inside the hook's namespace /etc is the root's, so /etc/initrd-release
// cannot tell.)
func (e *Engine) inUpgradeInitramfs() bool {
	path := e.Cmdline
	if path == "" {
		path = "/proc/cmdline"
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	v, _ := boot.ParseOptions(strings.TrimSpace(string(b))).Get(CmdlineApply)
	return v == "1"
}

// refuseOutsideInitramfs records why a plan prepared for initramfs mode is
// not applied by this apply (target mode: the one-time boot did not reach
// the upgrade initramfs) and removes the one-time entry and its image. The
// root's userspace must not run such a plan (docs/initramfs.md).
func (e *Engine) refuseOutsideInitramfs(ctx context.Context, st store, state *State, p *Plan) error {
	cause := fmt.Errorf("cannot apply: the upgrade to %s was prepared for initramfs mode (prepare --mode initramfs), "+
		"but this apply does not run from the upgrade initramfs (no %s=1 on the kernel command line: the one-time boot "+
		"did not reach it); not upgrading with the root's own userspace. Nothing was changed: run kos-upgrade reboot to try again, "+
		"or kos-upgrade prepare --mode target", p.Target.VersionID, CmdlineApply)
	if err := e.cleanupInitramfs(ctx, st, state); err != nil {
		e.log().Warn("cannot remove the one-time boot entry", "err", err)
	}
	now := e.now().UTC()
	res := &Result{
		RunID: now.Format("20060102T150405.000Z") + "-" + p.Target.VersionID, Kind: "apply", Status: StatusFailed,
		Error: cause.Error(), Step: StepVerify, From: p.Source.VersionID, To: p.Target.VersionID, Backend: p.Snapshot,
		Counts: p.Counts(), StartedAt: now, FinishedAt: now,
	}
	state.Status, state.Step, state.RunID, state.LastResult = StatusFailed, StepVerify, res.RunID, res
	if err := errors.Join(st.record(res), st.save(state, e.now())); err != nil {
		return errors.Join(cause, err)
	}
	e.report(progress.Event{Step: StepVerify, Message: "upgrade not applied: " + cause.Error()})
	return cause
}

// SELinuxRelabelRel is the file that makes the next boot relabel the root.
const SELinuxRelabelRel = "/.autorelabel"

// selinuxEnabled reports whether /etc/selinux/config of root says
// SELINUX=enforcing or permissive.
func selinuxEnabled(root string) bool {
	f, err := os.Open(filepath.Join(root, "etc/selinux/config"))
	if err != nil {
		return false
	}
	defer f.Close()
	mode := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if ok && strings.TrimSpace(k) == "SELINUX" {
			mode = strings.ToLower(strings.Trim(strings.TrimSpace(v), `"'`))
		}
	}
	return mode == "enforcing" || mode == "permissive"
}

// autorelabel creates /.autorelabel in the upgraded root target when SELinux
// is enabled there (or in the old root): in the initramfs no policy is
// loaded, so rpm could not label the files it wrote; the first boot
// relabels.
func (e *Engine) autorelabel(target string) error {
	if !selinuxEnabled(target) && !selinuxEnabled(e.Root.Dir) {
		return nil
	}
	p := filepath.Join(target, SELinuxRelabelRel)
	if err := atomicfile.WriteFile(p, nil, 0o644); err != nil {
		return fmt.Errorf("cannot create %s (SELinux is enabled and the files the upgrade wrote are unlabeled): %w", p, err)
	}
	e.report(progress.Event{Step: StepFinalize, Message: "SELinux is enabled: " + SELinuxRelabelRel + " makes the first boot relabel the upgraded root"})
	return nil
}
