package main

// Rebooting through systemd's D-Bus API.
//
// A reboot is a start job for reboot.target (kexec.target with --kexec) in
// mode "replace-irreversibly": exactly what `systemctl reboot` asks for. It
// is a clean reboot: services are stopped in order, file systems unmounted.
// org.freedesktop.systemd1.Manager.Reboot() is not used on purpose: it is the
// forced reboot of the last shutdown step (`systemctl reboot --force`), which
// skips stopping services.
//
// As root the request goes over systemd's private socket
// (/run/systemd/private), which works without dbus-daemon: in
// system-update.target, where `kos-upgrade apply --reboot` runs, dbus.socket
// is not started (the target only pulls in sysinit.target). Other users go
// through the system bus (polkit decides).

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"

	"github.com/keyarchos/kos-upgrade/pkg/atomicfile"
	"github.com/keyarchos/kos-upgrade/pkg/boot"
	"github.com/keyarchos/kos-upgrade/pkg/execlog"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// Tools and files the reboot paths use; tests re-point them.
var (
	kexecTool  = "/usr/sbin/kexec"
	grubbyTool = "/usr/sbin/grubby"
	procCmd    = "/proc/cmdline"
	// systemdRunDir exists when systemd is the init system (sd_booted(3)).
	systemdRunDir = "/run/systemd/system"
	bootDir       = "/boot"
	// startUnit starts unit with mode through systemd's D-Bus API.
	startUnit = systemdStartUnit
	// runningRoot is the root of the running system: the only one we may
	// reboot.
	runningRoot = "/"
	// unameRelease returns the running kernel's release.
	unameRelease = func() (string, error) {
		b, err := os.ReadFile("/proc/sys/kernel/osrelease")
		return strings.TrimSpace(string(b)), err
	}
)

// kexecMarker, in the state directory, says that `kos-upgrade reboot --kexec`
// armed the upgrade: apply then leaves the offline target through kexec too,
// so that neither reboot of the upgrade goes through the firmware.
const kexecMarker = "reboot-kexec"

// rebootTimeout bounds the D-Bus conversation; the reboot itself is a job
// systemd runs after we return.
const rebootTimeout = 30 * time.Second

// reboot asks systemd to reboot the running system cleanly. It refuses when
// acting on another root.
func reboot(ctx context.Context, e *env) error {
	if err := rebootPossible(e); err != nil {
		return err
	}
	if err := startUnit(ctx, "reboot.target"); err != nil {
		return fmt.Errorf("cannot reboot: %w", err)
	}
	return nil
}

// rebootPossible says why reboot cannot reboot, or nil. Commands that
// change something and then reboot (reboot, rollback) ask it first, so that
// a refusal comes before the change.
func rebootPossible(e *env) error {
	if e.engine.Root.Dir != runningRoot {
		return fmt.Errorf("cannot reboot: --root %s is not the running system; use --no-reboot (nothing was changed)", e.engine.Root.Dir)
	}
	if fi, err := os.Stat(systemdRunDir); err != nil || !fi.IsDir() {
		return fmt.Errorf("cannot reboot: systemd is not running here; use --no-reboot (nothing was changed)")
	}
	return nil
}

// kexecReboot loads the default boot entry's kernel with kexec, then asks
// systemd for kexec.target: a clean shutdown that ends in the loaded kernel
// instead of the firmware. It needs kexec-tools.
func kexecReboot(ctx context.Context, e *env) error {
	if e.engine.Root.Dir != runningRoot {
		return fmt.Errorf("cannot reboot with kexec: --root %s is not the running system; use --no-reboot", e.engine.Root.Dir)
	}
	if err := kexecAvailable(); err != nil {
		return err
	}
	k, err := defaultKernel(ctx, e.engine.Root)
	if err != nil {
		return fmt.Errorf("cannot reboot with kexec: %w", err)
	}
	args := []string{"-l", k.Kernel}
	if k.Initrd != "" {
		args = append(args, "--initrd="+k.Initrd)
	}
	args = append(args, "--command-line="+k.Options)
	if _, err := (execlog.Runner{}).Run(ctx, "load the kernel", append([]string{kexecTool}, args...)...); err != nil {
		return fmt.Errorf("cannot reboot with kexec: %w", err)
	}
	if err := startUnit(ctx, "kexec.target"); err != nil {
		// Unload, so that a later plain reboot does not kexec by surprise.
		execlog.Runner{}.Run(context.WithoutCancel(ctx), "unload the kernel", kexecTool, "-u")
		return fmt.Errorf("cannot reboot with kexec: %w", err)
	}
	return nil
}

// kexecAvailable says why kexec cannot be used, or nil.
func kexecAvailable() error {
	if fi, err := os.Stat(kexecTool); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("cannot reboot with kexec: %s is missing (install kexec-tools, or reboot without --kexec)", kexecTool)
	}
	return nil
}

// setKexecMarker records (on) or forgets (off) that the armed upgrade
// should leave the offline target through kexec too.
func setKexecMarker(root sysroot.Root, on bool) error {
	return setMarker(root, kexecMarker, "kexec\n", on)
}

// setMarker writes (on) or removes (off) the marker file name, with
// content, in the state directory: a choice the reboot records for the
// shutdown or the offline boot.
func setMarker(root sysroot.Root, name, content string, on bool) error {
	p := filepath.Join(root.StateDir(), name)
	if !on {
		if err := atomicfile.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	return atomicfile.WriteFile(p, []byte(content), 0o600)
}

// rebootAfterApply is apply --reboot's last step: the reboot out of the
// offline target. With the kexec marker it tries kexec first; whatever goes
// wrong there, it falls back to a plain reboot, because staying in the
// offline target is never an option.
func rebootAfterApply(e *env) error {
	ctx, cancel := context.WithTimeout(context.Background(), rebootTimeout)
	defer cancel()
	p := filepath.Join(e.engine.Root.StateDir(), kexecMarker)
	if _, err := os.Stat(p); err == nil {
		// One use only: a failed kexec must not be retried at every upgrade.
		atomicfile.Remove(p)
		if err := kexecReboot(ctx, e); err == nil {
			return nil
		} else {
			fmt.Fprintf(os.Stderr, "kos-upgrade: %v; rebooting through the firmware instead\n", err)
		}
	}
	return reboot(ctx, e)
}

// bootKernel is what kexec loads.
type bootKernel struct {
	Kernel, Initrd, Options string
}

// defaultKernel finds the kernel the boot loader would start next: the
// default BLS entry (pkg/boot: grub2 with grubenv, or systemd-boot), else
// grubby's DEFAULT entry where grubby exists, else the running kernel with
// the running command line.
func defaultKernel(ctx context.Context, root sysroot.Root) (bootKernel, error) {
	if bl, err := boot.Detect(root); err == nil {
		if k, err := blsDefault(ctx, bl); err == nil {
			return k, nil
		} else {
			fmt.Fprintf(os.Stderr, "kos-upgrade: %v; trying other ways to find the kernel for kexec\n", err)
		}
	}
	if _, err := os.Stat(grubbyTool); err == nil {
		out, err := execlog.Runner{}.Run(ctx, "ask grubby for the default kernel", grubbyTool, "--info=DEFAULT")
		if err != nil {
			return bootKernel{}, err
		}
		k, err := parseGrubbyInfo(out)
		if err != nil {
			return bootKernel{}, fmt.Errorf("%s --info=DEFAULT: %w", grubbyTool, err)
		}
		return k, nil
	}
	rel, err := unameRelease()
	if err != nil {
		return bootKernel{}, fmt.Errorf("cannot read the running kernel's release: %w", err)
	}
	cmdline, err := os.ReadFile(procCmd)
	if err != nil {
		return bootKernel{}, fmt.Errorf("cannot read the kernel command line: %w", err)
	}
	k := bootKernel{Options: strings.TrimSpace(string(cmdline))}
	for _, c := range []string{"vmlinuz-" + rel, "vmlinuz"} {
		if p := filepath.Join(bootDir, c); exists(p) {
			k.Kernel = p
			break
		}
	}
	if k.Kernel == "" {
		return bootKernel{}, fmt.Errorf("no kernel image for the running kernel %s in %s", rel, bootDir)
	}
	for _, c := range []string{"initramfs-" + rel + ".img", "initrd.img-" + rel} {
		if p := filepath.Join(bootDir, c); exists(p) {
			k.Initrd = p
			break
		}
	}
	return k, nil
}

// blsDefault reads the boot loader's default entry.
func blsDefault(ctx context.Context, bl boot.Bootloader) (bootKernel, error) {
	id, err := bl.Default(ctx)
	if err != nil {
		return bootKernel{}, fmt.Errorf("cannot read the default boot entry: %w", err)
	}
	entries, err := bl.Entries(ctx)
	if err != nil {
		return bootKernel{}, fmt.Errorf("cannot read the boot entries: %w", err)
	}
	for _, e := range entries {
		if e.ID != id {
			continue
		}
		if e.Linux() == "" {
			return bootKernel{}, fmt.Errorf("the default boot entry %s has no linux line", id)
		}
		k := bootKernel{Kernel: filepath.Join(e.BootDir, e.Linux()), Options: e.Options().String()}
		// kexec takes one initrd: the initramfs, which comes after any
		// microcode images.
		if initrds := e.Initrds(); len(initrds) > 0 {
			k.Initrd = filepath.Join(e.BootDir, initrds[len(initrds)-1])
		}
		return k, nil
	}
	return bootKernel{}, fmt.Errorf("the default boot entry %q does not exist", id)
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// parseGrubbyInfo reads `grubby --info=DEFAULT`:
//
//	index=0
//	kernel="/boot/vmlinuz-4.18.0-305.el8.x86_64"
//	args="ro crashkernel=auto rhgb quiet"
//	root="/dev/mapper/kos-root"
//	initrd="/boot/initramfs-4.18.0-305.el8.x86_64.img $tuned_initrd"
//
// root is folded into the options unless they name a root already; grub
// variables ($tuned_initrd, $tuned_params) cannot be expanded here and are
// dropped.
func parseGrubbyInfo(out string) (bootKernel, error) {
	var k bootKernel
	var root string
	for _, l := range strings.Split(out, "\n") {
		key, val, ok := strings.Cut(strings.TrimSpace(l), "=")
		if !ok {
			continue
		}
		val = strings.Trim(val, `"`)
		switch key {
		case "kernel":
			k.Kernel = val
		case "initrd":
			k.Initrd = firstPlain(val)
		case "args":
			var opts []string
			for _, f := range strings.Fields(val) {
				if !strings.HasPrefix(f, "$") {
					opts = append(opts, f)
				}
			}
			k.Options = strings.Join(opts, " ")
		case "root":
			root = val
		}
	}
	if k.Kernel == "" {
		return bootKernel{}, errors.New("no kernel= line")
	}
	if root != "" && !strings.Contains(" "+k.Options, " root=") {
		k.Options = strings.TrimSpace("root=" + root + " " + k.Options)
	}
	return k, nil
}

// firstPlain returns the first word of s that is not a grub variable.
func firstPlain(s string) string {
	for _, f := range strings.Fields(s) {
		if !strings.HasPrefix(f, "$") {
			return f
		}
	}
	return ""
}

// systemdStartUnit starts unit in mode replace-irreversibly and returns once
// systemd queued the job (the job itself stops this process).
func systemdStartUnit(ctx context.Context, unit string) error {
	return systemdJob(ctx, unit, "replace-irreversibly", true)
}

// systemdJob asks systemd to start (or stop) unit with the job mode mode
// and returns once the job is queued.
func systemdJob(ctx context.Context, unit, mode string, start bool) error {
	ctx, cancel := context.WithTimeout(ctx, rebootTimeout)
	defer cancel()
	conn, err := connectSystemd(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	verb, job := "start", conn.StartUnitContext
	if !start {
		verb, job = "stop", conn.StopUnitContext
	}
	if _, err := job(ctx, unit, mode, nil); err != nil {
		return fmt.Errorf("systemd refused to %s %s: %w", verb, unit, err)
	}
	return nil
}

// connectSystemd talks to systemd directly as root (no dbus-daemon needed),
// else over the system bus.
func connectSystemd(ctx context.Context) (*sddbus.Conn, error) {
	if os.Geteuid() == 0 {
		conn, err := sddbus.NewSystemdConnectionContext(ctx)
		if err == nil {
			return conn, nil
		}
		if conn, err2 := sddbus.NewSystemConnectionContext(ctx); err2 == nil {
			return conn, nil
		}
		return nil, fmt.Errorf("cannot reach systemd at /run/systemd/private nor on the system bus (%w): is systemd running as PID 1? (use --no-reboot and reboot yourself)", err)
	}
	conn, err := sddbus.NewSystemConnectionContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("cannot reach systemd on the system bus: %w", err)
	}
	return conn, nil
}
