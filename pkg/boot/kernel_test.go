package boot_test

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/boot"
)

func TestVerCmp(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{
		{"5.9.0-1.noarch", "5.8.0-1.noarch", 1},
		{"4.18.0-553.el8.x86_64", "4.18.0-80.el8.x86_64", 1},
		{"4.18.0-80.el8", "4.18.0-80.el8", 0},
		{"4.18.0-80.el8", "4.18.0-80.1.el8", -1},
		{"1.0a", "1.0", 1},
		{"1.0", "1.0.1", -1},
		{"010", "9", 1},
		{"a", "1", -1},
	} {
		if got := boot.VerCmp(c.a, c.b); got != c.want {
			t.Errorf("VerCmp(%q, %q) = %d, want %d", c.a, c.b, got, c.want)
		}
		if got := boot.VerCmp(c.b, c.a); got != -c.want {
			t.Errorf("VerCmp(%q, %q) = %d, want %d", c.b, c.a, got, -c.want)
		}
	}
}

func TestNewKernels(t *testing.T) {
	old, cur := t.TempDir(), t.TempDir()
	mk := func(root, rel string) {
		p := filepath.Join(root, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte("k"), 0o644)
	}
	mk(old, "usr/lib/modules/5.8.0/vmlinuz")
	mk(cur, "usr/lib/modules/5.8.0/vmlinuz")
	mk(cur, "usr/lib/modules/5.10.0/vmlinuz")
	mk(cur, "usr/lib/modules/5.9.0/vmlinuz")
	mk(cur, "usr/lib/modules/5.9.0-extra/modules.dep") // no vmlinuz: not a kernel
	os.Symlink("usr/lib", filepath.Join(cur, "lib"))   // followed once, not counted twice
	got, paths := boot.NewKernels(old, cur)
	if want := []string{"5.9.0", "5.10.0"}; !reflect.DeepEqual(got, want) {
		t.Errorf("NewKernels = %v, want %v", got, want)
	}
	if paths["5.10.0"] != filepath.Join(cur, "usr/lib/modules/5.10.0/vmlinuz") {
		t.Errorf("paths = %v", paths)
	}
}
