package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// lvmTestTimeout bounds the guest boot that runs the LVM tests (about 4
// minutes alone; beside another QEMU scenario (QemuParallel) its two vCPUs
// share the host's CPUs); the tests in the guest get a minute less.
const lvmTestTimeout = 15 * time.Minute

// TestQemuLVMConformance runs pkg/snapshot's LVM tests (the conformance
// suite on thin and thick LVs with XFS, rollback by merge, sizing) in a QEMU
// guest, where device-mapper exists: the guest gets a blank scratch disk on
// which the tests make their volume group. This is the QEMU scenario of the
// default test run.
func TestQemuLVMConformance(t *testing.T) {
	QemuParallel(t, 1)
	vm := NewQemuVM(t)
	BuildTestBinary(t, "./pkg/snapshot", filepath.Join(vm.Shared, "snapshot.test"))
	// One scratch disk per parallel test (the guest has 2 CPUs): each
	// test makes its volume group on a disk of its own.
	disks := vm.AddDisk(t, "kos-scratch-0", 2048) + " " + vm.AddDisk(t, "kos-scratch-1", 2048)
	// In the guest nothing may skip: KOS_UPGRADE_REQUIRE_ALL=1.
	vm.WriteShared(t, "run.sh", fmt.Sprintf(`#!/bin/sh
udevadm settle
cd /kos-e2e
start=$(cut -d' ' -f1 /proc/uptime)
KOS_UPGRADE_E2E=%[2]s KOS_UPGRADE_REQUIRE_ALL=1 KOS_UPGRADE_LVM_TEST_DISK="%[1]s" ./snapshot.test -test.run '^TestLVM' -test.v -test.count=1 -test.timeout 14m >lvm-test.log 2>&1
rc=$?
echo "guest test time: $start -> $(cut -d' ' -f1 /proc/uptime)" >>lvm-test.log
cat lvm-test.log >/dev/console
echo $rc >lvm-test.rc
`, disks, os.Getenv(FullEnv)), 0o755)
	start := time.Now()
	b := vm.Boot(t, lvmTestTimeout, "lvm-test.rc")
	log := vm.ReadShared("lvm-test.log")
	rc := strings.TrimSpace(vm.ReadShared("lvm-test.rc"))
	if b.TimedOut || rc != "0" {
		t.Fatalf("LVM tests in the guest: rc %q, timed out %v, qemu %v\n--- test log:\n%s\n--- console (tail):\n%s",
			rc, b.TimedOut, b.Err, tail(log, 150), tail(b.Console, 80))
	}
	// The tests ran, none skipped.
	names := []string{"TestLVMThinConformance", "TestLVMThickConformance", "TestLVMThinActivate", "TestLVMThickRollback", "TestLVMThickTooSmall"}
	if os.Getenv(FullEnv) == "full" {
		names = append(names, "TestLVMThinExt4Conformance")
	}
	for _, name := range names {
		if !regexp.MustCompile(`(?m)^--- PASS: ` + name + ` `).MatchString(log) {
			t.Errorf("%s did not pass in the guest:\n%s", name, tail(log, 150))
		}
	}
	for _, l := range strings.Split(log, "\n") {
		if strings.HasPrefix(l, "--- ") || strings.HasPrefix(l, "guest test time") {
			t.Log(l)
		}
	}
	t.Logf("LVM conformance in QEMU: %s (boot to driver: %ss)", time.Since(start).Round(time.Millisecond), b.Uptime)
}
