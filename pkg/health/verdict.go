package health

import (
	"fmt"
	"strings"
	"time"
)

// VerdictVersion is the version of health.json.
const VerdictVersion = 1

// Verdict is the judgment of the first boot of an upgraded system:
// health.json in the state directory of both roots (docs/health.md).
type Verdict struct {
	Version int  `json:"version"`
	Green   bool `json:"green"`
	// Decision is what was done: "blessed", "fallback", or "none" when
	// the caller did not act on it.
	Decision string    `json:"decision,omitempty"`
	At       time.Time `json:"at"`
	// Reasons are the fatal findings, one sentence each (empty when
	// green).
	Reasons []string `json:"reasons,omitempty"`
	// Warnings are findings the policy does not make fatal, and the
	// problems of the inputs (a damaged health.conf or baseline).
	Warnings []string `json:"warnings,omitempty"`
	// Baseline says which baseline the system was judged against.
	Baseline string `json:"baseline"`
	Diff
	Checks []CheckResult `json:"checks,omitempty"`
	// Hooks are the green.d/red.d hooks run after the verdict.
	Hooks []CheckResult `json:"hooks,omitempty"`
	// ConfirmBy is the end of the confirmation window while the green
	// system stays on trial (Decision "confirming").
	ConfirmBy *time.Time `json:"confirm_by,omitempty"`
	// Confirmed says how the confirmation window ended, when there was
	// one.
	Confirmed string `json:"confirmed,omitempty"`
}

// Input is what Judge decides on.
type Input struct {
	// Baseline is nil when there is none; BaselineErr says why (damaged).
	Baseline    *Baseline
	BaselineErr error
	// Observed is the running system; nil with ObservedErr nil when it
	// is not running (--root): units are not judged.
	Observed    *Baseline
	ObservedErr error
	// Presets are the preset files of the judged system (nil: not
	// read): a unit they disable, where the baseline's did not, is
	// expected to be disabled.
	Presets   *Presets
	Policy    Policy
	PolicyErr error
	Checks    []CheckResult
	Now       time.Time
}

// Judge decides: every regression the policy makes fatal, every required
// unit not active, every required check that did not pass, and a running
// system that could not be observed are fatal; the rest are warnings.
// Without a baseline (none, or damaged) only what the observation shows
// on its own is judged: failed units (all counted, since which failed
// before is unknown) and required units.
func Judge(in Input) *Verdict {
	v := &Verdict{Version: VerdictVersion, At: in.Now.UTC()}
	pol := in.Policy
	if pol.Fatal == nil {
		pol = DefaultPolicy()
	}
	if in.PolicyErr != nil {
		v.Warnings = append(v.Warnings, in.PolicyErr.Error()+"; the default policy was used")
	}
	before := in.Baseline
	switch {
	case before != nil:
		v.Baseline = "taken at " + before.TakenAt.Format(time.RFC3339)
		if !before.Live {
			v.Baseline += " offline (units' states, sockets and mounts were not measured)"
		}
	case in.BaselineErr != nil:
		v.Baseline = "damaged: " + in.BaselineErr.Error()
		v.Warnings = append(v.Warnings, "the baseline cannot be used ("+in.BaselineErr.Error()+"): judged on failed units, required units and checks only")
	default:
		v.Baseline = "none (prepared by a kos-upgrade without baselines): judged on failed units, required units and checks only"
	}
	if before == nil {
		before = &Baseline{NotMeasured: []string{PartActive, PartSockets, PartMounted, PartSELinux, PartModules}}
	}
	switch {
	case in.ObservedErr != nil:
		v.Reasons = append(v.Reasons, "cannot observe the running system: "+in.ObservedErr.Error())
	case in.Observed != nil:
		if in.Presets != nil {
			before = presetExpectations(before, in.Observed, in.Presets)
		}
		v.Diff = Compare(before, in.Observed, pol.Ignore)
		for _, u := range pol.Required {
			a, ok := in.Observed.unit(u)
			if ok && a.Active == "active" {
				continue
			}
			state := "not loaded"
			if ok {
				state = a.Active
			}
			v.Regressions = append(v.Regressions, Change{Kind: KindRequiredInactive, Subject: u, After: state,
				Message: fmt.Sprintf("%s is required by health.conf and is %s", u, state)})
		}
	}
	for _, u := range v.Waiting {
		v.Warnings = append(v.Warnings, u+" was active before the upgrade and is still waiting to start (a start job is queued): not judged")
	}
	for i := range v.Regressions {
		c := &v.Regressions[i]
		c.Fatal = pol.Fatal[c.Kind] || c.Kind == KindRequiredInactive
		if c.Fatal {
			v.Reasons = append(v.Reasons, c.Message)
		} else {
			v.Warnings = append(v.Warnings, c.Message)
		}
	}
	v.Checks = in.Checks
	for _, c := range in.Checks {
		if c.Result == ResultPassed {
			continue
		}
		msg := fmt.Sprintf("check %s %s", c.Name, c.Result)
		if c.Detail != "" {
			msg += " (" + c.Detail + ")"
		}
		if out := lastLine(c.Output); out != "" {
			msg += ": " + out
		}
		switch c.Class {
		case ClassProbe:
			// Not passing yet is what the confirmation window waits for
			// (upgrader.ConfirmWindow decides).
		case ClassWanted:
			v.Warnings = append(v.Warnings, msg)
		default:
			v.Reasons = append(v.Reasons, msg)
		}
	}
	v.Green = len(v.Reasons) == 0
	return v
}

// lastLine is the last non-empty line of a check's output, at most 300
// bytes: the reason a script gives when it fails.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	l := strings.TrimSpace(lines[len(lines)-1])
	if len(l) > 300 {
		l = "..." + l[len(l)-300:]
	}
	return l
}

// presetExpectations is before with an expectation for every unit that was
// enabled, is not now, and that the new system's presets disable where
// the old system's did not (systemctl preset, which rpm's %systemd_post
// runs for a package installed fresh, disabled it on purpose).
func presetExpectations(before, after *Baseline, presets *Presets) *Baseline {
	expected := map[string]bool{}
	for _, e := range before.Expected {
		expected[e.Unit] = true
	}
	var add []Expectation
	for _, u := range before.Units {
		if !u.Enabled || u.Preset == "" || expected[u.Name] || strings.HasPrefix(u.Preset, "disable") {
			continue
		}
		if a, ok := after.unit(u.Name); ok && a.Enabled {
			continue
		}
		if p := presets.Of(u.Name); p.Action == "disable" {
			add = append(add, Expectation{Unit: u.Name,
				Rule: fmt.Sprintf("the new system's presets disable it: %s; before the upgrade: %s", p.From, u.Preset)})
		}
	}
	if len(add) == 0 {
		return before
	}
	b := *before
	b.Expected = append(append([]Expectation{}, before.Expected...), add...)
	return &b
}
