package boot

import (
	"fmt"
	"path"
	"strconv"
	"strings"
)

// Counter is the boot counting state of the Boot Loader Specification,
// carried in an entry's file name: "<id>+<left>[-<done>].conf". The boot
// loader decrements left and increments done before each boot of the
// entry; an entry with left == 0 is "bad" and sorted after all others;
// blessing (systemd-bless-boot) renames the file to "<id>.conf".
type Counter struct {
	Set     bool // the name has a counter
	Left    int  // tries left
	Done    int  // tries done
	HasDone bool // the name has the "-<done>" part
}

// ParseCounter splits a file name without ".conf" into the entry id and its
// counter. A malformed suffix is part of the id, as for systemd-boot.
func ParseCounter(name string) (string, Counter) {
	i := strings.LastIndexByte(name, '+')
	if i <= 0 {
		return name, Counter{}
	}
	suffix := name[i+1:]
	l, d, hasDone := strings.Cut(suffix, "-")
	left, err := strconv.Atoi(l)
	if err != nil || left < 0 || !isDigits(l) {
		return name, Counter{}
	}
	c := Counter{Set: true, Left: left}
	if hasDone {
		done, err := strconv.Atoi(d)
		if err != nil || !isDigits(d) {
			return name, Counter{}
		}
		c.Done, c.HasDone = done, true
	}
	return name[:i], c
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// FileName returns the entry file name for id with this counter.
func (c Counter) FileName(id string) string {
	switch {
	case !c.Set:
		return id + ".conf"
	case c.HasDone || c.Done > 0:
		return fmt.Sprintf("%s+%d-%d.conf", id, c.Left, c.Done)
	default:
		return fmt.Sprintf("%s+%d.conf", id, c.Left)
	}
}

// Bad reports whether the entry has used up its tries.
func (c Counter) Bad() bool { return c.Set && c.Left == 0 }

// Tick returns the counter after one boot attempt, as systemd-boot
// renames the file before booting it: left-1, done+1 (no change once left
// is 0, or without a counter).
func (c Counter) Tick() Counter {
	if !c.Set || c.Left == 0 {
		return c
	}
	return Counter{Set: true, Left: c.Left - 1, Done: c.Done + 1, HasDone: true}
}

// cmpBool is systemd's CMP(x, y) for booleans: false before true.
func cmpBool(x, y bool) int {
	switch {
	case x == y:
		return 0
	case !x:
		return -1
	}
	return 1
}

// strverscmpImproved orders version strings as systemd does
// (strverscmp_improved): negative if a is older than b.
func strverscmpImproved(a, b string) int {
	valid := func(c byte) bool {
		return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || strings.IndexByte("~-^.", c) >= 0
	}
	digit := func(c byte) bool { return c >= '0' && c <= '9' }
	alpha := func(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	at := func(s string, i int) byte {
		if i < len(s) {
			return s[i]
		}
		return 0
	}
	i, j := 0, 0
	for {
		for i < len(a) && !valid(a[i]) {
			i++
		}
		for j < len(b) && !valid(b[j]) {
			j++
		}
		if at(a, i) == '~' || at(b, j) == '~' {
			if r := cmpBool(at(a, i) != '~', at(b, j) != '~'); r != 0 {
				return r
			}
			i, j = i+1, j+1
		}
		if i >= len(a) || j >= len(b) {
			return strings.Compare(a[min(i, len(a)):], b[min(j, len(b)):])
		}
		for _, sep := range []byte{'-', '^', '.'} {
			if at(a, i) == sep || at(b, j) == sep {
				if r := cmpBool(at(a, i) != sep, at(b, j) != sep); r != 0 {
					return r
				}
				i, j = i+1, j+1
			}
		}
		if digit(at(a, i)) || digit(at(b, j)) {
			ai, bj := i, j
			for ai < len(a) && digit(a[ai]) {
				ai++
			}
			for bj < len(b) && digit(b[bj]) {
				bj++
			}
			if r := cmpBool(ai != i, bj != j); r != 0 {
				return r
			}
			for i < ai && a[i] == '0' {
				i++
			}
			for j < bj && b[j] == '0' {
				j++
			}
			if la, lb := ai-i, bj-j; la != lb {
				if la < lb {
					return -1
				}
				return 1
			}
			if r := strings.Compare(a[i:ai], b[j:bj]); r != 0 {
				return r
			}
			i, j = ai, bj
		} else {
			ai, bj := i, j
			for ai < len(a) && alpha(a[ai]) {
				ai++
			}
			for bj < len(b) && alpha(b[bj]) {
				bj++
			}
			n := min(ai-i, bj-j)
			if r := strings.Compare(a[i:i+n], b[j:j+n]); r != 0 {
				return r
			}
			if la, lb := ai-i, bj-j; la != lb {
				if la < lb {
					return -1
				}
				return 1
			}
			if ai == i && bj == j {
				// Neither advanced (cannot happen with valid chars); stop.
				return strings.Compare(a[i:], b[j:])
			}
			i, j = ai, bj
		}
	}
}

// sdEntry is what systemd-boot knows of an entry when it picks the default.
type sdEntry struct {
	id       string // file name, lower case, with counter and ".conf"
	entryID  string // our id (no counter, no .conf)
	sortKey  string
	machine  string
	version  string
	left     int // -1: no counting
	done     int
	hasSortK bool
}

func sdEntryOf(e *Entry, c Counter) sdEntry {
	s := sdEntry{
		id:      strings.ToLower(c.FileName(e.ID)),
		entryID: e.ID,
		machine: e.Value(KeyMachineID),
		version: e.Value(KeyVersion),
		left:    -1,
		done:    -1,
	}
	s.sortKey, s.hasSortK = e.Get(KeySortKey)
	if c.Set {
		s.left, s.done = c.Left, c.Done
	}
	return s
}

// sdCompare is systemd-boot's config_entry_compare.
func sdCompare(a, b sdEntry) int {
	if r := cmpBool(a.left == 0, b.left == 0); r != 0 {
		return r
	}
	if r := cmpBool(!a.hasSortK, !b.hasSortK); r != 0 {
		return r
	}
	if a.hasSortK && b.hasSortK {
		if r := strings.Compare(a.sortKey, b.sortKey); r != 0 {
			return r
		}
		if r := strings.Compare(a.machine, b.machine); r != 0 {
			return r
		}
		if r := -strverscmpImproved(a.version, b.version); r != 0 {
			return r
		}
	}
	if r := -strverscmpImproved(a.id, b.id); r != 0 {
		return r
	}
	if a.left < 0 || b.left < 0 {
		return 0
	}
	if a.left != b.left {
		if a.left > b.left {
			return -1
		}
		return 1
	}
	switch {
	case a.done < b.done:
		return -1
	case a.done > b.done:
		return 1
	}
	return 0
}

// sdSelect returns the entry id systemd-boot boots by default with the
// loader.conf default pattern (empty: none), "" when there is no entry.
func sdSelect(es []sdEntry, pattern string) string {
	sorted := append([]sdEntry(nil), es...)
	// insertion sort: stable, tiny lists
	for i := 1; i < len(sorted); i++ {
		for k := i; k > 0 && sdCompare(sorted[k-1], sorted[k]) > 0; k-- {
			sorted[k-1], sorted[k] = sorted[k], sorted[k-1]
		}
	}
	if pattern != "" {
		p := strings.ToLower(pattern)
		for _, e := range sorted {
			if ok, _ := path.Match(p, e.id); ok {
				return e.entryID
			}
		}
	}
	if len(sorted) == 0 {
		return ""
	}
	return sorted[0].entryID
}

// globEscape escapes glob metacharacters.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// exactPattern matches the entry id with or without a counter, and nothing
// else: "<id>.conf", "<id>+3.conf", "<id>+2-1.conf".
func exactPattern(id string) string { return globEscape(id) + "[+.]*" }
