package health

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"

	"github.com/keyarchos/kos-upgrade/pkg/mountinfo"
	"github.com/keyarchos/kos-upgrade/pkg/safefile"
)

// Systemd is the part of systemd's D-Bus API the live collection uses
// (*dbus.Conn of github.com/coreos/go-systemd/v22 implements it).
type Systemd interface {
	// ListUnitsContext returns the loaded units with their states.
	ListUnitsContext(ctx context.Context) ([]sddbus.UnitStatus, error)
	// ListUnitFilesContext returns every unit file with its state
	// (enabled, disabled, static, ...).
	ListUnitFilesContext(ctx context.Context) ([]sddbus.UnitFile, error)
}

// Live is where a running system is measured: its root (normally "/"),
// /proc and /sys, and systemd. PackageOf, when set, names the packages
// owning module files (paths inside Root), one result per path, "" for
// a file no package owns.
type Live struct {
	Root      string
	Proc      string
	Sys       string
	Systemd   Systemd
	PackageOf func(ctx context.Context, paths []string) []string
}

// maxConfigFile caps fstab, /proc tables and the like.
const maxConfigFile = 8 << 20

// unitDirsRel are the directories whose *.wants and *.requires links
// enable units, and where the default target is looked up, in order.
var unitDirsRel = []string{"/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"}

// CollectOffline measures what can be read from the system mounted at
// root without running it: units enabled by .wants/.requires links in
// /etc/systemd/system, the default target and the fstab mounts. The live
// parts are listed as not measured.
func CollectOffline(root string, now time.Time) *Baseline {
	b := &Baseline{Version: BaselineVersion, TakenAt: now.UTC()}
	why := ": offline (the system at " + root + " is not running)"
	b.NotMeasured = []string{PartActive + why, PartSockets + why, PartMounted + why, PartSELinux + why, PartModules + why}
	for name := range enabledLinks(root) {
		b.Units = append(b.Units, Unit{Name: name, Type: UnitType(name), Enabled: true})
	}
	b.DefaultTarget = defaultTarget(root)
	b.Mounts = fstab(root)
	return b
}

// enabledLinks returns the units linked from /etc/systemd/system's
// .wants and .requires directories (systemctl enable's work).
func enabledLinks(root string) map[string]bool {
	out := map[string]bool{}
	dirs, _ := filepath.Glob(filepath.Join(root, unitDirsRel[0], "*.wants"))
	req, _ := filepath.Glob(filepath.Join(root, unitDirsRel[0], "*.requires"))
	for _, d := range append(dirs, req...) {
		ents, err := os.ReadDir(d)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if ValidUnitName(e.Name()) {
				out[e.Name()] = true
			}
		}
	}
	return out
}

// defaultTarget reads default.target's link (it is not followed outside
// the root: only its name counts).
func defaultTarget(root string) string {
	for _, d := range unitDirsRel {
		l, err := os.Readlink(filepath.Join(root, d, "default.target"))
		if err == nil && ValidUnitName(filepath.Base(l)) {
			return filepath.Base(l)
		}
	}
	return ""
}

// fstab reads the file systems of root's /etc/fstab that are mounted at
// boot: not swap, not noauto, with an absolute mount point.
func fstab(root string) []Mount {
	b, err := safefile.Read(filepath.Join(root, "/etc/fstab"), maxConfigFile)
	if err != nil {
		return nil
	}
	return ParseFstab(b)
}

// ParseFstab returns the mounts of an fstab that are mounted at boot.
func ParseFstab(b []byte) []Mount {
	var out []Mount
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || strings.HasPrefix(f[0], "#") {
			continue
		}
		where := unescapeFstab(f[1])
		if !strings.HasPrefix(where, "/") || f[2] == "swap" {
			continue
		}
		if len(f) >= 4 && hasOption(f[3], "noauto") {
			continue
		}
		out = append(out, Mount{Where: filepath.Clean(where), What: unescapeFstab(f[0]), FSType: f[2]})
	}
	return out
}

func hasOption(opts, o string) bool {
	for _, x := range strings.Split(opts, ",") {
		if x == o {
			return true
		}
	}
	return false
}

// unescapeFstab decodes fstab's octal escapes (\040 is a space).
func unescapeFstab(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var out strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil && v < 256 {
				out.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		out.WriteByte(s[i])
	}
	return out.String()
}

// CollectLive measures the running system: units through systemd's D-Bus
// API (every enabled unit file and every loaded unit not inactive, with
// its state), listening sockets with the unit of the process holding each,
// which fstab mounts are mounted, the SELinux mode and the loaded modules
// with their packages. A part that cannot be measured is listed in
// NotMeasured with the reason; the error is only for systemd unreachable.
func CollectLive(ctx context.Context, l Live, now time.Time) (*Baseline, error) {
	b := &Baseline{Version: BaselineVersion, TakenAt: now.UTC(), Live: true}
	files, err := l.Systemd.ListUnitFilesContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("cannot list unit files: %w", err)
	}
	units, err := l.Systemd.ListUnitsContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("cannot list units: %w", err)
	}
	byName := map[string]*Unit{}
	for _, f := range files {
		name := filepath.Base(f.Path)
		if (f.Type == "enabled" || f.Type == "enabled-runtime") && ValidUnitName(name) {
			byName[name] = &Unit{Name: name, Type: UnitType(name), Enabled: true, Active: "inactive", Sub: "dead"}
		}
	}
	for _, u := range units {
		if !ValidUnitName(u.Name) {
			continue
		}
		x := byName[u.Name]
		if x == nil {
			if u.ActiveState == "inactive" {
				continue
			}
			x = &Unit{Name: u.Name, Type: UnitType(u.Name)}
			byName[u.Name] = x
		}
		x.Active, x.Sub = u.ActiveState, u.SubState
		if u.JobId != 0 {
			x.Job = u.JobType
		}
	}
	for _, u := range byName {
		if u.Type == "device" || u.Type == "scope" || u.Type == "slice" {
			continue // hardware and sessions come and go
		}
		b.Units = append(b.Units, *u)
	}
	b.DefaultTarget = defaultTarget(l.Root)
	if s, err := listeners(l.Proc); err != nil {
		b.NotMeasured = append(b.NotMeasured, PartSockets+": "+err.Error())
	} else {
		b.Sockets = s
	}
	b.Mounts = fstab(l.Root)
	if mi, err := readMountinfo(l.Proc); err != nil {
		b.NotMeasured = append(b.NotMeasured, PartMounted+": "+err.Error())
	} else {
		points := map[string]bool{}
		for _, m := range mi {
			points[filepath.Clean(m.Point)] = true
		}
		for i := range b.Mounts {
			b.Mounts[i].Mounted = points[b.Mounts[i].Where]
		}
	}
	b.SELinux = selinuxMode(l.Sys)
	if m, err := modules(ctx, l); err != nil {
		b.NotMeasured = append(b.NotMeasured, PartModules+": "+err.Error())
	} else {
		b.Modules = m
	}
	return b, nil
}

func readMountinfo(proc string) ([]mountinfo.Mount, error) {
	f, err := os.Open(filepath.Join(proc, "self/mountinfo"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return mountinfo.Parse(io.LimitReader(f, maxConfigFile))
}

// selinuxMode reads /sys/fs/selinux/enforce: 1 enforcing, 0 permissive,
// absent disabled.
func selinuxMode(sys string) string {
	b, err := safefile.Read(filepath.Join(sys, "fs/selinux/enforce"), 16)
	switch {
	case err != nil:
		return "disabled"
	case strings.TrimSpace(string(b)) == "1":
		return "enforcing"
	default:
		return "permissive"
	}
}

// modules returns the loaded modules that have a module file under
// /lib/modules/RELEASE (not built in), with the package owning each file
// when PackageOf is set.
func modules(ctx context.Context, l Live) ([]Module, error) {
	b, err := safefile.Read(filepath.Join(l.Proc, "modules"), maxConfigFile)
	if err != nil {
		return nil, err
	}
	rel, err := safefile.Read(filepath.Join(l.Proc, "sys/kernel/osrelease"), 256)
	if err != nil {
		return nil, err
	}
	dep, err := safefile.Read(filepath.Join(l.Root, "/lib/modules", strings.TrimSpace(string(rel)), "modules.dep"), 64<<20)
	if err != nil {
		return nil, fmt.Errorf("no module list for kernel %s: %w", strings.TrimSpace(string(rel)), err)
	}
	files := map[string]string{}
	for _, line := range strings.Split(string(dep), "\n") {
		p, _, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		base := filepath.Base(p)
		if i := strings.Index(base, ".ko"); i > 0 {
			files[strings.ReplaceAll(base[:i], "-", "_")] = p
		}
	}
	var out []Module
	var paths []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		p, ok := files[f[0]]
		if !ok {
			continue
		}
		if !strings.HasPrefix(p, "/") {
			p = filepath.Join("/lib/modules", strings.TrimSpace(string(rel)), p)
		}
		out = append(out, Module{Name: f[0]})
		paths = append(paths, p)
	}
	if l.PackageOf != nil && len(paths) > 0 {
		pk := l.PackageOf(ctx, paths)
		for i := range out {
			if i < len(pk) {
				out[i].Package = pk[i]
			}
		}
	}
	return out, nil
}
