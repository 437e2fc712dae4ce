package upgrader_test

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
	"github.com/keyarchos/kos-upgrade/test/testenv"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// BenchmarkUndoApply measures the offline window (Engine.Apply, wall time)
// of the upgrade of BenchmarkApply's system (the fixture 5.8 plus
// benchPackages bench v1 packages, to 5.9 + bench v2) on XFS with reflinks
// on a loop device, the EL8 installer's root, once with the undo journal
// (--snapshot undo) and once with --snapshot none, each on its own fresh
// filesystem. It reports both, their ratio (target <= 1.1), and the
// journal: the time of the snapshot step that makes it, the size of the
// files it covers and the free space it took (target: under 5% of the
// files covered).
//
//	go test -run '^$' -bench BenchmarkUndoApply -benchtime 1x ./upgrader
func BenchmarkUndoApply(b *testing.B) {
	if testing.Short() {
		b.Skip("skipping real-component benchmark in -short mode")
	}
	testenv.RequireRoot(b)
	testenv.RequireTools(b, "rpm", "rpmkeys", "mkfs.xfs", sysroot.Python())
	ctx := context.Background()
	sys := newBenchSystem(b, ctx)
	var undo, none, step time.Duration
	var covered, used int64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		// none first: the first run pays for the cold caches.
		d, _ := undoApplyOnce(b, ctx, sys, snapshot.BackendNone)
		none += d
		d, js := undoApplyOnce(b, ctx, sys, snapshot.BackendUndo)
		undo += d
		covered, used, step = js.Covered, js.SpaceUsed, step+js.Step
	}
	n := float64(b.N)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(undo.Seconds()/n, "undo-s")
	b.ReportMetric(none.Seconds()/n, "none-s")
	b.ReportMetric(undo.Seconds()/none.Seconds(), "undo/none")
	b.ReportMetric(step.Seconds()/n, "journal-s")
	b.ReportMetric(float64(covered)/1024, "covered-KiB")
	b.ReportMetric(float64(used)/1024, "journal-KiB")
	if covered > 0 {
		b.ReportMetric(100*float64(used)/float64(covered), "journal-%")
	}
	if r := undo.Seconds() / none.Seconds(); r > 1.1 {
		b.Logf("undo/none = %.2f is above the 1.1 target", r)
	}
}

// undoApplyOnce prepares and arms the bench upgrade on a fresh XFS root
// with backend and returns the wall time of Apply and, for undo, the
// journal's figures.
func undoApplyOnce(b *testing.B, ctx context.Context, sys *benchSystem, backend string) (time.Duration, undoStats) {
	root := testenv.NewLoopFS(b, 3072, "mkfs.xfs", "-q", "-f", "-m", "reflink=1")
	sys.install(b, ctx, root)
	r, err := sysroot.New(root)
	if err != nil {
		b.Fatal(err)
	}
	sink := &benchSink{}
	eng := upgrader.New(r, sink, nil)
	sys.prepare(b, ctx, eng, backend)
	if _, err := eng.Arm(ctx); err != nil {
		b.Fatalf("arm: %v", err)
	}
	syscall.Sync()
	b.StartTimer()
	sink.reset()
	start := time.Now()
	res, err := eng.Apply(ctx)
	d := time.Since(start)
	b.StopTimer()
	if err != nil {
		b.Fatalf("apply with %s: %v", backend, err)
	}
	var js undoStats
	if backend == snapshot.BackendUndo {
		u, err := snapshot.NewUndo(root)
		if err != nil {
			b.Fatal(err)
		}
		s, err := u.Stats(res.Result.Snapshot)
		if err != nil {
			b.Fatal(err)
		}
		js.Covered, js.SpaceUsed = s.Covered, s.SpaceUsed
		b.Logf("undo journal: %d files, %d dirs, %d symlinks, %d paths to remove; %d bytes covered, %d bytes of free space used, reflinked=%v",
			s.Files, s.Dirs, s.Symlinks, s.Absent, s.Covered, s.SpaceUsed, s.Reflinked)
	}
	var steps []string
	var snapAt time.Duration
	for i, st := range sink.steps {
		if st == upgrader.StepSnapshot {
			snapAt = sink.at[i]
		}
		if st == upgrader.StepTransaction {
			js.Step = sink.at[i] - snapAt
		}
		steps = append(steps, fmt.Sprintf("%s@%.2fs", st, sink.at[i].Seconds()))
	}
	b.Logf("apply with --snapshot %s: %s (%s)", backend, d, strings.Join(steps, " "))
	return d, js
}

type undoStats struct {
	Covered, SpaceUsed int64
	// Step is the wall time of the snapshot step (the journal, synced).
	Step time.Duration
}
