package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFile(t *testing.T) {
	tests := []struct {
		name    string
		before  string // "" means no file
		data    string
		perm    os.FileMode
		wantErr bool
		dir     string // relative dir to write into (missing dirs fail)
	}{
		{name: "new file", data: "hello", perm: 0o644},
		{name: "replace", before: "old content that is longer", data: "new", perm: 0o600},
		{name: "empty", before: "x", data: "", perm: 0o644},
		{name: "missing directory", data: "x", perm: 0o644, dir: "nope", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, tc.dir, "state.json")
			if tc.before != "" {
				os.WriteFile(path, []byte(tc.before), 0o644)
			}
			err := WriteFile(path, []byte(tc.data), tc.perm)
			if tc.wantErr {
				if err == nil {
					t.Fatal("WriteFile succeeded")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, _ := os.ReadFile(path)
			if string(got) != tc.data {
				t.Errorf("content %q, want %q", got, tc.data)
			}
			fi, _ := os.Stat(path)
			if fi.Mode().Perm() != tc.perm {
				t.Errorf("mode %v, want %v", fi.Mode().Perm(), tc.perm)
			}
			ents, _ := os.ReadDir(dir)
			if len(ents) != 1 {
				t.Errorf("temporary files left: %v", ents)
			}
		})
	}
}

func TestSymlinkAndRemove(t *testing.T) {
	dir := t.TempDir()
	link := filepath.Join(dir, "system-update")
	for _, target := range []string{"/var/lib/kos-upgrade", "/var/lib/other"} {
		if err := Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.Readlink(link); got != target {
			t.Errorf("link points at %q, want %q", got, target)
		}
	}
	if err := Remove(link); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(link); !os.IsNotExist(err) {
		t.Errorf("link still there: %v", err)
	}
	if err := Remove(link); err != nil {
		t.Errorf("removing a missing file: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("leftovers: %v", ents)
	}
}
