package mountinfo_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/mountinfo"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []mountinfo.Mount
		wantErr string
	}{{
		name: "ext4 root with optional field",
		in:   "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard\n",
		want: []mountinfo.Mount{{ID: 27, ParentID: 1, Major: 254, Minor: 0, Root: "/", Point: "/",
			Options: "rw,relatime", Optional: []string{"shared:1"}, FSType: "ext4", Source: "/dev/vda", SuperOptions: "rw,discard"}},
	}, {
		name: "no optional fields, several optional fields",
		in: "22 27 0:21 / /proc rw,relatime - proc proc rw\n" +
			"23 27 0:22 / /sys rw shared:7 master:3 propagate_from:2 - sysfs sysfs rw\n",
		want: []mountinfo.Mount{
			{ID: 22, ParentID: 27, Major: 0, Minor: 21, Root: "/", Point: "/proc", Options: "rw,relatime", FSType: "proc", Source: "proc", SuperOptions: "rw"},
			{ID: 23, ParentID: 27, Major: 0, Minor: 22, Root: "/", Point: "/sys", Options: "rw",
				Optional: []string{"shared:7", "master:3", "propagate_from:2"}, FSType: "sysfs", Source: "sysfs", SuperOptions: "rw"},
		},
	}, {
		name: "escaped spaces tabs newlines backslashes",
		in:   `50 27 0:40 /dir\040with\040space /mnt/my\040disk\011tab\012nl\134bs rw - tmpfs my\040src rw` + "\n",
		want: []mountinfo.Mount{{ID: 50, ParentID: 27, Major: 0, Minor: 40, Root: "/dir with space", Point: "/mnt/my disk\ttab\nnl\\bs",
			Options: "rw", FSType: "tmpfs", Source: "my src", SuperOptions: "rw"}},
	}, {
		name: "btrfs subvolume roots",
		in: "43 27 0:39 / /top rw,relatime - btrfs /dev/loop0 rw,space_cache=v2,subvolid=5,subvol=/\n" +
			"44 27 0:39 /@ /sysroot rw,relatime - btrfs /dev/loop0 rw,space_cache=v2,subvolid=256,subvol=/@\n" +
			"45 44 0:39 /@/var/lib/x /sysroot/x rw,relatime - btrfs /dev/loop0 rw,subvolid=256,subvol=/@\n",
		want: []mountinfo.Mount{
			{ID: 43, ParentID: 27, Major: 0, Minor: 39, Root: "/", Point: "/top", Options: "rw,relatime", FSType: "btrfs", Source: "/dev/loop0", SuperOptions: "rw,space_cache=v2,subvolid=5,subvol=/"},
			{ID: 44, ParentID: 27, Major: 0, Minor: 39, Root: "/@", Point: "/sysroot", Options: "rw,relatime", FSType: "btrfs", Source: "/dev/loop0", SuperOptions: "rw,space_cache=v2,subvolid=256,subvol=/@"},
			{ID: 45, ParentID: 44, Major: 0, Minor: 39, Root: "/@/var/lib/x", Point: "/sysroot/x", Options: "rw,relatime", FSType: "btrfs", Source: "/dev/loop0", SuperOptions: "rw,subvolid=256,subvol=/@"},
		},
	}, {
		name: "fuse subtype and empty lines",
		in:   "\n60 27 0:50 / /home/u/remote rw,nosuid - fuse.sshfs u@host:/ rw,user_id=0\n\n",
		want: []mountinfo.Mount{{ID: 60, ParentID: 27, Major: 0, Minor: 50, Root: "/", Point: "/home/u/remote",
			Options: "rw,nosuid", FSType: "fuse.sshfs", Source: "u@host:/", SuperOptions: "rw,user_id=0"}},
	}, {
		name: "empty input",
		in:   "",
	}, {
		name:    "malformed: no separator",
		in:      "22 27 0:21 / /proc rw,relatime - proc proc rw\n23 27 0:22 / /sys rw sysfs sysfs rw\n",
		wantErr: `line 2: has no "-" separator`,
	}, {
		name:    "malformed: too few fields",
		in:      "22 27 0:21 /\n",
		wantErr: "line 1: has 4 fields",
	}, {
		name:    "malformed: bad mount id",
		in:      "x 27 0:21 / /proc rw - proc proc rw\n",
		wantErr: `line 1: bad mount id "x"`,
	}, {
		name:    "malformed: bad major minor",
		in:      "22 27 021 / /proc rw - proc proc rw\n",
		wantErr: `line 1: bad major:minor "021"`,
	}, {
		name:    "malformed: fields after separator",
		in:      "22 27 0:21 / /proc rw - proc proc\n",
		wantErr: "line 1: has 2 fields after the separator",
	}, {
		name:    "malformed: bad escape",
		in:      `22 27 0:21 / /a\09x rw - proc proc rw` + "\n",
		wantErr: "line 1: bad mount point: bad escape",
	}, {
		name:    "malformed: truncated escape",
		in:      `22 27 0:21 / /a\04 rw - proc proc rw` + "\n",
		wantErr: "line 1: bad mount point: truncated escape",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := mountinfo.Parse(strings.NewReader(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse() error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse() error = %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Parse() =\n%#v\nwant\n%#v", got, tt.want)
			}
		})
	}
}

func TestSuperOption(t *testing.T) {
	m := mountinfo.Mount{SuperOptions: "rw,ssd,subvolid=256,subvol=/@"}
	if v, ok := m.SuperOption("subvolid"); !ok || v != "256" {
		t.Errorf("subvolid = %q, %v", v, ok)
	}
	if v, ok := m.SuperOption("ssd"); !ok || v != "" {
		t.Errorf("ssd = %q, %v", v, ok)
	}
	if _, ok := m.SuperOption("subvo"); ok {
		t.Errorf("prefix of a key matched")
	}
}

func TestLookup(t *testing.T) {
	// Lookup resolves symlinks, so the paths must exist: build a tree.
	dir := t.TempDir()
	dir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"a/b/c", "ab", "s p", "stack"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("a/b", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	esc := func(s string) string { return strings.ReplaceAll(s, " ", `\040`) }
	table := strings.Join([]string{
		"1 0 8:1 / / rw - ext4 /dev/sda1 rw",
		"2 1 0:30 / " + esc(dir+"/a") + " rw - tmpfs a rw",
		"3 2 0:31 / " + esc(dir+"/a/b") + " rw - tmpfs b rw",
		"4 1 0:32 / " + esc(dir+"/s p") + " rw - tmpfs space rw",
		// stacked: 6 is mounted on top of 5 (its parent) though listed first
		"6 5 0:34 / " + esc(dir+"/stack") + " rw - tmpfs upper rw",
		"5 1 0:33 / " + esc(dir+"/stack") + " rw - tmpfs lower rw",
		// stacked without a parent relation: the later line wins
		"7 1 0:35 / " + esc(dir+"/ab") + " rw - tmpfs first rw",
		"8 1 0:36 / " + esc(dir+"/ab") + " rw - tmpfs second rw",
	}, "\n")
	mounts, err := mountinfo.Parse(strings.NewReader(table))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path, wantSource string
	}{
		{"root", "/", "/dev/sda1"},
		{"outside every sub-mount", dir, "/dev/sda1"},
		{"mount point itself", dir + "/a", "a"},
		{"longest prefix", dir + "/a/b/c", "b"},
		{"prefix is not a path prefix", dir + "/ab", "second"},
		{"symlink resolved", dir + "/link", "b"},
		{"escaped space", dir + "/s p", "space"},
		{"stacked by parent id", dir + "/stack", "upper"},
		{"dot dot cleaned", dir + "/a/b/../../s p", "space"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := mountinfo.Lookup(mounts, tt.path)
			if err != nil {
				t.Fatal(err)
			}
			if m.Source != tt.wantSource {
				t.Fatalf("Lookup(%q) = %s (%s), want source %s", tt.path, m.Source, m.Point, tt.wantSource)
			}
		})
	}
	t.Run("missing path", func(t *testing.T) {
		if _, err := mountinfo.Lookup(mounts, dir+"/nope"); err == nil || !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("err = %v, want not exist", err)
		}
	})
	t.Run("no mount", func(t *testing.T) {
		if _, err := mountinfo.Lookup(mounts[1:2], dir); !errors.Is(err, mountinfo.ErrNotFound) {
			t.Fatalf("err = %v, want ErrNotFound", err)
		}
	})
}

func TestReadSelf(t *testing.T) {
	mounts, err := mountinfo.Read()
	if err != nil {
		t.Fatal(err)
	}
	m, err := mountinfo.Lookup(mounts, "/proc/self")
	if err != nil {
		t.Fatal(err)
	}
	if m.FSType != "proc" {
		t.Fatalf("/proc/self is on %s, want proc", m.FSType)
	}
}

func TestBelow(t *testing.T) {
	mounts := []mountinfo.Mount{
		{ID: 1, Point: "/"},
		{ID: 2, Point: "/mnt/s"},
		{ID: 3, Point: "/mnt/s/boot"},
		{ID: 4, Point: "/mnt/sibling"},
		{ID: 5, Point: "/mnt/s/boot/efi"},
		{ID: 6, Point: "/mnt/s/var"},
	}
	tests := []struct {
		name string
		dir  string
		self bool
		want []string
	}{
		{name: "below, last mounted first", dir: "/mnt/s", want: []string{"/mnt/s/var", "/mnt/s/boot/efi", "/mnt/s/boot"}},
		{name: "with itself", dir: "/mnt/s/", self: true, want: []string{"/mnt/s/var", "/mnt/s/boot/efi", "/mnt/s/boot", "/mnt/s"}},
		{name: "nothing below", dir: "/mnt/sibling", want: nil},
		{name: "not a prefix match", dir: "/mnt/s/bo", want: nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := mountinfo.Below(mounts, tc.dir, tc.self); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Below(%q, %v) = %q, want %q", tc.dir, tc.self, got, tc.want)
			}
		})
	}
}
