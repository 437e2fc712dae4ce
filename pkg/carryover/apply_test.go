package carryover_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/keyarchos/kos-upgrade/pkg/btrfsdiff"
	"github.com/keyarchos/kos-upgrade/pkg/carryover"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func put(t testing.TB, root, p, data string, mode os.FileMode) {
	t.Helper()
	full := filepath.Join(root, p)
	must(t, os.MkdirAll(filepath.Dir(full), 0o755))
	must(t, os.WriteFile(full, []byte(data), mode))
	must(t, os.Chmod(full, mode))
}

func read(t testing.TB, root, p string) string {
	b, err := os.ReadFile(filepath.Join(root, p))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return string(b)
}

// The configuration files of the model transaction and their flags.
var modelConfig = map[string]carryover.ConfigFlag{
	"etc/app.conf":  carryover.NoReplace,
	"etc/rules.cfg": carryover.Config,
}

const (
	basePasswd = "root:x:0:0::/root:/bin/bash\nbin:x:1:1::/bin:/sbin/nologin\n"
	baseShadow = "root:!::0:99999:7:::\nbin:*::0:99999:7:::\n"
)

// seedBase writes the starting tree.
func seedBase(t testing.TB, root string) {
	put(t, root, "etc/passwd", basePasswd, 0o644)
	put(t, root, "etc/shadow", baseShadow, 0o000)
	put(t, root, "etc/app.conf", "listen 80\n", 0o644)
	put(t, root, "etc/rules.cfg", "allow all\n", 0o644)
	put(t, root, "usr/bin/app", "app 1\n", 0o755)
	put(t, root, "usr/share/old/readme", "old\n", 0o644)
	for i := 0; i < 20; i++ {
		put(t, root, fmt.Sprintf("srv/data/f%02d", i), strings.Repeat(fmt.Sprint(i), 100*i+1), 0o644)
	}
	put(t, root, "home/alice/.profile", "export A=1\n", 0o644)
	must(t, os.Symlink("../data/f01", filepath.Join(root, "srv/data/link")))
	must(t, os.Link(filepath.Join(root, "srv/data/f02"), filepath.Join(root, "srv/data/f02.hard")))
	put(t, root, "var/lib/rpm/Packages", "rpmdb 1\n", 0o644)
}

// transaction is the model of an rpm transaction on root, with rpm's
// %config rules judged against the base contents: what the classic apply
// does on the running system and what stage does on next.
func transaction(t testing.TB, root string) {
	put(t, root, "usr/bin/app", "app 2\n", 0o755)
	put(t, root, "usr/lib/app/plugin.so", "plugin\n", 0o755)
	must(t, os.RemoveAll(filepath.Join(root, "usr/share/old")))
	put(t, root, "var/lib/rpm/Packages", "rpmdb 2\n", 0o644)
	// %config(noreplace): a locally changed file is kept.
	if read(t, root, "etc/app.conf") != "listen 80\n" {
		put(t, root, "etc/app.conf.rpmnew", "listen 8080\n", 0o644)
	} else {
		replace(t, root, "etc/app.conf", "listen 8080\n")
	}
	// %config: a locally changed file is saved.
	if read(t, root, "etc/rules.cfg") != "allow all\n" {
		must(t, os.Rename(filepath.Join(root, "etc/rules.cfg"), filepath.Join(root, "etc/rules.cfg.rpmsave")))
	}
	replace(t, root, "etc/rules.cfg", "deny all\n")
	// useradd in a %pre
	appendTo(t, root, "etc/passwd", "apache:x:48:48::/usr/share/httpd:/sbin/nologin\n")
	appendTo(t, root, "etc/shadow", "apache:!!::0:99999:7:::\n")
}

// replace writes a new file over p as rpm does (a new inode, renamed).
func replace(t testing.TB, root, p, data string) {
	put(t, root, p+".tmp", data, 0o644)
	must(t, os.Rename(filepath.Join(root, p+".tmp"), filepath.Join(root, p)))
}

func appendTo(t testing.TB, root, p, data string) {
	f, err := os.OpenFile(filepath.Join(root, p), os.O_WRONLY|os.O_APPEND, 0)
	must(t, err)
	_, err = f.WriteString(data)
	must(t, err)
	must(t, f.Close())
}

// liveChanges is a random script of what an admin or a service does on
// the running system after staging.
func liveChanges(t testing.TB, root string, rng *rand.Rand) []string {
	var log []string
	n := 1 + rng.Intn(12)
	for i := 0; i < n; i++ {
		f := fmt.Sprintf("srv/data/f%02d", rng.Intn(20))
		full := filepath.Join(root, f)
		if _, err := os.Lstat(full); err != nil {
			continue
		}
		switch op := rng.Intn(15); op {
		case 0:
			appendTo(t, root, f, "edited\n")
			log = append(log, "edit "+f)
		case 1:
			put(t, root, fmt.Sprintf("srv/new/n%d", i), strings.Repeat("n", rng.Intn(5000)), 0o640)
			log = append(log, "add")
		case 2:
			must(t, os.Remove(full))
			log = append(log, "delete "+f)
		case 3:
			must(t, os.Rename(full, full+".renamed"))
			log = append(log, "rename "+f)
		case 4:
			must(t, os.Chmod(full, 0o600))
			must(t, os.Lchown(full, 1000+rng.Intn(3), 100))
			log = append(log, "chmod/chown "+f)
		case 5:
			must(t, unix.Lsetxattr(full, "user.tag", []byte(fmt.Sprint(i)), 0))
			log = append(log, "xattr "+f)
		case 6:
			_ = os.Remove(filepath.Join(root, "srv/data/link"))
			must(t, os.Symlink(fmt.Sprintf("f%02d", i), filepath.Join(root, "srv/data/link")))
			log = append(log, "symlink")
		case 7:
			name := fmt.Sprintf("u%d", rng.Intn(1000))
			if !strings.Contains(read(t, root, "etc/passwd"), "\n"+name+":") {
				appendTo(t, root, "etc/passwd", fmt.Sprintf("%s:x:%d:%d::/home/%s:/bin/bash\n", name, 1000+i, 1000+i, name))
				appendTo(t, root, "etc/shadow", name+":!!:19000:0:99999:7:::\n")
			}
			log = append(log, "useradd "+name)
		case 8:
			appendTo(t, root, "etc/app.conf", "# local\n")
			log = append(log, "edit %config(noreplace)")
		case 9:
			replace(t, root, "etc/rules.cfg", "allow admin\n")
			log = append(log, "edit %config")
		case 10:
			if _, err := os.Stat(filepath.Join(root, "home/alice")); err == nil {
				must(t, os.Rename(filepath.Join(root, "home/alice"), filepath.Join(root, "home/alice2")))
				put(t, root, "home/alice2/notes", "moved\n", 0o600)
				log = append(log, "rename a directory")
			}
		case 11:
			link := fmt.Sprintf("srv/data/h%d", i)
			if _, err := os.Lstat(filepath.Join(root, link)); err != nil {
				put(t, root, "srv/new/hsrc"+fmt.Sprint(i), "h\n", 0o644)
				must(t, os.Link(filepath.Join(root, "srv/new/hsrc"+fmt.Sprint(i)), filepath.Join(root, link)))
				log = append(log, "hard link")
			}
		case 12:
			_ = syscall.Mkfifo(filepath.Join(root, fmt.Sprintf("srv/fifo%d", i)), 0o600)
			log = append(log, "fifo")
		case 13:
			must(t, os.RemoveAll(filepath.Join(root, "srv/data")))
			must(t, os.MkdirAll(filepath.Join(root, "srv/data"), 0o750))
			log = append(log, "directory emptied and made again")
			return log
		case 14:
			g, err := os.OpenFile(full, os.O_WRONLY, 0)
			must(t, err)
			_, err = g.WriteAt([]byte("middle"), 50)
			must(t, err)
			must(t, g.Close())
			log = append(log, "rewrite in place "+f)
		}
	}
	return log
}

// compareTrees returns the first difference between two trees: types,
// contents, modes, owners, xattrs, symlink targets, hard link groups.
// Times are left out (they must differ: the transaction ran at another
// time).
func compareTrees(t testing.TB, a, b string) string {
	la, lb := listTree(t, a), listTree(t, b)
	for p, x := range la {
		y, ok := lb[p]
		if !ok {
			return "only in the classic result: /" + p
		}
		if x != y {
			return fmt.Sprintf("/%s: classic %s, staged %s", p, x, y)
		}
	}
	for p := range lb {
		if _, ok := la[p]; !ok {
			return "only in the staged result: /" + p
		}
	}
	return ""
}

func listTree(t testing.TB, root string) map[string]string {
	out := map[string]string{}
	inodes := map[uint64][]string{}
	must(t, filepath.WalkDir(root, func(full string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, full)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		sys := fi.Sys().(*syscall.Stat_t)
		desc := fmt.Sprintf("%v %o %d:%d", fi.Mode().Type(), sys.Mode&0o7777, sys.Uid, sys.Gid)
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(full)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" %q", b)
			if sys.Nlink > 1 {
				inodes[sys.Ino] = append(inodes[sys.Ino], rel)
			}
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(full)
			desc += " -> " + target
		}
		buf := make([]byte, 4096)
		if n, err := unix.Llistxattr(full, buf); err == nil {
			names := strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00")
			sort.Strings(names)
			for _, name := range names {
				if name == "" {
					continue
				}
				v := make([]byte, 4096)
				m, _ := unix.Lgetxattr(full, name, v)
				desc += fmt.Sprintf(" %s=%q", name, v[:m])
			}
		}
		out[rel] = desc
		return nil
	}))
	for _, names := range inodes {
		sort.Strings(names)
		for _, n := range names {
			out[n] += " links " + strings.Join(names, ",")
		}
	}
	return out
}

// setReadOnly flips a subvolume's read-only property.
func setReadOnly(t testing.TB, sub string, ro bool) {
	testenv.Run(t, "btrfs", "property", "set", "-ts", sub, "ro", fmt.Sprint(ro))
}

// TestCarryOverEqualsClassic: for seeded random live changes, stage
// (transaction into next from base) plus carry-over gives the tree the
// classic apply (transaction on the running system) gives, or falls back
// with a reason. The transaction is a model of rpm's (files replaced and
// removed, %config rules, useradd); the differential test against rpm
// itself is in upgrader.
func TestCarryOverEqualsClassic(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "btrfs")
	fs := testenv.NewBtrfs(t, 512)
	seeds := 30
	if os.Getenv("KOS_UPGRADE_E2E") == "full" {
		seeds = 300
	}
	fast := 0
	for seed := int64(1); seed <= int64(seeds); seed++ {
		dir := filepath.Join(fs.Top, fmt.Sprintf("s%d", seed))
		must(t, os.Mkdir(dir, 0o755))
		root := filepath.Join(dir, "root")
		testenv.Run(t, "btrfs", "subvolume", "create", root)
		seedBase(t, root)
		base, next, live, classic := filepath.Join(dir, "base"), filepath.Join(dir, "next"), filepath.Join(dir, "live"), filepath.Join(dir, "classic")
		testenv.Run(t, "btrfs", "subvolume", "snapshot", "-r", root, base)
		testenv.Run(t, "btrfs", "subvolume", "snapshot", base, next)
		transaction(t, next)
		script := liveChanges(t, root, rand.New(rand.NewSource(seed)))
		testenv.Run(t, "btrfs", "subvolume", "snapshot", "-r", root, live)
		testenv.Run(t, "btrfs", "subvolume", "snapshot", live, classic)
		transaction(t, classic)

		if compareTrees(t, classic, live) == "" {
			t.Fatal("the comparison does not see the transaction")
		}
		ctx := context.Background()
		ld, err := btrfsdiff.Compute(ctx, nil, base, live)
		must(t, err)
		setReadOnly(t, next, true)
		td, err := btrfsdiff.Compute(ctx, nil, base, next)
		must(t, err)
		setReadOnly(t, next, false)
		plan := carryover.Decide(carryover.Input{Live: ld, Txn: td, Config: modelConfig, RPMDB: "var/lib/rpm", MaxEntries: 10000})
		if plan.Fallback != "" {
			t.Logf("seed %d: falls back: %s (script %v)", seed, plan.Fallback, script)
			continue
		}
		st, err := carryover.Apply(plan, base, live, next)
		if errors.Is(err, carryover.ErrInexact) {
			t.Logf("seed %d: falls back: %v (script %v)", seed, err, script)
			continue
		}
		if err != nil {
			t.Fatalf("seed %d: %v (script %v)", seed, err, script)
		}
		if d := compareTrees(t, classic, next); d != "" {
			t.Fatalf("seed %d: %s\nscript: %v\nplan: %+v", seed, d, script, plan.Items)
		}
		fast++
		t.Logf("seed %d: carried over %d paths, %d bytes cloned (script %v)", seed, st.Paths, st.BytesCloned, script)
	}
	if fast < seeds/2 {
		t.Fatalf("only %d of %d seeds took the fast path", fast, seeds)
	}
}

// TestApplyClonesShareExtents: a carried-over file shares its extents
// with the running system's (FICLONE), its bytes are counted, and a
// conflict in an account file is ErrInexact.
func TestApplyClonesAndRefuses(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "btrfs")
	fs := testenv.NewBtrfs(t, 512)
	root := filepath.Join(fs.Top, "root")
	testenv.Run(t, "btrfs", "subvolume", "create", root)
	seedBase(t, root)
	base, next, live := filepath.Join(fs.Top, "base"), filepath.Join(fs.Top, "next"), filepath.Join(fs.Top, "live")
	testenv.Run(t, "btrfs", "subvolume", "snapshot", "-r", root, base)
	testenv.Run(t, "btrfs", "subvolume", "snapshot", base, next)
	big := bytes.Repeat([]byte("0123456789abcdef"), 4<<20) // 64 MiB
	must(t, os.WriteFile(filepath.Join(root, "srv/big"), big, 0o644))
	testenv.Run(t, "btrfs", "subvolume", "snapshot", "-r", root, live)
	ld, err := btrfsdiff.Compute(context.Background(), nil, base, live)
	must(t, err)
	plan := carryover.Decide(carryover.Input{Live: ld, Txn: &btrfsdiff.Diff{}})
	st, err := carryover.Apply(plan, base, live, next)
	must(t, err)
	if st.BytesCloned != int64(len(big)) || st.FilesCloned != 1 {
		t.Fatalf("stats %+v", st)
	}
	if got, _ := os.ReadFile(filepath.Join(next, "srv/big")); !bytes.Equal(got, big) {
		t.Fatal("the clone differs")
	}
	out := testenv.Run(t, "btrfs", "filesystem", "du", "-s", "--raw", filepath.Join(next, "srv/big"))
	if !strings.Contains(out, fmt.Sprint(len(big))) || strings.Contains(strings.Fields(strings.Split(out, "\n")[1])[1], fmt.Sprint(len(big))) {
		t.Fatalf("not shared:\n%s", out)
	}

	conflict := carryover.Plan{Items: []carryover.Item{{Entry: btrfsdiff.Entry{Path: "etc/passwd", Data: true}, Action: carryover.MergeAccounts}}}
	put(t, next, "etc/passwd", strings.Replace(basePasswd, "/bin/bash", "/bin/sh", 1), 0o644)
	livePasswd := strings.Replace(basePasswd, "/bin/bash", "/bin/zsh", 1)
	liveDir := t.TempDir()
	put(t, liveDir, "etc/passwd", livePasswd, 0o644)
	if _, err := carryover.Apply(conflict, base, liveDir, next); !errors.Is(err, carryover.ErrInexact) {
		t.Fatalf("err = %v, want ErrInexact", err)
	}
	if _, err := carryover.Apply(carryover.Plan{Fallback: "why"}, base, live, next); !errors.Is(err, carryover.ErrInexact) {
		t.Fatalf("a fallback plan applied: %v", err)
	}
}
