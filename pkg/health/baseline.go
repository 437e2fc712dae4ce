// Package health is the first-boot health check of an upgraded system,
// judged against the system's own baseline: the baseline document (what
// ran, listened and was mounted before the upgrade), its collection (live
// through systemd's D-Bus API and /proc, or offline from a mounted root),
// the diff against a later observation with the changes the plan expects,
// the policy of /etc/kos-upgrade/health.conf, the site checks (health.d,
// required.d, wanted.d) and the verdict (docs/health.md).
package health

import (
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"
)

// BaselineVersion is the version of the baseline document this package
// writes; a newer one is refused when loaded.
const BaselineVersion = 1

// The parts of a baseline that only a running system can measure. An
// offline baseline (a root mounted elsewhere) lists them in NotMeasured,
// and the diff does not judge them.
const (
	PartActive  = "active units"
	PartSockets = "listening sockets"
	PartMounted = "mounted filesystems"
	PartSELinux = "selinux mode"
	PartModules = "kernel modules"
)

// Baseline is what a system ran before an upgrade, or what it runs now
// (an observation has the same form). Its JSON form is documented in
// docs/health.md.
type Baseline struct {
	Version int       `json:"version"`
	TakenAt time.Time `json:"taken_at"`
	// Live is true when measured on the running system.
	Live bool `json:"live"`
	// NotMeasured lists the parts (Part*) that were not measured, with
	// why, as "PART: reason".
	NotMeasured []string `json:"not_measured,omitempty"`
	// DefaultTarget is the default systemd target (graphical.target).
	DefaultTarget string `json:"default_target,omitempty"`
	// SELinux is enforcing, permissive or disabled.
	SELinux string   `json:"selinux,omitempty"`
	Units   []Unit   `json:"units"`
	Sockets []Socket `json:"sockets,omitempty"`
	Mounts  []Mount  `json:"mounts,omitempty"`
	Modules []Module `json:"modules,omitempty"`
	// Expected are the changes the plan makes on purpose (units of
	// packages it removes, units the migration map renames), each with
	// the rule that allows it.
	Expected []Expectation `json:"expected,omitempty"`
}

// Unit is one systemd unit: enabled (a unit file state of enabled), or
// loaded and not inactive.
type Unit struct {
	Name    string `json:"name"`
	Type    string `json:"type"` // service, socket, timer, target, ...
	Enabled bool   `json:"enabled,omitempty"`
	// Active and Sub are systemd's ActiveState and SubState (active,
	// running); empty when not measured.
	Active string `json:"active,omitempty"`
	Sub    string `json:"sub,omitempty"`
	// Job is the type of the job queued for the unit ("start"), if any:
	// an inactive unit with a start job is still to be started (ordered
	// after the health check, say).
	Job string `json:"job,omitempty"`
	// Preset is what the system's preset files said of an enabled unit
	// when the baseline was taken ("disable (FILE:LINE)", Preset.String):
	// a unit the new system's presets disable, and the old ones did not,
	// is expected to be disabled (Judge).
	Preset string `json:"preset,omitempty"`
}

// Socket is a listening socket.
type Socket struct {
	Proto string `json:"proto"` // tcp, tcp6, udp, udp6
	Addr  string `json:"addr"`
	Port  int    `json:"port"`
	// Unit is the systemd unit of the process holding it, when known.
	Unit string `json:"unit,omitempty"`
}

// Key identifies a socket across observations.
func (s Socket) Key() string { return fmt.Sprintf("%s %s:%d", s.Proto, s.Addr, s.Port) }

// Mount is a file system of /etc/fstab (not swap, not noauto).
type Mount struct {
	Where  string `json:"where"`
	What   string `json:"what"`
	FSType string `json:"fstype,omitempty"`
	// Mounted is measured only on a running system.
	Mounted bool `json:"mounted"`
}

// Module is a loaded kernel module and the package its file belongs to.
type Module struct {
	Name    string `json:"name"`
	Package string `json:"package,omitempty"`
}

// Expectation is a unit the plan may stop, disable or take away, and the
// rule that allows it.
type Expectation struct {
	Unit string `json:"unit"`
	Rule string `json:"rule"`
}

// Measured reports whether part (Part*) was measured.
func (b *Baseline) Measured(part string) bool {
	for _, n := range b.NotMeasured {
		if n == part || strings.HasPrefix(n, part+":") {
			return false
		}
	}
	return true
}

// unitRE is a unit name: systemd's characters, a known suffix.
var unitRE = regexp.MustCompile(`^[A-Za-z0-9:_.\\@-]{1,250}\.(service|socket|target|timer|path|mount|automount|swap|slice|scope|device)$`)

// ValidUnitName reports whether s is a systemd unit name.
func ValidUnitName(s string) bool { return unitRE.MatchString(s) }

// UnitType returns the type of a unit name (its suffix).
func UnitType(name string) string {
	if i := strings.LastIndexByte(name, '.'); i >= 0 {
		return name[i+1:]
	}
	return ""
}

// Parse decodes and validates a baseline document (read from name, for
// errors). Every name is checked: the document may have been written by
// someone else.
func Parse(b []byte, name string) (*Baseline, error) {
	var bl Baseline
	if err := json.Unmarshal(b, &bl); err != nil {
		return nil, fmt.Errorf("cannot read baseline %s: %w", name, err)
	}
	if err := bl.Validate(); err != nil {
		return nil, fmt.Errorf("cannot read baseline %s: %w", name, err)
	}
	return &bl, nil
}

// Validate checks a baseline's version and names.
func (b *Baseline) Validate() error {
	if b.Version < 1 || b.Version > BaselineVersion {
		return fmt.Errorf("version %d is not one this kos-upgrade understands (1 to %d)", b.Version, BaselineVersion)
	}
	if b.DefaultTarget != "" && !ValidUnitName(b.DefaultTarget) {
		return fmt.Errorf("default target %q is not a unit name", b.DefaultTarget)
	}
	switch b.SELinux {
	case "", "enforcing", "permissive", "disabled":
	default:
		return fmt.Errorf("selinux mode %q is not enforcing, permissive or disabled", b.SELinux)
	}
	for _, u := range b.Units {
		if !ValidUnitName(u.Name) || u.Type != UnitType(u.Name) || len(u.Active) > 32 || len(u.Sub) > 64 || len(u.Job) > 32 || len(u.Preset) > 4200 {
			return fmt.Errorf("unit %q is not a valid unit record", u.Name)
		}
	}
	for _, s := range b.Sockets {
		if s.Port < 0 || s.Port > 65535 || len(s.Addr) > 64 || (s.Unit != "" && !ValidUnitName(s.Unit)) {
			return fmt.Errorf("socket %q is not a valid socket record", s.Key())
		}
		switch s.Proto {
		case "tcp", "tcp6", "udp", "udp6":
		default:
			return fmt.Errorf("socket protocol %q is not tcp, tcp6, udp or udp6", s.Proto)
		}
	}
	for _, m := range b.Mounts {
		if !strings.HasPrefix(m.Where, "/") || len(m.Where) > 4096 || strings.ContainsRune(m.Where+m.What, 0) {
			return fmt.Errorf("mount point %q is not an absolute path", m.Where)
		}
	}
	for _, e := range b.Expected {
		if !ValidUnitName(e.Unit) || e.Rule == "" {
			return fmt.Errorf("expected change %q is not a unit with a rule", e.Unit)
		}
	}
	return nil
}

// Marshal returns the document's JSON, sorted so that equal baselines are
// equal bytes.
func (b *Baseline) Marshal() ([]byte, error) {
	b.Version = BaselineVersion
	sort.Slice(b.Units, func(i, j int) bool { return b.Units[i].Name < b.Units[j].Name })
	sort.Slice(b.Sockets, func(i, j int) bool { return b.Sockets[i].Key() < b.Sockets[j].Key() })
	sort.Slice(b.Mounts, func(i, j int) bool { return b.Mounts[i].Where < b.Mounts[j].Where })
	sort.Slice(b.Modules, func(i, j int) bool { return b.Modules[i].Name < b.Modules[j].Name })
	sort.Slice(b.Expected, func(i, j int) bool { return b.Expected[i].Unit < b.Expected[j].Unit })
	out, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("cannot encode baseline: %w", err)
	}
	return append(out, '\n'), nil
}

func (b *Baseline) unit(name string) (Unit, bool) {
	for _, u := range b.Units {
		if u.Name == name {
			return u, true
		}
	}
	return Unit{}, false
}
