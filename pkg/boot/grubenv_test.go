package boot

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/test/el8"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

func TestEnvFormat(t *testing.T) {
	e := NewEnv()
	e.Set(EnvSavedEntry, "abc-4.18")
	e.Set("kernelopts", "root=/dev/sda1 ro")
	e.Set("weird", "back\\slash\nnewline")
	data, err := e.Format()
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != GrubenvSize || !bytes.HasPrefix(data, []byte(GrubenvSignature)) {
		t.Fatalf("size %d", len(data))
	}
	want := GrubenvSignature + GrubenvWarning + "saved_entry=abc-4.18\nkernelopts=root=/dev/sda1 ro\nweird=back\\\\slash\\\nnewline\n"
	if !bytes.HasPrefix(data, []byte(want)) || strings.Trim(string(data[len(want):]), "#") != "" {
		t.Fatalf("got %q", data[:len(want)+4])
	}
	back, err := ParseEnv(data)
	if err != nil {
		t.Fatal(err)
	}
	if back.Value("weird") != "back\\slash\nnewline" || strings.Join(back.Keys(), ",") != "saved_entry,kernelopts,weird" {
		t.Errorf("parsed %v", back.Map())
	}
	back.Set(EnvSavedEntry, "new")
	back.Unset("kernelopts")
	back.Unset("missing")
	if strings.Join(back.Keys(), ",") != "saved_entry,weird" {
		t.Errorf("keys %v", back.Keys())
	}
	e.Set("big", strings.Repeat("x", 1000))
	if _, err := e.Format(); !errors.Is(err, ErrEnvTooLarge) {
		t.Errorf("too large: %v", err)
	}
	bad := NewEnv()
	bad.Set("a=b", "c")
	if _, err := bad.Format(); err == nil {
		t.Error("key with = accepted")
	}
	if _, err := ParseEnv([]byte("garbage")); err == nil {
		t.Error("no signature accepted")
	}
}

func TestEnvKeepsLargerBlock(t *testing.T) {
	data := []byte(GrubenvSignature + "a=1\n" + strings.Repeat("#", 2048-len(GrubenvSignature)-4))
	e, err := ParseEnv(data)
	if err != nil {
		t.Fatal(err)
	}
	e.Set("b", strings.Repeat("y", 1500))
	out, err := e.Format()
	if err != nil || len(out) != 2048 {
		t.Fatalf("len %d err %v", len(out), err)
	}
}

func TestWriteEnvRefusesWithoutTouching(t *testing.T) {
	p := filepath.Join(t.TempDir(), "grubenv")
	e := NewEnv()
	e.Set("a", "1")
	if err := WriteEnv(p, e); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(p)
	e.Set("big", strings.Repeat("x", 2000))
	if err := WriteEnv(p, e); !errors.Is(err, ErrEnvTooLarge) {
		t.Fatalf("err %v", err)
	}
	after, _ := os.ReadFile(p)
	if !bytes.Equal(before, after) {
		t.Error("a refused write changed the file")
	}
}

// grub-editenv is the reference: what we write, it lists; what it writes,
// we read, byte for byte the same block.
func TestGrubEditenvInterop(t *testing.T) {
	testenv.RequireTools(t, "grub-editenv")
	grubEditenvInterop(t, "grub-editenv", true)
}

// The same with EL8's own grub2-editenv (rhel-8-main, built by test/el8),
// whose create writes no WARNING line: our rewrite of its block adds none.
func TestGrubEditenvInteropEL8(t *testing.T) {
	if testing.Short() {
		t.Skip("builds EL8's grub2")
	}
	grubEditenvInterop(t, el8.MustGrub2(t).Tool("grub2-editenv"), false)
}

// grubEditenvInterop checks our blocks against editenv's; newEnv: ours is
// a new block (NewEnv), else editenv's `create` rewritten by us.
func grubEditenvInterop(t *testing.T, editenv string, newEnv bool) {
	dir := t.TempDir()
	ours := filepath.Join(dir, "ours")
	e := NewEnv()
	if !newEnv {
		testenv.Run(t, editenv, ours, "create")
		var err error
		if e, err = ReadEnv(ours); err != nil {
			t.Fatal(err)
		}
	}
	e.Set(EnvSavedEntry, "abc-4.18.0-80.el8.x86_64")
	e.Set(EnvNextEntry, "kos-upgrade-abc-4.18.0-553")
	e.Set(EnvBootSuccess, "0")
	e.Set(EnvBootCounter, "3")
	e.Set(EnvKernelOpts, "root=/dev/mapper/rhel-root ro rd.lvm.lv=rhel/root rhgb quiet")
	e.Set("empty", "")
	if err := WriteEnv(ours, e); err != nil {
		t.Fatal(err)
	}
	out := testenv.Run(t, editenv, ours, "list")
	want := "saved_entry=abc-4.18.0-80.el8.x86_64\nnext_entry=kos-upgrade-abc-4.18.0-553\nboot_success=0\nboot_counter=3\n" +
		"kernelopts=root=/dev/mapper/rhel-root ro rd.lvm.lv=rhel/root rhgb quiet\nempty=\n"
	if out != want {
		t.Errorf("grub-editenv list of our block:\n%s\nwant\n%s", out, want)
	}

	theirs := filepath.Join(dir, "theirs")
	testenv.Run(t, editenv, theirs, "create")
	for _, kv := range []string{"saved_entry=abc-4.18.0-80.el8.x86_64", "next_entry=kos-upgrade-abc-4.18.0-553",
		"boot_success=0", "boot_counter=3", "kernelopts=root=/dev/mapper/rhel-root ro rd.lvm.lv=rhel/root rhgb quiet", "empty="} {
		testenv.Run(t, editenv, theirs, "set", kv)
	}
	a, _ := os.ReadFile(ours)
	b, _ := os.ReadFile(theirs)
	if !bytes.Equal(a, b) {
		t.Errorf("blocks differ:\nours   %q\ntheirs %q", a[:200], b[:200])
	}
	got, err := ReadEnv(theirs)
	if err != nil {
		t.Fatal(err)
	}
	if got.Value(EnvKernelOpts) != e.Value(EnvKernelOpts) || got.Value(EnvNextEntry) != e.Value(EnvNextEntry) {
		t.Errorf("we read %v", got.Map())
	}
	// Their unset, then our rewrite keeps the rest and the order.
	testenv.Run(t, editenv, theirs, "unset", "next_entry")
	got, _ = ReadEnv(theirs)
	got.Set(EnvSavedEntry, "new")
	if err := WriteEnv(theirs, got); err != nil {
		t.Fatal(err)
	}
	out = testenv.Run(t, editenv, theirs, "list")
	if !strings.HasPrefix(out, "saved_entry=new\nboot_success=0\nboot_counter=3\n") {
		t.Errorf("after our rewrite: %s", out)
	}
	// Values with backslashes and newlines: grub-editenv escapes them, we
	// read them back, and the other way round.
	odd := filepath.Join(dir, "odd")
	testenv.Run(t, editenv, odd, "create")
	testenv.Run(t, editenv, odd, "set", "v=a\\b")
	got, _ = ReadEnv(odd)
	if got.Value("v") != "a\\b" {
		t.Errorf("backslash: %q", got.Value("v"))
	}
	got.Set("w", "c\\d")
	WriteEnv(odd, got)
	mine, _ := os.ReadFile(odd)
	fresh := filepath.Join(dir, "fresh")
	testenv.Run(t, editenv, fresh, "create")
	testenv.Run(t, editenv, fresh, "set", "v=a\\b", "w=c\\d")
	ref, _ := os.ReadFile(fresh)
	if !bytes.Equal(mine, ref) {
		t.Errorf("escaping differs:\nours   %q\ntheirs %q", mine[:80], ref[:80])
	}
}

// The shipped grub script is valid grub syntax, and the grub.d script
// prints it unchanged.
func TestGrubTrialScript(t *testing.T) {
	testenv.RequireTools(t, "grub-script-check", "sh")
	cmd := exec.Command("grub-script-check")
	cmd.Stdin = strings.NewReader(GrubTrialConfig)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("grub-script-check: %v\n%s", err, out)
	}
	out, err := exec.Command("sh", "grub/09_kos_upgrade_trial").Output()
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != GrubTrialConfig {
		t.Error("09_kos_upgrade_trial does not print kos-upgrade-trial.cfg")
	}
	for n := 1; n < MaxTrialTries; n++ {
		if !strings.Contains(GrubTrialConfig, `"${kos_upgrade_tries}" = "`+string(rune('0'+n))+`"`) {
			t.Errorf("the script does not count down from %d", n)
		}
	}
}

// EL8's own grub2-script-check (grub 2.02 with Red Hat's patches) accepts
// the trial script: it is what parses it at boot.
func TestGrubTrialScriptEL8(t *testing.T) {
	if testing.Short() {
		t.Skip("builds EL8's grub2")
	}
	cmd := exec.Command(el8.MustGrub2(t).Tool("grub2-script-check"))
	cmd.Stdin = strings.NewReader(GrubTrialConfig)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("grub2-script-check: %v\n%s", err, out)
	}
}
