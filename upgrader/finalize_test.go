package upgrader_test

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/upgrader"
)

// TestFinalize is the shutdown-time finalize of a staged root
// (Engine.Finalize, `apply --at-shutdown`) on a btrfs root: what it does
// with a stage, without one, and when the carry-over falls back.
func TestFinalize(t *testing.T) {
	ctx := context.Background()
	s := newSystem(t)
	oldPkgs := rpmQA(t, s.Root)
	link := filepath.Join(s.Root, "system-update")
	prepare := func(t *testing.T) {
		t.Helper()
		if _, err := s.Engin.Prepare(ctx, upgrader.PrepareOptions{To: "5.9", Snapshot: "auto", Repos: s.repos("5.9")}); err != nil {
			t.Fatalf("prepare: %v", err)
		}
	}
	reset := func(t *testing.T) {
		t.Helper()
		if s.defaultSubvol(t) != "@" {
			if _, err := s.Engin.Rollback(ctx); err != nil {
				t.Fatalf("rollback: %v", err)
			}
		}
		if _, err := s.Engin.Clean(ctx); err != nil {
			t.Fatalf("clean: %v", err)
		}
	}

	t.Run("not staged: left to the offline boot", func(t *testing.T) {
		prepare(t)
		if _, err := s.Engin.Arm(ctx); err != nil {
			t.Fatal(err)
		}
		res, err := s.Engin.Finalize(ctx)
		if err != nil || res.Ran || !strings.Contains(res.Reason, "offline boot") {
			t.Fatalf("finalize without a stage: %+v, %v", res, err)
		}
		if l, err := os.Readlink(link); err != nil || l != "/var/lib/kos-upgrade" {
			t.Fatalf("the offline boot is not armed any more: %q %v", l, err)
		}
		st, err := s.Engin.Status(ctx)
		if err != nil || st.State.Status != upgrader.StatusArmed {
			t.Fatalf("status %+v %v, want armed", st, err)
		}
		if err := s.Engin.Cancel(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("staged: finalized, one boot", func(t *testing.T) {
		prepare(t)
		if err := s.Engin.Stage(ctx); err != nil {
			t.Fatalf("stage: %v", err)
		}
		if _, err := s.Engin.Arm(ctx); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(s.Root, "etc/after-staging"), []byte("live\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		res, err := s.Engin.Finalize(ctx)
		if err != nil || !res.Ran {
			t.Fatalf("finalize: %+v, %v", res, err)
		}
		r := res.Result
		if !r.Success || !r.AtShutdown || r.Path != upgrader.PathStaged || r.Carried == 0 {
			t.Fatalf("result %+v, want a staged run at shutdown", r)
		}
		if def := s.defaultSubvol(t); def != r.Snapshot {
			t.Fatalf("default %s, want %s", def, r.Snapshot)
		}
		if _, err := os.Lstat(link); !os.IsNotExist(err) {
			t.Fatalf("/system-update is still there after finalizing: %v", err)
		}
		if b, err := os.ReadFile(filepath.Join(s.FS.Top, r.Snapshot, "etc/after-staging")); err != nil || string(b) != "live\n" {
			t.Fatalf("the change after staging was not carried over: %q %v", b, err)
		}
		if left := settledSubvols(t, s); len(left) != 1 || left[0] != r.Snapshot {
			t.Fatalf("snapshots left: %v, want only %s", left, r.Snapshot)
		}
		h, err := s.Engin.History(ctx)
		if err != nil || len(h) == 0 || !h[len(h)-1].AtShutdown {
			t.Fatalf("history does not record the run at shutdown: %+v %v", h, err)
		}
		reset(t)
		os.Remove(filepath.Join(s.Root, "etc/after-staging"))
	})

	t.Run("fallback: undone, the offline boot upgrades", func(t *testing.T) {
		prepare(t)
		if err := s.Engin.Stage(ctx); err != nil {
			t.Fatalf("stage: %v", err)
		}
		if _, err := s.Engin.Arm(ctx); err != nil {
			t.Fatal(err)
		}
		// A packaged file the transaction also replaces, changed after
		// staging: outside the carry-over's rules.
		f, err := os.OpenFile(filepath.Join(s.Root, "usr/bin/app"), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("# local edit\n")
		f.Close()
		res, err := s.Engin.Finalize(ctx)
		if err != nil || res.Ran || !strings.Contains(res.Reason, "/usr/bin/app") || !strings.Contains(res.Reason, "offline boot") {
			t.Fatalf("finalize with a change outside the rules: %+v, %v; want it undone, naming /usr/bin/app", res, err)
		}
		if def := s.defaultSubvol(t); def != "@" {
			t.Fatalf("default %s after an undone finalize", def)
		}
		if left := s.subvols(t); len(left) != 0 {
			t.Fatalf("snapshots left after an undone finalize: %v", left)
		}
		if got := rpmQA(t, s.Root); !reflect.DeepEqual(got, oldPkgs) {
			t.Fatalf("the running root changed: %v", got)
		}
		if l, err := os.Readlink(link); err != nil || l != "/var/lib/kos-upgrade" {
			t.Fatalf("the offline boot is not armed again: %q %v", l, err)
		}
		h, _ := s.Engin.History(ctx)
		if last := h[len(h)-1]; last.Success || !last.AtShutdown || !strings.Contains(last.Error, "offline boot") {
			t.Fatalf("history of the undone finalize: %+v", last)
		}
		// The offline boot: the classic apply, complete.
		ar, err := s.Engin.Apply(ctx)
		if err != nil || !ar.Ran || !ar.Result.Success || ar.Result.AtShutdown {
			t.Fatalf("the offline apply after an undone finalize: %+v %v", ar, err)
		}
		if def := s.defaultSubvol(t); def != ar.Result.Snapshot {
			t.Fatalf("default %s, want %s", def, ar.Result.Snapshot)
		}
		b, err := os.ReadFile(filepath.Join(s.FS.Top, ar.Result.Snapshot, "usr/bin/app"))
		if err != nil || strings.Contains(string(b), "# local edit") {
			t.Fatalf("the offline apply's /usr/bin/app is not the packaged one: %v", err)
		}
	})
}
