package upgrader

import (
	"context"

	"github.com/keyarchos/kos-upgrade/pkg/health"
)

// StatusReport is what status shows; its JSON form is stable (docs/cli.md).
type StatusReport struct {
	State   *State `json:"state"`
	Running bool   `json:"running"`
	// Armed is true when /system-update points at kos-upgrade.
	Armed bool `json:"armed"`
	// ForeignUpdate names another tool's pending offline update.
	ForeignUpdate string `json:"foreign_update,omitempty"`
	Plan          *Plan  `json:"plan,omitempty"`
	// PlanError says why the plan file could not be read.
	PlanError string `json:"plan_error,omitempty"`
	// Current is the running system's release.
	Current *Release `json:"current,omitempty"`
	// Health is the last first-boot verdict (health.json), in the new
	// root and, after a fallback, in the old one; HealthError says why
	// it could not be read.
	Health      *health.Verdict `json:"health,omitempty"`
	HealthError string          `json:"health_error,omitempty"`
}

// Status reads the state without changing anything.
func (e *Engine) Status(ctx context.Context) (*StatusReport, error) {
	st := e.store()
	state, err := st.load()
	if err != nil {
		return nil, err
	}
	r := &StatusReport{State: state, Running: locked(st.dir)}
	if state.Status == StatusApplying && !r.Running {
		// Nothing runs: the run was interrupted. Report what the next
		// command will settle it as: succeeded if it got past its switch,
		// else the provisional failed result.
		s := *state
		s.Status = StatusFailed
		if hist, err := st.history(); err == nil {
			for i := range hist {
				if hist[i].RunID == state.RunID {
					s.LastResult = &hist[i]
				}
			}
		}
		if ok, err := e.switched(ctx, state); err == nil && ok {
			s.Status, s.Step = StatusSucceeded, ""
			if s.LastResult != nil {
				lr := *s.LastResult
				lr.Success, lr.Status, lr.Error, lr.Step = true, StatusSucceeded, "", ""
				s.LastResult = &lr
			}
		}
		r.State = &s
	}
	if v, err := e.LoadVerdict(); err != nil {
		r.HealthError = err.Error()
	} else {
		r.Health = v
	}
	owner, err := e.LinkOwner()
	if err != nil {
		return nil, err
	}
	r.Armed = owner == "kos-upgrade"
	if owner != "" && owner != "kos-upgrade" {
		r.ForeignUpdate = owner
	}
	if state.PlanID != "" {
		p, err := loadPlan(st.planPath())
		if err != nil {
			r.PlanError = err.Error()
		} else {
			r.Plan = p
		}
	}
	if rel, err := readRelease(e.Root.Dir); err == nil {
		r.Current = &rel
	}
	return r, nil
}

// History returns the recorded runs, oldest first.
func (e *Engine) History(ctx context.Context) ([]Result, error) {
	return e.store().history()
}
