package snapshot

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// A report as lvm2 2.03 prints it with --reportformat json --units b
// --nosuffix (LANG=C).
const lvsReport = `  {
      "report": [
          {
              "lv": [
                  {"lv_name":"pool", "vg_name":"vg0", "lv_attr":"twi-aotz--", "lv_size":"734003200", "pool_lv":"", "origin":"", "lv_dm_path":"/dev/mapper/vg0-pool", "lv_kernel_major":"254", "lv_kernel_minor":"2", "lv_time":"2025-01-02 03:04:05 +0000", "lv_uuid":"u1"},
                  {"lv_name":"root", "vg_name":"vg0", "lv_attr":"Vwi-aotz--", "lv_size":"1073741824", "pool_lv":"pool", "origin":"", "lv_dm_path":"/dev/mapper/vg0-root", "lv_kernel_major":"254", "lv_kernel_minor":"4", "lv_time":"2025-01-02 03:04:06 +0100", "lv_uuid":"u2"},
                  {"lv_name":"[pool_tdata]", "vg_name":"vg0", "lv_attr":"Twi-ao----", "lv_size":"734003200", "pool_lv":"", "origin":"", "lv_dm_path":"/dev/mapper/vg0-pool_tdata", "lv_kernel_major":"254", "lv_kernel_minor":"1", "lv_time":"2025-01-02 03:04:05 +0000", "lv_uuid":"u0", "vg_extent_size":"4194304", "vg_free_count":"10", "vg_tags":"a,kos_upgrade_default:root"},
                  {"lv_name":"kos-upgrade-x", "vg_name":"vg0", "lv_attr":"Vwi---tz-k", "lv_size":"1073741824", "pool_lv":"pool", "origin":"root", "lv_dm_path":"/dev/mapper/vg0-kos--upgrade--x", "lv_kernel_major":"-1", "lv_kernel_minor":"-1", "lv_time":"", "lv_uuid":"u3"}
              ]
          }
      ]
      ,
      "log": []
  }
`

func TestParseLVs(t *testing.T) {
	lvs, err := parseLVs(lvsReport)
	if err != nil {
		t.Fatal(err)
	}
	if len(lvs) != 4 {
		t.Fatalf("parsed %d LVs: %+v", len(lvs), lvs)
	}
	root := lvs[1]
	if root.Pool != "pool" || !root.active() || !root.hasDev(254, 4) || root.sizeBytes() != 1<<30 || root.full() != "vg0/root" {
		t.Errorf("root = %+v", root)
	}
	if lvTime(root.Time) != "2025-01-02T03:04:06+01:00" {
		t.Errorf("lvTime(%q) = %q", root.Time, lvTime(root.Time))
	}
	if h := lvs[2]; !h.Hidden || h.Name != "pool_tdata" || h.VGFreeCount != "10" || h.VGTags != "a,kos_upgrade_default:root" {
		t.Errorf("hidden LV = %+v", h)
	}
	if lvs[1].Hidden {
		t.Errorf("root is hidden")
	}
	x := lvs[3]
	if x.active() || !x.skipActivate() || x.hasDev(-1, -1) || lvTime(x.Time) != "" {
		t.Errorf("inactive snapshot = %+v", x)
	}
	if _, err := parseLVs("WARNING: not json"); err == nil {
		t.Error("parseLVs accepted garbage")
	}
}

func TestLVMNames(t *testing.T) {
	for name, want := range map[string]string{
		"kos-upgrade/20250101T000000.000Z-5.9": "kos-upgrade-20250101T000000.000Z-5.9",
		"kos-upgrade/a":                        "kos-upgrade-a",
		"root":                                 "root",
		"kos-upgrade-a":                        "kos-upgrade-a",
	} {
		got, err := lvNameOf(name)
		if err != nil || got != want {
			t.Errorf("lvNameOf(%q) = %q, %v; want %q", name, got, err, want)
		}
	}
	if got := snapshotNameOf("kos-upgrade-a"); got != "kos-upgrade/a" {
		t.Errorf("snapshotNameOf = %q", got)
	}
	if got := snapshotNameOf("root"); got != "root" {
		t.Errorf("snapshotNameOf = %q", got)
	}
	for _, bad := range []string{"", "kos-upgrade/", "kos-upgrade/a/b", "a/b", "kos-upgrade/with space", "-x", ".", "..",
		"kos-upgrade/x_tdata", "snapshot", "pvmove0", "kos-upgrade/ä"} {
		if got, err := lvNameOf(bad); err == nil {
			t.Errorf("lvNameOf(%q) = %q, want an error", bad, got)
		}
	}
}

func TestThickSnapshotSize(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct{ origin, change, want int64 }{
		{1024 * mib, 0, 256 * mib},                              // a quarter of the origin
		{1024 * mib, 100 * mib, 125 * mib},                      // the change and a quarter
		{100 * mib, 0, 64 * mib},                                // at least 64 MiB
		{1024 * mib, 4096 * mib, 1024*mib + 1024*mib/200 + mib}, // at most a full copy
		{32 * mib, 0, 32*mib + 32*mib/200 + mib},                // tiny origin: a full copy is less than the minimum
	} {
		if got := thickSnapshotSize(c.origin, c.change); got != c.want {
			t.Errorf("thickSnapshotSize(%d, %d) = %d, want %d", c.origin, c.change, got, c.want)
		}
	}
}

// fakeLVM is a thin-LV root in VG vg0 (root "root" in pool "pool") whose
// commands are answered from rows: lvs reports them as lvm2 does (JSON),
// lvcreate adds the snapshot, mount and the rest succeed. ran records
// every argv.
type fakeLVM struct {
	rows []map[string]string
	ran  [][]string
}

func (f *fakeLVM) exec(_ context.Context, what string, argv ...string) (string, error) {
	f.ran = append(f.ran, argv)
	switch argv[1] {
	case "lvs":
		arg := argv[len(argv)-1]
		var rows []map[string]string
		for _, r := range f.rows {
			if arg == "vg0" || arg == "vg0/"+strings.Trim(r["lv_name"], "[]") {
				rows = append(rows, r)
			}
		}
		b, err := json.Marshal(map[string]any{"report": []any{map[string]any{"lv": rows}}, "log": []any{}})
		return string(b), err
	case "lvcreate":
		name := argv[slices.Index(argv, "--name")+1]
		f.rows = append(f.rows, map[string]string{"lv_name": name, "vg_name": "vg0", "lv_attr": "Vwi-a-tz--", "lv_size": "1073741824",
			"pool_lv": "pool", "origin": "root", "lv_dm_path": "/dev/mapper/vg0-" + strings.ReplaceAll(name, "-", "--"),
			"lv_kernel_major": "254", "lv_kernel_minor": "9", "lv_uuid": "u9", "data_percent": "40.00"})
	}
	return "", nil
}

func (f *fakeLVM) ranTool(tool string) bool {
	return slices.ContainsFunc(f.ran, func(argv []string) bool { return argv[1] == tool })
}

func newFakeThinLVM(t *testing.T, pool map[string]string) (*LVM, *fakeLVM) {
	root := map[string]string{"lv_name": "root", "vg_name": "vg0", "lv_attr": "Vwi-aotz--", "lv_size": "1073741824", "pool_lv": "pool",
		"lv_dm_path": "/dev/mapper/vg0-root", "lv_kernel_major": "254", "lv_kernel_minor": "4", "lv_uuid": "u2", "data_percent": "35.00"}
	f := &fakeLVM{rows: []map[string]string{root}}
	if pool != nil {
		f.rows = append(f.rows, pool)
	}
	cur, err := parseLVs(`{"report":[{"lv":[` + mustJSON(t, root) + `]}]}`)
	if err != nil {
		t.Fatal(err)
	}
	l := &LVM{rootDir: "/", workDir: t.TempDir(), fsType: "xfs", vg: "vg0", cur: cur[0], thin: true, mounted: map[string]string{}, exec: f.exec}
	return l, f
}

func mustJSON(t *testing.T, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func thinPool(attr, data, meta string) map[string]string {
	return map[string]string{"lv_name": "pool", "vg_name": "vg0", "lv_attr": attr, "lv_size": "734003200", "lv_dm_path": "/dev/mapper/vg0-pool",
		"lv_kernel_major": "254", "lv_kernel_minor": "2", "lv_uuid": "u1", "data_percent": data, "metadata_percent": meta}
}

// TestCreateThinPoolFullness: Create checks the root's thin pool before
// lvcreate and refuses, naming the pool, its use and the remedy, at or
// above the limits.
func TestCreateThinPoolFullness(t *testing.T) {
	const name = "kos-upgrade/20260101T000000.000Z-5.9"
	for _, tc := range []struct {
		name    string
		pool    map[string]string
		wantErr []string // in the error; none: the snapshot is made
		notSupp bool     // the error wraps ErrNotSupported
	}{
		{name: "room", pool: thinPool("twi-aotz--", "40.00", "10.00")},
		{name: "just below the limits", pool: thinPool("twi-aotz--", "89.99", "79.99")},
		{name: "data at the limit", pool: thinPool("twi-aotz--", "90.00", "10.00"), notSupp: true,
			wantErr: []string{"thin pool vg0/pool has 90.00% of its data space (700.0 MiB) in use, at or above the 90% limit", "lvextend --size +SIZE vg0/pool", "kos-upgrade clean"}},
		{name: "metadata at the limit", pool: thinPool("twi-aotz--", "20.00", "80.00"), notSupp: true,
			wantErr: []string{"80.00% of its metadata space", "lvextend --poolmetadatasize +SIZE vg0/pool"}},
		{name: "both full", pool: thinPool("twi-aotz--", "99.50", "95.00"), notSupp: true,
			wantErr: []string{"data space", " and has 95.00% of its metadata space"}},
		{name: "out of data space", pool: thinPool("twi-aotzD-", "100.00", "10.00"), notSupp: true,
			wantErr: []string{"thin pool vg0/pool is out of data space and has 100.00%"}},
		{name: "metadata read-only", pool: thinPool("twi-aotzM-", "20.00", "10.00"), notSupp: true,
			wantErr: []string{"thin pool vg0/pool is metadata read-only"}},
		{name: "usage unknown", pool: thinPool("twi---tz--", "", ""),
			wantErr: []string{"no usage for thin pool vg0/pool", "is it active?"}},
		{name: "pool not reported", wantErr: []string{"does not report vg0/pool, the thin pool of the root vg0/root"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, f := newFakeThinLVM(t, tc.pool)
			s, err := l.Create(context.Background(), name)
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if !f.ranTool("lvcreate") || s.Path != filepath.Join(l.workDir, "kos-upgrade-20260101T000000.000Z-5.9") {
					t.Errorf("Create = %+v; ran %q", s, f.ran)
				}
				return
			}
			if err == nil {
				t.Fatalf("Create made %+v, want a refusal", s)
			}
			if !strings.HasPrefix(err.Error(), "cannot create snapshot "+name+": ") {
				t.Errorf("error does not say what cannot be done: %v", err)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q: %v", w, err)
				}
			}
			if errors.Is(err, ErrNotSupported) != tc.notSupp {
				t.Errorf("errors.Is(err, ErrNotSupported) = %v, want %v", !tc.notSupp, tc.notSupp)
			}
			if f.ranTool("lvcreate") {
				t.Errorf("lvcreate ran after all: %q", f.ran)
			}
		})
	}
}

func TestThinPoolUsage(t *testing.T) {
	lvs, err := parseLVs(`{"report":[{"lv":[` + mustJSON(t, thinPool("twi-aotz--", "25.00", "3.50")) + `]}]}`)
	if err != nil {
		t.Fatal(err)
	}
	u, err := thinPoolUsage(lvs[0])
	if err != nil {
		t.Fatal(err)
	}
	want := ThinPoolUsage{VG: "vg0", Pool: "pool", Size: 734003200, Data: 25, Metadata: 3.5}
	if u != want || u.Free() != 550502400 || u.Problem() != "" {
		t.Errorf("usage = %+v (free %d, problem %q), want %+v", u, u.Free(), u.Problem(), want)
	}
	root := lvs[0]
	root.Attr = "Vwi-aotz--"
	if _, err := thinPoolUsage(root); err == nil || !strings.Contains(err.Error(), "not a thin pool") {
		t.Errorf("thinPoolUsage of a thin LV: %v", err)
	}
}

// TestThickFits: on a thick LV, ThickFits says whether the VG has the free
// extents for the rollback point (auto picks the undo journal when not);
// on a thin LV it is always nil.
func TestThickFits(t *testing.T) {
	for _, tc := range []struct {
		name    string
		free    string // free extents of 4 MiB
		thin    bool
		wantErr bool
	}{
		{name: "thick, VG with room", free: "1000"},
		{name: "thick, VG full (the EL8 installer's layout)", free: "0", wantErr: true},
		{name: "thin", free: "0", thin: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			attr := "-wi-ao----"
			if tc.thin {
				attr = "Vwi-aotz--"
			}
			root := map[string]string{"lv_name": "root", "vg_name": "vg0", "lv_attr": attr, "lv_size": "1073741824",
				"lv_dm_path": "/dev/mapper/vg0-root", "lv_kernel_major": "254", "lv_kernel_minor": "4", "lv_uuid": "u2",
				"vg_extent_size": "4194304", "vg_free_count": tc.free}
			f := &fakeLVM{rows: []map[string]string{root}}
			cur, err := parseLVs(`{"report":[{"lv":[` + mustJSON(t, root) + `]}]}`)
			if err != nil {
				t.Fatal(err)
			}
			l := &LVM{rootDir: "/", workDir: t.TempDir(), fsType: "xfs", vg: "vg0", cur: cur[0], thin: tc.thin, mounted: map[string]string{}, exec: f.exec}
			err = l.ThickFits(context.Background())
			if tc.wantErr != (err != nil) || (err != nil && (!errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "not enough free space in VG vg0"))) {
				t.Fatalf("ThickFits() = %v, want an error: %v", err, tc.wantErr)
			}
			if f.ranTool("lvcreate") {
				t.Error("ThickFits created something")
			}
		})
	}
}
