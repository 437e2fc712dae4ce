package health

import (
	"fmt"
	"sort"
)

// Kinds of change between a baseline and an observation (the names
// health.conf's fatal= uses).
const (
	// KindServiceInactive: an enabled service that was active is not.
	KindServiceInactive = "service-inactive"
	// KindSocketInactive: an enabled socket unit that was active is not.
	KindSocketInactive = "socket-inactive"
	// KindUnitInactive: another unit that was active is not (a target,
	// a timer, or a service that was active without being enabled:
	// bus-activated, pulled in).
	KindUnitInactive = "unit-inactive"
	// KindUnitDisabled: a unit that was enabled is not.
	KindUnitDisabled = "unit-disabled"
	// KindUnitFailed: a unit failed that had not failed before.
	KindUnitFailed = "unit-failed"
	// KindListenerGone: a socket that listened does not.
	KindListenerGone = "listener-gone"
	// KindMountMissing: a file system of fstab that was mounted is not.
	KindMountMissing = "mount-missing"
	// KindDefaultTarget: the default target changed.
	KindDefaultTarget = "default-target"
	// KindSELinux: the SELinux mode changed.
	KindSELinux = "selinux"
	// KindModuleGone: a kernel module of a package is no longer loaded.
	KindModuleGone = "module-gone"
	// KindRequiredInactive: a unit health.conf requires is not active
	// (always fatal).
	KindRequiredInactive = "required-inactive"
)

// Kinds lists every kind of change.
var Kinds = []string{KindServiceInactive, KindSocketInactive, KindUnitInactive, KindUnitDisabled, KindUnitFailed,
	KindListenerGone, KindMountMissing, KindDefaultTarget, KindSELinux, KindModuleGone, KindRequiredInactive}

// Change is one difference between the baseline and the observation.
type Change struct {
	Kind    string `json:"kind"`
	Subject string `json:"subject"`
	Before  string `json:"before,omitempty"`
	After   string `json:"after,omitempty"`
	// Message says it in a sentence.
	Message string `json:"message"`
	// Rule is the rule that made the change expected (expected changes
	// only).
	Rule string `json:"rule,omitempty"`
	// Fatal is true when the policy makes it fail the upgrade.
	Fatal bool `json:"fatal,omitempty"`
}

// Diff is the comparison of an observation with the baseline.
type Diff struct {
	// Regressions are the changes no rule expects.
	Regressions []Change `json:"regressions,omitempty"`
	// Expected are the changes a rule of the plan allows.
	Expected []Change `json:"expected,omitempty"`
	// PreExisting are units that had failed before the upgrade and have
	// failed now: not counted against it.
	PreExisting []string `json:"pre_existing,omitempty"`
	// Waiting are units that were active and are not yet, with a start
	// job queued (ordered after the check, or behind a slow unit): not
	// judged.
	Waiting []string `json:"waiting,omitempty"`
}

// judgedTypes are the unit types whose activity is compared: devices,
// scopes, slices, mounts and swaps come and go with hardware, sessions
// and fstab (compared on their own).
var judgedTypes = map[string]bool{"service": true, "socket": true, "target": true, "timer": true, "path": true}

// Compare diffs after against before. A part either side did not measure
// is not compared; units in ignore are skipped. A change of a unit the
// baseline expects (before.Expected) is moved to Expected with its rule.
func Compare(before, after *Baseline, ignore map[string]bool) Diff {
	var d Diff
	expected := map[string]string{}
	for _, e := range before.Expected {
		expected[e.Unit] = e.Rule
	}
	add := func(c Change, units ...string) {
		for _, u := range units {
			if r, ok := expected[u]; ok && u != "" {
				c.Rule = r
				d.Expected = append(d.Expected, c)
				return
			}
		}
		d.Regressions = append(d.Regressions, c)
	}
	activeBoth := before.Measured(PartActive) && after.Measured(PartActive)
	for _, b := range before.Units {
		if ignore[b.Name] || !judgedTypes[b.Type] {
			continue
		}
		a, found := after.unit(b.Name)
		now := "not loaded"
		if found && a.Active != "" {
			now = a.Active
			if a.Sub != "" {
				now += " (" + a.Sub + ")"
			}
		}
		if activeBoth && b.Active == "active" && found && a.Active != "active" && a.Job == "start" {
			d.Waiting = append(d.Waiting, b.Name)
		} else if activeBoth && b.Active == "active" && (!found || a.Active != "active") {
			kind := KindUnitInactive
			if b.Enabled && b.Type == "service" {
				kind = KindServiceInactive
			} else if b.Enabled && b.Type == "socket" {
				kind = KindSocketInactive
			}
			after := "inactive"
			if found && a.Active != "" {
				after = a.Active
			}
			add(Change{Kind: kind, Subject: b.Name, Before: "active (" + b.Sub + ")", After: now,
				Message: fmt.Sprintf("%s was active before the upgrade and is %s after", b.Name, after)}, b.Name)
		}
		if b.Enabled && (!found || !a.Enabled) {
			add(Change{Kind: KindUnitDisabled, Subject: b.Name, Before: "enabled", After: "not enabled",
				Message: fmt.Sprintf("%s was enabled before the upgrade and is not after", b.Name)}, b.Name)
		}
	}
	if after.Measured(PartActive) {
		for _, a := range after.Units {
			if a.Active != "failed" || ignore[a.Name] {
				continue
			}
			if b, ok := before.unit(a.Name); ok && b.Active == "failed" && before.Measured(PartActive) {
				d.PreExisting = append(d.PreExisting, a.Name)
				continue
			}
			add(Change{Kind: KindUnitFailed, Subject: a.Name, After: "failed (" + a.Sub + ")",
				Message: fmt.Sprintf("%s failed after the upgrade", a.Name)}, a.Name)
		}
	}
	if before.Measured(PartSockets) && after.Measured(PartSockets) {
		now := map[string]bool{}
		for _, s := range after.Sockets {
			now[s.Key()] = true
		}
		for _, s := range before.Sockets {
			if now[s.Key()] || ignore[s.Unit] {
				continue
			}
			who := ""
			if s.Unit != "" {
				who = " (" + s.Unit + ")"
			}
			add(Change{Kind: KindListenerGone, Subject: s.Key(), Before: "listening" + who, After: "not listening",
				Message: fmt.Sprintf("%s%s was listening before the upgrade and is not after", s.Key(), who)}, s.Unit)
		}
	}
	if after.Measured(PartMounted) {
		now := map[string]bool{}
		for _, m := range after.Mounts {
			if m.Mounted {
				now[m.Where] = true
			}
		}
		for _, m := range before.Mounts {
			if now[m.Where] || (before.Measured(PartMounted) && !m.Mounted) {
				continue
			}
			add(Change{Kind: KindMountMissing, Subject: m.Where, Before: "mounted (" + m.What + ")", After: "not mounted",
				Message: fmt.Sprintf("%s (%s, from /etc/fstab) was mounted before the upgrade and is not after", m.Where, m.What)})
		}
	}
	if before.DefaultTarget != "" && after.DefaultTarget != before.DefaultTarget {
		add(Change{Kind: KindDefaultTarget, Subject: "default.target", Before: before.DefaultTarget, After: after.DefaultTarget,
			Message: fmt.Sprintf("the default target was %s before the upgrade and is %q after", before.DefaultTarget, after.DefaultTarget)})
	}
	if before.Measured(PartSELinux) && after.Measured(PartSELinux) && before.SELinux != after.SELinux {
		add(Change{Kind: KindSELinux, Subject: "selinux", Before: before.SELinux, After: after.SELinux,
			Message: fmt.Sprintf("SELinux was %s before the upgrade and is %s after", before.SELinux, after.SELinux)})
	}
	if before.Measured(PartModules) && after.Measured(PartModules) {
		now := map[string]bool{}
		for _, m := range after.Modules {
			now[m.Name] = true
		}
		for _, m := range before.Modules {
			if now[m.Name] || m.Package == "" {
				continue // only modules of installed packages
			}
			add(Change{Kind: KindModuleGone, Subject: m.Name, Before: "loaded (" + m.Package + ")", After: "not loaded",
				Message: fmt.Sprintf("kernel module %s (package %s) was loaded before the upgrade and is not after", m.Name, m.Package)})
		}
	}
	sort.Strings(d.PreExisting)
	sort.Strings(d.Waiting)
	return d
}
