package dbusapi

import (
	"reflect"
	"sync"

	"github.com/godbus/dbus/v5"
)

// properties implements org.freedesktop.DBus.Properties for the one
// interface of the service, read-only.
//
// Why not godbus's prop package: its setter stores a new value with
// dbus.Store into the old one, which merges maps, so an a{sv} property
// (Plan, LastResult) can never lose a key nor become empty again; and it
// emits one PropertiesChanged per property, where a refresh should emit
// one signal with everything that changed together (State with Plan).
type properties struct {
	conn *dbus.Conn
	path dbus.ObjectPath
	// touch is called on every incoming call (idle accounting).
	touch func()

	mu     sync.RWMutex
	values map[string]any
}

const propertiesIface = "org.freedesktop.DBus.Properties"

var (
	errUnknownInterface = dbus.NewError("org.freedesktop.DBus.Error.UnknownInterface", []any{"no such interface: only " + Interface + " has properties here"})
	errUnknownProperty  = dbus.NewError("org.freedesktop.DBus.Error.UnknownProperty", []any{"no such property"})
	errReadOnly         = dbus.NewError("org.freedesktop.DBus.Error.PropertyReadOnly", []any{"the properties of " + Interface + " are read-only; use its methods"})
)

// Get implements org.freedesktop.DBus.Properties.Get.
func (p *properties) Get(iface, name string) (dbus.Variant, *dbus.Error) {
	p.touch()
	if iface != Interface && iface != "" {
		return dbus.Variant{}, errUnknownInterface
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	v, ok := p.values[name]
	if !ok {
		return dbus.Variant{}, errUnknownProperty
	}
	return dbus.MakeVariant(v), nil
}

// GetAll implements org.freedesktop.DBus.Properties.GetAll.
func (p *properties) GetAll(iface string) (map[string]dbus.Variant, *dbus.Error) {
	p.touch()
	if iface != Interface && iface != "" {
		return nil, errUnknownInterface
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	out := make(map[string]dbus.Variant, len(p.values))
	for k, v := range p.values {
		out[k] = dbus.MakeVariant(v)
	}
	return out, nil
}

// Set implements org.freedesktop.DBus.Properties.Set: everything is
// read-only.
func (p *properties) Set(iface, name string, v dbus.Variant) *dbus.Error {
	p.touch()
	return errReadOnly
}

// value returns the current value of name.
func (p *properties) value(name string) any {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.values[name]
}

// update sets the given values and emits one PropertiesChanged with those
// that changed. Values are replaced, never merged; callers must not modify
// a value after passing it.
func (p *properties) update(kv map[string]any) {
	p.mu.Lock()
	changed := map[string]dbus.Variant{}
	for k, v := range kv {
		if old, ok := p.values[k]; ok && reflect.DeepEqual(old, v) {
			continue
		}
		p.values[k] = v
		changed[k] = dbus.MakeVariant(v)
	}
	p.mu.Unlock()
	if len(changed) == 0 || p.conn == nil {
		return
	}
	_ = p.conn.Emit(p.path, propertiesIface+".PropertiesChanged", Interface, changed, []string{})
}

const propertiesXML = `	<interface name="org.freedesktop.DBus.Properties">
		<method name="Get">
			<arg name="interface_name" type="s" direction="in"/>
			<arg name="property_name" type="s" direction="in"/>
			<arg name="value" type="v" direction="out"/>
		</method>
		<method name="GetAll">
			<arg name="interface_name" type="s" direction="in"/>
			<arg name="props" type="a{sv}" direction="out"/>
		</method>
		<method name="Set">
			<arg name="interface_name" type="s" direction="in"/>
			<arg name="property_name" type="s" direction="in"/>
			<arg name="value" type="v" direction="in"/>
		</method>
		<signal name="PropertiesChanged">
			<arg name="interface_name" type="s"/>
			<arg name="changed_properties" type="a{sv}"/>
			<arg name="invalidated_properties" type="as"/>
		</signal>
	</interface>
`
