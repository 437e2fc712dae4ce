package dbusapi

import (
	"encoding/xml"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"
)

// TestIntrospectionMatchesCode: the installed XML describes exactly the
// methods (with their argument signatures), properties (with their types)
// and signals the service implements.
func TestIntrospectionMatchesCode(t *testing.T) {
	var node introspect.Node
	if err := xml.Unmarshal([]byte(IntrospectionXML), &node); err != nil {
		t.Fatalf("the XML does not parse: %v", err)
	}
	if len(node.Interfaces) != 1 || node.Interfaces[0].Name != Interface {
		t.Fatalf("want one interface %s, got %+v", Interface, node.Interfaces)
	}
	iface := node.Interfaces[0]

	// Methods: what godbus exports from object, without the Message and
	// Sender parameters it fills in itself.
	msgT, senderT := reflect.TypeOf(dbus.Message{}), reflect.TypeOf(dbus.Sender(""))
	errT := reflect.TypeOf((*dbus.Error)(nil))
	code := map[string]string{}
	ot := reflect.TypeOf(object{})
	for i := range ot.NumMethod() {
		m := ot.Method(i)
		if m.Type.NumOut() == 0 || m.Type.Out(m.Type.NumOut()-1) != errT {
			continue
		}
		var in, out []string
		for j := 1; j < m.Type.NumIn(); j++ {
			if at := m.Type.In(j); at != msgT && at != senderT {
				in = append(in, dbus.SignatureOfType(at).String())
			}
		}
		for j := 0; j < m.Type.NumOut()-1; j++ {
			out = append(out, dbus.SignatureOfType(m.Type.Out(j)).String())
		}
		code[m.Name] = strings.Join(in, ",") + "->" + strings.Join(out, ",")
	}
	doc := map[string]string{}
	for _, m := range iface.Methods {
		var in, out []string
		for _, a := range m.Args {
			if a.Direction == "out" {
				out = append(out, a.Type)
			} else {
				in = append(in, a.Type)
			}
		}
		doc[m.Name] = strings.Join(in, ",") + "->" + strings.Join(out, ",")
		if len(in) != 1 || in[0] != "a{sv}" {
			t.Errorf("method %s must take exactly one a{sv} options argument", m.Name)
		}
	}
	if !reflect.DeepEqual(code, doc) {
		t.Errorf("methods differ:\n code %v\n  xml %v", code, doc)
	}

	// Properties: the initial values of the service have the documented types.
	initial := newPropertyValues()
	var names []string
	for _, p := range iface.Properties {
		names = append(names, p.Name)
		v, ok := initial[p.Name]
		if !ok {
			t.Errorf("property %s is not implemented", p.Name)
			continue
		}
		if sig := dbus.SignatureOf(v).String(); sig != p.Type || p.Access != "read" {
			t.Errorf("property %s: code %s, xml %s access %s", p.Name, sig, p.Type, p.Access)
		}
	}
	if len(names) != len(initial) {
		t.Errorf("xml has properties %v, code %d", names, len(initial))
	}
	var sigs []string
	for _, sg := range iface.Signals {
		var ts []string
		for _, a := range sg.Args {
			ts = append(ts, a.Type)
		}
		sigs = append(sigs, sg.Name+"("+strings.Join(ts, ",")+")")
	}
	sort.Strings(sigs)
	if want := []string{"Finished(b,s)", "Progress(s,u,s)"}; !reflect.DeepEqual(sigs, want) {
		t.Errorf("signals %v, want %v", sigs, want)
	}
}
