package main

// kos-upgrade health: the first boot of an upgraded system
// (kos-upgrade-health.service, ordered before boot-complete.target).

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/keyarchos/kos-upgrade/pkg/health"
	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// Site checks and hooks (docs/health.md): every executable file of these
// directories runs, all in parallel, each bounded (health.conf's
// check_timeout) and owned by root and writable by root only.
const (
	healthDirRel   = sysroot.ConfigDirRel + "/health.d"   // fatal (as before required.d existed)
	requiredDirRel = sysroot.ConfigDirRel + "/required.d" // fatal
	wantedDirRel   = sysroot.ConfigDirRel + "/wanted.d"   // a warning
	greenDirRel    = sysroot.ConfigDirRel + "/green.d"    // hooks after a green verdict
	redDirRel      = sysroot.ConfigDirRel + "/red.d"      // hooks after a red verdict
	confirmDirRel  = sysroot.ConfigDirRel + "/confirm.d"  // probes ending the confirmation window
	healthConfRel  = sysroot.ConfigDirRel + "/health.conf"
)

// healthScriptTimeout bounds one health.d script run on its own
// (runHealthScripts).
const healthScriptTimeout = 5 * time.Minute

// settlePoll is how often the units are looked at again while some are
// still starting.
const settlePoll = 2 * time.Second

// ownUnits are the units that run this command (at boot, and in the
// confirmation window); the one running now is neither failed nor a
// unit still starting to wait for.
var ownUnits = map[string]bool{"kos-upgrade-health.service": true, "kos-upgrade-confirm.service": true}

// confirmTimer re-runs kos-upgrade health (kos-upgrade-confirm.service)
// while the confirmation window is open.
const confirmTimer = "kos-upgrade-confirm.timer"

// errUnhealthy says the upgraded system failed its check and was rolled back.
var errUnhealthy = errors.New("the upgraded system failed its health check")

func healthCmd() *cli.Command {
	return &cli.Command{
		Name:  "health",
		Usage: "first boot after an upgrade: check the new system, then keep it or fall back (run by kos-upgrade-health.service)",
		Description: `health runs once the upgraded system has booted (before boot-complete.target).
When the boot entry on trial is the one running (judged from the kernel
command line), it judges the system against the baseline taken at prepare
and arm (docs/health.md): units, listening sockets, fstab mounts, the
default target, SELinux and kernel modules (on the running system only;
units still starting are waited for, up to activating_wait), with the
policy of /etc/kos-upgrade/health.conf; and it runs the site checks of
/etc/kos-upgrade/health.d and required.d (fatal) and wanted.d (a warning),
in parallel, each bounded. The verdict is written to health.json in the
state directory of both roots. A healthy system's entry becomes the
permanent default; with confirm_after in health.conf it stays on trial
(judged again every minute by kos-upgrade-confirm.timer) until the
probes of /etc/kos-upgrade/confirm.d pass or that time has passed. An
unhealthy one is rolled back: the old root and boot entry become the
defaults again, the fallback is recorded, and with --reboot the machine
reboots into the old system. The green.d or red.d hooks run after the
verdict, cannot change it, and their results go into health.json. When the old system runs
because the boot loader gave up on the new one, the fallback is recorded
and the old root made the default again. Without an upgrade awaiting its
first boot it does nothing.

Examples:
   kos-upgrade health --reboot        what kos-upgrade-health.service runs
   kos-upgrade health --json          judge the running system and say what was done`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "cmdline", Usage: "judge this kernel command `LINE` instead of /proc/cmdline (tests)"},
			&cli.BoolFlag{Name: "reboot", Usage: "reboot after a fallback from the running new system (the unit passes it)"},
			&cli.BoolFlag{Name: "dry-run", Usage: "judge the system against its baseline and print the verdict; bless nothing, fall back from nothing, write nothing (exit 1 when red)"},
			&cli.BoolFlag{Name: "no-unit-check", Usage: "do not compare the system with its baseline (site checks only)"},
		},
		Action: action(func(c *cli.Context, e *env) error {
			cmdline := c.String("cmdline")
			if !c.IsSet("cmdline") {
				b, err := os.ReadFile(procCmd)
				if err != nil {
					return fmt.Errorf("cannot read the kernel command line: %w", err)
				}
				cmdline = strings.TrimSpace(string(b))
			}
			root := e.engine.Root
			// The running system is observed live through systemd; a root
			// mounted elsewhere (--root) offline: its enabled units, the
			// default target and fstab.
			observe := !c.Bool("no-unit-check")
			pol, polErr := health.LoadPolicy(root.Path(healthConfRel))
			for u := range ownUnits {
				pol.Ignore[u] = true // this check itself, running now
			}
			judge := func(ctx context.Context, baseline *health.Baseline, baselineErr error) *health.Verdict {
				in := health.Input{Baseline: baseline, BaselineErr: baselineErr, Policy: pol, PolicyErr: polErr, Presets: health.LoadPresets(root.Dir)}
				switch {
				case observe && root.Dir == runningRoot:
					in.Observed, in.ObservedErr = observeSettled(ctx, e, pol.ActivatingWait)
				case observe:
					in.Observed = health.CollectOffline(root.Dir, time.Now())
				}
				dirs := []health.CheckDir{
					{Dir: root.Path(healthDirRel), Name: "health.d", Class: health.ClassRequired},
					{Dir: root.Path(requiredDirRel), Name: "required.d", Class: health.ClassRequired},
					{Dir: root.Path(wantedDirRel), Name: "wanted.d", Class: health.ClassWanted},
				}
				if pol.ConfirmAfter > 0 || polErr != nil {
					dirs = append(dirs, health.CheckDir{Dir: root.Path(confirmDirRel), Name: "confirm.d", Class: health.ClassProbe})
				}
				in.Checks = health.RunChecks(ctx, dirs, pol.CheckTimeout, "KOS_UPGRADE_ROOT="+root.Dir)
				in.Now = time.Now()
				return health.Judge(in)
			}
			if c.Bool("dry-run") {
				return healthDryRun(c.Context, e, judge)
			}
			hooks := func(ctx context.Context, v *health.Verdict) []health.CheckResult {
				dir := greenDirRel
				if !v.Green {
					dir = redDirRel
				}
				return health.RunChecks(ctx, []health.CheckDir{{Dir: root.Path(dir), Name: filepath.Base(dir), Class: health.ClassHook}},
					pol.HookTimeout, "KOS_UPGRADE_ROOT="+root.Dir, "KOS_UPGRADE_VERDICT="+v.Decision,
					"KOS_UPGRADE_VERDICT_FILE="+filepath.Join(root.StateDir(), "health.json"))
			}
			live := root.Dir == runningRoot && rebootPossible(e) == nil
			// A damaged health.conf keeps a window already open.
			window := upgrader.ConfirmWindow{After: pol.ConfirmAfter, FallbackOnTimeout: !pol.ConfirmBless, Keep: polErr != nil}
			if live {
				// The timer runs this command again every minute until
				// the window closes; a reboot in the window runs it too
				// (kos-upgrade-health.service) and the timer is started
				// again.
				window.Wait = func(ctx context.Context, _ time.Time) error { return confirmTimerJob(ctx, true) }
			}
			res, err := e.engine.Health(c.Context, upgrader.HealthOptions{Cmdline: cmdline, Judge: judge, Hooks: hooks, Confirm: window})
			if err != nil {
				return err
			}
			if (pol.ConfirmAfter > 0 || polErr != nil) && live && res.Action != upgrader.HealthConfirming {
				if err := confirmTimerJob(c.Context, false); err != nil {
					e.engine.Log.Warn("cannot stop the timer of the confirmation window", "unit", confirmTimer, "err", err)
				}
			}
			if res.Verdict != nil && res.Action != upgrader.HealthConfirming {
				announceVerdict(res)
			}
			if e.json {
				if err := e.printJSON(res); err != nil {
					return err
				}
			} else {
				printHealth(e, res)
			}
			if !res.Reboot {
				return nil
			}
			if c.Bool("reboot") {
				if err := reboot(c.Context, e); err != nil {
					return errors.Join(fmt.Errorf("%w: %s", errUnhealthy, res.Reason), err)
				}
			}
			return fmt.Errorf("%w: %s", errUnhealthy, res.Reason)
		}),
	}
}

// confirmTimerJob starts (or stops) kos-upgrade-confirm.timer through
// systemd's D-Bus API.
func confirmTimerJob(ctx context.Context, start bool) error {
	return systemdJob(ctx, confirmTimer, "replace", start)
}

// errWouldFail says a dry run found the system unhealthy.
var errWouldFail = errors.New("the system would fail its health check")

// healthDryRun judges the system as the first boot would, whatever booted,
// and prints the verdict without acting on it.
func healthDryRun(ctx context.Context, e *env, judge func(context.Context, *health.Baseline, error) *health.Verdict) error {
	baseline, berr := e.engine.LoadBaseline()
	v := judge(ctx, baseline, berr)
	v.Decision = "none"
	if e.json {
		if err := e.printJSON(v); err != nil {
			return err
		}
	} else {
		printVerdict(e.out, v)
	}
	if !v.Green {
		return fmt.Errorf("%w: %s", errWouldFail, strings.Join(v.Reasons, "; "))
	}
	return nil
}

// observeSettled observes the running system through systemd, again every
// settlePoll while units are still starting (activating is not a
// verdict), for at most wait.
func observeSettled(ctx context.Context, e *env, wait time.Duration) (*health.Baseline, error) {
	deadline := time.Now().Add(wait)
	for {
		b, err := observeLive(ctx)
		if err != nil {
			return nil, err
		}
		starting := settling(b)
		if len(starting) == 0 {
			return b, nil
		}
		if !time.Now().Before(deadline) {
			fmt.Fprintf(e.out, "Still starting after %s, judged as they are: %s\n", wait, strings.Join(starting, ", "))
			return b, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(settlePoll):
		}
	}
}

// settling lists the units in a transition (activating, deactivating,
// reloading), other than this command's own.
func settling(b *health.Baseline) []string {
	var out []string
	for _, u := range b.Units {
		switch u.Active {
		case "activating", "deactivating", "reloading":
			if !ownUnits[u.Name] {
				out = append(out, u.Name)
			}
		}
	}
	return out
}

// observeLive measures the running system through systemd's D-Bus API.
func observeLive(ctx context.Context) (*health.Baseline, error) {
	cctx, cancel := context.WithTimeout(ctx, rebootTimeout)
	defer cancel()
	conn, err := connectSystemd(cctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	b, err := health.CollectLive(cctx, health.Live{Root: "/", Proc: "/proc", Sys: "/sys", Systemd: conn, PackageOf: health.RPMOwners}, time.Now())
	if err != nil {
		return nil, err
	}
	// This command's own units are running, not failed or starting.
	b.Units = slices.DeleteFunc(b.Units, func(u health.Unit) bool { return ownUnits[u.Name] })
	return b, nil
}

// announceVerdict records the verdict in the journal with its MESSAGE_ID
// (green or red, units/kos-upgrade.catalog).
func announceVerdict(r *upgrader.HealthResult) {
	v := r.Verdict
	m := progress.Milestone{Kind: progress.Healthy, Op: "health", Message: "kos-upgrade health: the upgraded system (boot entry " + r.Entry + ") is healthy: it is kept"}
	if !v.Green {
		m = progress.Milestone{Kind: progress.Unhealthy, Op: "health", Error: strings.Join(v.Reasons, "; "),
			Message: "kos-upgrade health: the upgraded system (boot entry " + r.Entry + ") failed its health check, the pre-upgrade system boots next: " + strings.Join(v.Reasons, "; ")}
	}
	if r.Result != nil {
		m.RunID, m.From, m.To = r.Result.RunID, r.Result.From, r.Result.To
	}
	progress.Announce(progress.NewJournal(), m)
}

func printHealth(e *env, r *upgrader.HealthResult) {
	switch r.Action {
	case upgrader.HealthBlessed:
		fmt.Fprintf(e.out, "The upgraded system is healthy: boot entry %s is now the default.\n", r.Entry)
	case upgrader.HealthConfirming:
		fmt.Fprintf(e.out, "The upgraded system is healthy and stays on trial (boot entry %s, not blessed yet): %s.\n", r.Entry, r.Reason)
	case upgrader.HealthFellBack:
		fmt.Fprintf(e.out, "Rolled back: %s\n", r.Reason)
		if r.Reboot {
			fmt.Fprintln(e.out, "The old system boots next.")
		}
	default:
		fmt.Fprintf(e.out, "Nothing to do: %s.\n", r.Reason)
	}
	if r.Verdict != nil {
		printVerdict(e.out, r.Verdict)
		for _, c := range r.Verdict.Checks {
			if c.Result != health.ResultPassed && c.Output != "" {
				fmt.Fprintf(e.out, "Output of %s:\n%s\n", c.Name, c.Output)
			}
		}
	}
}

// runHealthScripts runs the executables of health.d (health.RunChecks:
// root-owned and root-only-writable, judged by Lstat, else refused unrun;
// isolated, with KOS_UPGRADE_ROOT set to the root) and fails with the
// first one that did not pass, with its output.
func runHealthScripts(ctx context.Context, root sysroot.Root) error {
	res := health.RunChecks(ctx, []health.CheckDir{{Dir: root.Path(healthDirRel), Name: "health.d", Class: health.ClassRequired}},
		healthScriptTimeout, "KOS_UPGRADE_ROOT="+root.Dir)
	for _, r := range res {
		if r.Result != health.ResultPassed {
			return fmt.Errorf("%s %s: %s: %s", r.Name, r.Result, r.Detail, r.Output)
		}
	}
	return nil
}
