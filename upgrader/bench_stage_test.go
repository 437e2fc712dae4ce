package upgrader_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
	"github.com/keyarchos/kos-upgrade/test/testenv"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// BenchmarkStagedApply (P1-staged, docs/stage.md) measures the offline
// window of a staged upgrade (Engine.Apply: verify, carry-over, boot,
// finalize, switch) against the raw rpm -e + rpm -U of the same staged
// files, on the BenchmarkApply system (fixture 5.8 + 200 bench packages,
// upgraded to 5.9 + bench v2), with a live delta made after staging of
// 100, 1,000 and 10,000 changed files, the 1,000 case also with one 1 GiB
// file rewritten (flat in size: a clone per file). Between runs the
// system is rolled back and cleaned; the run must take the staged path.
//
//	go test -run '^$' -bench BenchmarkStagedApply -benchtime 1x ./upgrader
func BenchmarkStagedApply(b *testing.B) {
	if testing.Short() {
		b.Skip("skipping real-component benchmark in -short mode")
	}
	testenv.RequireRoot(b)
	testenv.RequireTools(b, "rpm", "rpmkeys", "btrfs", sysroot.Python())
	ctx := context.Background()
	sys := newBenchSystem(b, ctx)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		runStagedBench(b, ctx, sys)
	}
	b.ReportMetric(0, "ns/op")
}

func runStagedBench(b *testing.B, ctx context.Context, sys *benchSystem) {
	fs := testenv.NewBtrfs(b, 8192)
	root := filepath.Join(b.TempDir(), "root")
	fs.MakeDefaultRoot(b, "@", root)
	sys.install(b, ctx, root)
	const files = 10000
	for i := 0; i < files; i++ {
		p := filepath.Join(root, fmt.Sprintf("srv/bench/d%03d/f%05d", i%100, i))
		if i < 100 {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				b.Fatal(err)
			}
		}
		if err := os.WriteFile(p, []byte(strings.Repeat("x", 512)), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	big := filepath.Join(root, "srv/big")
	writeBig(b, big, 'a')
	r, err := sysroot.New(root)
	if err != nil {
		b.Fatal(err)
	}
	sink := &benchSink{start: time.Now()}
	eng := upgrader.New(r, sink, nil)

	// rpm -e + rpm -U of the staged files on a snapshot of the root.
	p := sys.prepare(b, ctx, eng, "btrfs")
	staged, erase := benchStaged(b, root, p)
	rpmCopy := filepath.Join(fs.Top, "rpm-copy")
	testenv.Run(b, "btrfs", "subvolume", "snapshot", filepath.Join(fs.Top, "@"), rpmCopy)
	benchSettle(b, fs.Top)
	rpmU := benchReplay(b, rpmCopy, staged, erase)
	testenv.Run(b, "btrfs", "subvolume", "delete", rpmCopy)
	b.Logf("rpm -e + rpm -U of the %d staged files: %.2fs", len(staged), rpmU.Seconds())

	for _, tc := range []struct {
		changed int
		big     bool
	}{{100, false}, {1000, false}, {1000, true}, {10000, false}} {
		start := time.Now()
		if err := eng.Stage(ctx); err != nil {
			b.Fatalf("stage: %v", err)
		}
		stageTime := time.Since(start)
		for i := 0; i < tc.changed; i++ {
			f, err := os.OpenFile(filepath.Join(root, fmt.Sprintf("srv/bench/d%03d/f%05d", i%100, i)), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				b.Fatal(err)
			}
			f.WriteString("changed\n")
			f.Close()
		}
		if tc.big {
			writeBig(b, big, 'b')
		}
		if _, err := eng.Arm(ctx); err != nil {
			b.Fatalf("arm: %v", err)
		}
		benchSettle(b, fs.Top)
		sink.reset()
		b.StartTimer()
		t0 := time.Now()
		res, err := eng.Apply(ctx)
		window := time.Since(t0)
		b.StopTimer()
		if err != nil || !res.Result.Success {
			b.Fatalf("apply: %v %+v", err, res)
		}
		if res.Result.Path != upgrader.PathStaged {
			b.Fatalf("the run fell back: %s", res.Result.PathReason)
		}
		name := fmt.Sprintf("changed-%d", tc.changed)
		if tc.big {
			name += "+1GiB"
		}
		b.ReportMetric(window.Seconds(), name+"-window-s")
		b.ReportMetric(window.Seconds()/rpmU.Seconds(), name+"-window/rpm")
		b.Logf("%s: stage (online) %.2fs; offline window %.3fs = %.3f x rpm -U; %d paths carried, %d bytes cloned; apply phases: %s",
			name, stageTime.Seconds(), window.Seconds(), window.Seconds()/rpmU.Seconds(), res.Result.Carried, res.Result.BytesCloned, sink.phases())
		if _, err := eng.Rollback(ctx); err != nil {
			b.Fatalf("rollback: %v", err)
		}
		if _, err := eng.Clean(ctx); err != nil {
			b.Fatalf("clean: %v", err)
		}
		sys.prepare(b, ctx, eng, "btrfs")
	}
}

// writeBig writes a 1 GiB file of byte c.
func writeBig(b *testing.B, path string, c byte) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	chunk := []byte(strings.Repeat(string(c), 1<<20))
	for i := 0; i < 1024; i++ {
		if _, err := f.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
}
