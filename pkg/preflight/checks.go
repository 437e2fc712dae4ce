package preflight

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/migrate"
	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// Finding keys. They are stable: scripts, answers and docs/report.md
// refer to them.
const (
	KeyNotRoot          = "system.not-root"
	KeySELinux          = "system.selinux"
	KeyFIPS             = "system.fips"
	KeySameRelease      = "release.same"
	KeyDowngrade        = "release.downgrade"
	KeyArmed            = "state.armed"
	KeyApplying         = "state.applying"
	KeyPrepared         = "state.prepared"
	KeyForeignUpdate    = "state.foreign-update"
	KeySnapshotNone     = "snapshot.none"
	KeySnapshotUnusable = "snapshot.unavailable"
	KeySnapshotUndo     = "snapshot.undo"
	KeyUndoLimits       = "snapshot.undo-limits"
	KeyUndoScriptlets   = "snapshot.undo-scriptlets"
	KeySeparateMounts   = "snapshot.separate-mounts"
	KeyThinPool         = "snapshot.thin-pool"
	KeyStageClassic     = "snapshot.classic-path"
	KeySpaceRoot        = "space.root"
	KeySpaceState       = "space.state"
	KeySpaceUnknown     = "space.unknown"
	KeyBootSpace        = "boot.space"
	KeyBootLeftovers    = "boot.leftovers"
	KeyBootMissing      = "boot.missing"
	KeyBootLoader       = "boot.loader"
	KeyBootUnknown      = "boot.loader-unknown"
	KeyGrubEnv          = "boot.grubenv"
	KeyDeps             = "deps.unresolvable"
	KeyAssessFailed     = "deps.assess-failed"
	KeyTransaction      = "transaction.summary"
	KeyRemoved          = "packages.removed"
	KeyObsoleted        = "packages.obsoleted"
	KeyThirdParty       = "packages.third-party"
	KeyOrphaned         = "packages.orphaned"
	KeyModulesUnshipped = "modules.unshipped"
	KeyModulesUnknown   = "modules.unknown"
	KeyKeyMissing       = "gpg.missing-key"
	KeyNoKeys           = "gpg.no-keys"
	KeyKeyNotInstalled  = "gpg.key-not-installed"
	KeyFactsUnavailable = "facts.unavailable"
	KeySources          = "repos.sources"
	// Migration to another distribution (docs/migration.md).
	KeyOtherDistribution     = "release.other-distribution"
	KeyMigration             = "migration.plan"
	KeyMigrationUnsupported  = "migration.unsupported-source"
	KeyMigrationMajorVersion = "migration.major-version"
)

// NativeID is the os-release ID of KOS: an upgrade of any other
// distribution is a migration.
const NativeID = "kos"

// Space estimates, documented in docs/report.md.
const (
	MiB = int64(1) << 20
	// MarginFixed and MarginPercent are added to every space need.
	MarginFixed   = 200 * MiB
	MarginPercent = 10
	// BootPerKernelUnknown is what a new kernel needs in /boot when its
	// size is unknown; BootPerKernelMin is the least we assume for one
	// (vmlinuz, initramfs, rescue images).
	BootPerKernelUnknown = 100 * MiB
	BootPerKernelMin     = 64 * MiB
	// BootKernelFactor times the kernel package's size estimates what it
	// takes in /boot.
	BootKernelFactor = 3
)

// Thin pool warning levels, in percent of the data and metadata space of
// the root's thin pool in use (docs/report.md): from here
// snapshot.thin-pool warns; at pkg/snapshot's ThinPoolDataMax and
// ThinPoolMetadataMax, where the LVM backend refuses the snapshot, it
// inhibits.
const (
	ThinPoolDataWarn     = 75.0
	ThinPoolMetadataWarn = 60.0
)

// margin returns need plus the safety margin.
func margin(need int64) int64 {
	return need + need*MarginPercent/100 + MarginFixed
}

// check is one pure decision on the facts.
type check func(f *Facts) []Finding

// checks run in this order (the report is sorted afterwards).
var checks = []check{
	checkRoot, checkRelease, checkDowngrade, checkMigration, checkState, checkSnapshot, checkThinPool, checkSpace, checkBoot, checkDeps,
	checkTransaction, checkThirdParty, checkModules, checkKeys, checkSecurity, checkPlatform, checkFacts,
	checkSources,
}

// Evaluate runs every check on f, applies the answers and returns the
// report, sorted by risk. It is a pure function of its arguments.
func Evaluate(f *Facts, a Answers, now time.Time) *Report {
	r := &Report{Version: ReportVersion, GeneratedAt: now.UTC(), Root: f.Root, Source: f.Source.String(), Target: f.Target}
	for _, c := range checks {
		for _, fd := range c(f) {
			if _, ok := questions[fd.Key]; ok {
				ask(&fd, a)
			}
			r.Findings = append(r.Findings, fd)
		}
	}
	if u := unusedAnswers(a); u != nil {
		r.Findings = append(r.Findings, *u)
	}
	if f.Assessment != nil && len(f.Assessment.Problems) == 0 {
		r.Transaction = f.Assessment.Items
	}
	r.finish()
	return r
}

func inhibitor(groups ...string) []string { return append(groups, GroupInhibitor) }

// Size formats a byte count (binary units).
func Size(n int64) string {
	const unit = 1024
	if n < 0 {
		return "-" + Size(-n)
	}
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func checkRoot(f *Facts) []Finding {
	if f.EUID == 0 {
		return nil
	}
	return []Finding{{
		Key: KeyNotRoot, Severity: High, Groups: inhibitor("system"),
		Title:        "kos-upgrade does not run as root",
		Summary:      fmt.Sprintf("The effective user id is %d: the rpm database, /boot and the snapshots cannot be read or changed without root, so the assessment is incomplete and the upgrade cannot run.", f.EUID),
		Remediations: []Remediation{hint("run kos-upgrade as root, for example with sudo")},
	}}
}

func checkRelease(f *Facts) []Finding {
	if f.Target == "" || f.Source.VersionID != f.Target || f.Migration != nil {
		return nil
	}
	return []Finding{{
		Key: KeySameRelease, Severity: High, Groups: inhibitor("release"),
		Title:        "The system already runs release " + f.Target,
		Summary:      "There is nothing to upgrade to: the target is the running release.",
		Remediations: []Remediation{hint("choose a newer release with --to VERSION")},
	}}
}

// checkDowngrade makes a target older than the running release a question:
// a downgrade replaces newer packages by older ones (rpm refuses them in
// the test transaction otherwise), which the user must ask for by name
// (--allow-downgrade, or the answer allow-downgrade=yes).
func checkDowngrade(f *Facts) []Finding {
	if f.Target == "" || f.Migration != nil || f.Source.VersionID == "" || compareReleases(f.Target, f.Source.VersionID) >= 0 {
		return nil
	}
	return []Finding{{
		Key: KeyDowngrade, Severity: High, Groups: []string{"release"},
		Title: fmt.Sprintf("Release %s is older than the running release %s: a downgrade", f.Target, f.Source.VersionID),
		Summary: fmt.Sprintf("Moving to %s replaces the packages of %s by older versions. Downgrades are not what kos-upgrade is "+
			"made for: data and configuration written by the newer versions may not be readable by the older ones. "+
			"To go back to the release before an upgrade, kos-upgrade rollback boots its snapshot.", f.Target, f.Source.VersionID),
		Remediations: []Remediation{
			hint("to go back after an upgrade: kos-upgrade rollback"),
			hint("to downgrade all the same: --allow-downgrade (or --answer %s=yes)", AnswerAllowDowngrade),
		},
	}}
}

// compareReleases compares two release versions (5.8, 5.10) field by
// field, numerically where both fields are numbers.
func compareReleases(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) || i < len(bs); i++ {
		var x, y string
		if i < len(as) {
			x = as[i]
		}
		if i < len(bs) {
			y = bs[i]
		}
		xn, xerr := strconv.Atoi(x)
		yn, yerr := strconv.Atoi(y)
		switch {
		case xerr == nil && yerr == nil && xn != yn:
			if xn < yn {
				return -1
			}
			return 1
		case (xerr != nil || yerr != nil) && x != y:
			return strings.Compare(x, y)
		}
	}
	return 0
}

// checkMigration decides whether a migration from another distribution
// can run: a map must cover the source, whose major version must be the
// target's (el7 → el8 needs the target's own rpm and dnf, which prepare
// does not build yet). For an upgrade, it refuses a system that is not KOS.
func checkMigration(f *Facts) []Finding {
	m := f.Migration
	if m == nil {
		if f.Target == "" || f.Source.ID == "" || f.Source.ID == NativeID {
			return nil
		}
		return []Finding{{
			Key: KeyOtherDistribution, Severity: High, Groups: inhibitor("release"),
			Title:        fmt.Sprintf("The system runs %s, not KOS", f.Source),
			Summary:      fmt.Sprintf("An upgrade to %s is an upgrade within KOS; moving %s to KOS is a migration, which swaps the release packages and applies a package map.", f.Target, f.Source),
			Remediations: otherDistributionRemedies(f),
		}}
	}
	target := m.TargetName
	if target == "" {
		target = m.Target
	}
	target += " " + f.Target
	unsupported := func(summary string, rem ...Remediation) []Finding {
		return []Finding{{
			Key: KeyMigrationUnsupported, Severity: High, Groups: inhibitor("release", "migration"),
			Title:        fmt.Sprintf("%s cannot be migrated to %s", f.Source, target),
			Summary:      summary,
			Remediations: rem,
		}}
	}
	if m.MapError != "" {
		return unsupported("No migration map covers this system: "+m.MapError+".",
			hint("kos-upgrade migrates CentOS Linux 8 and CentOS Stream 8 to KOS; give another map with --migration-map FILE"))
	}
	if !contains(m.SourceIDs, f.Source.ID) {
		return unsupported(fmt.Sprintf("The migration map %s covers %s, but the system's os-release ID is %q.", m.Map, strings.Join(m.SourceIDs, ", "), f.Source.ID),
			hint("use a migration map made for this distribution (--migration-map FILE)"))
	}
	major, _, _ := strings.Cut(f.Source.VersionID, ".")
	el := fmt.Sprint(m.TargetEL)
	if major != el {
		n, _ := strconv.Atoi(major)
		fd := Finding{
			Key: KeyMigrationMajorVersion, Severity: High, Groups: inhibitor("release", "migration"),
			Title: fmt.Sprintf("%s → %s is a major-version jump (el%s → el%s)", f.Source, target, major, el),
		}
		if n < m.TargetEL {
			fd.Summary = fmt.Sprintf("%s is built on EL%s; %s on EL%d. Moving across a major version needs the target release's own rpm and dnf to run the transaction (a target userspace built from the staged packages, as Leapp does), because EL%s's rpm cannot install EL%d packages (new payload and rpmdb formats, changed scriptlets, a Python 2 to 3 switch). kos-upgrade does not build that userspace yet, so it refuses rather than leave a half-migrated system.",
				f.Source, major, target, m.TargetEL, major, m.TargetEL)
			fd.Remediations = []Remediation{
				hint("first upgrade %s to EL%d in place (for example with Leapp/ELevate to an EL%d release), then migrate to %s with kos-upgrade", f.Source, m.TargetEL, m.TargetEL, target),
				hint("or install %s fresh and move the data and configuration over", target),
				hint("see /usr/share/doc/kos-upgrade/migration.md, \"Major-version jumps\""),
			}
		} else {
			fd.Summary = fmt.Sprintf("%s is built on EL%s, newer than %s (EL%d): moving to it would downgrade every package of the system.", f.Source, major, target, m.TargetEL)
			fd.Remediations = []Remediation{hint("migrate to a KOS release built on EL%s, when there is one", major)}
		}
		return []Finding{fd}
	}
	if !contains(m.SourceVersions, major) {
		return unsupported(fmt.Sprintf("The migration map %s supports major version(s) %s of %s, not %s.", m.Map, strings.Join(m.SourceVersions, ", "), strings.Join(m.SourceIDs, ", "), f.Source.VersionID))
	}
	fd := Finding{
		Key: KeyMigration, Severity: Medium, Groups: []string{"migration"},
		Title:   fmt.Sprintf("Migration from %s to %s", f.Source, target),
		Summary: fmt.Sprintf("The release and repository packages are swapped for %s's, every package is synced to the %s repositories (erasing allowed), and the migration map %s renames, splits, merges and removes the packages that differ between the distributions.", target, target, m.Map),
	}
	if a := f.Assessment; a != nil {
		for _, s := range a.Migration {
			d := fmt.Sprintf("%s: %s", s.Kind, strings.Join(s.From, " + "))
			if len(s.To) > 0 {
				d += " → " + strings.Join(s.To, " + ")
			}
			if s.Reason != "" {
				d += " (" + s.Reason + ")"
			}
			fd.Details = append(fd.Details, d)
		}
	}
	return []Finding{fd}
}

func checkState(f *Facts) []Finding {
	var out []Finding
	switch {
	case f.SystemUpdate == "kos-upgrade" || f.State.Status == "armed":
		out = append(out, Finding{
			Key: KeyArmed, Severity: High, Groups: inhibitor("state"),
			Title:        "An upgrade is armed for the next boot",
			Summary:      fmt.Sprintf("The upgrade to %s (plan %s) runs at the next boot; a new one cannot be prepared over it.", orUnknown(f.State.Target), orUnknown(f.State.PlanID)),
			Remediations: []Remediation{command("kos-upgrade cancel"), hint("or reboot to let the armed upgrade run")},
		})
	case f.State.Status == "applying":
		out = append(out, Finding{
			Key: KeyApplying, Severity: High, Groups: inhibitor("state"),
			Title:        "An upgrade is being applied",
			Summary:      "kos-upgrade's state says an apply run is in progress (or was interrupted and not yet recorded).",
			Remediations: []Remediation{command("kos-upgrade status")},
		})
	case f.State.Status == "prepared":
		out = append(out, Finding{
			Key: KeyPrepared, Severity: Info, Groups: []string{"state"},
			Title:   "An upgrade is prepared already",
			Summary: fmt.Sprintf("The plan %s for release %s is prepared; preparing again replaces it.", orUnknown(f.State.PlanID), orUnknown(f.State.Target)),
		})
	}
	if f.SystemUpdate != "" && f.SystemUpdate != "kos-upgrade" {
		out = append(out, Finding{
			Key: KeyForeignUpdate, Severity: High, Groups: inhibitor("state"),
			Title:   "Another tool's offline update is pending",
			Summary: fmt.Sprintf("/system-update points at %s, which is not kos-upgrade: another tool (PackageKit, dnf system-upgrade) will update the system at the next boot. kos-upgrade neither removes nor replaces it.", f.SystemUpdate),
			Remediations: []Remediation{
				hint("let that update run (reboot), or cancel it with the tool that created it (for example pkcon offline-cancel or dnf system-upgrade clean)"),
			},
		})
	}
	return out
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func checkSnapshot(f *Facts) []Finding {
	s := f.Snapshot
	var out []Finding
	switch {
	case s.Backend == snapshot.BackendNone:
		out = append(out, Finding{
			Key: KeySnapshotNone, Severity: High, Groups: []string{"snapshot"},
			Title:   "The upgrade runs without a snapshot: no rollback",
			Summary: "With --snapshot none the running root is changed in place: a failure halfway leaves a half-upgraded system and there is no rollback.",
			Remediations: []Remediation{
				hint("put the root on a btrfs subvolume or an LVM logical volume and use --snapshot auto"),
				hint("take a backup before the upgrade"),
			},
		})
	case s.Backend == "":
		fd := Finding{
			Key: KeySnapshotUnusable, Severity: High, Groups: inhibitor("snapshot"),
			Title:   "The root cannot be snapshotted",
			Summary: "kos-upgrade upgrades a snapshot of the root and switches to it only on success; no snapshot backend can protect this root: " + orUnknown(s.Error) + ".",
			Remediations: []Remediation{
				hint("kos-upgrade supports a root on a btrfs subvolume or an LVM logical volume (thin, or thick with free extents in its volume group for the snapshot)"),
				hint("or accept an upgrade in place without rollback: --snapshot none"),
			},
		}
		if l := s.LVM; l != nil {
			if l.Pool != "" {
				fd.Details = append(fd.Details, fmt.Sprintf("the root is the thin LV %s/%s in pool %s with %s free", l.VG, l.LV, l.Pool, Size(l.PoolFree)))
			} else {
				fd.Details = append(fd.Details, fmt.Sprintf("the root is the LV %s/%s (%s); volume group %s has %s free", l.VG, l.LV, Size(l.Size), l.VG, Size(l.VGFree)))
				if l.VGFree < l.Size/5 {
					fd.Details = append(fd.Details, "a thick snapshot would need free extents of about 20% of the LV: not enough")
				}
			}
		}
		out = append(out, fd)
	}
	if s.Backend == snapshot.BackendUndo {
		out = append(out, undoFindings(f)...)
	}
	if s.Backend == snapshot.BackendLVM {
		out = append(out, Finding{
			Key: KeyStageClassic, Severity: Info, Groups: []string{"snapshot"},
			Title: "The upgrade runs offline: LVM keeps the classic path",
			Summary: "On btrfs kos-upgrade reboot builds the upgraded root before the reboot and the offline step only carries over what changed since; " +
				"a root on LVM is upgraded offline as before (snapshot, then the whole transaction in system-update.target), so the downtime is the whole transaction.",
			Remediations: []Remediation{
				hint("a root on a btrfs subvolume gets the staged upgrade (docs/stage.md)"),
			},
		})
	}
	if snapshot.Protects(s.Backend) && len(f.SeparateMounts) > 0 {
		out = append(out, Finding{
			Key: KeySeparateMounts, Severity: High, Groups: inhibitor("snapshot"),
			Title:   "Part of the system is outside the root's snapshot",
			Summary: "The transaction writes to directories that are separate filesystems: a snapshot of the root would not contain them, so a rollback would restore only half the system.",
			Details: f.SeparateMounts,
			Remediations: []Remediation{
				hint("move them into the root filesystem"),
				hint("or pass --snapshot none to upgrade in place without rollback"),
			},
		})
	}
	return out
}

// undoFindings say how the undo journal protects the upgrade, what it
// needs on the root's filesystem, and what it cannot undo.
func undoFindings(f *Facts) []Finding {
	u := f.Snapshot.Undo
	if u == nil {
		return nil
	}
	var out []Finding
	// Without reflinks the journal copies the installed files of every
	// package replaced or erased, /etc and the rpm database.
	need := u.TreeSize
	what := fmt.Sprintf("%s of /etc, dnf's state and the rpm database", Size(u.TreeSize))
	var tx int64 // what the transaction itself needs (checkSpace's)
	if a := f.Assessment; a != nil {
		need += a.EraseSize
		what = fmt.Sprintf("%s of files of the packages replaced or removed + %s", Size(a.EraseSize), what)
		tx = a.InstallSize + a.DownloadSize
	}
	fd := Finding{
		Key: KeySnapshotUndo, Severity: Info, Groups: []string{"snapshot"},
		Title: "The root is upgraded in place, with an undo journal as its rollback point",
		Summary: "No snapshot fits this root, so kos-upgrade saves what the transaction changes in an undo journal in " +
			sysroot.StateDirRel + "/undo before it begins, and puts the root back from it on a failure, after a crash (at the next boot, before anything else runs) and on kos-upgrade rollback.",
	}
	if u.Reflink {
		fd.Details = append(fd.Details, fmt.Sprintf("the root's filesystem clones files (reflink): the journal shares their blocks and needs almost no space (it would need %s as copies: %s)", Size(need), what))
	} else {
		fd.Details = append(fd.Details, fmt.Sprintf("the root's filesystem does not clone files (no reflink): the journal copies %s (%s)", Size(need), what))
		if total := margin(need + tx); f.RootFS != nil && f.RootFS.Free < total {
			fd.Severity, fd.Groups = High, inhibitor("snapshot", "space")
			fd.Title = "Not enough free space for the undo journal"
			fd.Summary = fmt.Sprintf("The root's filesystem does not clone files, so the undo journal copies %s (%s); with the upgrade's %s and the margin, %s needs %s and has %s free.",
				Size(need), what, Size(tx), f.RootFS.Mount, Size(total), Size(f.RootFS.Free))
			fd.Remediations = []Remediation{
				hint("free at least %s on %s", Size(total-f.RootFS.Free), f.RootFS.Mount),
				hint("or upgrade without a rollback point: --snapshot none"),
			}
		}
	}
	out = append(out, fd)
	out = append(out, Finding{
		Key: KeyUndoLimits, Severity: Low, Groups: []string{"snapshot"},
		Title: "What the undo journal cannot undo",
		Summary: "The journal holds the files in the packages' file lists, /etc and the rpm database whole, and the paths the new packages add. " +
			"Changes that scriptlets make elsewhere are not undone: files a %post creates or changes under /var (/var/lib is journaled whole only where the filesystem clones files), /usr files no package owns. " +
			"/boot is restored from its own backup; other filesystems are not touched by the transaction.",
	})
	return out
}

// UndoScriptlets is the finding prepare adds to the plan's report for the
// undo backend: the packages whose scriptlets the transaction runs, by
// name, and where what they write is not undone (outside the packages'
// file lists and the journaled trees: /etc, dnf's state and the rpm
// database, and /var/lib where the filesystem clones files). Nil when no
// package of the transaction has scriptlets.
func UndoScriptlets(pkgs []pkgmgr.PackageScriptlets, reflink bool) *Finding {
	if len(pkgs) == 0 {
		return nil
	}
	trees := "/etc, /var/lib/dnf and the rpm database"
	if reflink {
		trees = "/etc and /var/lib"
	}
	f := &Finding{
		Key: KeyUndoScriptlets, Severity: Low, Groups: []string{"snapshot"},
		Title: "Scriptlets of the upgrade whose changes elsewhere the undo journal cannot undo",
		Summary: fmt.Sprintf("The transaction runs scriptlets of %d package(s). The undo journal puts back their packages' files and %s whole; "+
			"what these scriptlets write anywhere else (under /var outside those, /opt, /srv, files no package owns) stays as they left it after an undo.", len(pkgs), trees),
	}
	for _, p := range pkgs {
		f.Details = append(f.Details, p.NEVRA+": "+strings.Join(p.Scriptlets, ", "))
	}
	return f
}

// checkThinPool judges the thin pool of a thin-LV root, where the LVM
// backend makes the snapshot the upgrade runs in: every byte the upgrade
// writes there is new data in the pool, which the running root shares.
func checkThinPool(f *Facts) []Finding {
	l := f.Snapshot.LVM
	if f.Snapshot.Backend != snapshot.BackendLVM || l == nil || l.Pool == "" || l.ThinPool == nil {
		return nil
	}
	p := l.ThinPool
	u := snapshot.ThinPoolUsage{VG: l.VG, Pool: l.Pool, Size: p.Size, Data: p.DataPercent, Metadata: p.MetadataPercent, Health: p.Health}
	pool := l.VG + "/" + l.Pool
	fd := Finding{
		Key: KeyThinPool,
		Details: []string{fmt.Sprintf("thin pool %s: data %.2f%% of %s in use (%s free), metadata %.2f%% in use",
			pool, p.DataPercent, Size(p.Size), Size(u.Free()), p.MetadataPercent)},
		Remediations: []Remediation{
			hint("extend the pool: lvextend --size +SIZE %s (data), lvextend --poolmetadatasize +SIZE %s (metadata); vgextend %s first if the volume group has no free extents", pool, pool, l.VG),
			hint("or free space in it: remove the thin LVs and snapshots you no longer need (kos-upgrade clean, lvremove), fstrim the mounted thin filesystems"),
		},
	}
	// What the upgrade writes into the pool: as with a btrfs snapshot,
	// every byte installed, and the download when it is staged in the root.
	var need int64
	var what string
	if a := f.Assessment; a != nil {
		need, what = a.InstallSize, Size(a.InstallSize)+" to install"
		if f.StateFS != nil && f.RootFS != nil && sameFS(f.StateFS, f.RootFS) {
			need += a.DownloadSize
			what = Size(a.DownloadSize) + " to download + " + what
		}
		need = margin(need)
	}
	switch problem := u.Problem(); {
	case problem != "":
		fd.Severity, fd.Groups = High, inhibitor("snapshot")
		fd.Title = "The root's thin pool is too full for a snapshot"
		fd.Summary = fmt.Sprintf("The upgrade runs in a thin snapshot of the root, which shares pool %s with the running root; a pool that runs out of space stops every LV in it, the running root included. kos-upgrade refuses to create the snapshot: %s.",
			pool, problem)
	case need > 0 && u.Free() < need:
		fd.Severity, fd.Groups = High, inhibitor("snapshot", "space")
		fd.Title = "Not enough free space in the root's thin pool"
		fd.Summary = fmt.Sprintf("The upgrade writes about %s (%s; + %d%% + %s margin) into a thin snapshot in pool %s, which has %s free, %s short; a pool that runs out of space stops every LV in it, the running root included.",
			Size(need), what, MarginPercent, Size(MarginFixed), pool, Size(u.Free()), Size(need-u.Free()))
	case p.DataPercent >= ThinPoolDataWarn || p.MetadataPercent >= ThinPoolMetadataWarn:
		fd.Severity, fd.Groups = Medium, []string{"snapshot"}
		fd.Title = "The root's thin pool is nearly full"
		fd.Summary = fmt.Sprintf("Pool %s, where the upgrade's snapshot goes, has %.2f%% of its data and %.2f%% of its metadata space in use (warning from %g%% data or %g%% metadata); kos-upgrade refuses the snapshot from %g%% data or %g%% metadata, and the upgrade fills the pool further.",
			pool, p.DataPercent, p.MetadataPercent, ThinPoolDataWarn, ThinPoolMetadataWarn, snapshot.ThinPoolDataMax, snapshot.ThinPoolMetadataMax)
	default:
		return nil
	}
	return []Finding{fd}
}

// sameFS reports whether a and b share their free space.
func sameFS(a, b *FSFacts) bool {
	if a.FSType == "btrfs" && b.FSType == "btrfs" {
		return a.Source == b.Source
	}
	return a.Dev == b.Dev && a.MountID == b.MountID || a.Dev == b.Dev && a.Dev != 0 && a.FSType != "tmpfs"
}

func checkSpace(f *Facts) []Finding {
	if f.RootFS == nil {
		return nil
	}
	a := f.Assessment
	if a == nil {
		var out []Finding
		if f.Target == "" {
			out = append(out, Finding{
				Key: KeySpaceUnknown, Severity: Info, Groups: []string{"space"},
				Title:        "The space the upgrade needs is not known without a target",
				Summary:      fmt.Sprintf("Without --to, only the fixed margin of %s is checked on %s (%s free).", Size(MarginFixed), f.RootFS.Mount, Size(f.RootFS.Free)),
				Remediations: []Remediation{hint("run kos-upgrade check --to VERSION for the whole assessment")},
			})
		}
		if f.RootFS.Free < MarginFixed {
			out = append(out, spaceFinding(KeySpaceRoot, f.RootFS, MarginFixed, "the safety margin alone"))
		}
		return out
	}
	// Staged packages go to the state directory; the transaction writes
	// into the root. With a snapshot the old files stay referenced by the
	// old root, so every byte installed is new; in place, only the growth.
	stage := a.DownloadSize
	tx := a.InstallSize
	how := "to install, the snapshot keeps the old files"
	if f.Snapshot.Backend == snapshot.BackendNone {
		tx = max(0, a.InstallSize-a.EraseSize)
		how = "growth of the installed size"
	}
	var out []Finding
	rootNeed := margin(tx)
	what := fmt.Sprintf("%s %s; + %d%% + %s margin", Size(tx), how, MarginPercent, Size(MarginFixed))
	stateSeparate := f.StateFS != nil && !sameFS(f.StateFS, f.RootFS)
	if !stateSeparate {
		rootNeed = margin(tx + stage)
		what = fmt.Sprintf("%s to download + %s", Size(stage), what)
	}
	if f.RootFS.Free < rootNeed {
		out = append(out, spaceFinding(KeySpaceRoot, f.RootFS, rootNeed, what))
	} else {
		out = append(out, Finding{
			Key: KeySpaceRoot, Severity: Info, Groups: []string{"space"},
			Title:   fmt.Sprintf("Enough free space on %s", f.RootFS.Mount),
			Summary: fmt.Sprintf("The upgrade needs %s (%s); %s is free.", Size(rootNeed), what, Size(f.RootFS.Free)),
		})
	}
	if stateSeparate {
		need := margin(stage)
		if f.StateFS.Free < need {
			out = append(out, spaceFinding(KeySpaceState, f.StateFS, need,
				fmt.Sprintf("%s of packages to stage; + %d%% + %s margin", Size(stage), MarginPercent, Size(MarginFixed))))
		}
	}
	return out
}

func spaceFinding(key string, fs *FSFacts, need int64, what string) Finding {
	return Finding{
		Key: key, Severity: High, Groups: inhibitor("space"),
		Title: fmt.Sprintf("Not enough free space on %s", fs.Mount),
		Summary: fmt.Sprintf("The upgrade needs %s (%s) on %s (%s on %s, which holds %s); %s is free, %s short.",
			Size(need), what, fs.Mount, fs.FSType, fs.Source, fs.Path, Size(fs.Free), Size(need-fs.Free)),
		Remediations: []Remediation{
			hint("free at least %s on %s", Size(need-fs.Free), fs.Mount),
			command("kos-upgrade clean"),
		},
	}
}

func checkBoot(f *Facts) []Finding {
	if !f.Boot.Exists || f.Boot.Empty {
		what := "The root has no /boot directory"
		if f.Boot.Exists {
			what = "/boot is empty"
		}
		return []Finding{{
			Key: KeyBootMissing, Severity: Low, Groups: []string{"boot"},
			Title:        what,
			Summary:      "There is nothing in /boot to check: the boot loader and the space for a new kernel were not assessed (a container or a chroot?).",
			Remediations: []Remediation{hint("if /boot is a separate partition, mount it and check again")},
		}}
	}
	var out []Finding
	var leftover int64
	var leftovers []string
	for _, l := range f.Boot.Leftovers {
		leftover += l.Size
		leftovers = append(leftovers, fmt.Sprintf("%s (%s)", l.Path, Size(l.Size)))
	}
	if len(leftovers) > 0 {
		out = append(out, Finding{
			Key: KeyBootLeftovers, Severity: Low, Groups: []string{"boot"},
			Title:        "Files of an earlier kos-upgrade run are left in /boot",
			Summary:      fmt.Sprintf("These files were made by kos-upgrade and belong to no current plan, snapshot or rollback target; they take %s.", Size(leftover)),
			Details:      leftovers,
			Remediations: []Remediation{hint("remove them once you are sure nothing boots from them")},
		})
	}
	// Space for the new kernel.
	if f.BootFS != nil {
		kernels, per, why := 1, BootPerKernelUnknown, "the target is not known: assuming one new kernel"
		if a := f.Assessment; a != nil {
			k := a.Kernel
			switch {
			case k == nil || !k.InTransaction || k.Installed:
				kernels, why = 0, "the upgrade installs no new kernel"
			case k.DownloadSize > 0:
				per = max(BootPerKernelMin, BootKernelFactor*k.DownloadSize)
				why = fmt.Sprintf("one new kernel, %s: %d × its package size, at least %s", k.NEVRA, BootKernelFactor, Size(BootPerKernelMin))
			default:
				why = "one new kernel of unknown size"
			}
		}
		need := int64(kernels) * per
		need += need * MarginPercent / 100
		if need > 0 && f.BootFS.Free < need {
			fd := Finding{
				Key: KeyBootSpace, Severity: High, Groups: inhibitor("boot", "space"),
				Title: "Not enough free space in /boot for the new kernel",
				Summary: fmt.Sprintf("The new kernel and its initramfs need about %s in /boot (%s; margin %d%%); %s is free on %s.",
					Size(need), why, MarginPercent, Size(f.BootFS.Free), f.BootFS.Mount),
				Remediations: []Remediation{
					hint("remove old kernels: dnf remove --oldinstallonly (keeps the running one)"),
				},
			}
			if leftover > 0 {
				fd.Summary += fmt.Sprintf(" Leftovers of earlier kos-upgrade runs take %s of it (see %s).", Size(leftover), KeyBootLeftovers)
				if f.BootFS.Free+leftover >= need {
					fd.Summary += " Removing them is enough."
				}
			}
			out = append(out, fd)
		}
	}
	// The boot loader.
	var loaders []string
	if len(f.Boot.GrubEnvs) > 0 {
		s := "GRUB 2"
		if len(f.Boot.Entries) > 0 {
			s += fmt.Sprintf(" with %d BLS entries", len(f.Boot.Entries))
		}
		loaders = append(loaders, s)
	}
	if len(f.Boot.SystemdBoot) > 0 {
		loaders = append(loaders, "systemd-boot ("+strings.Join(f.Boot.SystemdBoot, ", ")+")")
	}
	if len(loaders) == 0 {
		if len(f.Boot.Entries) > 0 {
			loaders = append(loaders, fmt.Sprintf("a BLS boot loader with %d entries", len(f.Boot.Entries)))
		} else {
			out = append(out, Finding{
				Key: KeyBootUnknown, Severity: High, Groups: []string{"boot"},
				Title:   "The boot loader is not recognised",
				Summary: "No grubenv (/boot/grub2/grubenv, /boot/efi/EFI/*/grubenv), no BLS entries in /boot/loader/entries and no systemd-boot loader.conf were found: kos-upgrade cannot tell whether the new kernel will get a boot entry, nor make a trial boot.",
				Remediations: []Remediation{
					hint("make sure the system boots with GRUB 2 (BLS) or systemd-boot and /boot is mounted"),
				},
			})
		}
	}
	if len(loaders) > 0 {
		out = append(out, Finding{
			Key: KeyBootLoader, Severity: Info, Groups: []string{"boot"},
			Title:   "Boot loader: " + strings.Join(loaders, ", "),
			Summary: "The boot loader is recognised.",
		})
	}
	for _, g := range f.Boot.GrubEnvs {
		var problems []string
		if g.Size != 1024 {
			problems = append(problems, fmt.Sprintf("it is %d bytes, not the 1024 of a grub environment block", g.Size))
		}
		switch {
		case g.FSType == "btrfs" || g.FSType == "zfs":
			problems = append(problems, fmt.Sprintf("it is on %s, which GRUB cannot write at boot", g.FSType))
		case strings.HasPrefix(g.Source, "/dev/md"):
			problems = append(problems, "it is on software RAID ("+g.Source+"), which GRUB cannot write at boot")
		case isLVM(g.Source):
			problems = append(problems, "it is on LVM ("+g.Source+"), which GRUB cannot write at boot")
		}
		if len(problems) == 0 {
			continue
		}
		out = append(out, Finding{
			Key: KeyGrubEnv, Severity: Medium, Groups: []string{"boot"},
			Title:   "The boot loader's default cannot be changed safely",
			Summary: fmt.Sprintf("GRUB keeps its one-time and trial boot state in %s, but %s: a one-time boot could become permanent and boot counting cannot fall back.", g.Path, strings.Join(problems, "; ")),
			Remediations: []Remediation{
				hint("keep /boot (and its grubenv) on a plain ext4, xfs or vfat partition"),
				command("grub2-editenv %s create", g.Path),
			},
		})
	}
	return out
}

func checkDeps(f *Facts) []Finding {
	if f.AssessError != "" {
		return []Finding{{
			Key: KeyAssessFailed, Severity: High, Groups: inhibitor("packages"),
			Title:   "The upgrade could not be resolved",
			Summary: "dnf could not assess the upgrade to " + f.Target + ": " + firstLine(f.AssessError),
			Details: restLines(f.AssessError),
			Remediations: []Remediation{
				hint("check that the repositories of release %s are reachable and enabled (/etc/yum.repos.d, or --repo ID=URL)", f.Target),
			},
		}}
	}
	a := f.Assessment
	if a == nil || len(a.Problems) == 0 {
		return nil
	}
	return []Finding{{
		Key: KeyDeps, Severity: High, Groups: inhibitor("packages"),
		Title:   "Dependency problems in the upgrade",
		Summary: fmt.Sprintf("dnf cannot resolve a distro-sync to %s, even with erasing allowed; each problem is listed as dnf says it.", f.Target),
		Details: a.Problems,
		Remediations: []Remediation{
			hint("remove or update the packages named, or add the repository that provides what they need"),
			command("dnf --releasever=%s distro-sync --allowerasing --assumeno", f.Target),
		},
	}}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return strings.TrimSuffix(l, ":")
}

func restLines(s string) []string {
	_, rest, ok := strings.Cut(s, "\n")
	if !ok {
		return nil
	}
	var out []string
	for _, l := range strings.Split(rest, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

func checkTransaction(f *Facts) []Finding {
	a := f.Assessment
	if a == nil || len(a.Problems) > 0 {
		return nil
	}
	c := map[string]int{}
	var removed, obsoleted []string
	for _, it := range a.Items {
		c[it.Action]++
		switch it.Action {
		case pkgmgr.ActionRemove:
			removed = append(removed, it.NEVRA+": "+it.Reason)
		case pkgmgr.ActionObsoleted:
			obsoleted = append(obsoleted, it.NEVRA+": "+it.Reason)
		}
	}
	var parts []string
	for _, act := range []string{pkgmgr.ActionUpgrade, pkgmgr.ActionInstall, pkgmgr.ActionDowngrade, pkgmgr.ActionReinstall, pkgmgr.ActionObsoleted, pkgmgr.ActionRemove} {
		if c[act] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", c[act], act))
		}
	}
	if len(parts) == 0 {
		parts = append(parts, "nothing to change")
	}
	out := []Finding{{
		Key: KeyTransaction, Severity: Info, Groups: []string{"packages"},
		Title: "What the upgrade changes: " + strings.Join(parts, ", "),
		Summary: fmt.Sprintf("dnf's resolution of a distro-sync to %s: download %s, installed size %s (replacing %s).",
			f.Target, Size(a.DownloadSize), Size(a.InstallSize), Size(a.EraseSize)),
	}}
	if len(removed) > 0 {
		sort.Strings(removed)
		out = append(out, Finding{
			Key: KeyRemoved, Severity: Medium, Groups: []string{"packages"},
			Title:        fmt.Sprintf("The upgrade removes %d package(s)", len(removed)),
			Summary:      "Nothing of the target release replaces these packages: they are erased because the new release conflicts with them or cannot satisfy their dependencies.",
			Details:      removed,
			Remediations: []Remediation{hint("make sure nothing you run needs them, or find their replacement before upgrading")},
		})
	}
	if len(obsoleted) > 0 {
		sort.Strings(obsoleted)
		out = append(out, Finding{
			Key: KeyObsoleted, Severity: Info, Groups: []string{"packages"},
			Title:   fmt.Sprintf("%d package(s) are replaced by others", len(obsoleted)),
			Summary: "These packages are obsoleted by packages of the target release, which take over their role.",
			Details: obsoleted,
		})
	}
	return out
}

func checkThirdParty(f *Facts) []Finding {
	a := f.Assessment
	if a == nil || len(a.Problems) > 0 || len(a.Unavailable) == 0 {
		return nil
	}
	erased := map[string]bool{}
	for _, it := range a.Items {
		if it.Action == pkgmgr.ActionRemove || it.Action == pkgmgr.ActionObsoleted {
			erased[it.Name] = true
		}
	}
	dist := map[string]bool{}
	for _, k := range f.DistKeys {
		dist[k] = true
	}
	unavailable := map[string]bool{}
	for _, n := range a.Unavailable {
		unavailable[n] = !erased[n]
	}
	var third, orphan []string
	for _, p := range f.Packages {
		if !unavailable[p.Name] {
			continue
		}
		d := p.NEVRA
		switch {
		case p.KeyID != "" && dist[p.KeyID]:
			orphan = append(orphan, d)
			continue
		case p.KeyID == "":
			d += " (unsigned"
		default:
			d += " (signed with key " + p.KeyID
		}
		if p.Vendor != "" {
			d += ", vendor " + p.Vendor
		}
		third = append(third, d+")")
	}
	var out []Finding
	if len(third) > 0 {
		out = append(out, Finding{
			Key: KeyThirdParty, Severity: High, Groups: []string{"packages"},
			Title: fmt.Sprintf("%d third-party package(s) come from no enabled repository", len(third)),
			Summary: fmt.Sprintf("These packages were not signed by the distribution and no repository of release %s has them. The upgrade keeps them as they are (it does not remove them); they may not work with the new release.",
				f.Target),
			Details:      third,
			Remediations: []Remediation{hint("check with their vendors that they support release %s, or remove them before upgrading", f.Target)},
		})
	}
	if len(orphan) > 0 {
		out = append(out, Finding{
			Key: KeyOrphaned, Severity: Medium, Groups: []string{"packages"},
			Title:        fmt.Sprintf("%d package(s) of the distribution are dropped in release %s", len(orphan), f.Target),
			Summary:      "These packages were signed by the distribution but the target release no longer ships them. The upgrade keeps them as they are; they get no more updates.",
			Details:      orphan,
			Remediations: []Remediation{hint("remove them when you no longer need them: dnf remove NAME")},
		})
	}
	return out
}

func checkModules(f *Facts) []Finding {
	a := f.Assessment
	if a == nil || len(a.Problems) > 0 {
		return nil
	}
	k := a.Kernel
	unknown := func(why string) []Finding {
		return []Finding{{
			Key: KeyModulesUnknown, Severity: Info, Groups: []string{"hardware"},
			Title:   "Kernel module compatibility was not checked",
			Summary: why,
		}}
	}
	switch {
	case f.Loaded == nil:
		return unknown("The loaded kernel modules are not known (no /proc/modules in the root).")
	case k == nil:
		return unknown(fmt.Sprintf("The repositories of release %s have no kernel package.", f.Target))
	case !k.FilesKnown:
		return unknown(fmt.Sprintf("The file list of %s is not in the repository metadata.", k.NEVRA))
	}
	ship := map[string]bool{}
	for _, m := range k.Modules {
		ship[moduleName(m)] = true
	}
	var missing []string
	for _, m := range f.Loaded {
		if !ship[m] {
			missing = append(missing, m)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return []Finding{{
		Key: KeyModulesUnshipped, Severity: High, Groups: []string{"hardware"},
		Title: fmt.Sprintf("%d loaded kernel module(s) are not shipped by the new kernel", len(missing)),
		Summary: fmt.Sprintf("These modules are loaded now but %s has no such module: hardware they drive (storage, network) may not work after the upgrade, and a missing storage driver makes the system unbootable. Modules built into the new kernel cannot be seen here.",
			k.NEVRA),
		Details: missing,
		Remediations: []Remediation{
			hint("install a driver package for the new kernel (kmod, DKMS), or check that the hardware is supported by release %s", f.Target),
		},
	}}
}

func checkKeys(f *Facts) []Finding {
	a := f.Assessment
	if a == nil {
		return nil
	}
	var out []Finding
	var missing []string
	installed := map[string]bool{}
	for _, k := range f.InstalledKeys {
		installed[k] = true
	}
	var notInstalled []string
	for _, k := range f.Keys {
		if k.Error != "" {
			missing = append(missing, fmt.Sprintf("repository %s: %s: %s", k.Repo, k.URL, k.Error))
			continue
		}
		for _, id := range k.KeyIDs {
			if !installed[id] {
				notInstalled = append(notInstalled, fmt.Sprintf("%s (%s, repository %s)", id, k.URL, k.Repo))
			}
		}
	}
	if len(missing) > 0 {
		fd := Finding{
			Key: KeyKeyMissing, Severity: High, Groups: inhibitor("security"),
			Title:   "GPG keys of the target repositories are missing",
			Summary: "Packages of these repositories cannot be verified: their key files do not exist or hold no usable key, so prepare would refuse every package signed with them.",
			Details: missing,
			Remediations: []Remediation{
				hint("install the key files (usually shipped by the release package), or fix the gpgkey= lines in /etc/yum.repos.d"),
			},
		}
		if f.SkipSignatures {
			fd.Groups = []string{"security"}
			fd.Summary = "Packages of these repositories cannot be verified; --no-gpg-check was given, so they would be installed unverified."
		}
		out = append(out, fd)
	}
	anyKey := len(f.InstalledKeys) > 0
	for _, k := range f.Keys {
		anyKey = anyKey || len(k.KeyIDs) > 0
	}
	if !anyKey && !f.SkipSignatures && len(missing) == 0 {
		out = append(out, Finding{
			Key: KeyNoKeys, Severity: High, Groups: inhibitor("security"),
			Title:   "No GPG key to verify the target's packages",
			Summary: "The target repositories name no key and the rpm database holds none: no package could be verified.",
			Remediations: []Remediation{
				hint("add gpgkey= to the repository configuration, or import the distribution's key"),
				command("rpmkeys --import /etc/pki/rpm-gpg/RPM-GPG-KEY-kos"),
			},
		})
	}
	if len(notInstalled) > 0 {
		sort.Strings(notInstalled)
		out = append(out, Finding{
			Key: KeyKeyNotInstalled, Severity: Info, Groups: []string{"security"},
			Title:   "Keys of the target repositories are not imported yet",
			Summary: "kos-upgrade verifies the packages with these keys from the repository configuration; rpm itself will not know them until they are imported.",
			Details: notInstalled,
		})
	}
	return out
}

func checkSecurity(f *Facts) []Finding {
	var out []Finding
	if f.SELinux != "" || f.SELinuxConfig != "" {
		fd := Finding{
			Key: KeySELinux, Severity: Info, Groups: []string{"security"},
			Title:   "SELinux: " + orUnknown(f.SELinux) + " (configured: " + orUnknown(f.SELinuxConfig) + ")",
			Summary: "The upgrade keeps the SELinux mode; files it installs are labelled by rpm with the new release's policy.",
		}
		if f.SELinux != "" && f.SELinuxConfig != "" && f.SELinux != f.SELinuxConfig {
			fd.Severity = Low
			fd.Summary = fmt.Sprintf("SELinux runs %s but /etc/selinux/config says %s: the upgraded system boots %s.", f.SELinux, f.SELinuxConfig, f.SELinuxConfig)
		}
		out = append(out, fd)
	}
	if f.FIPS == "1" {
		out = append(out, Finding{
			Key: KeyFIPS, Severity: Info, Groups: []string{"security"},
			Title:   "FIPS mode is enabled",
			Summary: "The kernel runs in FIPS mode; the upgraded system keeps the fips=1 boot argument and its crypto policy.",
		})
	}
	return out
}

func checkFacts(f *Facts) []Finding {
	if len(f.Errors) == 0 {
		return nil
	}
	return []Finding{{
		Key: KeyFactsUnavailable, Severity: Low, Groups: []string{"facts"},
		Title:   "Some facts could not be collected",
		Summary: "The checks that need them were skipped or decided on less.",
		Details: f.Errors,
	}}
}

// otherDistributionRemedies offers the migration only where a migration
// map from the running distribution to KOS exists.
func otherDistributionRemedies(f *Facts) []Remediation {
	if _, err := migrate.Find(f.Source.ID, NativeID); err != nil {
		return []Remediation{hint("kos-upgrade upgrades KOS, and migrates to KOS only from a distribution it has a migration map for; there is none for %q (/usr/share/doc/kos-upgrade/migration.md)", f.Source.ID)}
	}
	return []Remediation{
		command("kos-upgrade check --to %s-%s", NativeID, f.Target),
		hint("then kos-upgrade prepare --to %s-%s (see /usr/share/doc/kos-upgrade/migration.md)", NativeID, f.Target),
	}
}
