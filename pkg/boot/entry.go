package boot

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/atomicfile"
	"github.com/keyarchos/kos-upgrade/pkg/safefile"
)

// Keys of a Boot Loader Specification type #1 entry. Keys not listed here
// are kept as they are on every rewrite.
const (
	KeyTitle      = "title"
	KeyVersion    = "version"
	KeyMachineID  = "machine-id"
	KeySortKey    = "sort-key"
	KeyLinux      = "linux"
	KeyInitrd     = "initrd" // may appear several times
	KeyOptions    = "options"
	KeyDevicetree = "devicetree"
	KeyID         = "id"
	KeyGrubUsers  = "grub_users"
	KeyGrubArg    = "grub_arg"
	KeyGrubClass  = "grub_class"
)

// EntriesDirRel is where the entries live below $BOOT.
const EntriesDirRel = "loader/entries"

// line is one line of an entry file. A comment or blank line has an empty
// key and keeps its raw text; a key line is re-rendered only when changed.
type line struct {
	raw   string
	key   string
	value string
	dirty bool
}

// Entry is one BLS entry file. The zero value is an empty entry; use
// ParseEntry or ReadEntry to load one. Order, comments and unknown keys are
// preserved by Format; only lines whose value changed are re-rendered.
type Entry struct {
	// ID is the file name without ".conf" and without a boot counting
	// suffix ("+3-0"). It is what grub2's blscfg uses as menu entry id
	// (saved_entry, next_entry) and what systemd-boot shows.
	ID string
	// Path is the file the entry was read from or is written to; empty
	// for an entry built in memory.
	Path string
	// BootDir is $BOOT: the directory linux/initrd paths are relative to
	// (the parent of loader/entries).
	BootDir string
	// Counter is the systemd-boot boot counting state parsed from the file
	// name; Counter.Set is false when the name has no counter.
	Counter Counter

	lines []line
}

// ParseEntry parses the content of an entry file.
func ParseEntry(id string, data []byte) (*Entry, error) {
	e := &Entry{ID: id}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		raw := strings.TrimRight(sc.Text(), "\r")
		t := strings.TrimSpace(raw)
		if t == "" || strings.HasPrefix(t, "#") {
			e.lines = append(e.lines, line{raw: raw})
			continue
		}
		var k, v string
		if i := strings.IndexAny(t, " \t"); i >= 0 {
			k, v = t[:i], strings.TrimSpace(t[i+1:])
		} else {
			k, v = t, ""
		}
		e.lines = append(e.lines, line{raw: raw, key: k, value: v})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("cannot parse boot entry %s: %w", id, err)
	}
	return e, nil
}

// Format renders the entry. Unchanged lines keep their exact text; changed
// and new lines are written "key value".
func (e *Entry) Format() []byte {
	var b bytes.Buffer
	for _, l := range e.lines {
		if l.key != "" && (l.dirty || l.raw == "") {
			b.WriteString(l.key)
			if l.value != "" {
				b.WriteByte(' ')
				b.WriteString(l.value)
			}
		} else {
			b.WriteString(l.raw)
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// Clone returns a deep copy of the entry.
func (e *Entry) Clone() *Entry {
	c := *e
	c.lines = append([]line(nil), e.lines...)
	return &c
}

// Get returns the value of the first line with key, and whether there is one.
func (e *Entry) Get(key string) (string, bool) {
	for _, l := range e.lines {
		if l.key == key {
			return l.value, true
		}
	}
	return "", false
}

// Value returns the value of key or "".
func (e *Entry) Value(key string) string {
	v, _ := e.Get(key)
	return v
}

// GetAll returns the values of every line with key, in order.
func (e *Entry) GetAll(key string) []string {
	var vs []string
	for _, l := range e.lines {
		if l.key == key {
			vs = append(vs, l.value)
		}
	}
	return vs
}

// Keys returns the keys in file order, repeated keys once.
func (e *Entry) Keys() []string {
	seen := map[string]bool{}
	var ks []string
	for _, l := range e.lines {
		if l.key != "" && !seen[l.key] {
			seen[l.key] = true
			ks = append(ks, l.key)
		}
	}
	return ks
}

// Set sets key to value: the first line with key is changed in place and
// later lines with the same key are removed; without one, a line is
// appended.
func (e *Entry) Set(key, value string) {
	e.SetAll(key, []string{value})
}

// SetAll replaces every line with key by one line per value, at the place
// of the first existing one (appended when there is none). No values
// removes the key.
func (e *Entry) SetAll(key string, values []string) {
	var out []line
	done := false
	for _, l := range e.lines {
		if l.key != key {
			out = append(out, l)
			continue
		}
		if done {
			continue
		}
		done = true
		for _, v := range values {
			if v == l.value && !l.dirty {
				out = append(out, l)
			} else {
				out = append(out, line{key: key, value: v, dirty: true})
			}
		}
	}
	if !done {
		for _, v := range values {
			out = append(out, line{key: key, value: v, dirty: true})
		}
	}
	e.lines = out
}

// Remove deletes every line with key.
func (e *Entry) Remove(key string) { e.SetAll(key, nil) }

// Title, Version, Linux are shorthands for the keys of the same name.
func (e *Entry) Title() string   { return e.Value(KeyTitle) }
func (e *Entry) Version() string { return e.Value(KeyVersion) }
func (e *Entry) Linux() string   { return e.Value(KeyLinux) }

// Initrds returns every initrd path: each initrd line may name several,
// separated by spaces (EL8 writes "initrd /initramfs-X.img $tuned_initrd").
// Grub variables ($name) are returned as they are.
func (e *Entry) Initrds() []string {
	var out []string
	for _, v := range e.GetAll(KeyInitrd) {
		out = append(out, strings.Fields(v)...)
	}
	return out
}

// Options returns the kernel command line of the entry: the options lines
// joined with spaces (the BLS says several options lines are concatenated).
func (e *Entry) Options() Options {
	return ParseOptions(strings.Join(e.GetAll(KeyOptions), " "))
}

// SetOptions replaces the options: one options line, at the place of the
// first one.
func (e *Entry) SetOptions(o Options) {
	if len(o) == 0 {
		e.Remove(KeyOptions)
		return
	}
	e.Set(KeyOptions, o.String())
}

// Files returns the paths relative to BootDir of the kernel, initrds and
// devicetree the entry boots, without grub variables.
func (e *Entry) Files() []string {
	var fs []string
	add := func(p string) {
		if p == "" || strings.HasPrefix(p, "$") {
			return
		}
		fs = append(fs, p)
	}
	add(e.Linux())
	for _, p := range e.Initrds() {
		add(p)
	}
	add(e.Value(KeyDevicetree))
	return fs
}

// validID reports whether id can name an entry file.
func validID(id string) bool {
	return id != "" && id != "." && id != ".." && !strings.ContainsAny(id, "/\x00\n")
}

// ReadEntry reads the entry id from dir (a loader/entries directory). A
// file with a boot counting suffix (id+3-1.conf) is found too. It returns
// ErrNotFound when there is no such entry.
func ReadEntry(dir, id string) (*Entry, error) {
	if !validID(id) {
		return nil, fmt.Errorf("invalid boot entry id %q", id)
	}
	es, err := ListEntries(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range es {
		if e.ID == id {
			return e, nil
		}
	}
	return nil, fmt.Errorf("boot entry %s in %s: %w", id, dir, ErrNotFound)
}

// ListEntries reads every *.conf entry in dir, sorted by file name. A
// missing directory gives no entries and no error.
func ListEntries(dir string) ([]*Entry, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("cannot list boot entries: %w", err)
	}
	var out []*Entry
	for _, de := range des {
		name := de.Name()
		if de.IsDir() || !strings.HasSuffix(name, ".conf") || strings.HasPrefix(name, ".") {
			continue
		}
		id, c := ParseCounter(strings.TrimSuffix(name, ".conf"))
		p := filepath.Join(dir, name)
		data, err := safefile.ReadFollowing(p, maxBootFile)
		if err != nil {
			return nil, fmt.Errorf("cannot read boot entry: %w", err)
		}
		e, err := ParseEntry(id, data)
		if err != nil {
			return nil, err
		}
		e.Path = p
		e.BootDir = filepath.Dir(filepath.Dir(dir))
		e.Counter = c
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// WriteEntry writes e atomically into dir as <id>.conf (or with its
// counter suffix when e.Counter is set) and sets e.Path and e.BootDir.
// Writing the same entry twice gives the same file. If a file for the same
// id exists under another name (a different counter), it is replaced and
// the old name removed.
func WriteEntry(dir string, e *Entry) error {
	if !validID(e.ID) {
		return fmt.Errorf("invalid boot entry id %q", e.ID)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("cannot create %s: %w", dir, err)
	}
	p := filepath.Join(dir, e.Counter.FileName(e.ID))
	if err := atomicfile.WriteFile(p, e.Format(), 0o644); err != nil {
		return err
	}
	all, err := ListEntries(dir)
	if err != nil {
		return err
	}
	for _, old := range all {
		if old.ID == e.ID && old.Path != p {
			// The same id under another counter: drop the other name.
			if err := atomicfile.Remove(old.Path); err != nil {
				return err
			}
		}
	}
	e.Path = p
	e.BootDir = filepath.Dir(filepath.Dir(dir))
	return nil
}

// DeleteEntry removes the entry id (whatever its counter suffix) from dir
// durably. Deleting an entry that does not exist returns ErrNotFound.
func DeleteEntry(dir, id string) error {
	e, err := ReadEntry(dir, id)
	if err != nil {
		return err
	}
	return atomicfile.Remove(e.Path)
}

// ctxErr returns the context's error, so long loops can stop early.
func ctxErr(ctx context.Context) error {
	if ctx == nil {
		return nil
	}
	return ctx.Err()
}
