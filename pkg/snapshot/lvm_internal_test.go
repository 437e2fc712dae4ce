package snapshot

import (
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
