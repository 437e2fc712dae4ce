package main

// kos-upgrade health: the first boot of an upgraded system
// (kos-upgrade-health.service, ordered before boot-complete.target).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/keyarchos/kos-upgrade/pkg/execlog"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// healthDirRel holds site health checks: every executable file in it runs
// (sorted by name) and must exit 0 for the upgraded system to be blessed.
const healthDirRel = sysroot.ConfigDirRel + "/health.d"

// healthScriptTimeout bounds one site check.
const healthScriptTimeout = 5 * time.Minute

// healthUnit is the unit that runs this command; it is running, so it is
// never counted as a failed unit.
const healthUnit = "kos-upgrade-health.service"

// errUnhealthy says the upgraded system failed its check and was rolled back.
var errUnhealthy = errors.New("the upgraded system failed its health check")

func healthCmd() *cli.Command {
	return &cli.Command{
		Name:  "health",
		Usage: "first boot after an upgrade: check the new system, then keep it or fall back (run by kos-upgrade-health.service)",
		Description: `health runs once the upgraded system has booted (before boot-complete.target).
When the boot entry on trial is the one running (judged from the kernel
command line), it checks the system: no failed systemd units (on the running
system only), and every executable in /etc/kos-upgrade/health.d exits 0. A
healthy system's entry becomes the permanent default. An unhealthy one is
rolled back: the old root and boot entry become the defaults again, the
fallback is recorded, and with --reboot the machine reboots into the old
system. When the old system runs because the boot loader gave up on the new
one, the fallback is recorded and the old root made the default again.
Without an upgrade awaiting its first boot it does nothing.

Examples:
   kos-upgrade health --reboot        what kos-upgrade-health.service runs
   kos-upgrade health --json          judge the running system and say what was done`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "cmdline", Usage: "judge this kernel command `LINE` instead of /proc/cmdline (tests)"},
			&cli.BoolFlag{Name: "reboot", Usage: "reboot after a fallback from the running new system (the unit passes it)"},
			&cli.BoolFlag{Name: "no-unit-check", Usage: "do not count failed systemd units as unhealthy"},
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
			var checks []upgrader.HealthCheck
			// Units are the running system's: checked only when acting on it.
			if !c.Bool("no-unit-check") && e.engine.Root.Dir == runningRoot {
				checks = append(checks, upgrader.HealthCheck{Name: "failed systemd units", Run: failedUnits})
			}
			checks = append(checks, upgrader.HealthCheck{Name: healthDirRel, Run: func(ctx context.Context) error {
				return runHealthScripts(ctx, e.engine.Root)
			}})
			res, err := e.engine.Health(c.Context, upgrader.HealthOptions{Cmdline: cmdline, Checks: checks})
			if err != nil {
				return err
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

func printHealth(e *env, r *upgrader.HealthResult) {
	switch r.Action {
	case upgrader.HealthBlessed:
		fmt.Fprintf(e.out, "The upgraded system is healthy: boot entry %s is now the default.\n", r.Entry)
	case upgrader.HealthFellBack:
		fmt.Fprintf(e.out, "Rolled back: %s\n", r.Reason)
		if r.Reboot {
			fmt.Fprintln(e.out, "The old system boots next.")
		}
	default:
		fmt.Fprintf(e.out, "Nothing to do: %s.\n", r.Reason)
	}
}

// failedUnits fails when systemd has units in the failed state (other than
// this check's own).
func failedUnits(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, rebootTimeout)
	defer cancel()
	conn, err := connectSystemd(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	units, err := conn.ListUnitsFilteredContext(ctx, []string{"failed"})
	if err != nil {
		return fmt.Errorf("cannot list failed units: %w", err)
	}
	var names []string
	for _, u := range units {
		if u.Name != healthUnit {
			names = append(names, u.Name)
		}
	}
	if len(names) > 0 {
		sort.Strings(names)
		return fmt.Errorf("failed units: %s", strings.Join(names, ", "))
	}
	return nil
}

// runHealthScripts runs every executable regular file of health.d, sorted
// by name, each isolated (execlog: working directory /, fixed environment)
// with KOS_UPGRADE_ROOT set to the root; the first one that does not exit 0
// fails the check with its output. The directory and each file must be
// owned by root and writable by root only (judged by Lstat: a symbolic
// link is refused, not followed); one that is not fails the check unrun.
func runHealthScripts(ctx context.Context, root sysroot.Root) error {
	dir := root.Path(healthDirRel)
	fi, err := os.Lstat(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := safeRootOwned(dir, fi, true); err != nil {
		return err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, d := range ents {
		p := filepath.Join(dir, d.Name())
		if strings.HasPrefix(d.Name(), ".") {
			continue
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 == 0 {
			continue // not executable: not a check
		}
		if err := safeRootOwned(p, fi, false); err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, healthScriptTimeout)
		cmd := execlog.Command(cctx, []string{p}, "KOS_UPGRADE_ROOT="+root.Dir)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err = cmd.Run()
		cancel()
		if err != nil {
			msg := strings.TrimSpace(out.String())
			if len(msg) > 2000 {
				msg = "..." + msg[len(msg)-2000:]
			}
			if msg == "" {
				msg = "(no output)"
			}
			return fmt.Errorf("%s: %v: %s", p, err, msg)
		}
	}
	return nil
}

// safeRootOwned refuses a health check (dir: its directory) that someone
// other than root could have written: not a regular file (directory), not
// owned by root, or writable by its group or others.
func safeRootOwned(p string, fi os.FileInfo, dir bool) error {
	what := "a regular file"
	ok := fi.Mode().IsRegular()
	if dir {
		what, ok = "a directory", fi.IsDir()
	}
	if !ok {
		return fmt.Errorf("health check %s is not %s (%s): not run; it must be owned by root and writable by root only", p, what, fi.Mode().Type())
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	if st == nil || st.Uid != 0 {
		return fmt.Errorf("health check %s is not owned by root: not run; it must be owned by root and writable by root only", p)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("health check %s is writable by its group or others (%04o): not run; it must be owned by root and writable by root only", p, fi.Mode().Perm())
	}
	return nil
}
