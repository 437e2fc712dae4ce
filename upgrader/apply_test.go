package upgrader_test

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/upgrader"
)

func TestPrepareChangesNothing(t *testing.T) {
	s := newSystem(t)
	ctx := context.Background()
	beforePkgs := rpmQA(t, s.Root)
	before := treeDigest(t, s.Root, "var/lib/kos-upgrade")
	p, err := s.Engin.Prepare(ctx, upgrader.PrepareOptions{To: "5.9", Snapshot: "auto"})
	if err != nil {
		t.Fatalf("prepare: %v", err)
	}
	if p.Snapshot != "btrfs" {
		t.Errorf("auto picked %q, want btrfs", p.Snapshot)
	}
	if d := diffDigest(before, treeDigest(t, s.Root, "var/lib/kos-upgrade")); len(d) > 0 {
		t.Errorf("prepare changed the root:\n%s", strings.Join(d, "\n"))
	}
	if after := rpmQA(t, s.Root); !reflect.DeepEqual(beforePkgs, after) {
		t.Errorf("prepare changed the installed packages: %v -> %v", beforePkgs, after)
	}
	if got := s.defaultSubvol(t); got != "@" {
		t.Errorf("default subvolume is %q after prepare", got)
	}
	t.Logf("plan: %+v", p.Counts())
}
