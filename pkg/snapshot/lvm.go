package snapshot

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/mountinfo"
)

// LVMPrefix starts the name of every logical volume kos-upgrade creates. LV
// names cannot contain '/', so the snapshot called LVMName(label) =
// "kos-upgrade/<label>" (the same names the btrfs backend uses) is the LV
// "kos-upgrade-<label>" in the root's volume group; any other LV is a
// snapshot named by its LV name ("root").
const LVMPrefix = "kos-upgrade-"

// LVMDefaultTag starts the VG tag in which the LVM backend records the LV
// that Activate made the next root of a thin-provisioned system
// ("kos_upgrade_default:kos-upgrade-20250101T000000.000Z-5.9"). LVM has no
// default LV: what boots is the root= of the default boot entry, which the
// caller switches (see LVM).
const LVMDefaultTag = "kos_upgrade_default:"

// lvmSnapshotMin is the smallest thick snapshot the backend creates.
const lvmSnapshotMin = 64 << 20

// Thin pool limits, in percent of the pool's data and metadata space in
// use: Create refuses a thin snapshot at or above either (docs/lvm.md).
// A thin snapshot shares the pool with its origin: every block the
// transaction writes takes new data space, the snapshot's mappings take
// metadata. A pool out of data space stops every LV in it, the running
// root included (writes queue, then fail); one out of metadata goes
// read-only and needs lvconvert --repair, the harder failure, hence the
// lower metadata limit (it is also where dmeventd starts warning).
const (
	ThinPoolDataMax     = 90.0
	ThinPoolMetadataMax = 80.0
)

// LVMName returns the snapshot name the LVM backend uses for label (the LV
// is LVMPrefix+label).
func LVMName(label string) string { return BtrfsDir + "/" + label }

// LVM snapshots a root mounted from an LVM logical volume. How depends on
// the LV:
//
// Thin LV (in a thin pool): apply into the snapshot, as btrfs. Create makes
// a writable thin snapshot (lvcreate -s -kn, so it activates without -K)
// and mounts it at <workDir>/<lv> (XFS with nouuid: it has the origin's
// UUID); the transaction runs there. It refuses with ErrNotSupported when
// the pool is unhealthy or at or above ThinPoolDataMax or
// ThinPoolMetadataMax. Activate cannot make an LV boot: that
// is the root= (and rd.lvm.lv=) of the default boot entry, which the
// caller retargets after Activate (pkg/boot RetargetRoot with
// RootSpec{LVMVG: VG(), LVMLV: LV(name)}). Activate records the choice in
// the VG tag LVMDefaultTag<lv>, durable in the LVM metadata, and Default
// reports it, unless DefaultLV is set, in which case Default asks it (the
// boot loader is the truth; the tag is only kos-upgrade's intent).
//
// Thick LV: the snapshot is the rollback point, the origin is upgraded (see
// InPlace). Create makes a classic COW snapshot sized for the expected
// change (ChangeSize) and refuses with ErrNotSupported when the VG has not
// the free extents for it; its Path is the live root. Activate is a no-op,
// Default is always the current root, Rollback merges the snapshot back
// (lvconvert --merge, deferred to the next activation of an open origin:
// the next boot).
//
// Not in a snapshot: other filesystems (/boot, a separate /var on another
// LV). Every command is lvm2's, run with LANG=C, reports read as JSON.
type LVM struct {
	// Logger receives one line per external command; nil means
	// slog.Default(). Set it before the first call.
	Logger *slog.Logger

	// ChangeSize is how many bytes the transaction is expected to write
	// to the root (for example three times the size of the packages to
	// install), used to size thick snapshots: the snapshot gets
	// ChangeSize plus a quarter, at least 64 MiB, at most what a full
	// copy of the origin needs. Zero means a quarter of the origin's
	// size. A thick snapshot that fills up becomes invalid and the
	// rollback point is lost (the upgrade itself goes on). Thin
	// snapshots ignore it.
	ChangeSize int64

	// DefaultLV, when set, returns the name of the LV (in the root's VG)
	// the default boot entry boots, for Default on thin LVs. Nil: the
	// LV Activate recorded in the VG tag, else the current root.
	DefaultLV func(ctx context.Context) (string, error)

	// exec runs the backend's commands; nil runs them (tests fake it).
	exec func(ctx context.Context, what string, argv ...string) (string, error)

	rootDir string // resolved mount point of the root
	workDir string // where snapshots are mounted, <workDir>/<lv>
	fsType  string // of the root, and so of its snapshots
	vg      string
	cur     lvInfo // the root's LV when the backend was bound
	thin    bool

	mu      sync.Mutex
	closed  bool
	mounted map[string]string // LV name -> where this backend mounted (or adopted) it
}

var (
	_ Snapshotter = (*LVM)(nil)
	_ InPlace     = (*LVM)(nil)
)

// lvInfo is one row of `lvs --reportformat json`.
type lvInfo struct {
	Name   string `json:"lv_name"`
	VG     string `json:"vg_name"`
	Attr   string `json:"lv_attr"`
	Size   string `json:"lv_size"`
	Pool   string `json:"pool_lv"`
	Origin string `json:"origin"`
	DMPath string `json:"lv_dm_path"`
	Major  string `json:"lv_kernel_major"`
	Minor  string `json:"lv_kernel_minor"`
	Time   string `json:"lv_time"`
	UUID   string `json:"lv_uuid"`
	// Hidden is set for an LV lvs -a shows in brackets: internal LVs
	// (thin pool data and metadata), and a thick snapshot being merged.
	Hidden bool `json:"-"`
	// Of the LV's VG, the same in every row: one lvs says it all.
	VGExtentSize string `json:"vg_extent_size"`
	VGFreeCount  string `json:"vg_free_count"`
	VGTags       string `json:"vg_tags"`
	// Of a thin pool: the percentage of its data and metadata space in
	// use ("12.34"); "" when inactive. Other LVs report their own usage
	// (thin LV, thick snapshot) or "".
	DataPercent     string `json:"data_percent"`
	MetadataPercent string `json:"metadata_percent"`
}

// lvFields is the -o of every lvs: the json keys of lvInfo.
const lvFields = "lv_name,vg_name,lv_attr,lv_size,pool_lv,origin,lv_dm_path,lv_kernel_major,lv_kernel_minor,lv_time,lv_uuid,vg_extent_size,vg_free_count,vg_tags,data_percent,metadata_percent"

// attr returns character i of lv_attr, or 0.
func (lv lvInfo) attr(i int) byte {
	if i < len(lv.Attr) {
		return lv.Attr[i]
	}
	return 0
}

func (lv lvInfo) active() bool       { return lv.attr(4) == 'a' }
func (lv lvInfo) thick() bool        { return lv.attr(0) == 's' || lv.attr(0) == 'S' }
func (lv lvInfo) merging() bool      { return lv.attr(0) == 'S' }
func (lv lvInfo) invalid() bool      { return lv.attr(4) == 'I' }
func (lv lvInfo) skipActivate() bool { return lv.attr(9) == 'k' }
func (lv lvInfo) full() string       { return lv.VG + "/" + lv.Name }
func (lv lvInfo) sizeBytes() int64   { n, _ := strconv.ParseInt(lv.Size, 10, 64); return n }
func (lv lvInfo) devNum() (int, int) { return atoiOr(lv.Major, -1), atoiOr(lv.Minor, -1) }
func (lv lvInfo) hasDev(maj, min int) bool {
	a, b := lv.devNum()
	return a >= 0 && a == maj && b == min
}

func atoiOr(s string, def int) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		return def
	}
	return n
}

// parseLVs reads the lv rows of an lvs JSON report.
func parseLVs(out string) ([]lvInfo, error) {
	var r struct {
		Report []struct {
			LV []lvInfo `json:"lv"`
		} `json:"report"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return nil, fmt.Errorf("cannot parse the JSON report of lvs: %w: %q", err, truncate(out, 200))
	}
	var lvs []lvInfo
	for _, rep := range r.Report {
		lvs = append(lvs, rep.LV...)
	}
	for i := range lvs {
		if n := lvs[i].Name; strings.HasPrefix(n, "[") && strings.HasSuffix(n, "]") {
			lvs[i].Name, lvs[i].Hidden = n[1:len(n)-1], true
		}
	}
	return lvs, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// lvNameOf returns the LV name of snapshot name: LVMPrefix+label for
// "kos-upgrade/<label>", the name itself for any other valid LV name.
func lvNameOf(name string) (string, error) {
	lv := name
	if label, ok := strings.CutPrefix(name, BtrfsDir+"/"); ok {
		if label == "" || strings.Contains(label, "/") {
			return "", fmt.Errorf("invalid snapshot name %q: want %s/<label>, one component", name, BtrfsDir)
		}
		lv = LVMPrefix + label
	}
	if err := checkLVName(lv); err != nil {
		return "", fmt.Errorf("invalid snapshot name %q: %w", name, err)
	}
	return lv, nil
}

// checkLVName applies lvm(8)'s rules for LV names.
func checkLVName(lv string) error {
	if lv == "" || lv == "." || lv == ".." || strings.HasPrefix(lv, "-") {
		return fmt.Errorf("%q is not a valid LV name", lv)
	}
	if len(lv) > 127 {
		return fmt.Errorf("LV name %q is longer than 127 characters", lv)
	}
	for _, c := range lv {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("+_.-", c)) {
			return fmt.Errorf("LV name %q has %q: LV names use only a-z A-Z 0-9 + _ . -", lv, c)
		}
	}
	for _, r := range []string{"_cdata", "_cmeta", "_corig", "_mlog", "_mimage", "_pmspare", "_rimage", "_rmeta", "_tdata", "_tmeta", "_vorigin", "_vdata"} {
		if strings.Contains(lv, r) {
			return fmt.Errorf("LV name %q contains %s, which LVM reserves", lv, r)
		}
	}
	if lv == "snapshot" || lv == "pvmove" || strings.HasPrefix(lv, "pvmove") || strings.HasPrefix(lv, "snapshot") {
		return fmt.Errorf("LV name %q is reserved by LVM", lv)
	}
	return nil
}

// snapshotNameOf is the inverse of lvNameOf.
func snapshotNameOf(lv string) string {
	if label, ok := strings.CutPrefix(lv, LVMPrefix); ok && label != "" {
		return LVMName(label)
	}
	return lv
}

// thickSnapshotSize returns the bytes of a thick snapshot of an origin of
// originSize for a transaction writing change bytes (0: unknown).
func thickSnapshotSize(originSize, change int64) int64 {
	need := originSize / 4
	if change > 0 {
		need = change + change/4
	}
	if need < lvmSnapshotMin {
		need = lvmSnapshotMin
	}
	// A snapshot never needs more than the origin plus its exception
	// store's metadata (one 16-byte entry per 4 KiB chunk, and a header).
	if full := originSize + originSize/200 + 1<<20; need > full {
		need = full
	}
	return need
}

// devMapperMajor returns the block major of device-mapper from
// /proc/devices, or -1.
var devMapperMajor = func() int {
	f, err := os.Open("/proc/devices")
	if err != nil {
		return -1
	}
	defer f.Close()
	block := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "Block devices:" {
			block = true
			continue
		}
		f := strings.Fields(line)
		if block && len(f) == 2 && f[1] == "device-mapper" {
			return atoiOr(f[0], -1)
		}
	}
	return -1
}

// NewLVM binds the LVM backend to the system mounted at rootDir, which must
// be the mount point of an active logical volume; otherwise the error wraps
// ErrNotSupported and says what the root is on. Snapshots are mounted below
// workDir. Close unmounts them.
func NewLVM(ctx context.Context, rootDir, workDir string) (*LVM, error) {
	root, _, m, err := rootMount(rootDir)
	if err != nil {
		return nil, err
	}
	if m.Point != root {
		return nil, fmt.Errorf("root %s is not a mount point but a directory in the %s mount at %s: %w", rootDir, m.FSType, m.Point, ErrNotSupported)
	}
	dev := fmt.Sprintf("device %d:%d", m.Major, m.Minor)
	if m.FSType == "btrfs" {
		// btrfs reports an anonymous device: its LV cannot be found, and
		// its own snapshots are the better tool.
		return nil, fmt.Errorf("root %s is on btrfs (%s), which the btrfs backend snapshots, not the LVM one: %w", rootDir, m.Source, ErrNotSupported)
	}
	if dm := devMapperMajor(); dm < 0 || m.Major != dm {
		return nil, fmt.Errorf("root %s is on %s (%s, %s), not on an LVM logical volume: %w", rootDir, m.FSType, m.Source, dev, ErrNotSupported)
	}
	l := &LVM{rootDir: root, workDir: workDir, fsType: m.FSType, mounted: map[string]string{}}
	all, err := l.lvs(ctx, "find the logical volume of root "+root)
	if err != nil {
		return nil, err
	}
	found := false
	for _, lv := range all {
		if !lv.Hidden && lv.hasDev(m.Major, m.Minor) {
			l.cur, found = lv, true
			break
		}
	}
	if !found {
		return nil, fmt.Errorf("root %s is on %s (%s, device-mapper %s) that is not an LVM logical volume (LUKS or multipath?): %w",
			rootDir, m.FSType, m.Source, dev, ErrNotSupported)
	}
	l.vg = l.cur.VG
	switch t := l.cur.attr(0); {
	case l.cur.Pool != "":
		l.thin = true
	case t == 's' || t == 'S':
		return nil, fmt.Errorf("root %s is on %s, itself a thick snapshot of %s; LVM cannot snapshot a snapshot: %w", rootDir, l.cur.full(), l.cur.Origin, ErrNotSupported)
	case strings.IndexByte("-oOrRmMC", t) < 0:
		return nil, fmt.Errorf("root %s is on %s, an LV of type %q (lv_attr %s) that kos-upgrade does not snapshot: %w", rootDir, l.cur.full(), t, l.cur.Attr, ErrNotSupported)
	}
	if err := os.MkdirAll(workDir, 0o700); err != nil {
		return nil, fmt.Errorf("cannot create %s: %w", workDir, err)
	}
	if w, err := filepath.EvalSymlinks(workDir); err == nil {
		l.workDir = w
	}
	return l, nil
}

// Backend implements Snapshotter.
func (l *LVM) Backend() string { return BackendLVM }

// thickExtents is the size in extents of a thick snapshot of the root for
// ChangeSize; ErrNotSupported when the VG has not that many free.
func (l *LVM) thickExtents(st lvmState, what string) (int64, error) {
	extent, _ := strconv.ParseInt(st.cur.VGExtentSize, 10, 64)
	free, _ := strconv.ParseInt(st.cur.VGFreeCount, 10, 64)
	if extent <= 0 {
		return 0, fmt.Errorf("cannot %s: lvs reports extent size %q for VG %s", what, st.cur.VGExtentSize, l.vg)
	}
	need := thickSnapshotSize(st.cur.sizeBytes(), l.ChangeSize)
	extents := (need + extent - 1) / extent
	if extents > free {
		return 0, fmt.Errorf("cannot %s: not enough free space in VG %s for a snapshot of %s: need %s (%d extents), have %s (%d extents); free space in the VG (vgextend, or shrink another LV), or use --snapshot undo (an undo journal) or none: %w",
			what, l.vg, st.cur.full(), humanBytes(extents*extent), extents, humanBytes(free*extent), free, ErrNotSupported)
	}
	return extents, nil
}

// ThickFits says whether a thick snapshot of the root for ChangeSize fits
// in the VG's free extents: nil when it does or the root is a thin LV, an
// error wrapping ErrNotSupported saying what is missing when it does not
// (auto then picks the undo backend). It changes nothing.
func (l *LVM) ThickFits(ctx context.Context) error {
	if l.thin {
		return nil
	}
	st, err := l.state(ctx, "check the space for a snapshot")
	if err != nil {
		return err
	}
	_, err = l.thickExtents(st, "snapshot the root")
	return err
}

// SetChangeSize implements ChangeSizer: it sets ChangeSize.
func (l *LVM) SetChangeSize(bytes int64) { l.ChangeSize = bytes }

// UpgradesInPlace implements InPlace: true on a thick LV.
func (l *LVM) UpgradesInPlace() bool { return !l.thin }

// Thin reports whether the root is a thin LV (apply into the snapshot).
func (l *LVM) Thin() bool { return l.thin }

// VG returns the root's volume group.
func (l *LVM) VG() string { return l.vg }

// LV returns the logical volume of snapshot name, for the root= of a boot
// entry (pkg/boot RootSpec{LVMVG: VG(), LVMLV: LV(name)}).
func (l *LVM) LV(name string) (string, error) { return lvNameOf(name) }

// FSType returns the filesystem type of the root and of its snapshots.
func (l *LVM) FSType() string { return l.fsType }

// Current implements Snapshotter: the root's LV, Path the root directory.
func (l *LVM) Current(ctx context.Context) (Snapshot, error) {
	st, err := l.state(ctx, "find the current root")
	if err != nil {
		return Snapshot{}, err
	}
	return l.snapshot(st.cur, st.def), nil
}

// Default implements Snapshotter: on a thin LV, what DefaultLV says, else
// the LV Activate recorded, else the current root; on a thick LV always the
// current root (the origin boots, whatever it holds).
func (l *LVM) Default(ctx context.Context) (Snapshot, error) {
	st, err := l.state(ctx, "find the default root")
	if err != nil {
		return Snapshot{}, err
	}
	lv, ok := st.find(st.def)
	if !ok {
		return Snapshot{}, fmt.Errorf("cannot find the default root: LV %s/%s does not exist", l.vg, st.def)
	}
	return l.snapshot(lv, st.def), nil
}

// Create implements Snapshotter; name must be LVMName(label). On a thin LV
// the snapshot is mounted writable at <workDir>/<lv> and that is its Path;
// on a thick LV it is the rollback point and Path is the live root (see
// InPlace). Either way the snapshot is in the LVM metadata when Create
// returns: after a crash it exists whole (Create says ErrExists) or not at
// all.
func (l *LVM) Create(ctx context.Context, name string) (Snapshot, error) {
	what := "create snapshot " + name
	if !strings.HasPrefix(name, BtrfsDir+"/") {
		return Snapshot{}, fmt.Errorf("cannot create snapshot %q: kos-upgrade's LVM snapshots are named %s/<label> (LV %s<label>)", name, BtrfsDir, LVMPrefix)
	}
	lvName, err := lvNameOf(name)
	if err != nil {
		return Snapshot{}, fmt.Errorf("cannot create snapshot: %w", err)
	}
	st, err := l.state(ctx, what)
	if err != nil {
		return Snapshot{}, err
	}
	if lv, ok := st.find(lvName); ok {
		return Snapshot{}, fmt.Errorf("cannot create snapshot %s: LV %s exists: %w", name, lv.full(), ErrExists)
	}
	if l.thin {
		if err := l.checkThinPool(st, what); err != nil {
			return Snapshot{}, err
		}
		if _, err := l.run(ctx, what, lvmTool, "lvcreate", "--snapshot", "--setactivationskip", "n", "--name", lvName, st.cur.full()); err != nil {
			return Snapshot{}, err
		}
		lv, err := l.find(ctx, what, lvName)
		if err != nil {
			return Snapshot{}, err
		}
		path, err := l.mount(ctx, lv)
		if err != nil {
			return Snapshot{}, err
		}
		s := l.snapshot(lv, st.def)
		s.Path = path
		return s, nil
	}

	extents, err := l.thickExtents(st, what)
	if err != nil {
		return Snapshot{}, err
	}
	if _, err := l.run(ctx, what, lvmTool, "lvcreate", "--snapshot", "--extents", strconv.FormatInt(extents, 10), "--name", lvName, st.cur.full()); err != nil {
		return Snapshot{}, err
	}
	lv, err := l.find(ctx, what, lvName)
	if err != nil {
		return Snapshot{}, err
	}
	s := l.snapshot(lv, st.def)
	s.Path = l.rootDir
	return s, nil
}

// checkThinPool refuses a thin snapshot (the error says why and what to
// do) when the root's pool is unhealthy or at or above ThinPoolDataMax or
// ThinPoolMetadataMax.
func (l *LVM) checkThinPool(st lvmState, what string) error {
	pool, ok := st.find(st.cur.Pool)
	if !ok {
		return fmt.Errorf("cannot %s: lvs does not report %s/%s, the thin pool of the root %s", what, l.vg, st.cur.Pool, st.cur.full())
	}
	u, err := thinPoolUsage(pool)
	if err != nil {
		return fmt.Errorf("cannot %s: %w", what, err)
	}
	if p := u.Problem(); p != "" {
		return fmt.Errorf("cannot %s: %s: a snapshot upgraded in a full pool stops every LV in it, the running root included; %s, then try again: %w",
			what, p, ThinPoolRemedy(u.VG, u.Pool), ErrNotSupported)
	}
	l.logger().Debug("thin pool has room for a snapshot", "pool", u.VG+"/"+u.Pool, "data_percent", u.Data, "metadata_percent", u.Metadata)
	return nil
}

// ThinPoolUsage is how full a thin pool is.
type ThinPoolUsage struct {
	VG   string
	Pool string
	// Size is the pool's data space in bytes.
	Size int64
	// Data and Metadata are the percentages of the pool's data and
	// metadata space in use.
	Data     float64
	Metadata float64
	// Health is "" for a healthy pool, else what lvm2 says is wrong with
	// it (lv_attr's health character): "failed", "out of data space" or
	// "metadata read-only".
	Health string
}

// Free returns the pool's free data space in bytes.
func (u ThinPoolUsage) Free() int64 { return int64(float64(u.Size) * (100 - u.Data) / 100) }

// Problem says why a thin snapshot must not be made in the pool ("thin
// pool vg/pool has 93.10% of its data space in use, at or above the 90%
// limit"), or returns "" when it may.
func (u ThinPoolUsage) Problem() string {
	var p []string
	if u.Health != "" {
		p = append(p, "is "+u.Health)
	}
	if u.Data >= ThinPoolDataMax {
		p = append(p, fmt.Sprintf("has %.2f%% of its data space (%s) in use, at or above the %g%% limit", u.Data, humanBytes(u.Size), ThinPoolDataMax))
	}
	if u.Metadata >= ThinPoolMetadataMax {
		p = append(p, fmt.Sprintf("has %.2f%% of its metadata space in use, at or above the %g%% limit", u.Metadata, ThinPoolMetadataMax))
	}
	if len(p) == 0 {
		return ""
	}
	return "thin pool " + u.VG + "/" + u.Pool + " " + strings.Join(p, " and ")
}

// ThinPoolRemedy says how to make room in thin pool vg/pool.
func ThinPoolRemedy(vg, pool string) string {
	return fmt.Sprintf("extend the pool (lvextend --size +SIZE %[1]s/%[2]s for data, lvextend --poolmetadatasize +SIZE %[1]s/%[2]s for metadata; vgextend %[1]s first if the VG has no free extents) or free space in it (remove the thin LVs and snapshots you no longer need: kos-upgrade clean, lvremove; fstrim the mounted thin filesystems)", vg, pool)
}

// thinPoolUsage reads the usage of pool from its lvs row.
func thinPoolUsage(pool lvInfo) (ThinPoolUsage, error) {
	u := ThinPoolUsage{VG: pool.VG, Pool: pool.Name, Size: pool.sizeBytes()}
	if pool.attr(0) != 't' {
		return u, fmt.Errorf("%s is not a thin pool (lv_attr %s)", pool.full(), pool.Attr)
	}
	d, derr := strconv.ParseFloat(pool.DataPercent, 64)
	m, merr := strconv.ParseFloat(pool.MetadataPercent, 64)
	if derr != nil || merr != nil {
		return u, fmt.Errorf("lvs reports no usage for thin pool %s (data_percent %q, metadata_percent %q, lv_attr %s): is it active?",
			pool.full(), pool.DataPercent, pool.MetadataPercent, pool.Attr)
	}
	u.Data, u.Metadata = d, m
	switch pool.attr(8) {
	case 'F':
		u.Health = "failed"
	case 'D':
		u.Health = "out of data space"
	case 'M':
		u.Health = "metadata read-only"
	}
	return u, nil
}

// ReadThinPool reads how full the thin pool vg/pool is, with the lvs
// report the backend uses (JSON, LANG=C). log nil means slog.Default().
func ReadThinPool(ctx context.Context, log *slog.Logger, vg, pool string) (ThinPoolUsage, error) {
	what := "read the usage of thin pool " + vg + "/" + pool
	lvs, err := (&LVM{Logger: log}).lvs(ctx, what, vg+"/"+pool)
	if err != nil {
		return ThinPoolUsage{}, err
	}
	for _, lv := range lvs {
		if lv.Name == pool && !lv.Hidden {
			u, err := thinPoolUsage(lv)
			if err != nil {
				return u, fmt.Errorf("cannot %s: %w", what, err)
			}
			return u, nil
		}
	}
	return ThinPoolUsage{}, fmt.Errorf("cannot %s: lvs does not report it", what)
}

func humanBytes(n int64) string {
	const mib = 1 << 20
	return fmt.Sprintf("%.1f MiB", float64(n)/mib)
}

// Delete implements Snapshotter. Besides the current root and the default
// it refuses LVs kos-upgrade did not create (not LVMPrefix), a snapshot
// being merged (a pending rollback), a thick origin with snapshots, and an
// LV mounted anywhere but below the work directory. Its own mounts are
// undone first.
func (l *LVM) Delete(ctx context.Context, name string) error {
	what := "delete snapshot " + name
	lvName, err := lvNameOf(name)
	if err != nil {
		return fmt.Errorf("cannot delete snapshot: %w", err)
	}
	st, err := l.state(ctx, what)
	if err != nil {
		return err
	}
	lv, ok := st.find(lvName)
	if !ok {
		return fmt.Errorf("cannot delete snapshot %s: no LV %s/%s: %w", name, l.vg, lvName, ErrNotFound)
	}
	switch {
	case lv.UUID == st.cur.UUID:
		return fmt.Errorf("cannot delete snapshot %s: LV %s is the current root", name, lv.full())
	case lv.Name == st.def:
		return fmt.Errorf("cannot delete snapshot %s: LV %s is the default, the root that boots next", name, lv.full())
	case !strings.HasPrefix(lv.Name, LVMPrefix):
		return fmt.Errorf("cannot delete snapshot %s: LV %s was not made by kos-upgrade (its LVs are named %s<label>)", name, lv.full(), LVMPrefix)
	case lv.merging():
		return fmt.Errorf("cannot delete snapshot %s: LV %s is being merged into %s (a rollback); it goes away when the merge completes, after the next boot", name, lv.full(), lv.Origin)
	}
	for _, o := range st.lvs {
		if o.thick() && o.Origin == lv.Name {
			return fmt.Errorf("cannot delete snapshot %s: LV %s is the origin of snapshot %s", name, lv.full(), o.full())
		}
	}
	mp := l.mountPoint(lv.Name)
	mounts, err := mountinfo.Read()
	if err != nil {
		return err
	}
	for _, m := range mounts {
		if lv.hasDev(m.Major, m.Minor) && !below(m.Point, mp) {
			return fmt.Errorf("cannot delete snapshot %s: LV %s is mounted at %s", name, lv.full(), m.Point)
		}
	}
	if err := l.unmountBelow(ctx, mp); err != nil {
		return err
	}
	l.forget(lv.Name)
	if _, err := l.run(ctx, what, lvmTool, "lvremove", "--yes", lv.full()); err != nil {
		return err
	}
	os.Remove(mp)
	return nil
}

// Activate implements Snapshotter. On a thin LV it records name as the next
// root in the VG tag LVMDefaultTag<lv> (one metadata commit, durable when
// it returns) and clears the activation-skip flag of the LV; the caller
// must then point the default boot entry at VG()/LV(name): only that makes
// it boot. On a thick LV it is a no-op returning nil for any existing LV:
// the origin is what boots, and it holds the upgrade already.
func (l *LVM) Activate(ctx context.Context, name string) error {
	what := "activate snapshot " + name
	lvName, err := lvNameOf(name)
	if err != nil {
		return fmt.Errorf("cannot activate snapshot: %w", err)
	}
	st, err := l.state(ctx, what)
	if err != nil {
		return err
	}
	lv, ok := st.find(lvName)
	if !ok {
		return fmt.Errorf("cannot activate snapshot %s: no LV %s/%s: %w", name, l.vg, lvName, ErrNotFound)
	}
	if !l.thin {
		return nil
	}
	if lv.Pool == "" {
		return fmt.Errorf("cannot activate snapshot %s: LV %s is not a thin LV (lv_attr %s)", name, lv.full(), lv.Attr)
	}
	if lv.skipActivate() {
		if _, err := l.run(ctx, what, lvmTool, "lvchange", "--setactivationskip", "n", lv.full()); err != nil {
			return err
		}
	}
	tag := LVMDefaultTag + lv.Name
	var del []string
	has := false
	for _, t := range st.tags {
		switch {
		case t == tag:
			has = true
		case strings.HasPrefix(t, LVMDefaultTag):
			del = append(del, t)
		}
	}
	if has && len(del) == 0 {
		return nil
	}
	argv := []string{lvmTool, "vgchange"}
	if !has {
		argv = append(argv, "--addtag", tag)
	}
	for _, t := range del {
		argv = append(argv, "--deltag", t)
	}
	_, err = l.run(ctx, what, append(argv, l.vg)...)
	return err
}

// Path implements Snapshotter: the root's directory for the current LV,
// else the LV mounted at <workDir>/<lv> (activated and mounted on first
// use, XFS with nouuid). A thick rollback point is writable there too;
// what is written is in the root after a Rollback.
func (l *LVM) Path(ctx context.Context, name string) (string, error) {
	what := "find snapshot " + name
	lvName, err := lvNameOf(name)
	if err != nil {
		return "", fmt.Errorf("cannot find snapshot: %w", err)
	}
	st, err := l.state(ctx, what)
	if err != nil {
		return "", err
	}
	lv, ok := st.find(lvName)
	if !ok {
		return "", fmt.Errorf("cannot find snapshot %s: no LV %s/%s: %w", name, l.vg, lvName, ErrNotFound)
	}
	if lv.UUID == st.cur.UUID {
		return l.rootDir, nil
	}
	if lv.merging() {
		return "", fmt.Errorf("cannot mount snapshot %s: LV %s is being merged into %s", name, lv.full(), lv.Origin)
	}
	if t := lv.attr(0); t == 't' || t == 'T' || t == 'e' || t == 'v' {
		return "", fmt.Errorf("cannot mount snapshot %s: LV %s is not a filesystem (lv_attr %s)", name, lv.full(), lv.Attr)
	}
	return l.mount(ctx, lv)
}

// List implements Snapshotter: the current root, the default and the LVs
// named LVMPrefix<label> in the root's VG, sorted by name.
func (l *LVM) List(ctx context.Context) ([]Snapshot, error) {
	st, err := l.state(ctx, "list snapshots")
	if err != nil {
		return nil, err
	}
	var out []Snapshot
	for _, lv := range st.lvs {
		if lv.UUID == st.cur.UUID || lv.Name == st.def || strings.HasPrefix(lv.Name, LVMPrefix) {
			out = append(out, l.snapshot(lv, st.def))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Rollback implements InPlace, for thick LVs: it merges the rollback point
// name back into the root's LV (lvconvert --merge). The root is open, so
// LVM defers the merge to the next activation of the LV, in the next boot's
// initramfs; from then on the root reads as the rollback point, and the
// snapshot LV disappears when the merge completes. On a thin LV it fails
// with ErrNotSupported: Activate the previous root instead.
func (l *LVM) Rollback(ctx context.Context, name string) error {
	what := "roll back to snapshot " + name
	if l.thin {
		return fmt.Errorf("cannot %s: the root is a thin LV, which rolls back by activating the previous root: %w", what, ErrNotSupported)
	}
	lvName, err := lvNameOf(name)
	if err != nil {
		return fmt.Errorf("cannot roll back: %w", err)
	}
	st, err := l.state(ctx, what)
	if err != nil {
		return err
	}
	lv, ok := st.find(lvName)
	switch {
	case !ok:
		return fmt.Errorf("cannot %s: no LV %s/%s: %w", what, l.vg, lvName, ErrNotFound)
	case !lv.thick() || lv.Origin != st.cur.Name:
		return fmt.Errorf("cannot %s: LV %s is not a snapshot of the root %s (lv_attr %s, origin %q)", what, lv.full(), st.cur.full(), lv.Attr, lv.Origin)
	case lv.merging():
		return nil
	case lv.invalid():
		return fmt.Errorf("cannot %s: LV %s is invalid: it filled up (the upgrade changed more than its %s), so it no longer holds the old root", what, lv.full(), humanBytes(lv.sizeBytes()))
	}
	mp := l.mountPoint(lv.Name)
	if err := l.unmountBelow(ctx, mp); err != nil {
		return err
	}
	l.forget(lv.Name)
	out, err := l.run(ctx, what, lvmTool, "lvconvert", "--merge", lv.full())
	if err != nil {
		return err
	}
	// "Delaying merge since origin is open", or the progress of a merge
	// that ran now.
	l.logger().Info("rollback scheduled", "lv", lv.full(), "lvconvert", strings.TrimSpace(out))
	return nil
}

// Close implements Snapshotter: it unmounts what this backend mounted.
// Calling it again is harmless; other methods fail afterwards.
func (l *LVM) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	var points []string
	for _, p := range l.mounted {
		points = append(points, p)
	}
	l.mounted = map[string]string{}
	l.mu.Unlock()
	var errs []error
	for _, p := range points {
		if err := l.unmountBelow(context.Background(), p); err != nil {
			errs = append(errs, err)
			continue
		}
		os.Remove(p)
	}
	return errors.Join(errs...)
}

// lvmState is what one lvs and one vgs say about the root's VG.
type lvmState struct {
	lvs  []lvInfo
	tags []string
	cur  lvInfo
	def  string // LV name of the default
}

func (s lvmState) find(lv string) (lvInfo, bool) {
	for _, x := range s.lvs {
		if x.Name == lv {
			return x, true
		}
	}
	return lvInfo{}, false
}

// state reads the VG: its LVs, its tags, the current root and the default.
func (l *LVM) state(ctx context.Context, what string) (lvmState, error) {
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if closed {
		return lvmState{}, fmt.Errorf("cannot %s: the LVM backend is closed", what)
	}
	var st lvmState
	all, err := l.lvs(ctx, what, l.vg)
	if err != nil {
		return st, err
	}
	found := false
	for _, lv := range all {
		// Internal LVs are not snapshots; a merging one still is (a
		// pending rollback).
		if lv.Hidden && !lv.merging() {
			continue
		}
		st.lvs = append(st.lvs, lv)
		if lv.UUID == l.cur.UUID {
			st.cur, found = lv, true
		}
	}
	if !found {
		return st, fmt.Errorf("cannot %s: the root's LV %s (uuid %s) is no longer in VG %s", what, l.cur.Name, l.cur.UUID, l.vg)
	}
	if st.cur.VGTags != "" {
		st.tags = strings.Split(st.cur.VGTags, ",")
	}
	st.def = st.cur.Name
	if !l.thin {
		return st, nil
	}
	if l.DefaultLV != nil {
		d, err := l.DefaultLV(ctx)
		if err != nil {
			return st, fmt.Errorf("cannot %s: cannot find the LV the default boot entry boots: %w", what, err)
		}
		st.def = d
		return st, nil
	}
	for _, t := range st.tags {
		if d, ok := strings.CutPrefix(t, LVMDefaultTag); ok {
			if _, exists := st.find(d); exists {
				st.def = d
			}
		}
	}
	return st, nil
}

// lvs lists the LVs of args (a VG, an LV, or all), hidden ones included.
func (l *LVM) lvs(ctx context.Context, what string, args ...string) ([]lvInfo, error) {
	argv := append([]string{lvmTool, "lvs", "--all", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", lvFields}, args...)
	out, err := l.run(ctx, what, argv...)
	if err != nil {
		return nil, err
	}
	lvs, err := parseLVs(out)
	if err != nil {
		return nil, fmt.Errorf("cannot %s: %w", what, err)
	}
	return lvs, nil
}

func (l *LVM) find(ctx context.Context, what, lvName string) (lvInfo, error) {
	lvs, err := l.lvs(ctx, what, l.vg+"/"+lvName)
	if err != nil {
		return lvInfo{}, err
	}
	if len(lvs) != 1 {
		return lvInfo{}, fmt.Errorf("cannot %s: lvs %s/%s reported %d LVs", what, l.vg, lvName, len(lvs))
	}
	return lvs[0], nil
}

func (l *LVM) mountPoint(lvName string) string { return filepath.Join(l.workDir, lvName) }

// mount activates lv if needed and mounts it at its mount point, or adopts
// the mount of it that is there already (left by a crashed run).
func (l *LVM) mount(ctx context.Context, lv lvInfo) (string, error) {
	what := "mount LV " + lv.full()
	mp := l.mountPoint(lv.Name)
	if !lv.active() {
		if _, err := l.run(ctx, what, lvmTool, "lvchange", "--activate", "y", "--ignoreactivationskip", lv.full()); err != nil {
			return "", err
		}
		var err error
		if lv, err = l.find(ctx, what, lv.Name); err != nil {
			return "", err
		}
	}
	maj, min := lv.devNum()
	if maj < 0 {
		return "", fmt.Errorf("cannot %s: it has no device after activation (lv_attr %s)", what, lv.Attr)
	}
	if err := os.MkdirAll(mp, 0o700); err != nil {
		return "", fmt.Errorf("cannot %s: %w", what, err)
	}
	mounts, err := mountinfo.Read()
	if err != nil {
		return "", err
	}
	if m, ok := mountedAt(mounts, mp); ok {
		if m.Major != maj || m.Minor != min {
			return "", fmt.Errorf("cannot %s at %s: %s %s is mounted there already", what, mp, m.FSType, m.Source)
		}
		l.logger().Debug("reusing mount of LV", "lv", lv.full(), "path", mp)
	} else {
		argv := []string{mountTool, "-t", l.fsType}
		if l.fsType == "xfs" {
			// The snapshot has its origin's filesystem UUID, which
			// XFS refuses to mount twice.
			argv = append(argv, "-o", "nouuid")
		}
		if _, err := l.run(ctx, what, append(argv, lv.DMPath, mp)...); err != nil {
			return "", err
		}
	}
	l.mu.Lock()
	l.mounted[lv.Name] = mp
	l.mu.Unlock()
	return mp, nil
}

func (l *LVM) forget(lvName string) {
	l.mu.Lock()
	delete(l.mounted, lvName)
	l.mu.Unlock()
}

// unmountBelow unmounts everything mounted at or below path, last mounted
// first.
func (l *LVM) unmountBelow(ctx context.Context, path string) error {
	return mountinfo.UnmountBelow(path, true, func(p string) error {
		_, err := l.run(ctx, "unmount "+p, umountTool, p)
		return err
	})
}

// snapshot fills a Snapshot for lv; def is the default's LV name.
func (l *LVM) snapshot(lv lvInfo, def string) Snapshot {
	s := Snapshot{Name: snapshotNameOf(lv.Name), ID: lv.UUID, Default: lv.Name == def, Created: lvTime(lv.Time)}
	if lv.UUID == l.cur.UUID {
		s.Path = l.rootDir
	} else {
		l.mu.Lock()
		s.Path = l.mounted[lv.Name]
		l.mu.Unlock()
	}
	return s
}

// lvTime converts lv_time ("2025-01-02 03:04:05 +0000") to RFC 3339, or "".
func lvTime(s string) string {
	t, err := time.Parse("2006-01-02 15:04:05 -0700", s)
	if err != nil {
		return ""
	}
	return t.Format(time.RFC3339)
}

func (l *LVM) logger() *slog.Logger { return runner{log: l.Logger}.logger() }

func (l *LVM) run(ctx context.Context, what string, argv ...string) (string, error) {
	if l.exec != nil {
		return l.exec(ctx, what, argv...)
	}
	return runner{log: l.Logger, env: []string{"LANG=C", "LC_ALL=C"}}.run(ctx, what, argv...)
}
