package upgrader_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/boot"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// kiKver is the kernel of repo 5.9-kernel-install, whose %posttrans writes
// its entry as kernel-install does.
const kiKver = "5.9.1-1.noarch"

// The new kernel's package writes its own entry during the transaction,
// <machine-id>-<kver>, with the command line of the running (old) system:
// apply must retarget that entry to the new root rather than add one of
// its own, and build the initramfs it names, which dracut could not build
// inside the transaction.
func TestKernelInstallEntryRetargeted(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cmdline  string // /etc/kernel/cmdline; "": none (and no /proc): kernel-install writes no root=
		dracut   bool
		noKernel bool // the scriptlet writes the entry but not the kernel it names
		wantErr  string
	}{
		{name: "command line of the old root", cmdline: "root=UUID=%s ro rootflags=subvol=@ console=ttyS0 ki.marker=1", dracut: true},
		{name: "no command line", dracut: true},
		{name: "entry without its kernel", cmdline: "root=UUID=%s ro rootflags=subvol=@ console=ttyS0 ki.marker=1", dracut: true, noKernel: true},
		{name: "no dracut for the missing initramfs", cmdline: "root=UUID=%s ro rootflags=subvol=@ console=ttyS0", wantErr: "which does not exist, and the new root has no dracut to build it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBootSystem(t, tc.dracut)
			ctx := context.Background()
			if tc.cmdline != "" {
				writeFile(t, filepath.Join(b.Root, "etc/kernel/cmdline"), strings.ReplaceAll(tc.cmdline, "%s", b.UUID)+"\n", 0o644)
			}
			if tc.noKernel {
				writeFile(t, filepath.Join(b.Root, "etc/kernel/kos-test-no-kernel"), "", 0o644)
			}
			before := b.digest(t)
			b.prepareAndArm(t, upgrader.PrepareOptions{Repos: b.repos(fixture.Repo59, fixture.Repo59KernelInstall)})
			res, err := b.Engin.Apply(ctx)
			kiID := fixture.MachineID + "-" + kiKver
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), kiID) {
					t.Fatalf("apply: %v, want an error naming %s and saying %q", err, kiID, tc.wantErr)
				}
				if st := b.statusJSON(t); st.State.LastResult == nil || st.State.LastResult.Step != upgrader.StepBoot {
					t.Errorf("failed at %+v", st.State.LastResult)
				}
				if d := diffDigest(before, b.digest(t)); len(d) > 0 {
					t.Errorf("/boot after the failed apply differs (kernel-install's entry and kernel left?):\n%s", strings.Join(d, "\n"))
				}
				if left := b.subvols(t); len(left) > 0 {
					t.Errorf("snapshots left: %v", left)
				}
				return
			}
			if err != nil {
				t.Fatalf("apply: %v", err)
			}
			snap := res.Result.Snapshot

			// kernel-install's entry, retargeted; no entry of our own.
			e := b.entry(t, kiID)
			opts := e.Options()
			if r, _ := opts.Get("root"); r != "UUID="+b.UUID {
				t.Errorf("entry root=%q", r)
			}
			if rf, _ := opts.Get("rootflags"); rf != "subvol="+snap {
				t.Errorf("entry rootflags=%q, want subvol=%s:\n%s", rf, snap, e.Format())
			}
			if !opts.Has("console") || !opts.Has("ro") {
				t.Errorf("entry lost options:\n%s", e.Format())
			}
			if tc.cmdline != "" && !opts.Has("ki.marker") {
				t.Errorf("kernel-install's own command line was replaced:\n%s", e.Format())
			}
			if e.Linux() != "/vmlinuz-"+kiKver || strings.Join(e.Initrds(), " ") != "/initramfs-"+kiKver+".img" || e.Value(boot.KeyGrubClass) != "kernel" {
				t.Errorf("entry:\n%s", e.Format())
			}
			if k, err := os.ReadFile(filepath.Join(b.Boot, "vmlinuz-"+kiKver)); err != nil || len(k) == 0 {
				t.Errorf("the kernel the entry names is not in /boot: %v", err)
			}
			if ird, _ := os.ReadFile(filepath.Join(b.Boot, "initramfs-"+kiKver+".img")); !strings.Contains(string(ird), "initramfs of "+kiKver) {
				t.Errorf("the initramfs the entry names was not built by the new root's dracut: %q", ird)
			}
			if m, _ := filepath.Glob(filepath.Join(b.Boot, "loader/entries", boot.EntryIDPrefix+"*")); len(m) > 0 {
				t.Errorf("entries of kos-upgrade besides kernel-install's: %v", m)
			}
			if old := b.entry(t, b.OldEntry); strings.Join(old.GetAll(boot.KeyOptions), " ") != "root=UUID="+b.UUID+" ro rootflags=subvol=@ console=ttyS0" {
				t.Errorf("old entry changed:\n%s", old.Format())
			}
			st := b.statusJSON(t)
			if bs := st.State.Boot; bs == nil || bs.Entry != kiID || strings.Join(bs.Entries, " ") != kiID || bs.Trial != upgrader.TrialArmed {
				t.Errorf("state.boot: %+v", st.State.Boot)
			}
			if env := b.env(t); env.Value("next_entry") != kiID || env.Value("saved_entry") != b.OldEntry {
				t.Errorf("grubenv: %v", env.Map())
			}

			// It boots the new root: blessed; rollback takes it away.
			_, ne := b.mountRoot(t, snap)
			if h, err := ne.Health(ctx, upgrader.HealthOptions{Cmdline: cmdline(e)}); err != nil || h.Action != upgrader.HealthBlessed {
				t.Fatalf("health on kernel-install's entry: %+v %v", h, err)
			}
			if _, err := ne.Rollback(ctx); err != nil {
				t.Fatalf("rollback: %v", err)
			}
			if d := diffDigest(before, b.digest(t)); len(d) > 0 {
				t.Errorf("/boot after rollback differs from before the upgrade:\n%s", strings.Join(d, "\n"))
			}
		})
	}
}
