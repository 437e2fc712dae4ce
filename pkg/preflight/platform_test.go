package preflight_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/boot"
	"github.com/keyarchos/kos-upgrade/pkg/preflight"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// writeFiles writes path → content below root; content "" makes an empty file.
func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for rel, content := range files {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// el8GrubCfg is the part of an EL8 grub.cfg (grub2-mkconfig with
// GRUB_ENABLE_BLSCFG=true) that matters here.
const el8GrubCfg = `### BEGIN /etc/grub.d/10_linux ###
insmod part_gpt
insmod xfs
# The kernelopts variable should be defined in the grubenv file
insmod blscfg
blscfg
### END /etc/grub.d/10_linux ###
`

// el7GrubCfg is a grub.cfg of menuentry blocks (no BLS).
const el7GrubCfg = `### BEGIN /etc/grub.d/10_linux ###
# blscfg is not used here
menuentry 'KOS (4.18.0)' --class kos {
	linux /vmlinuz-4.18.0 root=/dev/vda2 ro
}
`

// TestCollectPlatform collects the platform facts of fixture roots.
func TestCollectPlatform(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		env   map[string]string // grubenv at /boot/grub2/grubenv
		link  string            // else in the ESP, /boot/grub2/grubenv a link to it
		pkgs  []preflight.InstalledPackage
		want  preflight.PlatformFacts // Helper* are not compared
	}{
		{
			name: "EL8 with a Berkeley DB rpmdb and BLS",
			files: map[string]string{
				"/var/lib/rpm/Packages": "", "/var/lib/rpm/Name": "", "/var/lib/rpm/__db.001": "", "/var/lib/rpm/__db.002": "",
				"/boot/efi/EFI/redhat/grub.cfg":           el8GrubCfg,
				"/etc/default/grub":                       "GRUB_TIMEOUT=5\nGRUB_DEFAULT=saved\nGRUB_ENABLE_BLSCFG=true\n",
				"/etc/grub.d/08_fallback_counting":        "#! /bin/sh -e\n",
				"/etc/sysconfig/kernel":                   "# UPDATEDEFAULT specifies if kernel-install should make\n# new kernels the default\nUPDATEDEFAULT=yes\n\nDEFAULTKERNEL=kernel-core\n",
				"/usr/lib/dracut/dracut-version.sh":       "DRACUT_VERSION=049\n",
				"/usr/lib/sysimage/rpm-not-a-db/Packages": "",
			},
			env: map[string]string{"saved_entry": "abc-4.18.0", "boot_success": "0", "boot_counter": "2"},
			want: preflight.PlatformFacts{
				RPMDB: preflight.RPMDBFacts{Path: "/var/lib/rpm", Backends: []string{"bdb"}, Files: []string{"Packages", "__db.001", "__db.002"}},
				Grub: preflight.GrubFacts{Config: "/boot/efi/EFI/redhat/grub.cfg", BLSCfg: true, EnableBLSCFG: "true",
					FallbackCounting: true, BootCounter: "2", BootSuccess: "0"},
				UpdateDefault: "yes", Dracut: "049",
			},
		},
		{
			name: "a stale BIOS grub.cfg next to the ESP's",
			files: map[string]string{
				"/var/lib/rpm/rpmdb.sqlite":     "",
				"/boot/grub2/grub.cfg":          el7GrubCfg,
				"/boot/efi/EFI/kos/grub.cfg":    el8GrubCfg,
				"/boot/efi/EFI/kos/grubenv-not": "",
			},
			want: preflight.PlatformFacts{RPMDB: preflight.RPMDBFacts{Path: "/var/lib/rpm", Backends: []string{"sqlite"}, Files: []string{"rpmdb.sqlite"}},
				Grub: preflight.GrubFacts{Config: "/boot/efi/EFI/kos/grub.cfg", BLSCfg: true}},
		},
		{
			name: "grubenv in the ESP through EL8's relative link",
			env:  map[string]string{"boot_success": "1"}, link: "../efi/EFI/kos/grubenv",
			want: preflight.PlatformFacts{RPMDB: preflight.RPMDBFacts{Path: "/var/lib/rpm"}, Grub: preflight.GrubFacts{BootSuccess: "1"}},
		},
		{
			name: "grubenv in the ESP through an absolute link, inside the root",
			env:  map[string]string{"boot_counter": "0"}, link: "/boot/efi/EFI/kos/grubenv",
			want: preflight.PlatformFacts{RPMDB: preflight.RPMDBFacts{Path: "/var/lib/rpm"}, Grub: preflight.GrubFacts{BootCounter: "0"}},
		},
		{
			name:  "sqlite in /usr/lib/sysimage/rpm",
			files: map[string]string{"/usr/lib/sysimage/rpm/rpmdb.sqlite": "", "/usr/lib/sysimage/rpm/rpmdb.sqlite-shm": ""},
			want:  preflight.PlatformFacts{RPMDB: preflight.RPMDBFacts{Path: "/usr/lib/sysimage/rpm", Backends: []string{"sqlite"}, Files: []string{"rpmdb.sqlite"}}},
		},
		{
			name:  "ndb",
			files: map[string]string{"/var/lib/rpm/Packages.db": "", "/var/lib/rpm/Index.db": ""},
			want:  preflight.PlatformFacts{RPMDB: preflight.RPMDBFacts{Path: "/var/lib/rpm", Backends: []string{"ndb"}, Files: []string{"Packages.db"}}},
		},
		{
			name:  "a conversion left Berkeley DB files next to sqlite",
			files: map[string]string{"/var/lib/rpm/Packages": "", "/var/lib/rpm/rpmdb.sqlite": ""},
			want:  preflight.PlatformFacts{RPMDB: preflight.RPMDBFacts{Path: "/var/lib/rpm", Backends: []string{"bdb", "sqlite"}, Files: []string{"Packages", "rpmdb.sqlite"}}},
		},
		{
			name: "no rpmdb, grub2 without BLS, quoted values",
			files: map[string]string{
				"/boot/grub2/grub.cfg":  el7GrubCfg,
				"/etc/default/grub":     "GRUB_ENABLE_BLSCFG=\"false\"\nGRUB_CMDLINE_LINUX=\"ro quiet\"\n",
				"/etc/sysconfig/kernel": "UPDATEDEFAULT='no' # keep the default\n",
			},
			want: preflight.PlatformFacts{RPMDB: preflight.RPMDBFacts{Path: "/var/lib/rpm"},
				Grub:          preflight.GrubFacts{Config: "/boot/grub2/grub.cfg", EnableBLSCFG: "false"},
				UpdateDefault: "no"},
		},
		{
			name: "dracut from the package list",
			pkgs: []preflight.InstalledPackage{{Name: "dracut", NEVRA: "dracut-0:049-223.git20230119.el8.x86_64"}, {Name: "bash", NEVRA: "bash-0:4.4.20-4.el8.x86_64"}},
			want: preflight.PlatformFacts{RPMDB: preflight.RPMDBFacts{Path: "/var/lib/rpm"}, Dracut: "049"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, tc.files)
			f := &preflight.Facts{Root: dir, Packages: tc.pkgs}
			if tc.env != nil {
				env := boot.NewEnv()
				for k, v := range tc.env {
					env.Set(k, v)
				}
				p := filepath.Join(dir, "boot/grub2/grubenv")
				os.MkdirAll(filepath.Dir(p), 0o755)
				if tc.link != "" {
					p = filepath.Join(dir, "boot/efi/EFI/kos/grubenv")
					os.MkdirAll(filepath.Dir(p), 0o755)
					if err := os.Symlink(tc.link, filepath.Join(dir, "boot/grub2/grubenv")); err != nil {
						t.Fatal(err)
					}
				}
				if err := boot.WriteEnv(p, env); err != nil {
					t.Fatal(err)
				}
				f.Boot.GrubEnvs = []preflight.GrubEnv{{Path: "/boot/grub2/grubenv", Size: 1024, Symlink: tc.link}}
			}
			preflight.CollectPlatform(context.Background(), sysroot.Root{Dir: dir}, f)
			got := f.Platform
			got.RPMDB.Helper, got.RPMDB.HelperRPM, got.RPMDB.HelperBackend = "", "", ""
			if !platformEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func platformEqual(a, b preflight.PlatformFacts) bool {
	return slices.Equal(a.RPMDB.Backends, b.RPMDB.Backends) && slices.Equal(a.RPMDB.Files, b.RPMDB.Files) &&
		a.RPMDB.Path == b.RPMDB.Path && a.Grub == b.Grub && a.UpdateDefault == b.UpdateDefault && a.Dracut == b.Dracut
}

// el8Platform is a KOS 5.x platform kos-upgrade handles: BDB written by the
// helper's own rpm 4.14.3, grub2 with BLS.
func el8Platform(f *preflight.Facts) {
	f.Platform = preflight.PlatformFacts{
		RPMDB: preflight.RPMDBFacts{Path: "/var/lib/rpm", Backends: []string{"bdb"}, Files: []string{"Packages", "__db.001"},
			Helper: "/usr/libexec/platform-python", HelperRPM: "4.14.3", HelperBackend: "bdb"},
		Grub:          preflight.GrubFacts{Config: "/boot/efi/EFI/kos/grub.cfg", BLSCfg: true, EnableBLSCFG: "true", FallbackCounting: true, BootSuccess: "1"},
		UpdateDefault: "yes", Dracut: "049",
	}
}

// TestPlatformChecks: a change to a healthy EL8 platform, the key that
// must then fire, its severity and whether it inhibits.
func TestPlatformChecks(t *testing.T) {
	for _, tc := range []struct {
		name      string
		mutate    func(f *preflight.Facts)
		key       string
		severity  preflight.Severity // "" = must not fire above info
		inhibitor bool
		contains  string
	}{
		{"EL8 rpmdb", func(f *preflight.Facts) {}, preflight.KeyRPMDB, preflight.Info, false, "Berkeley DB in /var/lib/rpm"},
		{"EL8 rpmdb is supported", func(f *preflight.Facts) {}, preflight.KeyRPMDBUnsupported, "", false, ""},
		{"Berkeley DB and Debian's rpm 4.18: read-only", func(f *preflight.Facts) {
			f.Platform.RPMDB.HelperRPM, f.Platform.RPMDB.HelperBackend = "4.18.0", "sqlite"
		}, preflight.KeyRPMDBReadOnly, preflight.Medium, false, "rpm 4.18.0 opens this Berkeley DB database read-only"},
		{"Berkeley DB and Debian's rpm 4.18: it can open it", func(f *preflight.Facts) {
			f.Platform.RPMDB.HelperRPM, f.Platform.RPMDB.HelperBackend = "4.18.0", "sqlite"
		}, preflight.KeyRPMDBUnsupported, "", false, ""},
		{"ndb and rpm 4.18", func(f *preflight.Facts) {
			f.Platform.RPMDB.Backends = []string{"ndb"}
			f.Platform.RPMDB.HelperRPM, f.Platform.RPMDB.HelperBackend = "4.18.0", "sqlite"
		}, preflight.KeyRPMDBReadOnly, "", false, ""},
		{"sqlite and EL8's rpm 4.14.3", func(f *preflight.Facts) {
			f.Platform.RPMDB.Backends, f.Platform.RPMDB.Files = []string{"sqlite"}, []string{"rpmdb.sqlite"}
		}, preflight.KeyRPMDBUnsupported, preflight.High, true, "database backend Berkeley DB"},
		{"sqlite and an rpm of unreadable version", func(f *preflight.Facts) {
			f.Platform.RPMDB.Backends = []string{"sqlite"}
			f.Platform.RPMDB.HelperRPM = "unknown"
		}, preflight.KeyRPMDBUnsupported, preflight.High, true, "cannot open"},
		{"ndb and EL8's rpm 4.14.3", func(f *preflight.Facts) {
			f.Platform.RPMDB.Backends = []string{"ndb"}
		}, preflight.KeyRPMDBUnsupported, preflight.High, true, "is ndb"},
		{"leftover files of another backend", func(f *preflight.Facts) {
			f.Platform.RPMDB.Backends = []string{"bdb", "sqlite"}
		}, preflight.KeyRPMDBUnsupported, "", false, ""},
		{"helper's rpm unknown", func(f *preflight.Facts) {
			f.Platform.RPMDB.HelperRPM, f.Platform.RPMDB.HelperBackend = "", ""
		}, preflight.KeyRPMDBUnsupported, "", false, ""},
		{"no rpmdb", func(f *preflight.Facts) { f.Platform.RPMDB.Backends, f.Platform.RPMDB.Files = nil, nil }, preflight.KeyRPMDB, preflight.Low, false, "No rpm database"},
		{"grub2 with BLS", func(f *preflight.Facts) {}, preflight.KeyGrub, preflight.Info, false, "Red Hat's BLS (blscfg)"},
		{"grub2 with BLS is fine", func(f *preflight.Facts) {}, preflight.KeyGrubNoBLS, "", false, ""},
		{"grub2 without BLS", func(f *preflight.Facts) {
			f.Platform.Grub.BLSCfg, f.Platform.Grub.EnableBLSCFG = false, ""
		}, preflight.KeyGrubNoBLS, preflight.High, true, "does not run blscfg"},
		{"BLS enabled, grub.cfg not generated again", func(f *preflight.Facts) { f.Platform.Grub.BLSCfg = false }, preflight.KeyGrubNoBLS, preflight.High, true, "was not generated again"},
		{"grub2 without BLS, but systemd-boot boots", func(f *preflight.Facts) {
			f.Platform.Grub.BLSCfg = false
			f.Boot.SystemdBoot = []string{"/boot/efi/loader/loader.conf"}
		}, preflight.KeyGrubNoBLS, "", false, ""},
		{"BLS turned off for the next grub2-mkconfig", func(f *preflight.Facts) { f.Platform.Grub.EnableBLSCFG = "false" }, preflight.KeyGrubNoBLS, preflight.Medium, false, "GRUB_ENABLE_BLSCFG=false"},
		{"boot counting in progress", func(f *preflight.Facts) { f.Platform.Grub.BootCounter = "2" }, preflight.KeyGrubBootCounter, preflight.Low, false, "boot_counter=2"},
		{"boot_counter without 08_fallback_counting", func(f *preflight.Facts) {
			f.Platform.Grub.BootCounter, f.Platform.Grub.FallbackCounting = "2", false
		}, preflight.KeyGrubBootCounter, "", false, ""},
		{"UPDATEDEFAULT=yes", func(f *preflight.Facts) {}, preflight.KeyKernelUpdateDflt, preflight.Info, false, "saved_entry"},
		{"UPDATEDEFAULT=no", func(f *preflight.Facts) { f.Platform.UpdateDefault = "no" }, preflight.KeyKernelUpdateDflt, preflight.Info, false, "leaves the default"},
		{"dracut", func(f *preflight.Facts) {}, preflight.KeyDracut, preflight.Info, false, "dracut 049"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := healthyFacts()
			el8Platform(f)
			tc.mutate(f)
			r := evaluate(f)
			validate(t, r)
			fd := r.Finding(tc.key)
			if tc.severity == "" {
				if fd != nil && fd.Severity != preflight.Info {
					t.Fatalf("%s fired: %+v", tc.key, *fd)
				}
				return
			}
			if fd == nil {
				t.Fatalf("%s did not fire; report: %s", tc.key, keys(r))
			}
			if fd.Severity != tc.severity || fd.Inhibitor() != tc.inhibitor {
				t.Errorf("%s: severity %s inhibitor %v, want %s %v", tc.key, fd.Severity, fd.Inhibitor(), tc.severity, tc.inhibitor)
			}
			if text := fd.Title + "\n" + fd.Summary + "\n" + strings.Join(fd.Details, "\n"); !strings.Contains(text, tc.contains) {
				t.Errorf("%s does not mention %q:\n%s", tc.key, tc.contains, text)
			}
			if fd.Inhibitor() && len(fd.Remediations) == 0 {
				t.Errorf("inhibitor %s has no remediation", tc.key)
			}
		})
	}
	// A healthy EL8 platform inhibits nothing.
	f := healthyFacts()
	el8Platform(f)
	if r := evaluate(f); r.Inhibited {
		t.Errorf("a healthy EL8 platform is inhibited: %s", keys(r))
	}
}

// TestCheckPlatformOnFixtureRoot runs the real collection (the helper's
// interpreter asked for its rpm, grubenv written by grub-editenv) on the
// fixture's 5.8 system with EL8's boot configuration.
func TestCheckPlatformOnFixtureRoot(t *testing.T) {
	s := newSys(t).install()
	testenv.RequireTools(t, "grub-editenv")
	s.write("/boot/grub2/grub.cfg", el8GrubCfg)
	s.write("/etc/default/grub", "GRUB_DEFAULT=saved\nGRUB_ENABLE_BLSCFG=true\n")
	s.write("/etc/grub.d/08_fallback_counting", "#! /bin/sh -e\n")
	s.write("/etc/sysconfig/kernel", "UPDATEDEFAULT=yes\nDEFAULTKERNEL=kernel-core\n")
	env := filepath.Join(s.root, "boot/grub2/grubenv")
	testenv.Run(t, "grub-editenv", env, "create")
	testenv.Run(t, "grub-editenv", env, "set", "boot_success=0", "boot_counter=1")

	// The fixture's rpmdb is written by this machine's rpm, the one of
	// the helper's interpreter: the same backend.
	r := s.check(nil)
	db := has(r, preflight.KeyRPMDB)
	if db == nil || db.Severity != preflight.Info || !strings.Contains(db.Summary, "rpm 4.") {
		t.Fatalf("rpmdb.backend = %+v; report %s", db, keys(r))
	}
	wantQuiet(t, r, preflight.KeyRPMDBUnsupported)
	wantQuiet(t, r, preflight.KeyGrubNoBLS)
	if g := has(r, preflight.KeyGrub); g == nil || !strings.Contains(g.Title, "blscfg") || !strings.Contains(g.Summary, "boot_counter=1") {
		t.Errorf("boot.grub = %+v", g)
	}
	if c := has(r, preflight.KeyGrubBootCounter); c == nil || c.Severity != preflight.Low {
		t.Errorf("boot.boot-counter = %+v", c)
	}
	if u := has(r, preflight.KeyKernelUpdateDflt); u == nil || !strings.Contains(u.Title, "UPDATEDEFAULT=yes") {
		t.Errorf("boot.update-default = %+v", u)
	}

	// The same root with a grub.cfg of menu entries (inhibits) and a
	// Berkeley DB database in place of the helper's backend (rpm 4.16+ opens
	// it read-only: a warning; rpm 4.14 has no sqlite: inhibits).
	s.write("/boot/grub2/grub.cfg", el7GrubCfg)
	dbDir := filepath.Join(s.root, "var/lib/rpm")
	ents, err := os.ReadDir(dbDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		os.RemoveAll(filepath.Join(dbDir, e.Name()))
	}
	s.write("/var/lib/rpm/Packages", "")
	s.write("/var/lib/rpm/__db.001", "")
	a, err := preflight.ParseAnswerFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	r, f, err := preflight.Run(context.Background(), preflight.Options{
		Root: sysroot.Root{Dir: s.root}, Snapshot: preflight.SnapshotFacts{Requested: "auto", Backend: "btrfs"},
		State: preflight.StateFacts{Status: "idle"},
	}, a)
	if err != nil {
		t.Fatal(err)
	}
	validate(t, r)
	wantInhibitor(t, r, preflight.KeyGrubNoBLS)
	if f.Platform.RPMDB.HelperRPM == "" {
		t.Fatalf("the helper's rpm is unknown: %v", f.Errors)
	}
	if f.Platform.RPMDB.HelperBackend != "bdb" {
		ro := has(r, preflight.KeyRPMDBReadOnly)
		if ro == nil || ro.Severity != preflight.Medium || ro.Inhibitor() {
			t.Errorf("rpmdb.read-only = %+v; report %s", ro, keys(r))
		}
		wantQuiet(t, r, preflight.KeyRPMDBUnsupported)
	}
}
