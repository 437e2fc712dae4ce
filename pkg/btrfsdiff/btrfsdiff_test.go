package btrfsdiff_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/btrfsdiff"
	"github.com/keyarchos/kos-upgrade/test/testenv"
	"golang.org/x/sys/unix"
)

// snapPair makes a subvolume, fills it with base, takes the read-only
// snapshot "base", runs change on the subvolume and takes the read-only
// snapshot "live"; it returns both snapshots' paths.
func snapPair(t *testing.T, fs *testenv.Btrfs, name string, base, change func(dir string)) (string, string) {
	t.Helper()
	sub := filepath.Join(fs.Top, name)
	testenv.Run(t, "btrfs", "subvolume", "create", sub)
	base(sub)
	b := filepath.Join(fs.Top, name+"-base")
	l := filepath.Join(fs.Top, name+"-live")
	testenv.Run(t, "btrfs", "subvolume", "snapshot", "-r", sub, b)
	change(sub)
	testenv.Run(t, "btrfs", "subvolume", "snapshot", "-r", sub, l)
	return b, l
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, dir, p, data string) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755))
	must(t, os.WriteFile(filepath.Join(dir, p), []byte(data), 0o644))
}

// baseTree is the starting tree of every case.
func baseTree(t *testing.T) func(string) {
	return func(dir string) {
		write(t, dir, "etc/passwd", "root:x:0:0::/root:/bin/sh\n")
		write(t, dir, "etc/app.conf", "a=1\n")
		write(t, dir, "etc/app.d/one.conf", "1\n")
		write(t, dir, "etc/app.d/two.conf", "2\n")
		write(t, dir, "usr/bin/tool", "#!/bin/sh\n")
		write(t, dir, "var/log/big", strings.Repeat("x", 1<<20))
		must(t, os.Symlink("app.conf", filepath.Join(dir, "etc/link")))
	}
}

// TestCompute runs btrfs send on real snapshots for each kind of change
// and checks the entries (timestamps of directories left out: every
// directory whose entries change has new times).
func TestCompute(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "btrfs")
	fs := testenv.NewBtrfs(t, 512)
	type E = btrfsdiff.Entry
	cases := []struct {
		name   string
		change func(t *testing.T, dir string)
		want   []E
	}{
		{"nothing", func(t *testing.T, dir string) {}, nil},
		{"edit", func(t *testing.T, dir string) {
			f, err := os.OpenFile(filepath.Join(dir, "etc/app.conf"), os.O_WRONLY|os.O_APPEND, 0)
			must(t, err)
			_, err = f.WriteString("b=2\n")
			must(t, err)
			must(t, f.Close())
		}, []E{{Path: "etc/app.conf", Data: true, Times: true}}},
		{"add", func(t *testing.T, dir string) { write(t, dir, "etc/new.conf", "n\n") },
			[]E{{Path: "etc/new.conf", Added: true}}},
		{"add in a new directory", func(t *testing.T, dir string) { write(t, dir, "srv/www/index.html", "hi\n") },
			[]E{{Path: "srv", Added: true}, {Path: "srv/www", Added: true}, {Path: "srv/www/index.html", Added: true}}},
		{"delete", func(t *testing.T, dir string) { must(t, os.Remove(filepath.Join(dir, "usr/bin/tool"))) },
			[]E{{Path: "usr/bin/tool", Removed: true}}},
		{"delete a directory", func(t *testing.T, dir string) { must(t, os.RemoveAll(filepath.Join(dir, "etc/app.d"))) },
			[]E{{Path: "etc/app.d", Removed: true, Subtree: true}, {Path: "etc/app.d/one.conf", Removed: true}, {Path: "etc/app.d/two.conf", Removed: true}}},
		{"rename a file", func(t *testing.T, dir string) {
			must(t, os.Rename(filepath.Join(dir, "etc/app.conf"), filepath.Join(dir, "etc/app.conf.old")))
		}, []E{{Path: "etc/app.conf", Removed: true}, {Path: "etc/app.conf.old", Added: true}}},
		{"rename a directory", func(t *testing.T, dir string) {
			must(t, os.Rename(filepath.Join(dir, "etc/app.d"), filepath.Join(dir, "etc/app.d.off")))
		}, []E{{Path: "etc/app.d", Removed: true, Subtree: true}, {Path: "etc/app.d.off", Added: true, Subtree: true}}},
		{"rename a directory and edit in it", func(t *testing.T, dir string) {
			must(t, os.Rename(filepath.Join(dir, "etc/app.d"), filepath.Join(dir, "etc/conf.d")))
			write(t, dir, "etc/conf.d/one.conf", "uno\n")
		}, []E{{Path: "etc/app.d", Removed: true, Subtree: true}, {Path: "etc/conf.d", Added: true, Subtree: true},
			{Path: "etc/conf.d/one.conf", Data: true, Times: true}}},
		{"replace by rename", func(t *testing.T, dir string) {
			write(t, dir, "etc/.app.conf.tmp", "a=3\n")
			must(t, os.Rename(filepath.Join(dir, "etc/.app.conf.tmp"), filepath.Join(dir, "etc/app.conf")))
		}, []E{{Path: "etc/app.conf", Removed: true, Added: true}}},
		{"chmod", func(t *testing.T, dir string) { must(t, os.Chmod(filepath.Join(dir, "usr/bin/tool"), 0o755)) },
			[]E{{Path: "usr/bin/tool", Meta: true, Times: true}}},
		{"chown", func(t *testing.T, dir string) { must(t, os.Lchown(filepath.Join(dir, "etc/app.conf"), 1000, 1000)) },
			[]E{{Path: "etc/app.conf", Meta: true, Times: true}}},
		{"xattr", func(t *testing.T, dir string) {
			must(t, unix.Lsetxattr(filepath.Join(dir, "etc/app.conf"), "user.kos", []byte("1"), 0))
		}, []E{{Path: "etc/app.conf", Meta: true, Times: true}}},
		{"symlink retargeted", func(t *testing.T, dir string) {
			must(t, os.Remove(filepath.Join(dir, "etc/link")))
			must(t, os.Symlink("passwd", filepath.Join(dir, "etc/link")))
		}, []E{{Path: "etc/link", Removed: true, Added: true}}},
		{"absolute symlink added", func(t *testing.T, dir string) {
			must(t, os.Symlink("/usr/lib/systemd/system/x.service", filepath.Join(dir, "etc/x.service")))
		}, []E{{Path: "etc/x.service", Added: true}}},
		{"hard link", func(t *testing.T, dir string) {
			must(t, os.Link(filepath.Join(dir, "usr/bin/tool"), filepath.Join(dir, "usr/bin/tool2")))
		}, []E{{Path: "usr/bin/tool", Times: true}, {Path: "usr/bin/tool2", Added: true, LinkTo: "usr/bin/tool"}}},
		{"fifo", func(t *testing.T, dir string) { must(t, syscall.Mkfifo(filepath.Join(dir, "run.fifo"), 0o600)) },
			[]E{{Path: "run.fifo", Added: true}}},
		{"big file rewritten in place", func(t *testing.T, dir string) {
			f, err := os.OpenFile(filepath.Join(dir, "var/log/big"), os.O_WRONLY, 0)
			must(t, err)
			_, err = f.WriteAt([]byte("yyyy"), 4096)
			must(t, err)
			must(t, f.Close())
		}, []E{{Path: "var/log/big", Data: true, Times: true}}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, l := snapPair(t, fs, fmt.Sprintf("c%d", i), baseTree(t), func(dir string) { tc.change(t, dir) })
			d, err := btrfsdiff.Compute(context.Background(), nil, b, l)
			if err != nil {
				t.Fatal(err)
			}
			var got []E
			for _, e := range d.Entries {
				if e.Times && !e.Removed && !e.Added && !e.Data && !e.Meta && isDir(l, e.Path) {
					continue // a directory's times
				}
				got = append(got, e)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("entries:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func isDir(root, p string) bool {
	fi, err := os.Lstat(filepath.Join(root, p))
	return err == nil && fi.IsDir()
}

// TestComputeRefusesUnrelated: two snapshots that are not parent and
// child are refused by btrfs send, and that is an error, not an empty
// diff.
func TestComputeRefusesWritable(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "btrfs")
	fs := testenv.NewBtrfs(t, 256)
	b, _ := snapPair(t, fs, "w", baseTree(t), func(string) {})
	if _, err := btrfsdiff.Compute(context.Background(), nil, b, filepath.Join(fs.Top, "w")); err == nil {
		t.Fatal("a writable child was accepted")
	}
}
