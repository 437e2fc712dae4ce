package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// mockReboot re-points the reboot paths at a fake systemd and a fake
// kexec; it returns the units started and a restore func.
func mockReboot(t *testing.T, kexec string) *[]string {
	t.Helper()
	var started []string
	oldStart, oldKexec, oldGrubby, oldBoot, oldCmd, oldUname, oldRoot, oldRun := startUnit, kexecTool, grubbyTool, bootDir, procCmd, unameRelease, runningRoot, systemdRunDir
	t.Cleanup(func() {
		startUnit, kexecTool, grubbyTool, bootDir, procCmd, unameRelease, runningRoot, systemdRunDir = oldStart, oldKexec, oldGrubby, oldBoot, oldCmd, oldUname, oldRoot, oldRun
	})
	systemdRunDir = t.TempDir()
	startUnit = func(_ context.Context, unit string) error {
		started = append(started, unit)
		return nil
	}
	kexecTool = kexec
	grubbyTool = filepath.Join(t.TempDir(), "no-grubby")
	return &started
}

func testEnv(t *testing.T, dir string) *env {
	t.Helper()
	r, err := sysroot.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	return &env{engine: upgrader.New(r, nil, nil)}
}

func TestRebootStartsRebootTarget(t *testing.T) {
	started := mockReboot(t, "/nonexistent/kexec")
	if err := reboot(context.Background(), testEnv(t, "/")); err != nil {
		t.Fatal(err)
	}
	if strings.Join(*started, " ") != "reboot.target" {
		t.Errorf("started %q, want reboot.target", *started)
	}
}

func TestRebootRefusesOtherRoot(t *testing.T) {
	started := mockReboot(t, "/nonexistent/kexec")
	err := reboot(context.Background(), testEnv(t, t.TempDir()))
	if err == nil || !strings.Contains(err.Error(), "--no-reboot") {
		t.Errorf("want a refusal naming --no-reboot, got %v", err)
	}
	if len(*started) > 0 {
		t.Errorf("started %q", *started)
	}
}

func TestKexecWithoutKexecTools(t *testing.T) {
	started := mockReboot(t, "/nonexistent/kexec")
	err := kexecReboot(context.Background(), testEnv(t, "/"))
	if err == nil || !strings.Contains(err.Error(), "kexec-tools") {
		t.Errorf("want an error naming kexec-tools, got %v", err)
	}
	if len(*started) > 0 {
		t.Errorf("started %q without kexec", *started)
	}
}

// fakeKexec writes a kexec that records its arguments in log.
func fakeKexec(t *testing.T, exit int) (tool, log string) {
	t.Helper()
	dir := t.TempDir()
	log = filepath.Join(dir, "log")
	tool = filepath.Join(dir, "kexec")
	script := "#!/bin/sh\necho \"$@\" >> " + log + "\nexit " + string(rune('0'+exit)) + "\n"
	if err := os.WriteFile(tool, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return tool, log
}

func TestKexecLoadsRunningKernel(t *testing.T) {
	tool, log := fakeKexec(t, 0)
	started := mockReboot(t, tool)
	boot := t.TempDir()
	bootDir = boot
	for _, f := range []string{"vmlinuz-4.18.0-1.el8.x86_64", "initramfs-4.18.0-1.el8.x86_64.img"} {
		os.WriteFile(filepath.Join(boot, f), nil, 0o644)
	}
	procCmd = filepath.Join(boot, "cmdline")
	os.WriteFile(procCmd, []byte("BOOT_IMAGE=(hd0,gpt2)/vmlinuz root=UUID=abc ro quiet\n"), 0o644)
	unameRelease = func() (string, error) { return "4.18.0-1.el8.x86_64", nil }

	if err := kexecReboot(context.Background(), testEnv(t, "/")); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(log)
	want := "-l " + boot + "/vmlinuz-4.18.0-1.el8.x86_64 --initrd=" + boot + "/initramfs-4.18.0-1.el8.x86_64.img --command-line=BOOT_IMAGE=(hd0,gpt2)/vmlinuz root=UUID=abc ro quiet"
	if strings.TrimSpace(string(b)) != want {
		t.Errorf("kexec got\n%s\nwant\n%s", b, want)
	}
	if strings.Join(*started, " ") != "kexec.target" {
		t.Errorf("started %q, want kexec.target", *started)
	}
}

// A failing kexec after apply falls back to a plain reboot: the machine
// must never stay in the offline target. The marker is used once.
func TestRebootAfterApplyFallsBack(t *testing.T) {
	tool, _ := fakeKexec(t, 1)
	started := mockReboot(t, tool)
	bootDir = t.TempDir() // no kernel image: kexec cannot load anything
	unameRelease = func() (string, error) { return "4.18.0-1.el8.x86_64", nil }
	runningRoot = t.TempDir()
	e := testEnv(t, runningRoot)
	if err := os.MkdirAll(e.engine.Root.StateDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := setKexecMarker(e.engine.Root, true); err != nil {
		t.Fatal(err)
	}
	if err := rebootAfterApply(e); err != nil {
		t.Fatal(err)
	}
	if strings.Join(*started, " ") != "reboot.target" {
		t.Errorf("started %q, want reboot.target after the failed kexec", *started)
	}
	if _, err := os.Stat(filepath.Join(e.engine.Root.StateDir(), kexecMarker)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the kexec marker should be used once, still there: %v", err)
	}
	// Without the marker: a plain reboot, no kexec attempt.
	*started = nil
	if err := rebootAfterApply(e); err != nil || strings.Join(*started, " ") != "reboot.target" {
		t.Errorf("started %q, %v; want reboot.target", *started, err)
	}
	if err := setKexecMarker(e.engine.Root, false); err != nil {
		t.Errorf("removing a missing marker: %v", err)
	}
}

func TestParseGrubbyInfo(t *testing.T) {
	out := `index=0
kernel="/boot/vmlinuz-4.18.0-305.el8.x86_64"
args="ro crashkernel=auto resume=/dev/mapper/kos-swap rd.lvm.lv=kos/root rhgb quiet $tuned_params"
root="/dev/mapper/kos-root"
initrd="/boot/initramfs-4.18.0-305.el8.x86_64.img $tuned_initrd"
title="KeyarchOS (4.18.0-305.el8.x86_64) 5.8"
id="6b6f-4.18.0-305.el8.x86_64"
`
	k, err := parseGrubbyInfo(out)
	if err != nil {
		t.Fatal(err)
	}
	want := bootKernel{
		Kernel:  "/boot/vmlinuz-4.18.0-305.el8.x86_64",
		Initrd:  "/boot/initramfs-4.18.0-305.el8.x86_64.img",
		Options: "root=/dev/mapper/kos-root ro crashkernel=auto resume=/dev/mapper/kos-swap rd.lvm.lv=kos/root rhgb quiet",
	}
	if k != want {
		t.Errorf("got %+v\nwant %+v", k, want)
	}
	// root= in args wins over grubby's root line.
	k, _ = parseGrubbyInfo("kernel=/boot/vmlinuz\nargs=\"root=UUID=x ro\"\nroot=/dev/sda1\n")
	if k.Options != "root=UUID=x ro" {
		t.Errorf("options %q", k.Options)
	}
	if _, err := parseGrubbyInfo("index=0\n"); err == nil {
		t.Error("no kernel= line should be an error")
	}
}
