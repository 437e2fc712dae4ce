package preflight_test

import (
	"bytes"
	"flag"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/iso"
	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/pkg/preflight"
)

var update = flag.Bool("update", false, "rewrite the golden files in test/golden")

const MiB = preflight.MiB

var fixedNow = time.Date(2026, 11, 25, 10, 15, 0, 0, time.UTC)

// healthyFacts is a KOS 5.8 system that can be upgraded to 5.9 without a
// finding above info.
func healthyFacts() *preflight.Facts {
	return &preflight.Facts{
		Root: "/", Target: "5.9", Source: preflight.Release{ID: "kos", VersionID: "5.8", Name: "KeyarchOS"},
		EUID:     0,
		State:    preflight.StateFacts{Status: "idle"},
		Snapshot: preflight.SnapshotFacts{Requested: "auto", Backend: "btrfs"},
		RootFS:   &preflight.FSFacts{Path: "/", Mount: "/", MountID: 1, Dev: 10, FSType: "btrfs", Source: "/dev/vda2", Free: 20 << 30, Size: 40 << 30},
		StateFS:  &preflight.FSFacts{Path: "/var/lib/kos-upgrade", Mount: "/", MountID: 1, Dev: 10, FSType: "btrfs", Source: "/dev/vda2", Free: 20 << 30, Size: 40 << 30},
		BootFS:   &preflight.FSFacts{Path: "/boot", Mount: "/boot", MountID: 2, Dev: 11, FSType: "xfs", Source: "/dev/vda1", Free: 800 * MiB, Size: 1024 * MiB},
		Boot: preflight.BootFacts{
			Exists: true, Separate: true,
			Entries:  []string{"/boot/loader/entries/abc-4.18.0.conf"},
			GrubEnvs: []preflight.GrubEnv{{Path: "/boot/grub2/grubenv", Size: 1024, FSType: "xfs", Source: "/dev/vda1"}},
		},
		Loaded:        []string{"e1000", "virtio_blk"},
		SELinux:       "enforcing",
		SELinuxConfig: "enforcing",
		FIPS:          "0",
		Packages: []preflight.InstalledPackage{
			{Name: "app", NEVRA: "app-0:1.0-1.noarch", KeyID: "aabbccdd"},
			{Name: "legacy", NEVRA: "legacy-0:1.0-1.noarch", KeyID: "aabbccdd"},
		},
		InstalledKeys: []string{"aabbccdd"},
		DistKeys:      []string{"aabbccdd"},
		Keys:          []preflight.KeyFacts{{Repo: "kos", URL: "file:///etc/pki/rpm-gpg/RPM-GPG-KEY-kos", Path: "/etc/pki/rpm-gpg/RPM-GPG-KEY-kos", KeyIDs: []string{"aabbccdd"}}},
		Assessment: &pkgmgr.Assessment{
			Items: []pkgmgr.Item{
				{Action: "upgrade", NEVRA: "app-0:2.0-1.noarch", Name: "app", Size: 5 * MiB, InstallSize: 20 * MiB},
				{Action: "install", NEVRA: "kernel-core-0:5.9.0-1.x86_64", Name: "kernel-core", Size: 30 * MiB, InstallSize: 70 * MiB},
			},
			Repos:        []pkgmgr.RepoInfo{{ID: "kos", GPGCheck: true, GPGKeys: []string{"file:///etc/pki/rpm-gpg/RPM-GPG-KEY-kos"}}},
			DownloadSize: 35 * MiB, InstallSize: 90 * MiB, EraseSize: 18 * MiB,
			Kernel: &pkgmgr.KernelInfo{
				NEVRA: "kernel-core-0:5.9.0-1.x86_64", Name: "kernel-core", Version: "5.9.0-1.x86_64", DownloadSize: 30 * MiB,
				InTransaction: true, FilesKnown: true,
				Modules: []string{"/lib/modules/5.9.0-1.x86_64/kernel/drivers/net/e1000.ko.xz", "/lib/modules/5.9.0-1.x86_64/kernel/drivers/block/virtio_blk.ko.xz"},
			},
		},
	}
}

// withSources: one image repository, one directory mirror, one URL.
func withSources(f *preflight.Facts) {
	f.Images = []iso.Ref{{Path: "/srv/KOS-5.9.iso", Label: "KOS-5.9", Release: &iso.Release{Name: "KOS", Version: "5.9"}, Repos: []string{"BaseOS"}}}
	f.Assessment.Repos = append(f.Assessment.Repos,
		pkgmgr.RepoInfo{ID: iso.RepoID(0, "BaseOS"), BaseURLs: []string{"http://127.0.0.1:4711/0123/0/BaseOS/"}},
		pkgmgr.RepoInfo{ID: "extra", BaseURLs: []string{"file:///srv/mirror/extra"}})
}

func evaluate(f *preflight.Facts, answers ...string) *preflight.Report {
	a, err := preflight.ParseAnswerFlags(answers)
	if err != nil {
		panic(err)
	}
	return preflight.Evaluate(f, a, fixedNow)
}

func TestHealthySystemHasOnlyInfo(t *testing.T) {
	r := evaluate(healthyFacts())
	validate(t, r)
	for _, f := range r.Findings {
		if f.Severity != preflight.Info || f.Inhibitor() {
			t.Errorf("unexpected finding %s (%s): %s", f.Key, f.Severity, f.Summary)
		}
	}
	if r.Inhibited || r.Err() != nil {
		t.Errorf("inhibited: %v", r.Err())
	}
}

// The report carries dnf's transaction, one item per package, when the
// upgrade resolves: the per-package list of transaction.summary.
func TestReportTransaction(t *testing.T) {
	f := healthyFacts()
	r := evaluate(f)
	validate(t, r)
	if len(r.Transaction) != len(f.Assessment.Items) || r.Transaction[0].NEVRA != "app-0:2.0-1.noarch" || r.Transaction[1].Action != "install" {
		t.Errorf("transaction %+v, want the assessment's items %+v", r.Transaction, f.Assessment.Items)
	}
	f.Assessment.Problems = []string{"nothing provides libfoo needed by app-0:2.0-1.noarch"}
	if r := evaluate(f); r.Transaction != nil {
		t.Errorf("an unresolved upgrade has a transaction: %+v", r.Transaction)
	}
	f.Assessment = nil
	if r := evaluate(f); r.Transaction != nil {
		t.Errorf("no assessment, but a transaction: %+v", r.Transaction)
	}
}

// Each check, table-driven: a change to the healthy facts, the key that
// must then fire, and whether it inhibits.
func TestChecks(t *testing.T) {
	tests := []struct {
		name      string
		mutate    func(f *preflight.Facts)
		answers   []string
		key       string
		severity  preflight.Severity
		inhibitor bool
		contains  string // in summary, details or title
	}{
		{"not root", func(f *preflight.Facts) { f.EUID = 1000 }, nil, preflight.KeyNotRoot, preflight.High, true, "1000"},
		{"sources: an ISO image", withSources, nil, preflight.KeySources, preflight.Info, false,
			"iso0-BaseOS: image /srv/KOS-5.9.iso, label KOS-5.9, release KOS 5.9, directory /BaseOS"},
		{"sources: a directory mirror", withSources, nil, preflight.KeySources, preflight.Info, false, "extra: directory mirror /srv/mirror/extra"},
		{"sources: counted", withSources, nil, preflight.KeySources, preflight.Info, false, "1 ISO image(s) read in place, 1 directory mirror(s), 1 network"},
		{"same release", func(f *preflight.Facts) { f.Target = "5.8" }, nil, preflight.KeySameRelease, preflight.High, true, "5.8"},
		{"armed by us", func(f *preflight.Facts) {
			f.SystemUpdate = "kos-upgrade"
			f.State = preflight.StateFacts{Status: "armed", Target: "5.9", PlanID: "p1"}
		}, nil, preflight.KeyArmed, preflight.High, true, "p1"},
		{"applying", func(f *preflight.Facts) { f.State.Status = "applying" }, nil, preflight.KeyApplying, preflight.High, true, "apply"},
		{"prepared", func(f *preflight.Facts) {
			f.State = preflight.StateFacts{Status: "prepared", PlanID: "p1", Target: "5.9"}
		}, nil, preflight.KeyPrepared, preflight.Info, false, "replaces"},
		{"foreign update", func(f *preflight.Facts) { f.SystemUpdate = "/var/lib/PackageKit/prepared-update" }, nil, preflight.KeyForeignUpdate, preflight.High, true, "PackageKit"},
		{"no snapshot backend", func(f *preflight.Facts) { f.Snapshot.Backend = ""; f.Snapshot.Error = "root / is on xfs" }, nil, preflight.KeySnapshotUnusable, preflight.High, true, "xfs"},
		{"lvm thick root", func(f *preflight.Facts) {
			f.Snapshot.Backend, f.Snapshot.Error = "", "root / is on xfs"
			f.Snapshot.LVM = &preflight.LVMFacts{VG: "vg0", LV: "root", Size: 10 << 30, VGFree: 1 << 30}
		}, nil, preflight.KeySnapshotUnusable, preflight.High, true, "not enough"},
		{"snapshot none", func(f *preflight.Facts) { f.Snapshot.Backend = "none" }, nil, preflight.KeySnapshotNone, preflight.High, false, "no rollback"},
		{"undo with reflinks", undoRoot(true, 1<<30), nil, preflight.KeySnapshotUndo, preflight.Info, false, "needs almost no space"},
		{"undo copies that fit", undoRoot(false, 1<<40), nil, preflight.KeySnapshotUndo, preflight.Info, false, "the journal copies"},
		{"undo copies that do not fit", undoRoot(false, 1<<20), nil, preflight.KeySnapshotUndo, preflight.High, true, "Not enough free space for the undo journal"},
		{"undo limits", undoRoot(true, 1<<30), nil, preflight.KeyUndoLimits, preflight.Low, false, "%post"},
		{"lvm keeps the classic path", thinRoot(20, 10, ""), nil, preflight.KeyStageClassic, preflight.Info, false, "LVM keeps the classic path"},
		{"thin pool with room", thinRoot(74.99, 59.99, ""), nil, preflight.KeyThinPool, "", false, ""},
		{"thin pool nearly full", thinRoot(75, 10, ""), nil, preflight.KeyThinPool, preflight.Medium, false, "75.00% of its data"},
		{"thin pool metadata nearly full", thinRoot(20, 60, ""), nil, preflight.KeyThinPool, preflight.Medium, false, "60.00% of its metadata"},
		{"thin pool data full", thinRoot(90, 10, ""), nil, preflight.KeyThinPool, preflight.High, true, "vg0/pool has 90.00% of its data space (20480.0 MiB) in use"},
		{"thin pool metadata full", thinRoot(20, 80, ""), nil, preflight.KeyThinPool, preflight.High, true, "80.00% of its metadata space in use, at or above the 80% limit"},
		{"thin pool out of data space", thinRoot(100, 10, "out of data space"), nil, preflight.KeyThinPool, preflight.High, true, "is out of data space"},
		{"thin pool too small for the upgrade", func(f *preflight.Facts) {
			thinRoot(70, 10, "")(f)
			f.Snapshot.LVM.ThinPool.Size = 1 << 30 // 307.2 MiB free; 35 + 90 + 10% + 200 = 337.5 MiB needed
		}, nil, preflight.KeyThinPool, preflight.High, true, "337.5 MiB (35.0 MiB to download + 90.0 MiB to install"},
		{"thin pool not used without the LVM backend", func(f *preflight.Facts) {
			thinRoot(95, 90, "")(f)
			f.Snapshot.Backend = "none"
		}, nil, preflight.KeyThinPool, "", false, ""},
		{"thin pool usage unknown", func(f *preflight.Facts) {
			thinRoot(95, 90, "")(f)
			f.Snapshot.LVM.ThinPool = nil
		}, nil, preflight.KeyThinPool, "", false, ""},
		{"separate /var", func(f *preflight.Facts) { f.SeparateMounts = []string{"/var (xfs on /dev/vdb1)"} }, nil, preflight.KeySeparateMounts, preflight.High, true, "/var"},
		{"root full", func(f *preflight.Facts) { f.RootFS.Free = 250 * MiB; f.StateFS.Free = 250 * MiB }, nil, preflight.KeySpaceRoot, preflight.High, true, "short"},
		{"state dir full", func(f *preflight.Facts) {
			f.StateFS = &preflight.FSFacts{Path: "/var/lib/kos-upgrade", Mount: "/var/lib/kos-upgrade", MountID: 5, Dev: 40, FSType: "tmpfs", Source: "tmpfs", Free: 1 * MiB}
		}, nil, preflight.KeySpaceState, preflight.High, true, "/var/lib/kos-upgrade"},
		{"no target", func(f *preflight.Facts) { f.Target = ""; f.Assessment = nil }, nil, preflight.KeySpaceUnknown, preflight.Info, false, "--to"},
		{"no target, root full", func(f *preflight.Facts) { f.Target = ""; f.Assessment = nil; f.RootFS.Free = 10 * MiB }, nil, preflight.KeySpaceRoot, preflight.High, true, "margin"},
		{"boot full", func(f *preflight.Facts) { f.BootFS.Free = 50 * MiB }, nil, preflight.KeyBootSpace, preflight.High, true, "kernel-core-0:5.9.0-1.x86_64"},
		{"boot leftovers", func(f *preflight.Facts) {
			f.Boot.Leftovers = []preflight.File{{Path: "/boot/loader/entries/kos-upgrade-x.conf", Size: 300}}
		}, nil, preflight.KeyBootLeftovers, preflight.Low, false, "kos-upgrade-x.conf"},
		{"no /boot", func(f *preflight.Facts) { f.Boot = preflight.BootFacts{}; f.BootFS = nil }, nil, preflight.KeyBootMissing, preflight.Low, false, "/boot"},
		{"unknown boot loader", func(f *preflight.Facts) { f.Boot.GrubEnvs, f.Boot.Entries = nil, nil }, nil, preflight.KeyBootUnknown, preflight.High, false, "grubenv"},
		{"grubenv on btrfs", func(f *preflight.Facts) { f.Boot.GrubEnvs[0].FSType = "btrfs" }, nil, preflight.KeyGrubEnv, preflight.Medium, false, "btrfs"},
		{"grubenv truncated", func(f *preflight.Facts) { f.Boot.GrubEnvs[0].Size = 100 }, nil, preflight.KeyGrubEnv, preflight.Medium, false, "100 bytes"},
		{"dependency problem", func(f *preflight.Facts) {
			f.Assessment.Items = nil
			f.Assessment.Problems = []string{"Problem: package app-3.0-1.noarch requires libmissing >= 1.0, but none of the providers can be installed"}
		}, nil, preflight.KeyDeps, preflight.High, true, "libmissing"},
		{"assessment failed", func(f *preflight.Facts) {
			f.Assessment = nil
			f.AssessError = "cannot load repository metadata:\n  Curl error"
		}, nil, preflight.KeyAssessFailed, preflight.High, true, "metadata"},
		{"removal", func(f *preflight.Facts) {
			f.Assessment.Items = append(f.Assessment.Items, pkgmgr.Item{Action: "remove", NEVRA: "legacy-0:1.0-1.noarch", Name: "legacy", Reason: "kos-release-0:5.9-1.noarch conflicts with legacy"})
		}, nil, preflight.KeyRemoved, preflight.Medium, false, "conflicts with legacy"},
		{"obsoleted", func(f *preflight.Facts) {
			f.Assessment.Items = append(f.Assessment.Items, pkgmgr.Item{Action: "obsoleted", NEVRA: "oldtool-0:1.0-1.noarch", Name: "oldtool", Reason: "obsoleted by newtool-0:2.0-1.noarch"})
		}, nil, preflight.KeyObsoleted, preflight.Info, false, "newtool"},
		{"third party", thirdParty, nil, preflight.KeyThirdParty, preflight.High, true, "tool-0:1-1.x86_64 (signed with key 99999999, vendor ACME)"},
		{"third party kept", thirdParty, []string{"packages.third-party=keep"}, preflight.KeyThirdParty, preflight.High, false, "keeps them"},
		{"third party bad answer", thirdParty, []string{"packages.third-party=drop"}, preflight.KeyThirdParty, preflight.High, true, `"drop"`},
		{"orphaned", func(f *preflight.Facts) { f.Assessment.Unavailable = []string{"app"} }, nil, preflight.KeyOrphaned, preflight.Medium, false, "app-0:1.0-1.noarch"},
		{"removed is not orphaned", func(f *preflight.Facts) {
			f.Assessment.Unavailable = []string{"legacy"}
			f.Assessment.Items = append(f.Assessment.Items, pkgmgr.Item{Action: "remove", NEVRA: "legacy-0:1.0-1.noarch", Name: "legacy", Reason: "r"})
		}, nil, preflight.KeyOrphaned, "", false, ""},
		{"module dropped", func(f *preflight.Facts) { f.Loaded = append(f.Loaded, "oldraid") }, nil, preflight.KeyModulesUnshipped, preflight.High, true, "oldraid"},
		{"module dropped, accepted", func(f *preflight.Facts) { f.Loaded = append(f.Loaded, "oldraid") }, []string{"modules.unshipped=accept"}, preflight.KeyModulesUnshipped, preflight.High, false, "oldraid"},
		{"module dash and underscore", func(f *preflight.Facts) {
			f.Loaded = append(f.Loaded, "dummy_net")
			f.Assessment.Kernel.Modules = append(f.Assessment.Kernel.Modules, "/lib/modules/5.9.0-1.x86_64/kernel/drivers/net/dummy-net.ko")
		}, nil, preflight.KeyModulesUnshipped, "", false, ""},
		{"modules unknown", func(f *preflight.Facts) { f.Loaded = nil }, nil, preflight.KeyModulesUnknown, preflight.Info, false, "/proc/modules"},
		{"kernel file list unknown", func(f *preflight.Facts) { f.Assessment.Kernel.FilesKnown = false }, nil, preflight.KeyModulesUnknown, preflight.Info, false, "file list"},
		{"missing key", func(f *preflight.Facts) { f.Keys[0].Error = "the key file /etc/pki/x does not exist" }, nil, preflight.KeyKeyMissing, preflight.High, true, "/etc/pki/x"},
		{"missing key, no gpg check", func(f *preflight.Facts) { f.Keys[0].Error = "gone"; f.SkipSignatures = true }, nil, preflight.KeyKeyMissing, preflight.High, false, "unverified"},
		{"no keys at all", func(f *preflight.Facts) { f.Keys, f.InstalledKeys = nil, nil }, nil, preflight.KeyNoKeys, preflight.High, true, "no package"},
		{"key not imported", func(f *preflight.Facts) { f.InstalledKeys = []string{"11111111"} }, nil, preflight.KeyKeyNotInstalled, preflight.Info, false, "aabbccdd"},
		{"selinux differs", func(f *preflight.Facts) { f.SELinux = "permissive" }, nil, preflight.KeySELinux, preflight.Low, false, "permissive"},
		{"fips", func(f *preflight.Facts) { f.FIPS = "1" }, nil, preflight.KeyFIPS, preflight.Info, false, "FIPS"},
		{"facts missing", func(f *preflight.Facts) { f.Errors = []string{"cannot list the installed packages: rpm: boom"} }, nil, preflight.KeyFactsUnavailable, preflight.Low, false, "boom"},
		{"unknown answer", func(f *preflight.Facts) {}, []string{"packages.thirdparty=keep"}, "answers.unknown", preflight.Low, false, "packages.thirdparty=keep"},
		{"no new kernel, small boot", func(f *preflight.Facts) { f.BootFS.Free = 1 * MiB; f.Assessment.Kernel.InTransaction = false }, nil, preflight.KeyBootSpace, "", false, ""},
		{"snapshot none counts growth only", func(f *preflight.Facts) {
			f.Snapshot.Backend = "none"
			f.RootFS.Free, f.StateFS.Free = 300*MiB, 300*MiB // 35 + (90-18) + 10% + 200 = 317.7 MiB
		}, nil, preflight.KeySpaceRoot, preflight.High, true, "317.7 MiB"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := healthyFacts()
			tc.mutate(f)
			r := evaluate(f, tc.answers...)
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
			text := fd.Title + "\n" + fd.Summary + "\n" + strings.Join(fd.Details, "\n")
			if !strings.Contains(text, tc.contains) {
				t.Errorf("%s does not mention %q:\n%s", tc.key, tc.contains, text)
			}
			if r.Inhibited != (r.Counts.Inhibitors > 0) {
				t.Errorf("inhibited %v with %d inhibitors", r.Inhibited, r.Counts.Inhibitors)
			}
			if fd.Inhibitor() && len(fd.Remediations) == 0 {
				t.Errorf("inhibitor %s has no remediation", tc.key)
			}
		})
	}
}

// thinRoot puts the root on a thin LV whose 20 GiB pool has data and meta
// percent in use.
func thinRoot(data, meta float64, health string) func(f *preflight.Facts) {
	return func(f *preflight.Facts) {
		f.Snapshot.Backend = "lvm"
		f.Snapshot.LVM = &preflight.LVMFacts{VG: "vg0", LV: "root", Pool: "pool", Size: 10 << 30,
			ThinPool: &preflight.ThinPoolFacts{Size: 20 << 30, DataPercent: data, MetadataPercent: meta, Health: health}}
	}
}

func thirdParty(f *preflight.Facts) {
	f.Packages = append(f.Packages, preflight.InstalledPackage{Name: "tool", NEVRA: "tool-0:1-1.x86_64", KeyID: "99999999", Vendor: "ACME"})
	f.Assessment.Unavailable = []string{"tool"}
}

func TestReportOrder(t *testing.T) {
	f := healthyFacts()
	thirdParty(f)
	f.FIPS = "1"
	f.Boot.GrubEnvs[0].FSType = "btrfs"
	f.Boot.Leftovers = []preflight.File{{Path: "/boot/kos-upgrade-x", Size: 1}}
	f.Snapshot.Backend = "none"
	r := evaluate(f)
	var got []string
	for _, fd := range r.Findings {
		got = append(got, fd.Key)
	}
	// Inhibitors first, then by severity, then by key.
	want := []string{"packages.third-party", "snapshot.none", "boot.grubenv", "boot.leftovers", "boot.loader", "gpg.key-not-installed"}
	if len(got) < len(want) {
		t.Fatalf("order = %v", got)
	}
	for i, w := range want[:4] {
		if got[i] != w {
			t.Fatalf("order = %v, want it to start with %v", got, want[:4])
		}
	}
	if r.Counts != (preflight.Counts{Inhibitors: 1, High: 2, Medium: 1, Low: 1, Info: r.Counts.Info}) {
		t.Errorf("counts = %+v", r.Counts)
	}
}

func TestParseAnswers(t *testing.T) {
	a, err := preflight.ParseAnswers([]byte("# comment\n\npackages.third-party = keep\nmodules.unshipped=accept\n"), "answers.conf")
	if err != nil {
		t.Fatal(err)
	}
	if a["packages.third-party"].Value != "keep" || a["modules.unshipped"].Source != "answers.conf:4" {
		t.Errorf("answers = %+v", a)
	}
	for _, bad := range []string{"just words\n", "Key.Upper = x\n", "packages.third-party =\n"} {
		if _, err := preflight.ParseAnswers([]byte(bad), "answers.conf"); err == nil || !strings.Contains(err.Error(), "answers.conf:1") {
			t.Errorf("%q: err = %v", bad, err)
		}
	}
	if _, err := preflight.ParseAnswerFlags([]string{"nokey"}); err == nil {
		t.Error("--answer nokey accepted")
	}
}

// sampleReport has every field set, for the schema and golden tests.
func sampleReport() *preflight.Report {
	f := healthyFacts()
	thirdParty(f)
	f.Loaded = append(f.Loaded, "oldraid")
	f.Assessment.Items = append(f.Assessment.Items,
		pkgmgr.Item{Action: "remove", NEVRA: "legacy-0:1.0-1.noarch", Name: "legacy", Reason: "kos-release-0:5.9-1.noarch conflicts with legacy"},
		pkgmgr.Item{Action: "obsoleted", NEVRA: "oldtool-0:1.0-1.noarch", Name: "oldtool", Reason: "obsoleted by newtool-0:2.0-1.noarch"})
	f.BootFS.Free = 60 * MiB
	f.Boot.Leftovers = []preflight.File{{Path: "/boot/loader/entries/kos-upgrade-20260101T000000Z.conf", Size: 310}}
	f.FIPS = "1"
	return evaluate(f, "modules.unshipped=accept")
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := repoFile(t, "test/golden/"+name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./pkg/preflight -run Golden -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (go test ./pkg/preflight -run Golden -update to accept):\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestGoldenText(t *testing.T) {
	for name, r := range map[string]*preflight.Report{
		"report-inhibited.txt": sampleReport(),
		"report-ok.txt":        evaluate(healthyFacts()),
		"report-no-target.txt": func() *preflight.Report {
			f := healthyFacts()
			f.Target, f.Assessment, f.Keys = "", nil, nil
			return evaluate(f)
		}(),
	} {
		var b bytes.Buffer
		if err := r.WriteText(&b); err != nil {
			t.Fatal(err)
		}
		golden(t, name, b.Bytes())
		for _, l := range strings.Split(b.String(), "\n") {
			if len(l) > 100 {
				t.Errorf("%s: line longer than 100 columns: %q", name, l)
			}
		}
	}
}

// undoRoot makes the root one the undo backend protects, on a filesystem
// that clones files or not, with free bytes free.
func undoRoot(reflink bool, free int64) func(f *preflight.Facts) {
	return func(f *preflight.Facts) {
		f.Snapshot.Backend = "undo"
		f.Snapshot.Undo = &preflight.UndoFacts{Reflink: reflink, TreeSize: 40 << 20}
		if f.RootFS != nil {
			f.RootFS.Free = free
		}
	}
}
