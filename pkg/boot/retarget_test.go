package boot

import (
	"strings"
	"testing"
)

func TestRetargetRoot(t *testing.T) {
	tests := []struct {
		name string
		in   string
		spec RootSpec
		want string
		err  string
	}{
		{
			name: "btrfs: no rootflags gets subvol",
			in:   "root=UUID=1234 ro quiet",
			spec: RootSpec{BtrfsSubvol: "root.new"},
			want: "root=UUID=1234 ro quiet rootflags=subvol=root.new",
		},
		{
			name: "btrfs: subvol replaced, other rootflags kept in order",
			in:   "root=UUID=1234 ro rootflags=compress=zstd,subvol=root,noatime quiet",
			spec: RootSpec{BtrfsSubvol: "root.new"},
			want: "root=UUID=1234 ro rootflags=subvol=root.new,compress=zstd,noatime quiet",
		},
		{
			name: "btrfs: subvolid dropped (it would win over subvol)",
			in:   "root=UUID=1234 rootflags=subvolid=256 ro",
			spec: RootSpec{BtrfsSubvol: "root.new"},
			want: "root=UUID=1234 rootflags=subvol=root.new ro",
		},
		{
			name: "btrfs: subvol and subvolid both dropped",
			in:   "root=UUID=1234 rootflags=subvol=/@,subvolid=256,ssd ro",
			spec: RootSpec{BtrfsSubvol: "@.new"},
			want: "root=UUID=1234 rootflags=subvol=/@.new,ssd ro",
		},
		{
			name: "btrfs: leading slash style kept",
			in:   "root=UUID=1234 rootflags=subvol=/root",
			spec: RootSpec{BtrfsSubvol: "root.new"},
			want: "root=UUID=1234 rootflags=subvol=/root.new",
		},
		{
			name: "btrfs: nested snapshot path",
			in:   "root=UUID=1234 rootflags=subvol=@",
			spec: RootSpec{BtrfsSubvol: "@/.snapshots/2/snapshot"},
			want: "root=UUID=1234 rootflags=subvol=@/.snapshots/2/snapshot",
		},
		{
			name: "btrfs: duplicate rootflags collapse, last one is effective",
			in:   "rootflags=subvol=a root=UUID=1 rootflags=subvol=b,ssd",
			spec: RootSpec{BtrfsSubvol: "c"},
			want: "rootflags=subvol=c,ssd root=UUID=1",
		},
		{
			name: "btrfs: extra rootflags added once",
			in:   "root=UUID=1 rootflags=subvol=a,nouuid",
			spec: RootSpec{BtrfsSubvol: "b", ExtraRootflags: []string{"nouuid"}},
			want: "root=UUID=1 rootflags=subvol=b,nouuid",
		},
		{
			name: "btrfs: quoted unrelated args untouched",
			in:   `root=UUID=1 rootflags=subvol=a acpi_osi="Windows 2015" ro`,
			spec: RootSpec{BtrfsSubvol: "b"},
			want: `root=UUID=1 rootflags=subvol=b acpi_osi="Windows 2015" ro`,
		},
		{
			name: "lvm: EL8 default with swap LV kept",
			in:   "root=/dev/mapper/rhel-root ro crashkernel=auto resume=/dev/mapper/rhel-swap rd.lvm.lv=rhel/root rd.lvm.lv=rhel/swap rhgb quiet",
			spec: RootSpec{LVMVG: "rhel", LVMLV: "root_kos"},
			want: "root=/dev/mapper/rhel-root_kos ro crashkernel=auto resume=/dev/mapper/rhel-swap rd.lvm.lv=rhel/root_kos rd.lvm.lv=rhel/swap rhgb quiet",
		},
		{
			name: "lvm: dashes in VG and LV names are doubled in the mapper name",
			in:   "root=/dev/mapper/kos--vg-root ro rd.lvm.lv=kos-vg/root rd.lvm.lv=kos-vg/swap",
			spec: RootSpec{LVMVG: "kos-vg", LVMLV: "root-kos-upgrade-1"},
			want: "root=/dev/mapper/kos--vg-root--kos--upgrade--1 ro rd.lvm.lv=kos-vg/root-kos-upgrade-1 rd.lvm.lv=kos-vg/swap",
		},
		{
			name: "lvm: old LV with dashes found from the mapper name",
			in:   "root=/dev/mapper/vg-my--root rd.lvm.lv=vg/my-root rd.lvm.lv=vg/swap",
			spec: RootSpec{LVMVG: "vg", LVMLV: "new"},
			want: "root=/dev/mapper/vg-new rd.lvm.lv=vg/new rd.lvm.lv=vg/swap",
		},
		{
			name: "lvm: /dev/vg/lv style kept",
			in:   "root=/dev/vg/root ro rd.lvm.lv=vg/root",
			spec: RootSpec{LVMVG: "vg", LVMLV: "root_new"},
			want: "root=/dev/vg/root_new ro rd.lvm.lv=vg/root_new",
		},
		{
			name: "lvm: root=UUID= replaced by the LV path (a snapshot has the same UUID)",
			in:   "root=UUID=abcd ro rd.lvm.lv=vg/root rd.lvm.lv=vg/swap",
			spec: RootSpec{LVMVG: "vg", LVMLV: "snap", OldLVMVG: "vg", OldLVMLV: "root"},
			want: "root=/dev/mapper/vg-snap ro rd.lvm.lv=vg/snap rd.lvm.lv=vg/swap",
		},
		{
			name: "lvm: root=UUID= without old LV known: new LV added after the others",
			in:   "root=UUID=abcd ro rd.lvm.lv=vg/root rd.lvm.lv=vg/swap quiet",
			spec: RootSpec{LVMVG: "vg", LVMLV: "snap"},
			want: "root=/dev/mapper/vg-snap ro rd.lvm.lv=vg/root rd.lvm.lv=vg/swap rd.lvm.lv=vg/snap quiet",
		},
		{
			name: "lvm: no rd.lvm.lv at all stays without (dracut activates everything)",
			in:   "root=/dev/mapper/vg-root ro",
			spec: RootSpec{LVMVG: "vg", LVMLV: "new"},
			want: "root=/dev/mapper/vg-new ro",
		},
		{
			name: "lvm: rd.lvm.lv for /var kept, root replaced",
			in:   "root=/dev/mapper/vg-root rd.lvm.lv=vg/var rd.lvm.lv=vg/root",
			spec: RootSpec{LVMVG: "vg", LVMLV: "root2"},
			want: "root=/dev/mapper/vg-root2 rd.lvm.lv=vg/var rd.lvm.lv=vg/root2",
		},
		{
			name: "lvm: other VG's LV with the same name untouched",
			in:   "root=/dev/mapper/vg-root rd.lvm.lv=data/root rd.lvm.lv=vg/root",
			spec: RootSpec{LVMVG: "vg", LVMLV: "r2"},
			want: "root=/dev/mapper/vg-r2 rd.lvm.lv=data/root rd.lvm.lv=vg/r2",
		},
		{
			name: "lvm: rd.lvm.lv naming the new LV already is not duplicated",
			in:   "root=UUID=1 rd.lvm.lv=vg/new",
			spec: RootSpec{LVMVG: "vg", LVMLV: "new"},
			want: "root=/dev/mapper/vg-new rd.lvm.lv=vg/new",
		},
		{
			name: "lvm: missing root= is added",
			in:   "ro rd.lvm.lv=vg/root",
			spec: RootSpec{LVMVG: "vg", LVMLV: "new", OldLVMVG: "vg", OldLVMLV: "root"},
			want: "ro rd.lvm.lv=vg/new root=/dev/mapper/vg-new",
		},
		{
			name: "lvm: XFS snapshot gets nouuid",
			in:   "root=/dev/mapper/vg-root ro rd.lvm.lv=vg/root",
			spec: RootSpec{LVMVG: "vg", LVMLV: "snap", ExtraRootflags: []string{"nouuid"}},
			want: "root=/dev/mapper/vg-snap ro rd.lvm.lv=vg/snap rootflags=nouuid",
		},
		{name: "error: empty spec", in: "root=/dev/sda1", spec: RootSpec{}, err: "either"},
		{name: "error: both kinds", in: "root=/dev/sda1", spec: RootSpec{BtrfsSubvol: "a", LVMVG: "v", LVMLV: "l"}, err: "either"},
		{name: "error: LV without VG", in: "root=/dev/sda1", spec: RootSpec{LVMLV: "l"}, err: "both"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := RetargetRoot(ParseOptions(tt.in), tt.spec)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.String() != tt.want {
				t.Errorf("\n got %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestMapperName(t *testing.T) {
	for _, c := range []struct{ vg, lv, dm string }{
		{"rhel", "root", "rhel-root"},
		{"kos-vg", "root", "kos--vg-root"},
		{"vg", "root-new", "vg-root--new"},
		{"a--b", "c-", "a----b-c--"},
	} {
		if got := MapperName(c.vg, c.lv); got != c.dm {
			t.Errorf("MapperName(%q, %q) = %q, want %q", c.vg, c.lv, got, c.dm)
		}
		vg, lv, ok := SplitMapperName(c.dm)
		if !ok || vg != c.vg || lv != c.lv {
			t.Errorf("SplitMapperName(%q) = %q, %q, %v", c.dm, vg, lv, ok)
		}
	}
	if _, _, ok := SplitMapperName("noseparator"); ok {
		t.Error("SplitMapperName accepted a name without separator")
	}
}

func TestOptions(t *testing.T) {
	o := ParseOptions(`root=/dev/sda1  ro quiet "acpi=a b" x="1 2" rd.lvm.lv=vg/a rd.lvm.lv=vg/b`)
	if o.String() != `root=/dev/sda1 ro quiet "acpi=a b" x="1 2" rd.lvm.lv=vg/a rd.lvm.lv=vg/b` {
		t.Fatalf("round trip: %s", o)
	}
	if v, _ := o.Get("acpi"); v != "a b" {
		t.Errorf("acpi = %q", v)
	}
	if v, _ := o.Get("x"); v != "1 2" {
		t.Errorf("x = %q", v)
	}
	if got := o.GetAll("rd.lvm.lv"); len(got) != 2 || got[1] != "vg/b" {
		t.Errorf("rd.lvm.lv = %v", got)
	}
	if !o.Has("ro") || o.Has("rw") {
		t.Error("Has")
	}
	if _, ok := o.Get("ro"); ok {
		t.Error("flag ro has no value")
	}
	o2 := o.Set("x", "3 4").Remove("quiet").SetFlag("rw").Remove("ro")
	if o2.String() != `root=/dev/sda1 "acpi=a b" x="3 4" rd.lvm.lv=vg/a rd.lvm.lv=vg/b rw` {
		t.Errorf("edited: %s", o2)
	}
	if o.String() == o2.String() {
		t.Error("edits changed the original")
	}
	// An unterminated quote (found by FuzzParseEntry) runs to the end of
	// the line, for the kernel too: kept as it is while last, closed when
	// kos-upgrade appends after it, so that the appended root= stays a
	// parameter of its own.
	bad := ParseOptions(`ro x="a b`)
	if bad.String() != `ro x="a b` {
		t.Errorf("unterminated quote, untouched: %s", bad)
	}
	moved := bad.Set("root", "/dev/vg/new")
	if moved.String() != `ro x="a b" root=/dev/vg/new` {
		t.Errorf("unterminated quote, appended to: %s", moved)
	}
	if v, _ := ParseOptions(moved.String()).Get("root"); v != "/dev/vg/new" {
		t.Errorf("root= after an unterminated quote reads back as %q", v)
	}
}

func TestExpandGrubVars(t *testing.T) {
	vars := map[string]string{"kernelopts": "root=/dev/mapper/rhel-root ro rd.lvm.lv=rhel/root"}
	got := ExpandGrubVars("$kernelopts $tuned_params ${kernelopts}", vars)
	want := "root=/dev/mapper/rhel-root ro rd.lvm.lv=rhel/root $tuned_params root=/dev/mapper/rhel-root ro rd.lvm.lv=rhel/root"
	if got != want {
		t.Errorf("got %q", got)
	}
}

const el8Entry = `title Red Hat Enterprise Linux (4.18.0-80.el8.x86_64) 8.0 (Ootpa)
version 4.18.0-80.el8.x86_64
linux /vmlinuz-4.18.0-80.el8.x86_64
initrd /initramfs-4.18.0-80.el8.x86_64.img $tuned_initrd
options $kernelopts $tuned_params
id rhel-20190313123456-4.18.0-80.el8.x86_64
grub_users $grub_users
grub_arg --unrestricted
grub_class kernel
# a comment the admin wrote
x-vendor-key something
`

func TestNewEntryFromEL8(t *testing.T) {
	old, err := ParseEntry("abc-4.18.0-80.el8.x86_64", []byte(el8Entry))
	if err != nil {
		t.Fatal(err)
	}
	nk := NewKernel{
		ID:      "kos-upgrade-abc-4.18.0-553.el8.x86_64",
		Version: "4.18.0-553.el8.x86_64",
		Linux:   "/vmlinuz-4.18.0-553.el8.x86_64",
		Initrd:  []string{"/initramfs-4.18.0-553.el8.x86_64.img"},
		Root:    RootSpec{LVMVG: "rhel", LVMLV: "root_kos"},
		Vars: map[string]string{"kernelopts": "root=/dev/mapper/rhel-root ro crashkernel=auto " +
			"resume=/dev/mapper/rhel-swap rd.lvm.lv=rhel/root rd.lvm.lv=rhel/swap rhgb quiet"},
		ExtraOptions: []string{"panic=10"},
	}
	e, err := NewEntryFrom(old, nk)
	if err != nil {
		t.Fatal(err)
	}
	want := `title Red Hat Enterprise Linux (4.18.0-553.el8.x86_64) 8.0 (Ootpa)
version 4.18.0-553.el8.x86_64
linux /vmlinuz-4.18.0-553.el8.x86_64
initrd /initramfs-4.18.0-553.el8.x86_64.img $tuned_initrd
options root=/dev/mapper/rhel-root_kos ro crashkernel=auto resume=/dev/mapper/rhel-swap rd.lvm.lv=rhel/root_kos rd.lvm.lv=rhel/swap rhgb quiet $tuned_params panic=10
id kos-upgrade-abc-4.18.0-553.el8.x86_64
grub_users $grub_users
grub_arg --unrestricted
grub_class kernel
# a comment the admin wrote
x-vendor-key something
`
	if got := string(e.Format()); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if string(old.Format()) != el8Entry {
		t.Error("NewEntryFrom changed the old entry")
	}
	// Without kernelopts in grubenv the entry cannot be retargeted.
	nk.Vars = nil
	if _, err := NewEntryFrom(old, nk); err == nil || !strings.Contains(err.Error(), "kernelopts") {
		t.Errorf("err = %v, want a kernelopts error", err)
	}
}

func TestNewEntryFromBtrfs(t *testing.T) {
	old, _ := ParseEntry("mid-6.1.0-9-amd64", []byte("title Debian GNU/Linux 12\nversion 6.1.0-9-amd64\nmachine-id mid\nsort-key debian\n"+
		"options root=UUID=f00 rw rootflags=subvol=@ quiet\nlinux /mid/6.1.0-9-amd64/linux\ninitrd /mid/6.1.0-9-amd64/initrd.img-6.1.0-9-amd64\n"))
	e, err := NewEntryFrom(old, NewKernel{
		ID: "kos-upgrade-mid-6.1.0-10-amd64", Version: "6.1.0-10-amd64",
		Linux: "/mid/6.1.0-10-amd64/linux", Initrd: []string{"/mid/6.1.0-10-amd64/initrd.img"},
		Root: RootSpec{BtrfsSubvol: "@kos-upgrade-1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "title Debian GNU/Linux 12 (6.1.0-10-amd64)\nversion 6.1.0-10-amd64\nmachine-id mid\nsort-key debian\n" +
		"options root=UUID=f00 rw rootflags=subvol=@kos-upgrade-1 quiet\nlinux /mid/6.1.0-10-amd64/linux\ninitrd /mid/6.1.0-10-amd64/initrd.img\n"
	if got := string(e.Format()); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	for _, bad := range []NewKernel{
		{ID: "", Version: "1", Linux: "/l"},
		{ID: "a/b", Version: "1", Linux: "/l"},
		{ID: "x", Linux: "/l"},
	} {
		bad.Root = RootSpec{BtrfsSubvol: "s"}
		if _, err := NewEntryFrom(old, bad); err == nil {
			t.Errorf("NewEntryFrom(%+v) succeeded", bad)
		}
	}
	noRoot, _ := ParseEntry("x", []byte("options ro quiet\n"))
	if _, err := NewEntryFrom(noRoot, NewKernel{ID: "y", Version: "1", Linux: "/l", Root: RootSpec{BtrfsSubvol: "s"}}); err == nil {
		t.Error("entry without root= retargeted for btrfs")
	}
}

func TestMatchesCmdline(t *testing.T) {
	e, _ := ParseEntry("new", []byte("linux /vmlinuz-2\noptions $kernelopts rootflags=subvol=new\n"))
	vars := map[string]string{"kernelopts": "root=UUID=1 ro"}
	for _, c := range []struct {
		cmdline string
		want    bool
	}{
		{"BOOT_IMAGE=(hd0,gpt2)/vmlinuz-2 root=UUID=1 ro rootflags=subvol=new", true},
		{"root=UUID=1 ro rootflags=subvol=new quiet", true},
		{"BOOT_IMAGE=(hd0,gpt2)/vmlinuz-1 root=UUID=1 ro rootflags=subvol=new", false},
		{"BOOT_IMAGE=/vmlinuz-2 root=UUID=1 ro rootflags=subvol=old", false},
		{"BOOT_IMAGE=/vmlinuz-2 root=UUID=2 rootflags=subvol=new", false},
	} {
		if got := MatchesCmdline(e, c.cmdline, vars); got != c.want {
			t.Errorf("%q: got %v", c.cmdline, got)
		}
	}
}
