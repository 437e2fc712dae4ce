package boot

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

// FuzzParseEntry: any entry file parses or fails without a panic; what
// parses formats to text that parses to the same keys and values, and
// formats the same again.
func FuzzParseEntry(f *testing.F) {
	for _, s := range []string{
		"title KOS 5.9\nversion 5.9\nlinux /vmlinuz-5.9\ninitrd /initramfs-5.9.img $tuned_initrd\noptions $kernelopts root=/dev/vda1\n",
		"# comment\n\ntitle\tx\r\noptions  a=b  c\ngrub_users $grub_users\ngrub_arg --unrestricted\n",
		"linux /../../etc/shadow\ninitrd /boot/x\ndevicetree /dtb\n",
	} {
		f.Add("kos-upgrade-5.9+3-1", []byte(s))
	}
	f.Fuzz(func(t *testing.T, id string, data []byte) {
		e, err := ParseEntry(id, data)
		if err != nil {
			return
		}
		_, _, _ = e.Files(), e.Options(), e.Initrds()
		out := e.Format()
		e2, err := ParseEntry(id, out)
		if err != nil {
			t.Fatalf("formatted entry does not parse: %v\n%q", err, out)
		}
		if !reflect.DeepEqual(pairs(e), pairs(e2)) {
			t.Fatalf("keys and values changed by a round trip:\n%q\n%q", pairs(e), pairs(e2))
		}
		if out2 := e2.Format(); !bytes.Equal(out, out2) {
			t.Fatalf("Format is not stable:\n%q\n%q", out, out2)
		}
		// A changed entry formats and parses back to what was set.
		e.SetOptions(append(e.Options(), "kos=1"))
		if got, _ := ParseEntry(id, e.Format()); got == nil || !got.Options().Has("kos") {
			t.Fatalf("option set is lost: %q", e.Format())
		}
	})
}

func pairs(e *Entry) []string {
	var out []string
	for _, k := range e.Keys() {
		out = append(out, k+"="+strings.Join(e.GetAll(k), "\x00"))
	}
	return out
}

// FuzzParseEnv: any grubenv block parses or fails without a panic; a block
// that parses and formats (it fits) parses back to the same variables.
func FuzzParseEnv(f *testing.F) {
	env := NewEnv()
	env.Set(EnvSavedEntry, "kos-5.9")
	env.Set(EnvKernelOpts, "root=/dev/mapper/vg-root ro rd.lvm.lv=vg/root")
	env.Set("odd", "a\\b\nc")
	b, _ := env.Format()
	f.Add(b)
	f.Add([]byte(GrubenvSignature + "# comment\nx=1\n=empty\nnoeq\nlast=unterminated"))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := ParseEnv(data)
		if err != nil {
			return
		}
		out, err := e.Format()
		if err != nil {
			return // does not fit the block
		}
		e2, err := ParseEnv(out)
		if err != nil {
			t.Fatalf("formatted block does not parse: %v", err)
		}
		if !reflect.DeepEqual(e.Map(), e2.Map()) {
			t.Fatalf("variables changed by a round trip:\n%q\n%q\nformatted %q", e.Map(), e2.Map(), out)
		}
	})
}

// FuzzParseCounter: a file name splits into id and counter and the counter
// writes the same name back (for names with a well-formed counter).
func FuzzParseCounter(f *testing.F) {
	for _, s := range []string{"kos+3", "kos+0-3", "kos", "a+b+1", "+1", "x+01", "x+1-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		id, c := ParseCounter(name)
		if !c.Set {
			return
		}
		id2, c2 := ParseCounter(strings.TrimSuffix(c.FileName(id), ".conf"))
		if id2 != id || c2.Left != c.Left || c2.Done != c.Done {
			t.Fatalf("%q: %q %+v, back %q %+v", name, id, c, id2, c2)
		}
		_ = c.Tick()
	})
}
