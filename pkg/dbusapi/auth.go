package dbusapi

import (
	"context"
	"fmt"
	"os/user"
	"strconv"
	"time"

	"github.com/godbus/dbus/v5"
)

const (
	polkitName      = "org.freedesktop.PolicyKit1"
	polkitPath      = dbus.ObjectPath("/org/freedesktop/PolicyKit1/Authority")
	polkitCheckAuth = "org.freedesktop.PolicyKit1.Authority.CheckAuthorization"
)

// authorizer decides who may call the privileged methods: root always;
// others when polkit runs on the bus and authorizes the method's action;
// nobody else. Reading properties, GetReport and GetHistory need nothing.
type authorizer struct {
	conn *dbus.Conn
	// interactiveTimeout bounds a polkit check that may ask the user.
	interactiveTimeout time.Duration
}

type polkitSubject struct {
	Kind    string
	Details map[string]dbus.Variant
}

type polkitResult struct {
	IsAuthorized bool
	IsChallenge  bool
	Details      map[string]string
}

// callerUID asks the bus for the uid of sender.
func (a *authorizer) callerUID(ctx context.Context, sender string) (uint32, error) {
	var uid uint32
	err := a.conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.GetConnectionUnixUser", 0, sender).Store(&uid)
	return uid, err
}

// authorize returns nil when sender may run method (whose polkit action is
// action), else an AccessDenied error a person understands. interactive is
// the caller's ALLOW_INTERACTIVE_AUTHORIZATION flag.
func (a *authorizer) authorize(ctx context.Context, sender, method, action string, interactive bool) (uint32, *dbus.Error) {
	uid, err := a.callerUID(ctx, sender)
	if err != nil {
		return 0, dbus.NewError(ErrorAccessDenied, []any{fmt.Sprintf(
			"%s refused: cannot tell who is calling (%v)", method, err)})
	}
	if uid == 0 {
		return uid, nil
	}
	who := "uid " + strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
		who = u.Username + " (" + who + ")"
	}
	var has bool
	if err := a.conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.NameHasOwner", 0, polkitName).Store(&has); err != nil || !has {
		return uid, dbus.NewError(ErrorAccessDenied, []any{fmt.Sprintf(
			"%s refused: only root may do this and you are %s; polkit is not running to authorize you otherwise. "+
				"Nothing was changed. Run the command as root (sudo kos-upgrade ...).", method, who)})
	}
	var flags uint32
	timeout := 25 * time.Second
	if interactive {
		flags = 1 // AllowUserInteraction
		timeout = a.interactiveTimeout
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	subject := polkitSubject{Kind: "system-bus-name", Details: map[string]dbus.Variant{"name": dbus.MakeVariant(sender)}}
	var res polkitResult
	err = a.conn.Object(polkitName, polkitPath).CallWithContext(pctx, polkitCheckAuth, 0,
		subject, action, map[string]string{}, flags, "").Store(&res)
	if err != nil {
		return uid, dbus.NewError(ErrorAccessDenied, []any{fmt.Sprintf(
			"%s refused: polkit could not authorize %s for %s: %v. Nothing was changed.", method, who, action, err)})
	}
	if !res.IsAuthorized {
		hint := ""
		if res.IsChallenge {
			hint = " Authentication is required: run it from a session with a polkit agent, or as root."
		}
		return uid, dbus.NewError(ErrorAccessDenied, []any{fmt.Sprintf(
			"%s refused: polkit does not allow %s to do %s. Nothing was changed.%s", method, who, action, hint)})
	}
	return uid, nil
}
