package upgrader

import (
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/mountinfo"
	"github.com/keyarchos/kos-upgrade/pkg/preflight"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

func TestRewriteFstab(t *testing.T) {
	const sv = "kos-upgrade/20261125T101500.000Z-5.9"
	tests := []struct {
		name    string
		in      string
		want    string
		changed bool
	}{
		{name: "subvol", in: "UUID=x / btrfs defaults,subvol=@ 0 0\n", want: "UUID=x\t/\tbtrfs\tdefaults,subvol=/" + sv + "\t0\t0\n", changed: true},
		{name: "absolute subvol", in: "UUID=x / btrfs subvol=/root,compress=zstd 0 0\n", want: "UUID=x\t/\tbtrfs\tsubvol=/" + sv + ",compress=zstd\t0\t0\n", changed: true},
		{name: "subvolid only", in: "UUID=x / btrfs subvolid=256 0 0\n", want: "UUID=x\t/\tbtrfs\tsubvol=/" + sv + "\t0\t0\n", changed: true},
		{name: "default subvolume", in: "UUID=x / btrfs defaults 0 0\n", want: "UUID=x / btrfs defaults 0 0\n"},
		{name: "other mounts untouched", in: "# comment / btrfs subvol=@\nUUID=x /home btrfs subvol=@home 0 0\nUUID=y / xfs defaults 0 0\n",
			want: "# comment / btrfs subvol=@\nUUID=x /home btrfs subvol=@home 0 0\nUUID=y / xfs defaults 0 0\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, changed := rewriteFstabData([]byte(tc.in), sv)
			if changed != tc.changed || string(out) != tc.want {
				t.Errorf("got %q (changed %v), want %q (changed %v)", out, changed, tc.want, tc.changed)
			}
		})
	}
}

func TestSeparateMounts(t *testing.T) {
	root := t.TempDir()
	r := sysroot.Root{Dir: root}
	mounts := []mountinfo.Mount{
		{ID: 1, ParentID: 0, Point: "/", FSType: "ext4", Source: "/dev/vda"},
		{ID: 2, ParentID: 1, Point: root, FSType: "btrfs", Source: "/dev/loop0"},
	}
	for _, d := range []string{"usr", "etc", "var/lib/rpm"} {
		if err := mkdirAll(root + "/" + d); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name   string
		extra  []mountinfo.Mount
		wantIn string
	}{
		{name: "one filesystem"},
		{name: "separate var", extra: []mountinfo.Mount{{ID: 3, ParentID: 2, Point: root + "/var", FSType: "xfs", Source: "/dev/vdb"}}, wantIn: "/var (xfs on /dev/vdb)"},
		{name: "separate usr", extra: []mountinfo.Mount{{ID: 3, ParentID: 2, Point: root + "/usr", FSType: "btrfs", Source: "/dev/loop0"}}, wantIn: "/usr (btrfs"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := preflight.SeparateMounts(r, append(append([]mountinfo.Mount{}, mounts...), tc.extra...))
			if err != nil {
				t.Fatal(err)
			}
			joined := strings.Join(got, "; ")
			if tc.wantIn == "" && len(got) > 0 || tc.wantIn != "" && !strings.Contains(joined, tc.wantIn) {
				t.Errorf("separateMounts = %q, want %q", joined, tc.wantIn)
			}
		})
	}
}

func TestRewriteFstabLVM(t *testing.T) {
	const newLV = "kos-upgrade-20261125T101500.000Z-5.9"
	tests := []struct {
		name      string
		in        string
		want      string
		changed   bool
		ambiguous string
	}{
		{name: "mapper path", in: "/dev/mapper/vg--os-root / xfs defaults 0 0\n",
			want: "/dev/mapper/vg--os-kos--upgrade--20261125T101500.000Z--5.9\t/\txfs\tdefaults\t0\t0\n", changed: true},
		{name: "vg path", in: "/dev/vg-os/root / ext4 defaults,noatime 1 1\n",
			want: "/dev/vg-os/" + newLV + "\t/\text4\tdefaults,noatime\t1\t1\n", changed: true},
		{name: "uuid left alone, flagged", in: "UUID=1234 / xfs defaults 0 0\n", want: "UUID=1234 / xfs defaults 0 0\n", ambiguous: "UUID=1234"},
		{name: "label flagged", in: "LABEL=root / xfs defaults 0 0\n", want: "LABEL=root / xfs defaults 0 0\n", ambiguous: "LABEL=root"},
		{name: "by-uuid flagged", in: "/dev/disk/by-uuid/1234 / xfs defaults 0 0\n", want: "/dev/disk/by-uuid/1234 / xfs defaults 0 0\n", ambiguous: "/dev/disk/by-uuid/1234"},
		{name: "another LV untouched", in: "/dev/mapper/vg--os-other / xfs defaults 0 0\n", want: "/dev/mapper/vg--os-other / xfs defaults 0 0\n"},
		{name: "other mounts untouched",
			in:   "# /dev/mapper/vg--os-root / xfs defaults 0 0\n/dev/mapper/vg--os-root /mnt xfs nouuid 0 0\n/dev/mapper/vg--os-swap none swap defaults 0 0\n/dev/mapper/vg--os-root / xfs defaults 0 0\n",
			want: "# /dev/mapper/vg--os-root / xfs defaults 0 0\n/dev/mapper/vg--os-root /mnt xfs nouuid 0 0\n/dev/mapper/vg--os-swap none swap defaults 0 0\n/dev/mapper/vg--os-kos--upgrade--20261125T101500.000Z--5.9\t/\txfs\tdefaults\t0\t0\n", changed: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, changed, ambiguous := rewriteFstabLVMData([]byte(tc.in), "vg-os", "root", newLV)
			if changed != tc.changed || string(out) != tc.want || ambiguous != tc.ambiguous {
				t.Errorf("got %q (changed %v, ambiguous %q), want %q (changed %v, ambiguous %q)", out, changed, ambiguous, tc.want, tc.changed, tc.ambiguous)
			}
		})
	}
}
