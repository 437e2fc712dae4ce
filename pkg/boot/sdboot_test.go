package boot

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

func TestStrverscmp(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{
		{"6.1.0-10", "6.1.0-9", 1},
		{"4.18.0-553.el8", "4.18.0-80.el8", 1},
		{"1.0", "1.0", 0},
		{"1.0~rc1", "1.0", -1},
		{"1.0", "1.0.1", -1},
		{"123-9", "123.1-1", -1},
		{"abc", "abd", -1},
		{"kos-upgrade-x", "0123abc-6.1", -1}, // digits are newer than letters
		{"kos-upgrade-x", "abc123-6.1", 1},
		{"a10", "a9", 1},
		{"", "1", -1},
	} {
		if got := strverscmpImproved(c.a, c.b); sign(got) != c.want {
			t.Errorf("strverscmp(%q, %q) = %d, want %d", c.a, c.b, got, c.want)
		}
		if got := strverscmpImproved(c.b, c.a); sign(got) != -c.want {
			t.Errorf("strverscmp(%q, %q) = %d, want %d", c.b, c.a, got, -c.want)
		}
	}
}

func sign(n int) int {
	switch {
	case n < 0:
		return -1
	case n > 0:
		return 1
	}
	return 0
}

func mkEntry(id, extra string, c Counter) *Entry {
	e, _ := ParseEntry(id, []byte("title "+id+"\n"+extra))
	e.Counter = c
	return e
}

func TestSdSelect(t *testing.T) {
	bad := Counter{Set: true, Left: 0, Done: 3, HasDone: true}
	tests := []struct {
		name    string
		entries []*Entry
		pattern string
		want    string
	}{
		{"newest version first with sort-key",
			[]*Entry{mkEntry("m-6.1.0-9", "sort-key debian\nmachine-id m\nversion 6.1.0-9\n", Counter{}),
				mkEntry("m-6.1.0-10", "sort-key debian\nmachine-id m\nversion 6.1.0-10\n", Counter{})}, "", "m-6.1.0-10"},
		{"bad entry sorts last",
			[]*Entry{mkEntry("m-6.1.0-9", "sort-key debian\nmachine-id m\nversion 6.1.0-9\n", Counter{}),
				mkEntry("m-6.1.0-10", "sort-key debian\nmachine-id m\nversion 6.1.0-10\n", bad)}, "", "m-6.1.0-9"},
		{"pattern matching both skips the bad one",
			[]*Entry{mkEntry("m-6.1.0-9", "", Counter{}), mkEntry("m-6.1.0-10", "", bad)}, "m-*", "m-6.1.0-9"},
		{"pattern matching only a bad entry still picks it",
			[]*Entry{mkEntry("m-6.1.0-9", "", Counter{}), mkEntry("m-6.1.0-10", "", bad)}, exactPattern("m-6.1.0-10"), "m-6.1.0-10"},
		{"exact pattern matches a counted file",
			[]*Entry{mkEntry("a", "", Counter{}), mkEntry("b", "", Counter{Set: true, Left: 2})}, exactPattern("a"), "a"},
		{"exact pattern does not match a longer id",
			[]*Entry{mkEntry("a-1", "", Counter{}), mkEntry("a", "", Counter{})}, exactPattern("a"), "a"},
		{"no match falls back to the first",
			[]*Entry{mkEntry("a", "", Counter{}), mkEntry("b", "", Counter{})}, "zzz*", "b"},
		{"sort-key entries before those without",
			[]*Entry{mkEntry("z", "", Counter{}), mkEntry("a", "sort-key x\n", Counter{})}, "", "a"},
		{"case folded", []*Entry{mkEntry("Arch", "", Counter{})}, "arch*", "Arch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := selectWith(tt.entries, tt.pattern, "", Counter{}); got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
}

// sdRoot makes a root with an ESP at /efi holding systemd-boot, entries
// "m-6.1.0-9" (the default, by loader.conf) and loader.conf.
func sdRoot(t *testing.T, loaderConf string) *SystemdBoot {
	t.Helper()
	root, _ := sysroot.New(t.TempDir())
	os.MkdirAll(root.Path("/efi/EFI/systemd"), 0o755)
	os.WriteFile(root.Path("/efi/EFI/systemd/systemd-bootx64.efi"), []byte("MZ"), 0o644)
	os.MkdirAll(root.Path("/efi/loader"), 0o755)
	if loaderConf != "" {
		os.WriteFile(root.Path("/efi/loader/loader.conf"), []byte(loaderConf), 0o644)
	}
	e := mkEntry("m-6.1.0-9", "sort-key debian\nmachine-id m\nversion 6.1.0-9\nlinux /m/6.1.0-9/linux\noptions root=UUID=1 rw\n", Counter{})
	if err := WriteEntry(root.Path("/efi/loader/entries"), e); err != nil {
		t.Fatal(err)
	}
	s, err := NewSystemdBoot(root)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// sdBoot models systemd-boot at boot: pick the default, and tick its
// counter (rename the file) before booting it.
func sdBoot(t *testing.T, s *SystemdBoot) string {
	t.Helper()
	ctx := context.Background()
	id, err := s.Default(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e, err := ReadEntry(s.EntriesDir(), id)
	if err != nil {
		t.Fatal(err)
	}
	if e.Counter.Set && e.Counter.Left > 0 {
		if err := renameEntry(e, e.Counter.Tick()); err != nil {
			t.Fatal(err)
		}
	}
	return id
}

func TestSystemdBootTrial(t *testing.T) {
	for _, tt := range []struct {
		name       string
		loaderConf string
		newEntry   string
		tries      int
		bless      bool
		want       []string
	}{
		{"no default line, newer version, fallback", "timeout 3\n",
			"sort-key debian\nmachine-id m\nversion 6.1.0-10\n", 2, false,
			[]string{"kos-upgrade-m-6.1.0-10", "kos-upgrade-m-6.1.0-10", "m-6.1.0-9", "m-6.1.0-9"}},
		{"exact default line, fallback after 3", "timeout 3\ndefault m-6.1.0-9.conf\n# keep me\n",
			"sort-key debian\nmachine-id m\nversion 6.1.0-10\n", 3, false,
			[]string{"kos-upgrade-m-6.1.0-10", "kos-upgrade-m-6.1.0-10", "kos-upgrade-m-6.1.0-10", "m-6.1.0-9"}},
		// Refused (want nil): the trial would not be booted first.
		{"same kernel version: the id decides and sorts the trial after", "default *\n",
			"sort-key debian\nmachine-id m\nversion 6.1.0-9\n", 1, false, nil},
		{"no sort-key on the trial: it sorts after the old entry", "",
			"version 6.1.0-10\n", 2, false, nil},
		{"blessed after the first boot", "default m-6.1.0-9.conf\n",
			"sort-key debian\nmachine-id m\nversion 6.1.0-10\n", 3, true,
			[]string{"kos-upgrade-m-6.1.0-10", "kos-upgrade-m-6.1.0-10", "kos-upgrade-m-6.1.0-10", "kos-upgrade-m-6.1.0-10"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			s := sdRoot(t, tt.loaderConf)
			id := "kos-upgrade-m-6.1.0-10"
			if err := s.AddEntry(ctx, mkEntry(id, tt.newEntry+"linux /m/6.1.0-10/linux\n", Counter{})); err != nil {
				t.Fatal(err)
			}
			if def, _ := s.Default(ctx); def != "m-6.1.0-9" && tt.loaderConf != "timeout 3\n" {
				t.Fatalf("default before the trial: %s", def)
			}
			err := s.TrialBoot(ctx, id, tt.tries)
			if tt.want == nil {
				if !errors.Is(err, ErrNotSupported) {
					t.Fatalf("err = %v, want ErrNotSupported", err)
				}
				if _, err := os.Stat(filepath.Join(s.EntriesDir(), id+".conf")); err != nil {
					t.Errorf("a refused trial renamed the entry: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(s.EntriesDir(), id+"+"+string(rune('0'+tt.tries))+".conf")); err != nil {
				t.Errorf("entry not counted: %v", err)
			}
			st, _ := s.Trial(ctx)
			if !st.Active || st.Entry != id || st.Fallback != "m-6.1.0-9" || st.TriesLeft != tt.tries {
				t.Errorf("trial: %+v", st)
			}
			var got []string
			for i := range tt.want {
				got = append(got, sdBoot(t, s))
				if tt.bless && i == 0 {
					if err := s.Bless(ctx, id); err != nil {
						t.Fatal(err)
					}
					if err := s.Bless(ctx, id); err != nil {
						t.Fatal(err)
					}
				}
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Fatalf("booted %v, want %v", got, tt.want)
			}
			conf, _ := os.ReadFile(filepath.Join(s.ESP(), LoaderConfRel))
			if tt.bless {
				if _, err := os.Stat(filepath.Join(s.EntriesDir(), id+".conf")); err != nil {
					t.Errorf("blessed entry keeps its counter: %v", err)
				}
				if st, _ := s.Trial(ctx); st.Active {
					t.Error("trial active after bless")
				}
				return
			}
			if err := s.Fallback(ctx); err != nil {
				t.Fatal(err)
			}
			if err := s.Fallback(ctx); err != nil {
				t.Fatal(err)
			}
			after, _ := os.ReadFile(filepath.Join(s.ESP(), LoaderConfRel))
			if string(after) != tt.loaderConf {
				t.Errorf("loader.conf after fallback:\n%s\nwas\n%s\nduring trial\n%s", after, tt.loaderConf, conf)
			}
			if got := sdBoot(t, s); got != "m-6.1.0-9" {
				t.Errorf("after fallback: %s", got)
			}
			e, _ := ReadEntry(s.EntriesDir(), id)
			if !e.Counter.Bad() {
				t.Errorf("trial entry not marked bad: %s", e.Path)
			}
			if err := s.RemoveEntry(ctx, id); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestSystemdBootRefusals(t *testing.T) {
	ctx := context.Background()
	s := sdRoot(t, "default m-6.1.0-9.conf\n")
	// An older kernel cannot be tried first: it sorts after the default.
	if err := s.AddEntry(ctx, mkEntry("kos-upgrade-old", "sort-key debian\nmachine-id m\nversion 5.10\n", Counter{})); err != nil {
		t.Fatal(err)
	}
	if err := s.TrialBoot(ctx, "kos-upgrade-old", 3); !errors.Is(err, ErrNotSupported) {
		t.Errorf("older kernel: %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.EntriesDir(), "kos-upgrade-old.conf")); err != nil {
		t.Errorf("a refused trial renamed the entry: %v", err)
	}
	if err := s.RemoveEntry(ctx, "m-6.1.0-9"); err == nil {
		t.Error("removed the default")
	}
	if err := s.SetOneShot(ctx, "kos-upgrade-old"); !errors.Is(err, ErrNotSupported) {
		t.Errorf("one-shot under a test root: %v", err)
	}
	efivars := s.root.Path("/sys/firmware/efi/efivars")
	os.MkdirAll(efivars, 0o755)
	os.WriteFile(filepath.Join(efivars, "LoaderEntryDefault-"+loaderVendorGUID), []byte("x"), 0o644)
	if err := s.CheckTrial(ctx); !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "bootctl set-default") {
		t.Errorf("EFI default variable: %v", err)
	}
	os.RemoveAll(efivars)
	if err := s.SetDefault(ctx, "kos-upgrade-old"); err != nil {
		t.Fatal(err)
	}
	if def, _ := s.Default(ctx); def != "kos-upgrade-old" {
		t.Errorf("default %s", def)
	}
}

// Setting the default that loader.conf picks already keeps its pattern (a
// rollback does that after restoring /boot): an exact pattern would pin the
// old kernel and never boot the ones installed later.
func TestSystemdBootSetDefaultKeepsPattern(t *testing.T) {
	ctx := context.Background()
	const conf = "timeout 3\ndefault m-*\n"
	s := sdRoot(t, conf)
	if err := s.SetDefault(ctx, "m-6.1.0-9"); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(s.ESP(), LoaderConfRel)); string(got) != conf {
		t.Errorf("loader.conf after setting the current default:\n%s\nwas\n%s", got, conf)
	}
	// Another entry, or the same one under a trial, still gets an exact
	// pattern.
	if err := s.AddEntry(ctx, mkEntry("kos-upgrade-m-6.1.0-10", "sort-key debian\nmachine-id m\nversion 6.1.0-10\n", Counter{})); err != nil {
		t.Fatal(err)
	}
	if err := s.SetDefault(ctx, "kos-upgrade-m-6.1.0-10"); err != nil {
		t.Fatal(err)
	}
	if def, _ := s.Default(ctx); def != "kos-upgrade-m-6.1.0-10" {
		t.Errorf("default %s after SetDefault of another entry", def)
	}
	s2 := sdRoot(t, conf)
	if err := s2.AddEntry(ctx, mkEntry("kos-upgrade-m-6.1.0-10", "sort-key debian\nmachine-id m\nversion 6.1.0-10\n", Counter{})); err != nil {
		t.Fatal(err)
	}
	if err := s2.TrialBoot(ctx, "kos-upgrade-m-6.1.0-10", 2); err != nil {
		t.Fatal(err)
	}
	if err := s2.SetDefault(ctx, "kos-upgrade-m-6.1.0-10"); err != nil {
		t.Fatal(err)
	}
	if st, _ := s2.Trial(ctx); st.Active {
		t.Errorf("SetDefault of the entry on trial left the trial armed: %+v", st)
	}
}

// Entries without sort-keys (as an installer or grub-era kernel-install
// writes them) are ordered by file name, where a made "kos-upgrade-..."
// entry sorts after "<machine-id>-<kernel>": the trial gets TrialSortKey,
// which puts it first while it has tries, even with the same kernel.
func TestSystemdBootTrialWithoutSortKeys(t *testing.T) {
	ctx := context.Background()
	root, _ := sysroot.New(t.TempDir())
	os.MkdirAll(root.Path("/boot/EFI/systemd"), 0o755)
	dir := root.Path("/boot/loader/entries")
	os.MkdirAll(filepath.Dir(dir), 0o755)
	os.WriteFile(root.Path("/boot/loader/loader.conf"), []byte("timeout 0\ndefault m-6.1.0-9.conf\n"), 0o644)
	if err := WriteEntry(dir, mkEntry("m-6.1.0-9", "machine-id m\nversion 6.1.0-9\nlinux /vmlinuz-6.1.0-9\noptions root=/dev/mapper/kos-root ro\n", Counter{})); err != nil {
		t.Fatal(err)
	}
	s, err := NewSystemdBoot(root)
	if err != nil {
		t.Fatal(err)
	}
	id := "kos-upgrade-m-6.1.0-9-5.9"
	if err := s.AddEntry(ctx, mkEntry(id, "machine-id m\nversion 6.1.0-9\nlinux /vmlinuz-6.1.0-9\noptions root=/dev/mapper/kos-snap ro\n", Counter{})); err != nil {
		t.Fatal(err)
	}
	if err := s.TrialBoot(ctx, id, 2); err != nil {
		t.Fatalf("trial refused: %v", err)
	}
	e, err := ReadEntry(dir, id)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := e.Get(KeySortKey); v != TrialSortKey || e.Counter.Left != 2 {
		t.Errorf("trial entry %s: sort-key %q, counter %+v", e.Path, v, e.Counter)
	}
	// One file, sort-key and counter together: never the sort-key uncounted.
	if m, _ := filepath.Glob(filepath.Join(dir, id+"*")); len(m) != 1 || filepath.Base(m[0]) != id+"+2.conf" {
		t.Errorf("trial entry files: %v, want only %s+2.conf", m, id)
	}
	var got []string
	for range 4 {
		got = append(got, sdBoot(t, s))
	}
	if want := []string{id, id, "m-6.1.0-9", "m-6.1.0-9"}; !slices.Equal(got, want) {
		t.Errorf("booted %v, want %v", got, want)
	}
}
