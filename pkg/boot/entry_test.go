package boot

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestEntryRoundTrip(t *testing.T) {
	in := "# header comment\ntitle  Two  spaces kept\n\nversion 1.0\ninitrd /a.img\noptions root=/dev/sda1 ro\ninitrd /b.img\nunknown-key value with  spaces\n"
	e, err := ParseEntry("x", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if string(e.Format()) != in {
		t.Fatalf("round trip changed the entry:\n%s", e.Format())
	}
	if e.Title() != "Two  spaces kept" {
		t.Errorf("title = %q", e.Title())
	}
	if got := e.Initrds(); len(got) != 2 || got[1] != "/b.img" {
		t.Errorf("initrds = %v", got)
	}
	e.SetAll(KeyInitrd, []string{"/c.img"})
	e.Set(KeyVersion, "2.0")
	e.SetOptions(e.Options().Set("root", "/dev/sda2"))
	e.Set("devicetree", "/dtb")
	want := "# header comment\ntitle  Two  spaces kept\n\nversion 2.0\ninitrd /c.img\noptions root=/dev/sda2 ro\nunknown-key value with  spaces\ndevicetree /dtb\n"
	if got := string(e.Format()); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if got := e.Files(); len(got) != 2 || got[0] != "/c.img" || got[1] != "/dtb" {
		t.Errorf("files = %v", got)
	}
	e.Remove("devicetree")
	if _, ok := e.Get("devicetree"); ok {
		t.Error("Remove")
	}
	if ks := e.Keys(); len(ks) != 5 {
		t.Errorf("keys = %v", ks)
	}
}

func TestEntryFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "boot", EntriesDirRel)
	e, _ := ParseEntry("a", []byte("title A\nlinux /vmlinuz-1\n"))
	if err := WriteEntry(dir, e); err != nil {
		t.Fatal(err)
	}
	if e.Path != filepath.Join(dir, "a.conf") || e.BootDir != filepath.Dir(filepath.Dir(dir)) {
		t.Errorf("path %s bootdir %s", e.Path, e.BootDir)
	}
	// A counted file for the same id replaces the plain one.
	e.Counter = Counter{Set: true, Left: 3}
	if err := WriteEntry(dir, e); err != nil {
		t.Fatal(err)
	}
	names, _ := filepath.Glob(filepath.Join(dir, "*"))
	if len(names) != 1 || filepath.Base(names[0]) != "a+3.conf" {
		t.Fatalf("files = %v", names)
	}
	got, err := ReadEntry(dir, "a")
	if err != nil || got.Title() != "A" || !got.Counter.Set || got.Counter.Left != 3 {
		t.Fatalf("ReadEntry = %+v, %v", got, err)
	}
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(dir, ".hidden.conf"), []byte("x"), 0o644)
	es, err := ListEntries(dir)
	if err != nil || len(es) != 1 {
		t.Fatalf("ListEntries = %d, %v", len(es), err)
	}
	if err := DeleteEntry(dir, "a"); err != nil {
		t.Fatal(err)
	}
	if err := DeleteEntry(dir, "a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete: %v", err)
	}
	if _, err := ReadEntry(dir, "../x"); err == nil {
		t.Error("ReadEntry accepted a path")
	}
	if es, err := ListEntries(filepath.Join(dir, "missing")); err != nil || es != nil {
		t.Errorf("missing dir: %v %v", es, err)
	}
}

func TestCounter(t *testing.T) {
	tests := []struct {
		name, id string
		c        Counter
	}{
		{"plain", "plain", Counter{}},
		{"e+3", "e", Counter{Set: true, Left: 3}},
		{"e+2-1", "e", Counter{Set: true, Left: 2, Done: 1, HasDone: true}},
		{"e+0-3", "e", Counter{Set: true, Left: 0, Done: 3, HasDone: true}},
		{"a+b+1", "a+b", Counter{Set: true, Left: 1}},
		{"e+x", "e+x", Counter{}},
		{"e+1-x", "e+1-x", Counter{}},
		{"e+", "e+", Counter{}},
		{"+3", "+3", Counter{}},
		{"e+-1", "e+-1", Counter{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, c := ParseCounter(tt.name)
			if id != tt.id || c != tt.c {
				t.Fatalf("got %q %+v, want %q %+v", id, c, tt.id, tt.c)
			}
			if c.Set && c.FileName(id) != tt.name+".conf" {
				t.Errorf("FileName = %s", c.FileName(id))
			}
		})
	}
	c := Counter{Set: true, Left: 2}
	c = c.Tick()
	if c.FileName("e") != "e+1-1.conf" || c.Bad() {
		t.Errorf("tick 1: %s", c.FileName("e"))
	}
	c = c.Tick()
	if c.FileName("e") != "e+0-2.conf" || !c.Bad() {
		t.Errorf("tick 2: %s", c.FileName("e"))
	}
	if c.Tick() != c {
		t.Error("a bad entry ticks no further")
	}
}
