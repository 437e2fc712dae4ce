package upgrader

// The health baseline (pkg/health): what the system ran before the
// upgrade, taken at prepare and refreshed at arm in the state directory
// (baseline.json, 0600, atomic), validated when loaded like the other
// state documents; and the verdict of the first boot (health.json).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/atomicfile"
	"github.com/keyarchos/kos-upgrade/pkg/execlog"
	"github.com/keyarchos/kos-upgrade/pkg/health"
	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
)

// Size caps of the health documents.
const (
	maxBaselineSize = 16 << 20
	maxVerdictSize  = 16 << 20
)

func (s store) baselinePath() string { return filepath.Join(s.dir, "baseline.json") }
func (s store) verdictPath() string  { return filepath.Join(s.dir, "health.json") }

// observe measures the system at the engine's root (health.Observe unless
// the engine's Observe is set).
func (e *Engine) observe(ctx context.Context) *health.Baseline {
	if e.Observe != nil {
		return e.Observe(ctx, e.Root)
	}
	return health.Observe(ctx, e.Root.Dir, e.now())
}

// saveBaseline measures the system and writes baseline.json with the
// changes the plan expects; the verdict of an earlier first boot
// (health.json) goes.
func (e *Engine) saveBaseline(ctx context.Context, st store, p *Plan) error {
	b := e.observe(ctx)
	b.Expected = e.expectations(ctx, p)
	out, err := b.Marshal()
	if err != nil {
		return err
	}
	if err := ensurePrivateDir(st.dir); err != nil {
		return fmt.Errorf("cannot create state directory: %w", err)
	}
	if err := atomicfile.WriteFile(st.baselinePath(), out, 0o600); err != nil {
		return fmt.Errorf("cannot save the health baseline: %w", err)
	}
	// The verdict of an earlier upgrade's first boot is not this one's.
	if err := atomicfile.Remove(st.verdictPath()); err != nil {
		return fmt.Errorf("cannot remove the previous health verdict: %w", err)
	}
	what := "live"
	if !b.Live {
		what = "offline: " + strings.Join(b.NotMeasured, "; ")
	}
	e.log().Info("health baseline taken", "units", len(b.Units), "sockets", len(b.Sockets), "mounts", len(b.Mounts), "measured", what)
	return nil
}

// loadBaseline reads baseline.json. A missing one returns nil, nil (a
// plan prepared by an older kos-upgrade); a damaged one an error naming
// the file.
func (s store) loadBaseline() (*health.Baseline, error) {
	b, err := readDoc(s.baselinePath(), maxBaselineSize)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read baseline %s: %w", s.baselinePath(), err)
	}
	return health.Parse(b, s.baselinePath())
}

// LoadBaseline reads the health baseline of the engine's root
// (baseline.json, validated); nil, nil when there is none.
func (e *Engine) LoadBaseline() (*health.Baseline, error) { return e.store().loadBaseline() }

// saveVerdict writes health.json.
func (s store) saveVerdict(v *health.Verdict) error {
	if err := ensurePrivateDir(s.dir); err != nil {
		return fmt.Errorf("cannot create state directory: %w", err)
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("cannot encode the health verdict: %w", err)
	}
	if err := atomicfile.WriteFile(s.verdictPath(), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("cannot save the health verdict: %w", err)
	}
	return nil
}

// LoadVerdict reads the last first-boot verdict (health.json) of the
// engine's root; nil, nil when there is none.
func (e *Engine) LoadVerdict() (*health.Verdict, error) {
	path := e.store().verdictPath()
	b, err := readDoc(path, maxVerdictSize)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read the health verdict %s: %w", path, err)
	}
	var v health.Verdict
	if err := json.Unmarshal(b, &v); err != nil || v.Version < 1 || v.Version > health.VerdictVersion {
		return nil, fmt.Errorf("cannot read the health verdict %s: %w: not a verdict this kos-upgrade understands (%v)", path, ErrBadState, err)
	}
	return &v, nil
}

// unitDirs are where packages put unit files.
var unitDirs = []string{"/usr/lib/systemd/system/", "/lib/systemd/system/", "/etc/systemd/system/"}

// expectations are the units the plan may take away: the units of every
// package it removes or that another obsoletes (the migration map's swaps
// among them), each with the rule that allows it. The units come from
// the root's rpm database; when it cannot be read there are none (more is
// judged, not less).
func (e *Engine) expectations(ctx context.Context, p *Plan) []health.Expectation {
	rules := map[string]string{}
	var names []string
	for _, it := range p.Transaction {
		var rule string
		switch it.Action {
		case pkgmgr.ActionRemove:
			rule = "package " + it.Name + " is removed by the plan"
		case pkgmgr.ActionObsoleted:
			rule = "package " + it.Name + " is obsoleted by " + it.ObsoletedBy
		default:
			continue
		}
		if p.Migration != nil {
			for _, s := range p.Migration.Applied {
				for _, f := range s.From {
					if f == it.Name {
						rule = fmt.Sprintf("the migration map %s %ss %s to %s", p.Migration.Map.Name, s.Kind, it.Name, strings.Join(s.To, ", "))
					}
				}
			}
		}
		if it.Reason != "" {
			rule += " (" + it.Reason + ")"
		}
		if _, dup := rules[it.Name]; !dup {
			names = append(names, it.Name)
		}
		rules[it.Name] = rule
	}
	if len(names) == 0 {
		return nil
	}
	argv := append([]string{"rpm", "--root", e.Root.Dir, "--dbpath", e.Root.DBPathRel(), "-q", "--qf", "[%{=NAME} %{FILENAMES}\\n]"}, names...)
	out, err := execlog.Runner{Log: e.log()}.Run(ctx, "list the unit files of the packages the plan removes", argv...)
	if err != nil && out == "" {
		e.log().Warn("cannot list the units of removed packages: their units count as regressions if they stop", "err", err)
		return nil
	}
	var exp []health.Expectation
	seen := map[string]bool{}
	for _, line := range strings.Split(out, "\n") {
		name, file, ok := strings.Cut(line, " ")
		if !ok || rules[name] == "" {
			continue
		}
		unit := filepath.Base(file)
		inDir := false
		for _, d := range unitDirs {
			inDir = inDir || strings.HasPrefix(file, d) && filepath.Dir(file)+"/" == d
		}
		if !inDir || !health.ValidUnitName(unit) || seen[unit] {
			continue
		}
		seen[unit] = true
		exp = append(exp, health.Expectation{Unit: unit, Rule: rules[name]})
	}
	return exp
}
