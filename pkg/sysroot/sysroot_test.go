package sysroot

import (
	"os"
	"path/filepath"
	"testing"
)

func TestPaths(t *testing.T) {
	tests := []struct {
		name, dir, wantState, wantLink string
	}{
		{name: "running system", dir: "", wantState: "/var/lib/kos-upgrade", wantLink: "/system-update"},
		{name: "sysroot", dir: "/sysroot", wantState: "/sysroot/var/lib/kos-upgrade", wantLink: "/sysroot/system-update"},
		{name: "trailing slash", dir: "/mnt/root/", wantState: "/mnt/root/var/lib/kos-upgrade", wantLink: "/mnt/root/system-update"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := New(tc.dir)
			if err != nil {
				t.Fatal(err)
			}
			if r.StateDir() != tc.wantState || r.SystemUpdateLink() != tc.wantLink {
				t.Errorf("got %s %s", r.StateDir(), r.SystemUpdateLink())
			}
		})
	}
}

func TestDBPathRel(t *testing.T) {
	tests := []struct {
		name  string
		files []string
		want  string
	}{
		{name: "EL8 bdb", files: []string{"var/lib/rpm/Packages"}, want: "/var/lib/rpm"},
		{name: "sqlite in var", files: []string{"var/lib/rpm/rpmdb.sqlite"}, want: "/var/lib/rpm"},
		{name: "sysimage", files: []string{"usr/lib/sysimage/rpm/rpmdb.sqlite"}, want: "/usr/lib/sysimage/rpm"},
		{name: "empty root", want: "/var/lib/rpm"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range tc.files {
				p := filepath.Join(dir, f)
				os.MkdirAll(filepath.Dir(p), 0o755)
				os.WriteFile(p, nil, 0o644)
			}
			if got := (Root{Dir: dir}).DBPathRel(); got != tc.want {
				t.Errorf("DBPathRel = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestPythonOverride(t *testing.T) {
	t.Setenv("KOS_UPGRADE_PYTHON", "/opt/py/bin/python3")
	if got := Python(); got != "/opt/py/bin/python3" {
		t.Errorf("Python() = %s", got)
	}
}
