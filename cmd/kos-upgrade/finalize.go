package main

// The shutdown-time finalize of a staged upgrade (docs/stage.md,
// units/kos-upgrade-finalize.service): `reboot --stage` records the choice
// (finalizeMarker) and starts the unit; the unit's stop action, late in the
// shutdown, runs `apply --at-shutdown` (upgrader.Engine.Finalize).

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// finalizeUnit does the shutdown-time finalize in its stop action.
const finalizeUnit = "kos-upgrade-finalize.service"

// finalizeMarker, in the state directory, says that `reboot --stage` chose
// to finalize at shutdown: `apply --at-shutdown` does nothing without it
// (an earlier `reboot --stage` started the unit, a later --no-finalize
// removed the marker).
const finalizeMarker = "finalize-at-shutdown"

var (
	// startAndWait starts unit and waits for its start job to finish.
	startAndWait = systemdStartAndWait
	// systemState returns systemd's SystemState ("running", "stopping", ...).
	systemState = systemdSystemState
)

// setFinalizeMarker records (on) or forgets (off) the shutdown-time
// finalize choice.
func setFinalizeMarker(root sysroot.Root, on bool) error {
	return setMarker(root, finalizeMarker, "at-shutdown\n", on)
}

// armFinalize makes the staged upgrade finalize at the next shutdown: the
// marker, then the unit started (its start job done, so that a reboot
// queued right after cannot cancel it). It says why it cannot; the
// offline boot is the fallback, so that is not an error.
func armFinalize(ctx context.Context, e *env) error {
	if e.engine.Root.Dir != runningRoot {
		return fmt.Errorf("--root %s is not the running system", e.engine.Root.Dir)
	}
	if fi, err := os.Stat(systemdRunDir); err != nil || !fi.IsDir() {
		return fmt.Errorf("systemd is not running here")
	}
	if err := setFinalizeMarker(e.engine.Root, true); err != nil {
		return err
	}
	if err := startAndWait(ctx, finalizeUnit); err != nil {
		return errors.Join(err, setFinalizeMarker(e.engine.Root, false))
	}
	return nil
}

// finalizeAtShutdown is `apply --at-shutdown`, the unit's stop action: it
// finalizes only when the system is shutting down and `reboot --stage`
// chose it; anything else leaves the armed upgrade to the offline boot.
func finalizeAtShutdown(ctx context.Context, e *env) error {
	p := filepath.Join(e.engine.Root.StateDir(), finalizeMarker)
	if _, err := os.Stat(p); err != nil {
		fmt.Fprintln(e.out, "Nothing to finalize at shutdown: reboot --stage did not ask for it; an armed upgrade runs in the offline boot.")
		return nil
	}
	if e.engine.Root.Dir == runningRoot {
		s, err := systemState(ctx)
		if err != nil {
			return fmt.Errorf("cannot tell whether the system is shutting down (%w); an armed upgrade runs in the offline boot", err)
		}
		if s != "stopping" {
			fmt.Fprintf(e.out, "Not finalizing: the system is %s, not shutting down (the unit was stopped by hand?); an armed upgrade runs in the offline boot.\n", s)
			return nil
		}
	}
	// One use: whatever happens now, the next shutdown does not finalize
	// unless reboot --stage asks again.
	if err := setFinalizeMarker(e.engine.Root, false); err != nil {
		return err
	}
	done := announceApply(e)
	res, err := e.engine.Finalize(ctx)
	done(res, err)
	if err != nil {
		return err
	}
	if !res.Ran {
		fmt.Fprintln(e.out, "Not finalized at shutdown: "+res.Reason)
		return nil
	}
	return printApply(e, res)
}

// systemdStartAndWait starts unit (mode replace) and waits for the job.
func systemdStartAndWait(ctx context.Context, unit string) error {
	ctx, cancel := context.WithTimeout(ctx, rebootTimeout)
	defer cancel()
	conn, err := connectSystemd(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch := make(chan string, 1)
	if _, err := conn.StartUnitContext(ctx, unit, "replace", ch); err != nil {
		return fmt.Errorf("systemd refused to start %s: %w", unit, err)
	}
	select {
	case r := <-ch:
		if r != "done" {
			return fmt.Errorf("cannot start %s: job %s", unit, r)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("cannot start %s: %w", unit, ctx.Err())
	}
}

// systemdSystemState returns the manager's SystemState.
func systemdSystemState(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, rebootTimeout)
	defer cancel()
	conn, err := connectSystemd(ctx)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	v, err := conn.GetManagerProperty("SystemState")
	if err != nil {
		return "", fmt.Errorf("cannot read systemd's SystemState: %w", err)
	}
	return strings.Trim(v, `"`), nil
}
