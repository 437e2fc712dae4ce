package upgrader

import (
	"errors"

	"github.com/keyarchos/kos-upgrade/pkg/preflight"
)

// The engine's sentinel errors. Operations wrap them with %w; callers test
// them with errors.Is, or let Classify sort them.
var (
	// ErrBusy says another kos-upgrade process holds the state directory.
	ErrBusy = errors.New("another kos-upgrade operation is running")
	// ErrNoPlan says there is no prepared plan.
	ErrNoPlan = errors.New("no upgrade is prepared")
	// ErrNotArmed says apply found nothing to do.
	ErrNotArmed = errors.New("no upgrade is armed")
	// ErrBadPlan is wrapped by every plan parse and validation error.
	ErrBadPlan = errors.New("invalid plan")
	// ErrStalePlan says the system changed since prepare.
	ErrStalePlan = errors.New("the installed packages changed since the upgrade was prepared")
	// ErrBadState is wrapped by every error about a damaged state
	// document.
	ErrBadState = errors.New("the state document is damaged")
	// ErrStagedChanged says a staged package is missing or differs from
	// the plan's checksum.
	ErrStagedChanged = errors.New("the staged packages do not match the plan")
	// ErrNotStageable says the prepared upgrade cannot be staged before
	// the reboot (the root is not on btrfs, or initramfs mode): the
	// offline transaction is its only path.
	ErrNotStageable = errors.New("the upgrade cannot be staged before the reboot")
)

// Class is what kind of failure an error is, as far as a caller that must
// react to it (an exit code, a D-Bus error name) is concerned.
type Class int

const (
	// ClassFailed: the operation failed; the message says why.
	ClassFailed Class = iota
	// ClassBusy: another operation holds the state directory (ErrBusy).
	ClassBusy
	// ClassStalePlan: the plan no longer matches the system, or cannot be
	// used (ErrStalePlan, ErrBadPlan, ErrStagedChanged): prepare again.
	ClassStalePlan
	// ClassInhibited: the assessment found an inhibitor
	// (preflight.ErrInhibited).
	ClassInhibited
)

// Classify sorts err into its Class. It is the one classification: the
// CLI's exit codes (cmd/kos-upgrade) and the daemon's D-Bus error names
// (pkg/dbusapi) are both derived from it, so an operation refused
// in-process and through the daemon ends the same way. nil is ClassFailed;
// callers test for nil first.
func Classify(err error) Class {
	switch {
	case errors.Is(err, ErrBusy):
		return ClassBusy
	case errors.Is(err, ErrStalePlan), errors.Is(err, ErrBadPlan), errors.Is(err, ErrStagedChanged):
		return ClassStalePlan
	case errors.Is(err, preflight.ErrInhibited):
		return ClassInhibited
	}
	return ClassFailed
}
