package upgrader

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/boot"
	"github.com/keyarchos/kos-upgrade/pkg/health"
	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
)

// HealthCheck is one check of the first boot of an upgraded system; Run
// returns nil when the system is healthy as far as it can tell.
type HealthCheck struct {
	Name string
	Run  func(ctx context.Context) error
}

// HealthOptions are the inputs of Health.
type HealthOptions struct {
	// Cmdline is the running kernel's command line (/proc/cmdline): it
	// tells whether the trial entry booted.
	Cmdline string
	// Checks run in order when the trial entry booted, after Judge; a
	// failure is fatal (in-process checks; site checks are Judge's).
	Checks []HealthCheck
	// Judge judges the running system against the baseline taken at
	// prepare and arm (nil, with baselineErr saying why when it is
	// damaged, or nil when there is none); nil: the verdict is Checks'
	// alone. It is called only when the trial entry booted.
	Judge func(ctx context.Context, baseline *health.Baseline, baselineErr error) *health.Verdict
	// Hooks runs the green.d or red.d hooks once the verdict is final
	// and recorded (health.json exists): on red before the fallback (the
	// new system still runs: drain it), on green after the blessing.
	// Their results go into health.json; they cannot change the verdict.
	Hooks func(ctx context.Context, v *health.Verdict) []health.CheckResult
	// Confirm is the confirmation window (docs/health.md); zero: a green
	// trial is blessed at once.
	Confirm ConfirmWindow
}

// ConfirmWindow keeps a green trial on trial (not blessed: the boot
// loader's fallback-protected choice) until the application probes pass
// (the checks of class health.ClassProbe in the verdict) or After has
// passed since the first green verdict. Every run of Health in the window
// judges the system again: red at any run falls back.
type ConfirmWindow struct {
	// After bounds the window; zero: no window.
	After time.Duration
	// FallbackOnTimeout: when After passed and the probes there are did
	// not pass, fall back (else bless). Without probes the window ends
	// green.
	FallbackOnTimeout bool
	// Wait arranges the next run of Health while the window is open
	// (kos-upgrade-confirm.timer); nil: the caller runs it again.
	Wait func(ctx context.Context, until time.Time) error
	// Keep: the policy could not be read (health.conf damaged): a window
	// already open stays open until its recorded end, with the probes
	// there are and falling back when they did not pass.
	Keep bool
}

// Health actions.
const (
	HealthNone     = "none"        // no trial of an upgrade to check
	HealthPending  = "pending"     // a trial is armed but another entry booted, and it has tries left
	HealthBlessed  = "blessed"     // the trial entry booted and is healthy: now the permanent default
	HealthFellBack = "rolled-back" // the trial failed: the old root and entry boot next
	// HealthConfirming: the trial entry is green and stays on trial
	// until the confirmation window ends (ConfirmWindow).
	HealthConfirming = "confirming"
)

// HealthResult says what Health did. Its JSON form is stable (docs/cli.md).
type HealthResult struct {
	Action string `json:"action"`
	// Entry is the boot entry of the upgraded system, when there is one.
	Entry string `json:"entry,omitempty"`
	// Reason says why (which check failed, how the trial ended).
	Reason string `json:"reason,omitempty"`
	// Reboot is true when the caller should reboot now: the trial entry
	// runs but failed, and the old system boots next.
	Reboot bool `json:"reboot"`
	// Result is the fallback record, when there was one.
	Result *Result `json:"result,omitempty"`
	// Verdict is the judgment of the trial boot (also health.json in
	// the state directory of both roots), when there was one.
	Verdict *health.Verdict `json:"verdict,omitempty"`
}

// Health is the first-boot step of an upgrade (kos-upgrade-health.service):
//
//   - no upgrade with a trial boot recorded, or the trial over: nothing;
//   - the trial entry booted (its root and kernel match the command line):
//     the checks run; healthy → Bless (the entry is the permanent default,
//     recorded "blessed"); unhealthy → fallback and Reboot;
//   - another entry booted and the boot loader has no tries left for the
//     trial: the new system did not come up, the boot loader fell back on
//     its own; the fallback is recorded and the old root made the default
//     root again;
//   - another entry booted with tries left (chosen by hand in the menu):
//     nothing, the trial stays armed.
//
// A fallback is recorded as a run of kind "fallback", status rolled-back,
// in both roots, like a rollback; /boot is restored from the backup.
func (e *Engine) Health(ctx context.Context, opts HealthOptions) (*HealthResult, error) {
	st := e.store()
	l, state, err := e.begin(ctx, st)
	if err != nil {
		return nil, err
	}
	defer l.release()
	bs := state.Boot
	if undoAwaitsFirstBoot(state) {
		return e.healthInPlace(ctx, st, state, opts)
	}
	if state.Status != StatusSucceeded || bs == nil || bs.Entry == "" {
		return &HealthResult{Action: HealthNone, Reason: "no upgrade awaits its first boot"}, nil
	}
	bl, err := e.bootloader()
	if err != nil {
		return nil, err
	}
	if bl == nil {
		return &HealthResult{Action: HealthNone, Entry: bs.Entry, Reason: "no boot loader found"}, nil
	}
	tr, err := bl.Trial(ctx)
	if err != nil {
		return nil, fmt.Errorf("cannot read the trial boot state: %w", err)
	}
	if !tr.Active || tr.Entry != bs.Entry {
		return e.noTrial(ctx, st, state, bl)
	}
	entry, err := findEntry(ctx, bl, bs.Entry)
	if err != nil {
		return nil, err
	}
	vars, err := boot.GrubVars(bl)
	if err != nil {
		return nil, err
	}
	if !boot.MatchesCmdline(entry, opts.Cmdline, vars) {
		if tr.TriesLeft > 0 {
			return &HealthResult{Action: HealthPending, Entry: bs.Entry,
				Reason: fmt.Sprintf("another entry booted; the trial of %s has %d tries left", bs.Entry, tr.TriesLeft)}, nil
		}
		reason := fmt.Sprintf("automatic fallback: the upgraded system (boot entry %s) did not complete a healthy boot within %d tries; the boot loader started %s again",
			bs.Entry, bs.Tries, bs.Previous)
		res, err := e.rollback(ctx, st, state, "fallback", reason)
		if err != nil {
			return nil, err
		}
		e.report(progress.Event{Step: "health", Message: reason})
		return &HealthResult{Action: HealthFellBack, Entry: bs.Entry, Reason: reason, Result: res}, nil
	}

	return e.decide(ctx, st, state, bl, e.judge(ctx, st, opts), opts)
}

// decide acts on the verdict of the trial boot. Red: health.json first, in
// this root, the red.d hooks, then (the engine's rollback, kind fallback)
// health.json in the old root before it becomes the default, so either
// root can say why. Green: the confirmation window, if any, or
// health.json, bless, the green.d hooks.
func (e *Engine) decide(ctx context.Context, st store, state *State, bl boot.Bootloader, v *health.Verdict, opts HealthOptions) (*HealthResult, error) {
	bs := state.Boot
	if v.Green && (opts.Confirm.After > 0 || opts.Confirm.Keep && !bs.ConfirmBy.IsZero()) {
		open, err := e.confirm(ctx, st, state, v, opts.Confirm)
		if err != nil || open {
			return &HealthResult{Action: HealthConfirming, Entry: bs.Entry, Verdict: v,
				Reason: "green; on trial until the application probes pass or " + bs.ConfirmBy.Local().Format(time.DateTime)}, err
		}
	}
	if !v.Green {
		v.Decision = "fallback"
		reason := "automatic fallback: " + strings.Join(v.Reasons, "; ")
		if err := st.saveVerdict(v); err != nil {
			e.log().Warn("cannot record the verdict in the upgraded root", "err", err)
		}
		e.runHooks(ctx, st, v, opts)
		res, err := e.rollbackWith(ctx, st, state, "fallback", reason, v)
		if err != nil {
			return nil, errors.Join(errors.New(reason), err)
		}
		e.report(progress.Event{Step: "health", Message: reason + "; " + state.Previous + " boots next"})
		return &HealthResult{Action: HealthFellBack, Entry: bs.Entry, Reason: reason, Reboot: true, Result: res, Verdict: v}, nil
	}
	v.Decision = "blessed"
	if err := st.saveVerdict(v); err != nil {
		return nil, err
	}
	res, err := e.bless(ctx, st, state, bl)
	if err != nil {
		return nil, err
	}
	e.runHooks(ctx, st, v, opts)
	res.Verdict = v
	return res, nil
}

// confirm is the confirmation window of a green trial: it opens at the
// first green verdict (recorded in the state, so a reboot keeps its
// end), and is open (true) until the probes pass or its time is up; open,
// the verdict is recorded as "confirming" and w.Wait arranges the next
// run. Closed on time with probes that did not pass and
// FallbackOnTimeout, the verdict is made red.
func (e *Engine) confirm(ctx context.Context, st store, state *State, v *health.Verdict, w ConfirmWindow) (bool, error) {
	bs := state.Boot
	now := e.now().UTC()
	// Set at the first green verdict; never later than the policy allows
	// from now (a shorter confirm_after since, a damaged state).
	if bs.ConfirmBy.IsZero() || w.After > 0 && bs.ConfirmBy.After(now.Add(w.After)) {
		bs.ConfirmBy = now.Add(w.After).Truncate(time.Second)
		if err := st.save(state, e.now()); err != nil {
			return true, err
		}
		e.report(progress.Event{Step: "health", Message: "the upgraded system is healthy; it stays on trial until the application probes pass or " + bs.ConfirmBy.Local().Format(time.DateTime)})
	}
	span := w.After.String()
	if w.After == 0 {
		span = "ending " + bs.ConfirmBy.Format(time.RFC3339) + ", kept: health.conf cannot be read"
	}
	probes, passed := 0, 0
	for _, c := range v.Checks {
		if c.Class == health.ClassProbe {
			probes++
			if c.Result == health.ResultPassed {
				passed++
			}
		}
	}
	switch {
	case probes > 0 && passed == probes:
		v.Confirmed = "the application probes passed"
		return false, nil
	case now.Before(bs.ConfirmBy):
		v.Decision, v.ConfirmBy = "confirming", &bs.ConfirmBy
		if err := st.saveVerdict(v); err != nil {
			return true, err
		}
		if w.Wait == nil {
			return true, nil
		}
		if err := w.Wait(ctx, bs.ConfirmBy); err != nil {
			return true, fmt.Errorf("cannot arrange the next run of the confirmation window (the trial stays armed; run kos-upgrade health again): %w", err)
		}
		return true, nil
	case probes > 0 && w.FallbackOnTimeout:
		v.Green = false
		v.Reasons = append(v.Reasons, fmt.Sprintf("the application probes (confirm.d) did not pass within the confirmation window (%s)", span))
		return false, nil
	case probes > 0:
		v.Confirmed = fmt.Sprintf("the confirmation window (%s) passed; the application probes did not pass (confirm_on_timeout = bless)", span)
		return false, nil
	default:
		v.Confirmed = fmt.Sprintf("the system stayed healthy for the confirmation window (%s)", span)
		return false, nil
	}
}

// runHooks runs opts.Hooks on the final verdict v and records their
// results in health.json of st (a failure to record them is logged: the
// verdict stands).
func (e *Engine) runHooks(ctx context.Context, st store, v *health.Verdict, opts HealthOptions) {
	if opts.Hooks == nil {
		return
	}
	v.Hooks = opts.Hooks(ctx, v)
	if len(v.Hooks) == 0 {
		return
	}
	if err := st.saveVerdict(v); err != nil {
		e.log().Warn("cannot record the hooks' results in the verdict", "err", err)
	}
}

// noTrial is Health when no trial of the run's entry is armed: the trial
// ended without us, blessed by the boot loader's own tooling
// (systemd-bless-boot), or undone by hand.
func (e *Engine) noTrial(ctx context.Context, st store, state *State, bl boot.Bootloader) (*HealthResult, error) {
	bs := state.Boot
	if bs.Trial == TrialArmed {
		if def, err := bl.Default(ctx); err == nil && def == bs.Entry {
			bs.Trial, bs.Note = TrialBlessed, "blessed outside kos-upgrade"
			if err := st.save(state, e.now()); err != nil {
				return nil, err
			}
			return &HealthResult{Action: HealthBlessed, Entry: bs.Entry, Reason: bs.Note}, nil
		}
	}
	return &HealthResult{Action: HealthNone, Entry: bs.Entry, Reason: "no trial boot is armed"}, nil
}

// bless is Health of a healthy system: the new root is the default root (a
// crash in the switch step may have armed the trial without it) and the
// entry is blessed.
func (e *Engine) bless(ctx context.Context, st store, state *State, bl boot.Bootloader) (*HealthResult, error) {
	bs := state.Boot
	if snapshot.Protects(state.Backend) {
		snap, err := e.Snapshotters(ctx, state.Backend, e.Root)
		if err != nil {
			return nil, err
		}
		defer snap.Close()
		if err := snap.Activate(ctx, state.Snapshot); err != nil {
			return nil, fmt.Errorf("cannot make %s the default root: %w", state.Snapshot, err)
		}
	}
	if err := bl.Bless(ctx, bs.Entry); err != nil {
		return nil, fmt.Errorf("cannot bless boot entry %s: %w", bs.Entry, err)
	}
	bs.Trial, bs.Note = TrialBlessed, ""
	if err := st.save(state, e.now()); err != nil {
		return nil, err
	}
	e.report(progress.Event{Step: "health", Message: "the upgraded system is healthy: boot entry " + bs.Entry + " is the default"})
	return &HealthResult{Action: HealthBlessed, Entry: bs.Entry}, nil
}

// judge makes the verdict of the trial boot: opts.Judge against the
// baseline, then the in-process checks.
func (e *Engine) judge(ctx context.Context, st store, opts HealthOptions) *health.Verdict {
	baseline, berr := st.loadBaseline()
	if berr != nil {
		berr = fmt.Errorf("%w; remove it to judge without a baseline", berr)
	}
	var v *health.Verdict
	if opts.Judge != nil {
		v = opts.Judge(ctx, baseline, berr)
	} else {
		v = health.Judge(health.Input{Baseline: baseline, BaselineErr: berr, Now: e.now()})
	}
	for _, c := range opts.Checks {
		e.report(progress.Event{Step: "health", Message: "health check: " + c.Name})
		r := health.CheckResult{Name: c.Name, Class: health.ClassRequired, Result: health.ResultPassed}
		if err := c.Run(ctx); err != nil {
			r.Result, r.Detail = health.ResultFailed, err.Error()
			v.Reasons = append(v.Reasons, "health check "+c.Name+" failed: "+err.Error())
			v.Green = false
		}
		v.Checks = append(v.Checks, r)
	}
	return v
}

// undoAwaitsFirstBoot reports whether state is a successful in-place
// upgrade with an undo journal whose first boot was not judged yet: it has
// no trial entry (the current entries boot the upgraded root), so every
// boot of this root until the verdict is the upgraded system's.
func undoAwaitsFirstBoot(state *State) bool {
	return state.Status == StatusSucceeded && state.InPlace && state.Backend == snapshot.BackendUndo &&
		state.Previous != "" && !state.Blessed
}

// healthInPlace is Health of the first boot after an in-place upgrade with
// an undo journal: green records the blessing (clean may drop the
// journal); red undoes the upgrade from the journal and /boot from its
// backup (the engine's rollback, kind fallback) and asks for a reboot.
func (e *Engine) healthInPlace(ctx context.Context, st store, state *State, opts HealthOptions) (*HealthResult, error) {
	v := e.judge(ctx, st, opts)
	if !v.Green {
		v.Decision = "fallback"
		reason := "automatic fallback: " + strings.Join(v.Reasons, "; ")
		if err := st.saveVerdict(v); err != nil {
			e.log().Warn("cannot record the verdict", "err", err)
		}
		e.runHooks(ctx, st, v, opts)
		res, err := e.rollbackWith(ctx, st, state, "fallback", reason, v)
		if err != nil {
			return nil, errors.Join(errors.New(reason), err)
		}
		e.report(progress.Event{Step: "health", Message: reason + "; the root was put back from the undo journal: reboot"})
		return &HealthResult{Action: HealthFellBack, Reason: reason, Reboot: true, Result: res, Verdict: v}, nil
	}
	v.Decision = "blessed"
	if err := st.saveVerdict(v); err != nil {
		return nil, err
	}
	state.Blessed = true
	if err := st.save(state, e.now()); err != nil {
		return nil, err
	}
	e.runHooks(ctx, st, v, opts)
	e.report(progress.Event{Step: "health", Message: "the upgraded system is healthy; kos-upgrade clean removes the undo journal " + state.Previous})
	return &HealthResult{Action: HealthBlessed, Reason: "first boot after the in-place upgrade is healthy", Verdict: v}, nil
}
