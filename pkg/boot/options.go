package boot

import (
	"strings"
)

// Options is a kernel command line split into its parameters, each kept as
// written (quotes included), so that an untouched parameter is rendered
// back byte for byte. Parameters are separated by blanks outside double
// quotes, as the kernel splits them.
type Options []string

// ParseOptions splits a command line into parameters.
func ParseOptions(s string) Options {
	var out Options
	var cur strings.Builder
	inQuote, has := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			cur.WriteRune(r)
			has = true
		case (r == ' ' || r == '\t' || r == '\n') && !inQuote:
			if has {
				out = append(out, cur.String())
				cur.Reset()
				has = false
			}
		default:
			cur.WriteRune(r)
			has = true
		}
	}
	if has {
		out = append(out, cur.String())
	}
	return out
}

// String renders the parameters separated by single spaces. A parameter
// with an unterminated double quote (only the last of a parsed command
// line can have one: the quote runs to the end) that is no longer last gets
// its quote closed, else the kernel, which splits the same way, would read
// the parameters after it (a root= appended by kos-upgrade) as part of it.
func (o Options) String() string {
	var b strings.Builder
	for i, p := range o {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(p)
		if i < len(o)-1 && strings.Count(p, `"`)%2 == 1 {
			b.WriteByte('"')
		}
	}
	return b.String()
}

// splitParam returns the key and unquoted value of one parameter, and
// whether it has a value ("ro" has none, "quiet=" has an empty one).
// Both key="a b" and "key=a b" are understood.
func splitParam(p string) (key, value string, hasValue bool) {
	u := p
	if strings.HasPrefix(u, `"`) && strings.HasSuffix(u, `"`) && len(u) >= 2 {
		u = u[1 : len(u)-1]
	}
	k, v, ok := strings.Cut(u, "=")
	if ok && len(v) >= 2 && strings.HasPrefix(v, `"`) && strings.HasSuffix(v, `"`) {
		v = v[1 : len(v)-1]
	}
	return k, v, ok
}

// formatParam renders key=value, quoting the value when it holds blanks.
func formatParam(key, value string) string {
	if strings.ContainsAny(value, " \t") {
		return key + `="` + value + `"`
	}
	return key + "=" + value
}

// Key returns the key of parameter i.
func (o Options) Key(i int) string {
	k, _, _ := splitParam(o[i])
	return k
}

// Has reports whether any parameter has key (with or without a value).
func (o Options) Has(key string) bool {
	for i := range o {
		if o.Key(i) == key {
			return true
		}
	}
	return false
}

// Get returns the unquoted value of the last parameter with key (the kernel
// and dracut use the last one), and whether there is one with a value.
func (o Options) Get(key string) (string, bool) {
	val, found := "", false
	for _, p := range o {
		if k, v, ok := splitParam(p); k == key && ok {
			val, found = v, true
		}
	}
	return val, found
}

// GetAll returns the unquoted values of every parameter with key, in order
// (rd.lvm.lv= may be given once per LV).
func (o Options) GetAll(key string) []string {
	var out []string
	for _, p := range o {
		if k, v, ok := splitParam(p); k == key && ok {
			out = append(out, v)
		}
	}
	return out
}

// Set gives key the value: the first parameter with key is replaced in
// place and later ones are removed; without one, key=value is appended.
// Values with blanks are quoted.
func (o Options) Set(key, value string) Options {
	return o.set(key, formatParam(key, value))
}

// SetFlag makes key present as a flag without value ("ro", "quiet"),
// replacing key=value forms; an existing flag stays where it is.
func (o Options) SetFlag(key string) Options { return o.set(key, key) }

func (o Options) set(key, param string) Options {
	out := make(Options, 0, len(o)+1)
	done := false
	for i, p := range o {
		if o.Key(i) != key {
			out = append(out, p)
			continue
		}
		if !done {
			out = append(out, param)
			done = true
		}
	}
	if !done {
		out = append(out, param)
	}
	return out
}

// Remove drops every parameter with key.
func (o Options) Remove(key string) Options {
	out := make(Options, 0, len(o))
	for i, p := range o {
		if o.Key(i) != key {
			out = append(out, p)
		}
	}
	return out
}

// ReplaceValue replaces the parameter key=old (compared unquoted) by
// key=new in place, and reports whether there was one. Other parameters
// with the same key are kept (for rd.lvm.lv=vg/swap next to vg/root).
func (o Options) ReplaceValue(key, old, new string) (Options, bool) {
	out := make(Options, len(o))
	copy(out, o)
	found := false
	for i, p := range o {
		if k, v, ok := splitParam(p); k == key && ok && v == old {
			out[i] = formatParam(key, new)
			found = true
		}
	}
	return out, found
}

// Append adds key=value at the end (even if key is present: for
// repeatable parameters).
func (o Options) Append(key, value string) Options {
	out := append(Options(nil), o...)
	return append(out, formatParam(key, value))
}
