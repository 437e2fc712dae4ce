package preflight

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/keyarchos/kos-upgrade/pkg/execlog"
	"github.com/keyarchos/kos-upgrade/pkg/iso"
	"github.com/keyarchos/kos-upgrade/pkg/mountinfo"
	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot/undojournal"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// Facts is everything the checks decide on, collected from the system
// before any decision. Each field documents what its zero value means.
type Facts struct {
	Root string `json:"root"`
	// Target is the release assessed; "" when none was given.
	Target string  `json:"target,omitempty"`
	Source Release `json:"source"`
	// EUID is the effective user id of kos-upgrade.
	EUID int `json:"euid"`

	// State is kos-upgrade's own state; SystemUpdate the owner of
	// /system-update: "" (none), "kos-upgrade", or another tool's target.
	State        StateFacts `json:"state"`
	SystemUpdate string     `json:"system_update,omitempty"`

	Snapshot SnapshotFacts `json:"snapshot"`
	// SeparateMounts are the directories the transaction writes that are
	// separate filesystems from the root ("/var (xfs on /dev/sdb1)").
	SeparateMounts []string `json:"separate_mounts,omitempty"`
	// RootFS, StateFS and BootFS are the filesystems holding the root, the
	// state directory (staged packages) and /boot; nil when unknown.
	RootFS  *FSFacts  `json:"root_fs,omitempty"`
	StateFS *FSFacts  `json:"state_fs,omitempty"`
	BootFS  *FSFacts  `json:"boot_fs,omitempty"`
	Boot    BootFacts `json:"boot"`
	// Platform is the rpm database, grub2, UPDATEDEFAULT and dracut.
	Platform PlatformFacts `json:"platform"`

	// Loaded are the kernel modules loaded now; nil when unknown.
	Loaded        []string `json:"loaded_modules"`
	LoadedFrom    string   `json:"loaded_modules_from,omitempty"`
	SELinux       string   `json:"selinux"`        // enforcing, permissive, disabled (running); "" unknown
	SELinuxConfig string   `json:"selinux_config"` // SELINUX= of /etc/selinux/config; "" unknown
	// FIPS is "1" or "0" from /proc/sys/crypto/fips_enabled; "" unknown.
	FIPS string `json:"fips"`

	// Packages are the installed packages; nil when the rpmdb could not be
	// read.
	Packages []InstalledPackage `json:"packages"`
	// InstalledKeys are the key ids (8 hex digits) imported in the rpmdb;
	// DistKeys those of the target repositories' key files (else of
	// /etc/pki/rpm-gpg): packages they signed are the distribution's.
	InstalledKeys []string `json:"installed_keys"`
	DistKeys      []string `json:"dist_keys"`
	// Keys are the target repositories' gpgkey files.
	Keys []KeyFacts `json:"keys,omitempty"`
	// SkipSignatures is the user's --no-gpg-check.
	SkipSignatures bool `json:"skip_signatures,omitempty"`

	// Migration describes a migration to another distribution; nil for
	// an upgrade within KOS.
	Migration *Migration `json:"migration,omitempty"`

	// Assessment is dnf's resolution of the upgrade (no download); nil
	// without a target or when it could not run (AssessError says why).
	Assessment  *pkgmgr.Assessment `json:"assessment,omitempty"`
	AssessError string             `json:"assess_error,omitempty"`
	// Images are the ISO images the repositories iso<N>-* are read from.
	Images []iso.Ref `json:"images,omitempty"`

	// Errors name facts that could not be collected.
	Errors []string `json:"errors,omitempty"`
}

// Release is the running system's release.
type Release struct {
	ID        string `json:"id"`
	VersionID string `json:"version_id"`
	Name      string `json:"name,omitempty"`
}

func (r Release) String() string {
	n := r.Name
	if n == "" {
		n = r.ID
	}
	if n == "" {
		return "unknown release"
	}
	return n + " " + r.VersionID
}

// StateFacts is what kos-upgrade's state document says.
type StateFacts struct {
	Status   string `json:"status"`
	PlanID   string `json:"plan_id,omitempty"`
	Target   string `json:"target,omitempty"`
	Snapshot string `json:"snapshot,omitempty"`
	Previous string `json:"previous,omitempty"`
}

// SnapshotFacts says how the root would be protected.
type SnapshotFacts struct {
	Requested string `json:"requested"` // auto, btrfs, lvm, undo, none
	Backend   string `json:"backend"`   // the backend chosen; "" when none fits
	Error     string `json:"error,omitempty"`
	// LVM describes the root's logical volume when it is on LVM.
	LVM *LVMFacts `json:"lvm,omitempty"`
	// Undo describes the undo journal's filesystem when Backend is undo.
	Undo *UndoFacts `json:"undo,omitempty"`
}

// UndoFacts describes where the undo backend keeps its journal (the state
// directory, on the root's filesystem).
type UndoFacts struct {
	// Reflink is true when the filesystem clones files (XFS reflink=1,
	// btrfs): the journal costs almost no space; else it copies.
	Reflink bool `json:"reflink"`
	// TreeSize is the size of what the journal saves whole (/etc, the
	// rpm database), besides the files of the packages replaced.
	TreeSize int64 `json:"tree_size"`
}

// LVMFacts describes the logical volume holding the root.
type LVMFacts struct {
	VG     string `json:"vg"`
	LV     string `json:"lv"`
	Pool   string `json:"pool,omitempty"` // thin pool, "" for a thick LV
	Size   int64  `json:"size"`
	VGFree int64  `json:"vg_free"`
	// PoolFree is the free data space of the thin pool.
	PoolFree int64 `json:"pool_free,omitempty"`
	// ThinPool is how full the thin pool is; nil for a thick LV, or when
	// lvs could not say (Facts.Errors has why).
	ThinPool *ThinPoolFacts `json:"thin_pool,omitempty"`
}

// ThinPoolFacts is how full the thin pool of the root is.
type ThinPoolFacts struct {
	Size int64 `json:"size"` // bytes of data space
	// DataPercent and MetadataPercent are the percentages of its data and
	// metadata space in use.
	DataPercent     float64 `json:"data_percent"`
	MetadataPercent float64 `json:"metadata_percent"`
	// Health is "" when healthy, else lvm2's verdict ("out of data
	// space", "metadata read-only", "failed").
	Health string `json:"health,omitempty"`
}

// FSFacts is one filesystem and its free space.
type FSFacts struct {
	Path    string `json:"path"`  // the path asked about, inside the root
	Mount   string `json:"mount"` // its mount point
	MountID int    `json:"mount_id"`
	Dev     uint64 `json:"dev"`
	FSType  string `json:"fstype"`
	Source  string `json:"source"`
	Free    int64  `json:"free"` // bytes available to unprivileged... to kos-upgrade (f_bavail)
	Size    int64  `json:"size"`
}

// BootFacts describes /boot and the boot loader.
type BootFacts struct {
	// Exists is false when the root has no /boot directory; Empty is true
	// when it has nothing in it (a separate /boot not mounted?).
	Exists bool `json:"exists"`
	Empty  bool `json:"empty,omitempty"`
	// Separate is true when /boot is its own filesystem.
	Separate bool `json:"separate"`
	// Entries are the BLS entries in /boot/loader/entries.
	Entries []string `json:"entries,omitempty"`
	// GrubEnvs are the grub environment blocks found.
	GrubEnvs []GrubEnv `json:"grubenvs,omitempty"`
	// SystemdBoot are the systemd-boot loader.conf files found.
	SystemdBoot []string `json:"systemd_boot,omitempty"`
	// Leftovers are files of earlier kos-upgrade runs in /boot that no
	// state refers to.
	Leftovers []File `json:"leftovers,omitempty"`
	// Kernels are the kernel versions with a vmlinuz in /boot.
	Kernels []string `json:"kernels,omitempty"`
}

// GrubEnv is a grub environment block.
type GrubEnv struct {
	Path    string `json:"path"`
	Size    int64  `json:"size"`
	Symlink string `json:"symlink,omitempty"` // its target when a symlink
	// FSType and Source are of the filesystem that holds it: grub cannot
	// write it at boot on btrfs, LVM or RAID.
	FSType string `json:"fstype"`
	Source string `json:"source"`
}

// File is a file and its size.
type File struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
}

// InstalledPackage is a package of the rpmdb.
type InstalledPackage struct {
	Name  string `json:"name"`
	NEVRA string `json:"nevra"`
	// KeyID is the signing key id (8 hex digits), "" when unsigned.
	KeyID  string `json:"key_id,omitempty"`
	Vendor string `json:"vendor,omitempty"`
}

// KeyFacts is a gpgkey of a target repository.
type KeyFacts struct {
	Repo   string   `json:"repo"`
	URL    string   `json:"url"`
	Path   string   `json:"path,omitempty"` // the file found, "" when missing
	KeyIDs []string `json:"key_ids,omitempty"`
	// Error says why the key cannot be used (missing, not importable).
	Error string `json:"error,omitempty"`
}

// Migration describes a migration to another distribution (prepare or
// check --to kos-VERSION on CentOS), from the migration map (pkg/migrate).
type Migration struct {
	// Target is the os-release ID of the distribution migrated to ("kos"),
	// TargetName its name.
	Target     string `json:"target"`
	TargetName string `json:"target_name,omitempty"`
	// Map is where the migration map was read from; MapError says why
	// there is none (no map covers the source).
	Map      string `json:"map,omitempty"`
	MapError string `json:"map_error,omitempty"`
	// SourceIDs and SourceVersions are the os-release IDs and major
	// versions the map supports; TargetEL the enterprise Linux major
	// version of the target (8).
	SourceIDs      []string `json:"source_ids,omitempty"`
	SourceVersions []string `json:"source_versions,omitempty"`
	TargetEL       int      `json:"target_el,omitempty"`
	// Request is the map as dnf goal operations, given to the assessment.
	Request *pkgmgr.Migration `json:"-"`
	// Keys are the target's public key files (verification, import).
	Keys []string `json:"keys,omitempty"`
}

// Supported reports whether the map covers the source release: its ID
// is one of SourceIDs and its major version is TargetEL and listed.
func (m *Migration) Supported(src Release) bool {
	if m == nil || m.MapError != "" || m.Request == nil {
		return false
	}
	major, _, _ := strings.Cut(src.VersionID, ".")
	return contains(m.SourceIDs, src.ID) && contains(m.SourceVersions, major) && major == fmt.Sprint(m.TargetEL)
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

// Assessor is the part of the package backend preflight needs.
type Assessor interface {
	Assess(ctx context.Context, req pkgmgr.AssessRequest, sink progress.Sink) (*pkgmgr.Assessment, error)
}

// Options say what to assess and give the facts the caller knows already.
type Options struct {
	Root sysroot.Root
	// To is the target release; "" assesses without a target.
	To    string
	Repos []pkgmgr.Repo
	// Images are the ISO images whose repositories are among Repos
	// (--iso: repository iso<N>-<dir> is on Images[N]).
	Images []iso.Ref
	// Snapshot is the backend the user asked for and what came of it.
	Snapshot SnapshotFacts
	// State and SystemUpdate come from the engine (upgrader).
	State          StateFacts
	SystemUpdate   string
	SkipSignatures bool
	// Migration, when set, assesses a migration to another distribution:
	// the map's swaps are resolved with the distro-sync and its keys are
	// the target's.
	Migration *Migration
	// PM resolves the upgrade; nil uses dnf.
	PM Assessor
	// CacheDir is dnf's metadata cache; "" uses a temporary directory.
	CacheDir string
	Sink     progress.Sink
	Log      *slog.Logger
}

// Collect gathers the facts of the system at opts.Root. A fact that cannot
// be read is recorded in Facts.Errors and left unknown; only a failure of
// the package backend on a target is returned as an error when nothing
// could be assessed at all (no repository, unreadable metadata).
func Collect(ctx context.Context, opts Options) (*Facts, error) {
	root := opts.Root
	f := &Facts{
		Root: root.Dir, Target: opts.To, EUID: os.Geteuid(), State: opts.State,
		SystemUpdate: opts.SystemUpdate, Snapshot: opts.Snapshot, SkipSignatures: opts.SkipSignatures,
		Migration: opts.Migration, Images: opts.Images,
	}
	errf := func(format string, a ...any) { f.Errors = append(f.Errors, fmt.Sprintf(format, a...)) }
	if rel, err := readRelease(root.Dir); err == nil {
		f.Source = rel
	} else {
		errf("%v", err)
	}

	mounts, err := mountinfo.Read()
	if err != nil {
		errf("cannot read the mount table: %v", err)
	}
	if mounts != nil {
		f.RootFS = fsFacts(mounts, root, "/", &f.Errors)
		f.StateFS = fsFacts(mounts, root, existingParent(root, sysroot.StateDirRel), &f.Errors)
		if st, err := os.Stat(root.Path("/boot")); err == nil && st.IsDir() {
			f.Boot.Exists = true
			f.BootFS = fsFacts(mounts, root, "/boot", &f.Errors)
			f.Boot.Separate = f.BootFS != nil && f.RootFS != nil && f.BootFS.MountID != f.RootFS.MountID
		}
		var err error
		if f.SeparateMounts, err = SeparateMounts(root, mounts); err != nil {
			errf("%v", err)
		}
		if f.Snapshot.Backend == snapshot.BackendUndo {
			f.Snapshot.Undo = undoFacts(root, &f.Errors)
		}
		if f.RootFS != nil && isLVM(f.RootFS.Source) {
			if lvm, err := lvmFacts(ctx, f.RootFS.Source, &f.Errors); err == nil {
				f.Snapshot.LVM = lvm
			} else {
				errf("cannot describe the root's logical volume: %v", err)
			}
		}
	}
	collectBoot(root, f, mounts)

	f.Loaded, f.LoadedFrom = loadedModules(root)
	f.SELinux, f.SELinuxConfig = selinux(root)
	if b, err := os.ReadFile(root.Path("/proc/sys/crypto/fips_enabled")); err == nil {
		f.FIPS = strings.TrimSpace(string(b))
	}

	if pkgs, keys, err := installedPackages(ctx, root); err == nil {
		f.Packages, f.InstalledKeys = pkgs, keys
	} else {
		errf("cannot list the installed packages: %v", err)
	}
	collectPlatform(ctx, root, f)

	if opts.To == "" {
		f.DistKeys = distKeys(ctx, root, nil, &f.Errors)
		return f, nil
	}
	if opts.Migration != nil && !opts.Migration.Supported(f.Source) {
		// The migration checks refuse it: resolving it would say nothing.
		f.DistKeys = distKeys(ctx, root, migrationKeys(ctx, root, opts.Migration), &f.Errors)
		return f, nil
	}
	if opts.Migration != nil && len(opts.Repos) == 0 {
		// The system's repositories are the source distribution's.
		f.AssessError = fmt.Sprintf("no repository of %s to migrate to: the migration map names none; give them with --repo ID=URL", opts.Migration.Target)
		f.DistKeys = distKeys(ctx, root, migrationKeys(ctx, root, opts.Migration), &f.Errors)
		return f, nil
	}
	pm := opts.PM
	if pm == nil {
		pm = pkgmgr.NewDNF(opts.Log)
	}
	cache := opts.CacheDir
	if cache == "" {
		d, err := os.MkdirTemp("", "kos-upgrade-check-")
		if err != nil {
			return nil, fmt.Errorf("cannot create a metadata cache: %w", err)
		}
		defer os.RemoveAll(d)
		cache = d
	}
	req := pkgmgr.AssessRequest{Root: root.Dir, Release: opts.To, Repos: opts.Repos, CacheDir: cache}
	if opts.Migration != nil {
		req.Migration = opts.Migration.Request
	}
	a, err := pm.Assess(ctx, req, opts.Sink)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		f.AssessError = err.Error()
	} else {
		f.Assessment = a
		f.Keys = repoKeys(ctx, root, a.Repos)
	}
	if opts.Migration != nil {
		f.Keys = append(f.Keys, migrationKeys(ctx, root, opts.Migration)...)
		// The keys in the root's /etc/pki/rpm-gpg are the source
		// distribution's: only the target's keys make a package "KOS's".
		f.DistKeys = []string{}
		for _, id := range distKeys(ctx, root, f.Keys, &f.Errors) {
			for _, k := range f.Keys {
				if contains(k.KeyIDs, id) && !contains(f.DistKeys, id) {
					f.DistKeys = append(f.DistKeys, id)
				}
			}
		}
		return f, nil
	}
	f.DistKeys = distKeys(ctx, root, f.Keys, &f.Errors)
	return f, nil
}

// readRelease parses os-release of the system at dir.
func readRelease(dir string) (Release, error) {
	r, err := sysroot.Root{Dir: dir}.OSRelease()
	return Release{ID: r.ID, VersionID: r.VersionID, Name: r.Name}, err
}

func existingParent(root sysroot.Root, rel string) string {
	for p := rel; ; p = filepath.Dir(p) {
		if _, err := os.Stat(root.Path(p)); err == nil || p == "/" {
			return p
		}
	}
}

func fsFacts(mounts []mountinfo.Mount, root sysroot.Root, rel string, errs *[]string) *FSFacts {
	p := root.Path(rel)
	m, err := mountinfo.Lookup(mounts, p)
	if err != nil {
		*errs = append(*errs, fmt.Sprintf("cannot find the filesystem of %s: %v", rel, err))
		return nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil {
		*errs = append(*errs, fmt.Sprintf("cannot read the free space of %s: %v", rel, err))
		return nil
	}
	var sst unix.Stat_t
	unix.Stat(p, &sst)
	return &FSFacts{
		Path: rel, Mount: m.Point, MountID: m.ID, Dev: uint64(sst.Dev), FSType: m.FSType, Source: m.Source,
		Free: int64(st.Bavail) * int64(st.Bsize), Size: int64(st.Blocks) * int64(st.Bsize),
	}
}

// transactionDirs are the directories the transaction writes to; a root
// snapshot covers them only when they are on the root's own mount.
var transactionDirs = []string{"/usr", "/etc", "/var", "/var/lib/rpm", "/opt"}

// SeparateMounts returns the transaction directories of root that are
// separate filesystems, which a snapshot of the root would not contain
// ("/var (xfs on /dev/sdb1)"). It is the one layout check: check reports
// it (SeparateMounts of Facts) and prepare and apply refuse on it. A
// directory whose filesystem cannot be found is left out and named in the
// error; the others are still returned.
func SeparateMounts(root sysroot.Root, mounts []mountinfo.Mount) ([]string, error) {
	rm, err := mountinfo.Lookup(mounts, root.Dir)
	if err != nil {
		return nil, err
	}
	var out []string
	var errs []error
	for _, d := range transactionDirs {
		p := root.Path(d)
		if _, err := os.Stat(p); err != nil {
			continue
		}
		m, err := mountinfo.Lookup(mounts, p)
		if err != nil {
			errs = append(errs, fmt.Errorf("cannot find the filesystem of %s: %w", d, err))
			continue
		}
		if m.ID != rm.ID {
			out = append(out, fmt.Sprintf("%s (%s on %s)", d, m.FSType, m.Source))
		}
	}
	return out, errors.Join(errs...)
}

func isLVM(source string) bool {
	return strings.HasPrefix(source, "/dev/mapper/") && !strings.HasPrefix(source, "/dev/mapper/luks-") ||
		strings.HasPrefix(source, "/dev/dm-")
}

// lvmFacts asks lvs about the logical volume at dev, and about its thin
// pool (what cannot be read of the pool goes to errs).
func lvmFacts(ctx context.Context, dev string, errs *[]string) (*LVMFacts, error) {
	out, err := execlog.Runner{}.Run(ctx, "describe "+dev, "lvs", "--noheadings", "--units", "b", "--nosuffix", "--separator", "|",
		"-o", "vg_name,lv_name,pool_lv,lv_size,vg_free", dev)
	if err != nil {
		return nil, err
	}
	fl := strings.Split(strings.TrimSpace(string(out)), "|")
	if len(fl) < 5 {
		return nil, fmt.Errorf("lvs %s: unexpected output %q", dev, out)
	}
	l := &LVMFacts{VG: strings.TrimSpace(fl[0]), LV: strings.TrimSpace(fl[1]), Pool: strings.TrimSpace(fl[2])}
	l.Size, _ = strconv.ParseInt(strings.TrimSpace(fl[3]), 10, 64)
	l.VGFree, _ = strconv.ParseInt(strings.TrimSpace(fl[4]), 10, 64)
	if l.Pool != "" {
		// The snapshot backend's own reading, so that check and apply
		// judge the pool alike.
		u, err := snapshot.ReadThinPool(ctx, nil, l.VG, l.Pool)
		if err != nil {
			*errs = append(*errs, fmt.Sprintf("cannot tell how full the thin pool of the root is: %v", err))
			return l, nil
		}
		l.PoolFree = u.Free()
		l.ThinPool = &ThinPoolFacts{Size: u.Size, DataPercent: u.Data, MetadataPercent: u.Metadata, Health: u.Health}
	}
	return l, nil
}

// collectBoot finds the boot loader's files and leftovers of kos-upgrade.
func collectBoot(root sysroot.Root, f *Facts, mounts []mountinfo.Mount) {
	if !f.Boot.Exists {
		return
	}
	if ents, err := os.ReadDir(root.Path("/boot")); err == nil && len(ents) == 0 {
		f.Boot.Empty = true
	}
	ents, _ := filepath.Glob(root.Path("/boot/loader/entries/*.conf"))
	for _, e := range ents {
		f.Boot.Entries = append(f.Boot.Entries, strings.TrimPrefix(e, strings.TrimSuffix(root.Dir, "/")))
	}
	envs := []string{root.Path("/boot/grub2/grubenv")}
	more, _ := filepath.Glob(root.Path("/boot/efi/EFI/*/grubenv"))
	envs = append(envs, more...)
	for _, p := range envs {
		st, err := os.Stat(p)
		if err != nil {
			continue
		}
		g := GrubEnv{Path: strings.TrimPrefix(p, strings.TrimSuffix(root.Dir, "/")), Size: st.Size()}
		if t, err := os.Readlink(p); err == nil {
			g.Symlink = t
		}
		if mounts != nil {
			if m, err := mountinfo.Lookup(mounts, p); err == nil {
				g.FSType, g.Source = m.FSType, m.Source
			}
		}
		f.Boot.GrubEnvs = append(f.Boot.GrubEnvs, g)
	}
	for _, p := range []string{"/boot/loader/loader.conf", "/boot/efi/loader/loader.conf", "/efi/loader/loader.conf"} {
		if _, err := os.Stat(root.Path(p)); err == nil {
			f.Boot.SystemdBoot = append(f.Boot.SystemdBoot, p)
		}
	}
	vmlinuz, _ := filepath.Glob(root.Path("/boot/vmlinuz-*"))
	for _, v := range vmlinuz {
		f.Boot.Kernels = append(f.Boot.Kernels, strings.TrimPrefix(filepath.Base(v), "vmlinuz-"))
	}
	// Leftovers: anything named after kos-upgrade that the state does not
	// refer to (its snapshot, the previous root or its plan).
	var refs []string
	for _, r := range []string{f.State.Snapshot, f.State.Previous, f.State.PlanID} {
		if r != "" {
			refs = append(refs, filepath.Base(r))
		}
	}
	for _, dir := range []string{"/boot", "/boot/loader/entries"} {
		ents, err := os.ReadDir(root.Path(dir))
		if err != nil {
			continue
		}
		for _, e := range ents {
			if !strings.Contains(e.Name(), "kos-upgrade") {
				continue
			}
			used := false
			for _, r := range refs {
				used = used || strings.Contains(e.Name(), r)
			}
			if used {
				continue
			}
			p := filepath.Join(dir, e.Name())
			f.Boot.Leftovers = append(f.Boot.Leftovers, File{Path: p, Size: diskUsage(root.Path(p))})
		}
	}
}

// diskUsage is the size of a file, or of everything below a directory.
func diskUsage(p string) int64 {
	var n int64
	filepath.Walk(p, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// loadedModules reads /proc/modules of the root: on the running system the
// loaded modules; under another --root whatever file is there (tests put
// one), else unknown.
func loadedModules(root sysroot.Root) ([]string, string) {
	b, err := root.ReadFile(root.Path("/proc/modules"), maxFactFile)
	if err != nil {
		return nil, ""
	}
	mods := []string{}
	for _, l := range strings.Split(string(b), "\n") {
		if fl := strings.Fields(l); len(fl) > 0 {
			mods = append(mods, moduleName(fl[0]))
		}
	}
	sort.Strings(mods)
	return mods, "/proc/modules"
}

// moduleName normalizes a module name or file name: the kernel treats "-"
// and "_" alike.
func moduleName(s string) string {
	s = filepath.Base(s)
	if i := strings.Index(s, ".ko"); i >= 0 {
		s = s[:i]
	}
	return strings.ReplaceAll(s, "-", "_")
}

func selinux(root sysroot.Root) (running, config string) {
	if b, err := os.ReadFile(root.Path("/sys/fs/selinux/enforce")); err == nil {
		if strings.TrimSpace(string(b)) == "1" {
			running = "enforcing"
		} else {
			running = "permissive"
		}
	} else if _, err := os.Stat(root.Path("/sys/fs")); err == nil {
		running = "disabled"
	}
	b, err := root.ReadFile(root.Path("/etc/selinux/config"), maxFactFile)
	if err != nil {
		return running, ""
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "="); ok && k == "SELINUX" {
			config = strings.ToLower(strings.Trim(strings.TrimSpace(v), `"`))
		}
	}
	return running, config
}

// installedPackages lists root's packages with their signing key, and the
// imported keys.
func installedPackages(ctx context.Context, root sysroot.Root) ([]InstalledPackage, []string, error) {
	const qf = `%{NAME}|%{NAME}-%{EPOCHNUM}:%{VERSION}-%{RELEASE}.%{ARCH}|%{RSAHEADER:pgpsig}|%{SIGPGP:pgpsig}|%{VENDOR}\n`
	out, err := execlog.Runner{}.Run(ctx, "list the installed packages", "rpm", "--root", root.Dir, "--dbpath", root.DBPathRel(), "-qa", "--qf", qf)
	if err != nil {
		return nil, nil, err
	}
	pkgs := []InstalledPackage{}
	keys := []string{}
	for _, l := range strings.Split(string(out), "\n") {
		fl := strings.Split(l, "|")
		if len(fl) < 5 {
			continue
		}
		if fl[0] == "gpg-pubkey" {
			// gpg-pubkey-<keyid>-<date>: its version is the key id.
			if v := strings.SplitN(strings.TrimPrefix(fl[1], "gpg-pubkey-0:"), "-", 2); len(v) == 2 {
				keys = append(keys, strings.ToLower(v[0]))
			}
			continue
		}
		p := InstalledPackage{Name: fl[0], NEVRA: strings.Replace(fl[1], ".(none)", ".noarch", 1), Vendor: none(fl[4])}
		p.KeyID = keyIDOf(fl[2])
		if p.KeyID == "" {
			p.KeyID = keyIDOf(fl[3])
		}
		pkgs = append(pkgs, p)
	}
	sort.Slice(pkgs, func(i, j int) bool { return pkgs[i].NEVRA < pkgs[j].NEVRA })
	sort.Strings(keys)
	return pkgs, keys, nil
}

func none(s string) string {
	if s == "(none)" {
		return ""
	}
	return s
}

// keyIDOf extracts the short key id from rpm's pgpsig text
// ("RSA/SHA256, Mon 01 Jan 2024, Key ID 0123456789abcdef").
func keyIDOf(sig string) string {
	i := strings.LastIndex(sig, "Key ID ")
	if i < 0 {
		return ""
	}
	id := strings.ToLower(strings.TrimSpace(sig[i+len("Key ID "):]))
	if len(id) > 8 {
		id = id[len(id)-8:]
	}
	return id
}

// keyPath finds a gpgkey URL's file: inside the root first, then on the
// host (as the verification does).
func keyPath(root sysroot.Root, url string) (string, error) {
	p, ok := strings.CutPrefix(url, "file://")
	if !ok {
		if !filepath.IsAbs(url) {
			return "", fmt.Errorf("only local keys (file://) can be used; import it with rpmkeys --import first")
		}
		p = url
	}
	for _, c := range []string{root.Path(p), p} {
		if _, err := os.Stat(c); err == nil {
			return c, nil
		}
	}
	return "", fmt.Errorf("the key file %s does not exist (in %s or on the host)", p, root.Dir)
}

// keyIDs imports the armored key file into a throwaway rpmdb and returns
// the key ids it holds.
func keyIDs(ctx context.Context, file string) ([]string, error) {
	db, err := os.MkdirTemp("", "kos-upgrade-keycheck-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(db)
	if _, err := (execlog.Runner{}).Run(ctx, "import it", "rpmkeys", "--dbpath", db, "--import", file); err != nil {
		return nil, err
	}
	out, err := execlog.Runner{}.Run(ctx, "list the imported key", "rpm", "--dbpath", db, "-q", "gpg-pubkey", "--qf", "%{VERSION}\n")
	if err != nil {
		return nil, err
	}
	ids := strings.Fields(strings.ToLower(out))
	if len(ids) == 0 {
		return nil, errors.New("the file holds no public key")
	}
	sort.Strings(ids)
	return ids, nil
}

// repoKeys checks every gpgkey of the enabled target repositories.
func repoKeys(ctx context.Context, root sysroot.Root, repos []pkgmgr.RepoInfo) []KeyFacts {
	var out []KeyFacts
	for _, r := range repos {
		for _, u := range r.GPGKeys {
			k := KeyFacts{Repo: r.ID, URL: u}
			p, err := keyPath(root, u)
			if err != nil {
				k.Error = err.Error()
			} else {
				k.Path = p
				if ids, err := keyIDs(ctx, p); err != nil {
					k.Error = err.Error()
				} else {
					k.KeyIDs = ids
				}
			}
			out = append(out, k)
		}
	}
	return out
}

// migrationKeys checks the target's key files of a migration.
func migrationKeys(ctx context.Context, root sysroot.Root, m *Migration) []KeyFacts {
	var out []KeyFacts
	for _, k := range m.Keys {
		kf := KeyFacts{Repo: "(" + m.Target + " release keys)", URL: k}
		if p, err := keyPath(root, k); err != nil {
			kf.Error = err.Error()
		} else if ids, err := keyIDs(ctx, p); err != nil {
			kf.Path, kf.Error = p, err.Error()
		} else {
			kf.Path, kf.KeyIDs = p, ids
		}
		out = append(out, kf)
	}
	return out
}

// distKeys returns the key ids of the distribution: those of the target
// repositories' key files, else of the key files in the root's
// /etc/pki/rpm-gpg.
func distKeys(ctx context.Context, root sysroot.Root, keys []KeyFacts, errs *[]string) []string {
	seen := map[string]bool{}
	for _, k := range keys {
		for _, id := range k.KeyIDs {
			seen[id] = true
		}
	}
	if len(seen) == 0 {
		files, _ := filepath.Glob(root.Path("/etc/pki/rpm-gpg/*"))
		for _, f := range files {
			ids, err := keyIDs(ctx, f)
			if err != nil {
				continue
			}
			for _, id := range ids {
				seen[id] = true
			}
		}
	}
	out := []string{}
	for id := range seen {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// undoFacts probes the journal's filesystem and sizes the trees it saves.
func undoFacts(root sysroot.Root, errs *[]string) *UndoFacts {
	u := &UndoFacts{}
	reflink, err := undojournal.Reflinks(root.Dir, root.Path(existingParent(root, sysroot.StateDirRel)))
	if err != nil {
		*errs = append(*errs, fmt.Sprintf("cannot tell whether the root's filesystem clones files: %v", err))
	}
	u.Reflink = reflink
	for _, t := range append(append([]string(nil), snapshot.UndoTrees...), root.DBPathRel()) {
		filepath.WalkDir(root.Path(t), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				if fi, err := d.Info(); err == nil {
					u.TreeSize += fi.Size()
				}
			}
			return nil
		})
	}
	return u
}
