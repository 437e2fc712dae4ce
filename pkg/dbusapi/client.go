package dbusapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/godbus/dbus/v5"

	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// Client talks to a running daemon for the system at one root.
type Client struct {
	conn *dbus.Conn
	obj  dbus.BusObject
	root string
}

// Connect returns a client of the daemon on the system bus
// (DBUS_SYSTEM_BUS_ADDRESS, else the standard socket) for the system at
// root. It fails with ErrNoDaemon when there is no bus or nobody owns
// org.kos.Upgrade1: the caller then acts in-process. A daemon that is only
// activatable is not started: reading the state file is as good and
// faster.
func Connect(root string) (*Client, error) {
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		return nil, fmt.Errorf("%w: no system bus: %v", ErrNoDaemon, err)
	}
	return NewClient(conn, root)
}

// NewClient is Connect on an open connection, which the client owns from
// then on.
func NewClient(conn *dbus.Conn, root string) (*Client, error) {
	var has bool
	if err := conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, BusName).Store(&has); err != nil || !has {
		conn.Close()
		return nil, ErrNoDaemon
	}
	if abs, err := filepath.Abs(root); err == nil {
		root = abs
	}
	return &Client{conn: conn, obj: conn.Object(BusName, ObjectPath), root: root}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Conn returns the client's connection.
func (c *Client) Conn() *dbus.Conn { return c.conn }

// RemoteError is an error the daemon answered with. It unwraps to the
// matching sentinel of this package and of upgrader (ErrBusy,
// ErrStalePlan), so the CLI maps it to the same exit code as an in-process
// failure.
type RemoteError struct {
	Name    string
	Message string
}

func (e *RemoteError) Error() string { return e.Message }

// Unwrap returns the sentinels e stands for.
func (e *RemoteError) Unwrap() []error {
	switch e.Name {
	case ErrorBusy:
		return []error{ErrBusy, upgrader.ErrBusy}
	case ErrorStalePlan:
		return []error{ErrStalePlan, upgrader.ErrStalePlan}
	case ErrorAccessDenied:
		return []error{ErrAccessDenied}
	case ErrorWrongRoot:
		return []error{ErrWrongRoot}
	case "org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner":
		return []error{ErrNoDaemon}
	}
	return nil
}

func remote(err error) error {
	var de dbus.Error
	if errors.As(err, &de) {
		msg := de.Name
		if len(de.Body) > 0 {
			if s, ok := de.Body[0].(string); ok {
				msg = s
			}
		}
		return &RemoteError{Name: de.Name, Message: msg}
	}
	var dep *dbus.Error
	if errors.As(err, &dep) {
		return remote(*dep)
	}
	return err
}

func (c *Client) call(ctx context.Context, method string, opts map[string]dbus.Variant, out ...any) error {
	if opts == nil {
		opts = map[string]dbus.Variant{}
	}
	opts["root"] = dbus.MakeVariant(c.root)
	call := c.obj.CallWithContext(ctx, Interface+"."+method, dbus.FlagAllowInteractiveAuthorization, opts)
	if call.Err != nil {
		return remote(call.Err)
	}
	if len(out) > 0 {
		return call.Store(out...)
	}
	return nil
}

// Report returns the status document.
func (c *Client) Report(ctx context.Context) (*Report, error) {
	var s string
	if err := c.call(ctx, "GetReport", nil, &s); err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal([]byte(s), &r); err != nil {
		return nil, fmt.Errorf("cannot read the daemon's report: %w", err)
	}
	return &r, nil
}

// ReportJSON returns the status document as the daemon sent it.
func (c *Client) ReportJSON(ctx context.Context) (string, error) {
	var s string
	err := c.call(ctx, "GetReport", nil, &s)
	return s, err
}

// PrepareOptions mirror upgrader.PrepareOptions; repos are ID=URL, iso
// the images' absolute paths.
func prepareOptions(o upgrader.PrepareOptions) map[string]dbus.Variant {
	m := map[string]dbus.Variant{}
	if o.To != "" {
		m["to"] = dbus.MakeVariant(o.To)
	}
	if o.Snapshot != "" {
		m["snapshot"] = dbus.MakeVariant(o.Snapshot)
	}
	if len(o.Repos) > 0 {
		var rs []string
		for _, r := range o.Repos {
			rs = append(rs, r.ID+"="+r.BaseURL)
		}
		m["repos"] = dbus.MakeVariant(rs)
	}
	if o.Mode != "" {
		m["mode"] = dbus.MakeVariant(o.Mode)
	}
	if len(o.Images) > 0 {
		m["iso"] = dbus.MakeVariant(o.Images)
	}
	if o.SkipSignatures {
		m["no_gpg_check"] = dbus.MakeVariant(true)
	}
	if len(o.Answers) > 0 {
		m["answers"] = dbus.MakeVariant(o.Answers)
	}
	return m
}

// Prepare starts a prepare job in the daemon; watch it with Watch (call
// Watch first so that no signal is missed).
func (c *Client) Prepare(ctx context.Context, o upgrader.PrepareOptions) error {
	return c.call(ctx, "Prepare", prepareOptions(o))
}

// Arm arms the prepared plan; it returns the plan id.
func (c *Client) Arm(ctx context.Context, noStage bool) (string, error) {
	var id string
	err := c.call(ctx, "Arm", map[string]dbus.Variant{"no_stage": dbus.MakeVariant(noStage)}, &id)
	return id, err
}

// Reboot stages (on btrfs, unless noStage), arms and, unless noReboot,
// reboots the machine.
func (c *Client) Reboot(ctx context.Context, noReboot, noStage bool) error {
	return c.call(ctx, "Reboot", map[string]dbus.Variant{"no_reboot": dbus.MakeVariant(noReboot), "no_stage": dbus.MakeVariant(noStage)})
}

// Cancel disarms and drops the plan.
func (c *Client) Cancel(ctx context.Context) error { return c.call(ctx, "Cancel", nil) }

// Rollback boots the pre-upgrade root again (after a reboot unless
// noReboot).
func (c *Client) Rollback(ctx context.Context, noReboot bool) error {
	return c.call(ctx, "Rollback", map[string]dbus.Variant{"no_reboot": dbus.MakeVariant(noReboot)})
}

// Property reads one property.
func (c *Client) Property(ctx context.Context, name string) (dbus.Variant, error) {
	var v dbus.Variant
	err := c.obj.CallWithContext(ctx, "org.freedesktop.DBus.Properties.Get", 0, Interface, name).Store(&v)
	return v, remote(err)
}

// Watch is a subscription to the daemon's Progress and Finished signals.
type Watch struct {
	c   *Client
	ch  chan *dbus.Signal
	opt []dbus.MatchOption
}

// Finish is the content of a Finished signal.
type Finish struct {
	Success bool
	Message string
}

// Watch subscribes to the daemon's signals.
func (c *Client) Watch() (*Watch, error) {
	w := &Watch{c: c, ch: make(chan *dbus.Signal, 256),
		opt: []dbus.MatchOption{dbus.WithMatchObjectPath(ObjectPath), dbus.WithMatchInterface(Interface)}}
	if err := c.conn.AddMatchSignal(w.opt...); err != nil {
		return nil, fmt.Errorf("cannot watch the daemon: %w", err)
	}
	c.conn.Signal(w.ch)
	return w, nil
}

// Close ends the subscription.
func (w *Watch) Close() {
	w.c.conn.RemoveSignal(w.ch)
	_ = w.c.conn.RemoveMatchSignal(w.opt...)
}

// Follow passes each Progress signal to sink as an event (N/Total is the
// overall percent out of 100) until a Finished signal arrives, which it
// returns, or ctx ends.
func (w *Watch) Follow(ctx context.Context, sink progress.Sink) (Finish, error) {
	for {
		select {
		case <-ctx.Done():
			return Finish{}, ctx.Err()
		case <-w.c.conn.Context().Done():
			return Finish{}, fmt.Errorf("lost the connection to the daemon before the job finished")
		case sig := <-w.ch:
			if sig == nil || sig.Path != ObjectPath {
				continue
			}
			switch sig.Name {
			case Interface + ".Progress":
				var (
					step, msg string
					pct       uint32
				)
				if dbus.Store(sig.Body, &step, &pct, &msg) != nil {
					continue
				}
				ev := progress.Event{Step: step, Message: msg}
				if msg == "" {
					ev.N, ev.Total = int(pct), 100
				}
				sink.Report(ev)
			case Interface + ".Finished":
				var f Finish
				if dbus.Store(sig.Body, &f.Success, &f.Message) != nil {
					continue
				}
				return f, nil
			}
		}
	}
}
