package snapshot_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// BenchmarkBtrfsSnapshot measures Create (snapshot and filesystem sync) of a
// root holding 1 GiB and 8 GiB: a btrfs snapshot copies only the root of the
// subvolume's tree, so both should take about the same time.
//
//	go test -run '^$' -bench BtrfsSnapshot -benchtime=3x ./pkg/snapshot
func BenchmarkBtrfsSnapshot(b *testing.B) {
	for _, gib := range []int{1, 8} {
		// Set up once per size here, not in the sub-benchmark, which the
		// framework calls more than once.
		_, rootDir := newBtrfsRoot(b, gib*1024+2048)
		fillRoot(b, rootDir, gib)
		bk, err := snapshot.NewBtrfs(context.Background(), rootDir, b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		bk.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		b.Cleanup(func() { bk.Close() })
		testenv.Run(b, "btrfs", "filesystem", "sync", rootDir)
		b.Logf("root with %d GiB: %s", gib, testenv.Run(b, "btrfs", "filesystem", "du", "-s", "--raw", rootDir))
		n := 0
		b.Run(fmt.Sprintf("%dGiB", gib), func(b *testing.B) {
			ctx := context.Background()
			for i := 0; i < b.N; i++ {
				n++
				name := snapshot.BtrfsName(fmt.Sprintf("bench-%d", n))
				b.StartTimer()
				if _, err := bk.Create(ctx, name); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := bk.Delete(ctx, name); err != nil {
					b.Fatal(err)
				}
				// Let the cleaner finish, so that it does not run
				// during the next Create.
				testenv.Run(b, "btrfs", "subvolume", "sync", rootDir)
			}
		})
	}
}

// fillRoot puts gib GiB of data in dir as real extents, quickly: files of
// 128 MiB preallocated with fallocate, with 4 KiB written in every MiB so
// the extent tree grows with the data (1024 extents per GiB), plus 2000
// small files per GiB for the metadata an installed system has.
func fillRoot(b *testing.B, dir string, gib int) {
	b.Helper()
	const fileSize = 128 << 20
	block := make([]byte, 4096)
	for i := range block {
		block[i] = byte(i)
	}
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < gib*(1<<30)/fileSize; i++ {
		f, err := os.Create(filepath.Join(data, fmt.Sprintf("big-%03d", i)))
		if err != nil {
			b.Fatal(err)
		}
		if err := syscall.Fallocate(int(f.Fd()), 0, 0, fileSize); err != nil {
			b.Fatal(err)
		}
		for off := int64(0); off < fileSize; off += 1 << 20 {
			if _, err := f.WriteAt(block, off); err != nil {
				b.Fatal(err)
			}
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
	}
	for i := 0; i < gib*2000; i++ {
		sub := filepath.Join(data, "small", fmt.Sprintf("%02d", i%100))
		if i < 100 {
			if err := os.MkdirAll(sub, 0o755); err != nil {
				b.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%05d", i)), block, 0o644); err != nil {
			b.Fatal(err)
		}
	}
}
