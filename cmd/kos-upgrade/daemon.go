package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/urfave/cli/v2"

	"github.com/keyarchos/kos-upgrade/pkg/dbusapi"
	"github.com/keyarchos/kos-upgrade/pkg/preflight"
	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// noDaemonEnv makes the CLI act in-process even when the daemon runs.
const noDaemonEnv = "KOS_UPGRADE_NO_DAEMON"

func daemonCmd() *cli.Command {
	return &cli.Command{
		Name:  "daemon",
		Usage: "serve the D-Bus API org.kos.Upgrade1 on the system bus (started by D-Bus activation)",
		Description: `daemon owns org.kos.Upgrade1 on the system bus and serves /org/kos/Upgrade1
(/usr/share/doc/kos-upgrade/dbus.md): properties that tell where the upgrade stands, methods that run
prepare, arm, reboot, cancel and rollback one at a time, Progress and Finished
signals. Everyone may read; changes need root or polkit's authorization.
It is started by D-Bus activation (kos-upgrade-daemon.service) and exits after
--idle-timeout without jobs or calls. It fails when another daemon owns the name.

Examples:
   kos-upgrade daemon --idle-timeout 5m   what kos-upgrade-daemon.service runs
   busctl introspect org.kos.Upgrade1 /org/kos/Upgrade1`,
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "idle-timeout", Usage: "exit after `DURATION` without a job or a call (0: never)"},
		},
		Action: action(func(c *cli.Context, e *env) error {
			level := slog.LevelInfo
			if e.verbose {
				level = slog.LevelDebug
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			conn, err := dbus.ConnectSystemBus()
			if err != nil {
				return fmt.Errorf("cannot connect to the system bus: %w", err)
			}
			defer conn.Close()
			svc, err := dbusapi.New(conn, e.engine, dbusapi.Options{
				Log:         log,
				Sinks:       func(op string) progress.Multi { return progress.SystemSinks(progress.OpRanges(op)) },
				IdleTimeout: c.Duration("idle-timeout"),
				Check: func(ctx context.Context, to string, answers []string) (bool, []byte, error) {
					return runCheck(ctx, e.engine, to, answers)
				},
			})
			if err != nil {
				return err
			}
			return svc.Serve(c.Context)
		}),
	}
}

// daemonClient returns a client of the running daemon for e's root, or nil
// when the CLI is to act in-process: no system bus, no daemon, or
// KOS_UPGRADE_NO_DAEMON=1.
func daemonClient(e *env) *dbusapi.Client {
	if os.Getenv(noDaemonEnv) == "1" {
		return nil
	}
	cl, err := dbusapi.Connect(e.engine.Root.Dir)
	if err != nil {
		return nil
	}
	return cl
}

// viaDaemon runs fn with a client of the running daemon. It reports false
// (act in-process) when no daemon runs or the daemon serves another root.
func viaDaemon(e *env, fn func(cl *dbusapi.Client) error) (bool, error) {
	cl := daemonClient(e)
	if cl == nil {
		return false, nil
	}
	defer cl.Close()
	err := fn(cl)
	if errors.Is(err, dbusapi.ErrWrongRoot) || errors.Is(err, dbusapi.ErrNoDaemon) {
		return false, nil
	}
	return true, err
}

// statusViaDaemon is status through the daemon; with --follow it streams
// the running job's progress until it ends.
func statusViaDaemon(c *cli.Context, e *env) (bool, error) {
	return viaDaemon(e, func(cl *dbusapi.Client) error {
		var w *dbusapi.Watch
		if c.Bool("follow") {
			var err error
			if w, err = cl.Watch(); err != nil {
				return err
			}
			defer w.Close()
		}
		r, err := cl.Report(c.Context)
		if err != nil {
			return err
		}
		if w != nil && r.Job != nil {
			if !e.json {
				fmt.Fprintf(e.out, "Following %s (started %s)...\n", r.Job.Name, r.Job.StartedAt.Local().Format(time.DateTime))
			}
			f, err := w.Follow(c.Context, e.sink)
			if err != nil {
				return err
			}
			e.sink.Close()
			if !e.json {
				outcome := "finished"
				if !f.Success {
					outcome = "failed"
				}
				fmt.Fprintf(e.out, "%s %s: %s\n\n", r.Job.Name, outcome, f.Message)
			}
			if r, err = cl.Report(c.Context); err != nil {
				return err
			}
		}
		if e.json {
			return e.printJSON(r)
		}
		if r.Job != nil {
			fmt.Fprintf(e.out, "Job:      %s running in the daemon (step %s, %d%%)\n", r.Job.Name, r.Job.Step, r.Job.Percent)
		}
		printStatus(e.out, &r.StatusReport)
		return nil
	})
}

// prepareViaDaemon starts the prepare in the daemon and shows its progress.
func prepareViaDaemon(c *cli.Context, e *env, opts upgrader.PrepareOptions) (bool, error) {
	started := time.Now()
	return viaDaemon(e, func(cl *dbusapi.Client) error {
		w, err := cl.Watch()
		if err != nil {
			return err
		}
		defer w.Close()
		if err := cl.Prepare(c.Context, opts); err != nil {
			return err
		}
		f, err := w.Follow(c.Context, e.sink)
		if err != nil {
			return fmt.Errorf("%w; the prepare goes on in the kos-upgrade daemon: kos-upgrade status --follow", err)
		}
		e.sink.Close()
		if !f.Success {
			if e.json {
				printInhibitingReport(e, started)
			}
			return errors.New(f.Message)
		}
		r, err := cl.Report(c.Context)
		if err != nil {
			return err
		}
		if r.Plan == nil {
			return fmt.Errorf("the daemon prepared the upgrade but its plan cannot be read: %s", r.PlanError)
		}
		if e.json {
			return e.printJSON(r.Plan)
		}
		printPlan(e.out, r.Plan)
		fmt.Fprintln(e.out, "\nNext: kos-upgrade reboot")
		return nil
	})
}

// rebootViaDaemon arms (and reboots unless --no-reboot) through the daemon.
// --kexec is not a daemon option: it is done in-process.
func rebootViaDaemon(c *cli.Context, e *env, noStage bool) (bool, error) {
	if c.Bool("kexec") {
		return false, nil
	}
	return viaDaemon(e, func(cl *dbusapi.Client) error {
		noReboot := c.Bool("no-reboot")
		if err := cl.Reboot(c.Context, noReboot, noStage); err != nil {
			return err
		}
		r, err := cl.Report(c.Context)
		if err != nil {
			return err
		}
		target, id := r.State.Target, r.State.PlanID
		if e.json {
			return e.printJSON(map[string]any{"armed": true, "plan_id": id, "rebooting": !noReboot})
		}
		fmt.Fprintf(e.out, "The upgrade to %s is armed: it runs at the next boot.\n", target)
		if r.Plan != nil {
			printArmedSources(e.out, r.Plan)
		}
		return nil
	})
}

// cancelViaDaemon cancels through the daemon.
func cancelViaDaemon(c *cli.Context, e *env) (bool, error) {
	return viaDaemon(e, func(cl *dbusapi.Client) error {
		if err := cl.Cancel(c.Context); err != nil {
			return err
		}
		if e.json {
			return e.printJSON(map[string]any{"cancelled": true})
		}
		fmt.Fprintln(e.out, "Cancelled: nothing is armed, the plan and staged packages are gone.")
		return nil
	})
}

// rollbackViaDaemon rolls back (and reboots unless --no-reboot) through the
// daemon.
func rollbackViaDaemon(c *cli.Context, e *env) (bool, error) {
	return viaDaemon(e, func(cl *dbusapi.Client) error {
		if err := cl.Rollback(c.Context, c.Bool("no-reboot")); err != nil {
			return err
		}
		r, err := cl.Report(c.Context)
		if err != nil {
			return err
		}
		if e.json {
			return e.printJSON(r.State.LastResult)
		}
		if lr := r.State.LastResult; lr != nil {
			fmt.Fprintf(e.out, "Rolled back: the next boot starts %s again.\n", lr.Snapshot)
		}
		return nil
	})
}

// announceApply adds the system sinks (journal, plymouth, sd_notify: those
// available) to the engine's sink for an apply, announces the Started
// milestone when the run really starts (its first step), and returns the
// function that announces how it ended.
func announceApply(e *env) func(*upgrader.ApplyResult, error) {
	sinks := progress.SystemSinks(upgrader.ApplyProgress())
	if len(sinks) == 0 {
		return func(*upgrader.ApplyResult, error) {}
	}
	started := false
	inner := e.engine.Sink
	e.engine.Sink = progress.Func(func(ev progress.Event) {
		if !started {
			started = true
			progress.Announce(sinks, progress.Milestone{Kind: progress.Started, Op: "apply"})
		}
		if inner != nil {
			inner.Report(ev)
		}
		sinks.Report(ev)
	})
	return func(res *upgrader.ApplyResult, err error) {
		m := progress.Milestone{Op: "apply"}
		if res != nil && res.Result != nil {
			m.From, m.To, m.RunID = res.Result.From, res.Result.To, res.Result.RunID
		}
		switch {
		case err != nil:
			m.Kind, m.Error = progress.Failed, err.Error()
		case res != nil && res.Ran:
			m.Kind = progress.Finished
		default:
			return
		}
		progress.Announce(sinks, m)
	}
}

// printInhibitingReport prints, as check --json does, the assessment that
// stopped a prepare the daemon ran since started: the daemon saved it in
// the state directory (readable by root).
func printInhibitingReport(e *env, started time.Time) {
	r, err := preflight.Load(e.engine.Root.StateDir())
	if err != nil || !r.Inhibited || r.GeneratedAt.Before(started.Add(-time.Second)) {
		return
	}
	if err := e.printJSON(r); err != nil {
		fmt.Fprintf(os.Stderr, "kos-upgrade: warning: %v\n", err)
	}
}
