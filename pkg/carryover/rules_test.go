package carryover_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/btrfsdiff"
	"github.com/keyarchos/kos-upgrade/pkg/carryover"
)

type E = btrfsdiff.Entry

func diff(es ...E) *btrfsdiff.Diff {
	sort.Slice(es, func(i, j int) bool { return es[i].Path < es[j].Path })
	return &btrfsdiff.Diff{Entries: es}
}

func TestDecide(t *testing.T) {
	cfg := map[string]carryover.ConfigFlag{
		"etc/app.conf":  carryover.NoReplace,
		"etc/rules.cfg": carryover.Config,
	}
	edit := func(p string) E { return E{Path: p, Data: true, Times: true} }
	type want struct {
		actions  map[string]carryover.Action
		fallback string // a substring of the reason; "" : none
	}
	cases := []struct {
		name      string
		live, txn *btrfsdiff.Diff
		max       int
		want      want
	}{
		{"nothing", diff(), diff(edit("usr/bin/a")), 0, want{actions: map[string]carryover.Action{}}},
		{"untouched by the transaction", diff(edit("etc/hosts"), E{Path: "srv/x", Added: true}, E{Path: "tmp/y", Removed: true}, E{Path: "etc", Times: true}),
			diff(edit("usr/bin/a"), E{Path: "etc", Times: true}), 0,
			want{actions: map[string]carryover.Action{"etc/hosts": carryover.Carry, "srv/x": carryover.Carry, "tmp/y": carryover.Carry, "etc": carryover.Carry}}},
		{"noreplace changed on both sides", diff(edit("etc/app.conf")), diff(edit("etc/app.conf")), 0,
			want{actions: map[string]carryover.Action{"etc/app.conf": carryover.KeepLive}}},
		{"noreplace replaced by rename on the running system", diff(E{Path: "etc/app.conf", Removed: true, Added: true}), diff(edit("etc/app.conf")), 0,
			want{actions: map[string]carryover.Action{"etc/app.conf": carryover.KeepLive}}},
		{"config changed on both sides", diff(edit("etc/rules.cfg")), diff(E{Path: "etc/rules.cfg", Removed: true, Added: true}), 0,
			want{actions: map[string]carryover.Action{"etc/rules.cfg": carryover.TakePackaged}}},
		{"passwd changed on both sides", diff(edit("etc/passwd"), edit("etc/shadow")), diff(edit("etc/passwd"), edit("etc/shadow")), 0,
			want{actions: map[string]carryover.Action{"etc/passwd": carryover.MergeAccounts, "etc/shadow": carryover.MergeAccounts}}},
		{"times only on a rewritten file", diff(E{Path: "usr/bin/a", Times: true}), diff(edit("usr/bin/a")), 0,
			want{actions: map[string]carryover.Action{"usr/bin/a": carryover.Skip}}},
		{"plain file changed on both sides", diff(edit("usr/bin/a")), diff(edit("usr/bin/a")), 0,
			want{fallback: "/usr/bin/a was changed both"}},
		{"noreplace removed on the running system", diff(E{Path: "etc/app.conf", Removed: true}), diff(edit("etc/app.conf")), 0,
			want{fallback: "/etc/app.conf was changed both"}},
		{"noreplace removed by the transaction", diff(edit("etc/app.conf")), diff(E{Path: "etc/app.conf", Removed: true}), 0,
			want{fallback: "/etc/app.conf was changed both"}},
		{"noreplace mode only", diff(E{Path: "etc/app.conf", Meta: true}), diff(edit("etc/app.conf")), 0,
			want{fallback: "/etc/app.conf was changed both"}},
		{"file added where the transaction added one", diff(E{Path: "usr/lib/new", Added: true}), diff(E{Path: "usr/lib/new", Added: true}), 0,
			want{fallback: "/usr/lib/new"}},
		{"inside a directory the transaction removed", diff(edit("usr/share/old/x")), diff(E{Path: "usr/share/old", Removed: true, Subtree: true}), 0,
			want{fallback: "/usr/share/old/x"}},
		{"directory moved over files the transaction changed", diff(E{Path: "etc/app.d", Removed: true, Subtree: true}), diff(edit("etc/app.d/one.conf")), 0,
			want{fallback: "/etc/app.d"}},
		{"rpmdb changed", diff(edit("var/lib/rpm/Packages")), diff(edit("var/lib/rpm/Packages")), 0,
			want{fallback: "rpm database changed"}},
		{"rpmdb changed, transaction elsewhere", diff(edit("var/lib/rpm/Packages")), diff(edit("usr/bin/a")), 0,
			want{fallback: "rpm database changed"}},
		{"rpmdb read on the running system", diff(E{Path: "var/lib/rpm/__db.001", Data: true}, E{Path: "var/lib/rpm/rpmdb.sqlite-shm", Added: true}, E{Path: "var/lib/rpm", Times: true}), diff(edit("var/lib/rpm/Packages")), 0,
			want{actions: map[string]carryover.Action{"var/lib/rpm/__db.001": carryover.Skip, "var/lib/rpm/rpmdb.sqlite-shm": carryover.Skip, "var/lib/rpm": carryover.Skip}}},
		{"hard link to a file the transaction changed", diff(E{Path: "srv/app-link", Added: true, LinkTo: "usr/bin/a"}), diff(edit("usr/bin/a")), 0,
			want{fallback: "/srv/app-link was linked to /usr/bin/a"}},
		{"hard link to a file left alone", diff(E{Path: "srv/link", Added: true, LinkTo: "srv/data"}), diff(edit("usr/bin/a")), 0,
			want{actions: map[string]carryover.Action{"srv/link": carryover.Carry}}},
		{"over the bound", diff(edit("a"), edit("b"), edit("c")), diff(), 2,
			want{fallback: "changed 3 paths since staging, over the bound of 2"}},
		{"at the bound", diff(edit("a"), edit("b")), diff(), 2,
			want{actions: map[string]carryover.Action{"a": carryover.Carry, "b": carryover.Carry}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := carryover.Decide(carryover.Input{Live: tc.live, Txn: tc.txn, Config: cfg, RPMDB: "var/lib/rpm", MaxEntries: tc.max})
			if tc.want.fallback != "" {
				if !strings.Contains(p.Fallback, tc.want.fallback) {
					t.Fatalf("fallback %q, want one with %q", p.Fallback, tc.want.fallback)
				}
				if len(p.Items) != 0 {
					t.Fatalf("a fallback with items: %+v", p.Items)
				}
				return
			}
			if p.Fallback != "" {
				t.Fatalf("fell back: %s", p.Fallback)
			}
			got := map[string]carryover.Action{}
			for _, it := range p.Items {
				got[it.Entry.Path] = it.Action
			}
			if !reflect.DeepEqual(got, tc.want.actions) {
				t.Fatalf("actions %v, want %v", got, tc.want.actions)
			}
		})
	}
}

func TestMergeAccountFile(t *testing.T) {
	base := "root:x:0:0::/root:/bin/bash\nbin:x:1:1::/bin:/sbin/nologin\nadm:x:3:4::/var/adm:/sbin/nologin\n"
	cases := []struct {
		name             string
		live, next, want string
		conflict         bool
	}{
		{"both add", base + "alice:x:1000:1000::/home/alice:/bin/bash\n", base + "apache:x:48:48::/usr/share/httpd:/sbin/nologin\n",
			base + "alice:x:1000:1000::/home/alice:/bin/bash\napache:x:48:48::/usr/share/httpd:/sbin/nologin\n", false},
		{"live edits, transaction adds", strings.Replace(base, "/root:/bin/bash", "/root:/bin/zsh", 1), base + "apache:x:48:48::/:/sbin/nologin\n",
			strings.Replace(base, "/root:/bin/bash", "/root:/bin/zsh", 1) + "apache:x:48:48::/:/sbin/nologin\n", false},
		{"transaction edits, live deletes another", strings.Replace(base, "adm:x:3:4::/var/adm:/sbin/nologin\n", "", 1), strings.Replace(base, "bin:x:1:1::/bin", "bin:x:1:1:bin:/bin", 1),
			"root:x:0:0::/root:/bin/bash\nbin:x:1:1:bin:/bin:/sbin/nologin\n", false},
		{"transaction removes one live left alone", base + "alice:x:1000:1000::/home/alice:/bin/bash\n", strings.Replace(base, "adm:x:3:4::/var/adm:/sbin/nologin\n", "", 1),
			"root:x:0:0::/root:/bin/bash\nbin:x:1:1::/bin:/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/bash\n", false},
		{"same name added the same on both sides", base + "apache:x:48:48::/:/sbin/nologin\n", base + "apache:x:48:48::/:/sbin/nologin\n",
			base + "apache:x:48:48::/:/sbin/nologin\n", false},
		{"same name changed on both sides", strings.Replace(base, "/bin/bash", "/bin/zsh", 1), strings.Replace(base, "/bin/bash", "/bin/sh", 1), "", true},
		{"same name added differently", base + "apache:x:48:48::/:/sbin/nologin\n", base + "apache:x:1001:1001::/:/sbin/nologin\n", "", true},
		{"removed on live, changed by the transaction", strings.Replace(base, "adm:x:3:4::/var/adm:/sbin/nologin\n", "", 1), strings.Replace(base, "/var/adm", "/var/adm2", 1), "", true},
		{"changed on live, removed by the transaction", strings.Replace(base, "/var/adm", "/var/adm2", 1), strings.Replace(base, "adm:x:3:4::/var/adm:/sbin/nologin\n", "", 1), "", true},
		{"a comment line", base + "# local\n", base, "", true},
		{"a name twice", base + "bin:x:1:1::/bin:/bin/sh\n", base, "", true},
		{"no final newline", strings.TrimSuffix(base, "\n"), base + "apache:x:48:48::/:/sbin/nologin\n", base + "apache:x:48:48::/:/sbin/nologin\n", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := carryover.MergeAccountFile([]byte(base), []byte(tc.live), []byte(tc.next))
			if tc.conflict {
				if !errors.Is(err, carryover.ErrConflict) {
					t.Fatalf("err = %v, want ErrConflict (got %q)", err, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

func TestRPMDBAsStaged(t *testing.T) {
	dir := t.TempDir()
	db := "var/lib/rpm"
	if err := os.MkdirAll(filepath.Join(dir, db), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, size := range map[string]int{"rpmdb.sqlite-wal": 0, "full/rpmdb.sqlite-wal": 32} {
		p := filepath.Join(dir, db, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name string
		live *btrfsdiff.Diff
		want bool
	}{
		{"nothing", diff(), true},
		{"elsewhere", diff(E{Path: "etc/hosts", Data: true}, E{Path: "var/lib/rpmx", Added: true}), true},
		{"read only: environment, locks, shared memory, empty log", diff(E{Path: db, Times: true}, E{Path: db + "/__db.001", Data: true},
			E{Path: db + "/.rpm.lock", Added: true}, E{Path: db + "/rpmdb.sqlite-shm", Data: true}, E{Path: db + "/rpmdb.sqlite-wal", Data: true}), true},
		{"log gone", diff(E{Path: db + "/gone/rpmdb.sqlite-wal", Removed: true}), true},
		{"log with a transaction in it", diff(E{Path: db + "/full/rpmdb.sqlite-wal", Data: true}), false},
		{"database written", diff(E{Path: db + "/rpmdb.sqlite", Data: true}), false},
		{"Berkeley DB Packages written", diff(E{Path: db + "/Packages", Data: true}), false},
		{"times of a database file", diff(E{Path: db + "/Packages", Times: true}), true},
		{"directory above moved away", diff(E{Path: "var/lib", Removed: true, Subtree: true}), false},
		{"directory above: times", diff(E{Path: "var/lib", Times: true}), true},
		{"database replaced", diff(E{Path: db, Removed: true, Added: true, Subtree: true}), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := carryover.RPMDBAsStaged(tc.live, db, dir); got != tc.want {
				t.Errorf("RPMDBAsStaged = %v, want %v", got, tc.want)
			}
		})
	}
}
