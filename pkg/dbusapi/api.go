// Package dbusapi is kos-upgrade's D-Bus interface: the service that the
// `kos-upgrade daemon` command runs (it owns org.kos.Upgrade1 on the system
// bus and serves /org/kos/Upgrade1), its authorization, and the client the
// CLI uses to talk to it. The interface is described in org.kos.Upgrade1.xml
// (installed under /usr/share/dbus-1/interfaces) and docs/dbus.md.
package dbusapi

import (
	_ "embed"
	"errors"
	"strings"

	"github.com/godbus/dbus/v5"
)

// Names of the service.
const (
	BusName    = "org.kos.Upgrade1"
	ObjectPath = dbus.ObjectPath("/org/kos/Upgrade1")
	Interface  = "org.kos.Upgrade1"
)

// Error names the service answers with, besides the standard
// org.freedesktop.DBus.Error.AccessDenied and .InvalidArgs.
const (
	ErrorBusy         = Interface + ".Error.Busy"
	ErrorFailed       = Interface + ".Error.Failed"
	ErrorStalePlan    = Interface + ".Error.StalePlan"
	ErrorWrongRoot    = Interface + ".Error.WrongRoot"
	ErrorNotSupported = Interface + ".Error.NotSupported"
	ErrorAccessDenied = "org.freedesktop.DBus.Error.AccessDenied"
	ErrorInvalidArgs  = "org.freedesktop.DBus.Error.InvalidArgs"
)

// Polkit action ids, one per privileged method (units/org.kos.upgrade.policy).
const (
	ActionCheck   = "org.kos.upgrade.check"
	ActionPrepare = "org.kos.upgrade.prepare"
	// ActionPrepareUnsafe is needed, instead of ActionPrepare, by a
	// Prepare without signature checks, with repositories of the caller's
	// choosing, without a snapshot or to an older release (auth_admin,
	// never kept).
	ActionPrepareUnsafe = "org.kos.upgrade.prepare-unsafe"
	ActionArm           = "org.kos.upgrade.arm"
	ActionReboot        = "org.kos.upgrade.reboot"
	ActionCancel        = "org.kos.upgrade.cancel"
	ActionRollback      = "org.kos.upgrade.rollback"
)

// IntrospectionXML is the interface description, as installed.
//
//go:embed org.kos.Upgrade1.xml
var IntrospectionXML string

// interfaceXML returns the <interface> element of IntrospectionXML.
func interfaceXML() string {
	s := IntrospectionXML
	i := strings.Index(s, "<interface ")
	j := strings.LastIndex(s, "</interface>")
	return s[i : j+len("</interface>")]
}

// Error sentinels the client maps D-Bus errors back to, so that callers
// (and the CLI's exit codes) can use errors.Is.
var (
	// ErrBusy: another job runs in the daemon, or another process holds
	// the state directory.
	ErrBusy = errors.New("busy")
	// ErrAccessDenied: the caller may not do this.
	ErrAccessDenied = errors.New("access denied")
	// ErrStalePlan: the plan no longer matches the system.
	ErrStalePlan = errors.New("stale plan")
	// ErrWrongRoot: the daemon serves another system than the one asked
	// for; act in-process instead.
	ErrWrongRoot = errors.New("the daemon serves another root")
	// ErrNoDaemon: no daemon owns the name (or there is no system bus).
	ErrNoDaemon = errors.New("the kos-upgrade daemon is not running")
)
