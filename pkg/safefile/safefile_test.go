package safefile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	os.WriteFile(good, []byte("hello"), 0o600)
	tests := []struct {
		name    string
		setup   func(p string) error
		max     int64
		want    string
		wantErr string
	}{
		{name: "regular", setup: func(p string) error { return os.WriteFile(p, []byte("hello"), 0o600) }, max: 5, want: "hello"},
		{name: "too large", setup: func(p string) error { return os.WriteFile(p, []byte("hello!"), 0o600) }, max: 5, wantErr: "larger than 5 bytes"},
		{name: "symlink", setup: func(p string) error { return os.Symlink(good, p) }, max: 5, wantErr: "not a regular file"},
		{name: "fifo", setup: func(p string) error { return syscall.Mkfifo(p, 0o600) }, max: 5, wantErr: "not a regular file"},
		{name: "directory", setup: func(p string) error { return os.Mkdir(p, 0o700) }, max: 5, wantErr: "not a regular file"},
		{name: "device", setup: func(p string) error { return os.Symlink("/dev/zero", p) }, max: 5, wantErr: "not a regular file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "f")
			if err := tc.setup(p); err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			var b []byte
			var err error
			go func() { b, err = Read(p, tc.max); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Read hangs")
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Read: %q, %v; want %q", b, err, tc.wantErr)
				}
				return
			}
			if err != nil || string(b) != tc.want {
				t.Fatalf("Read: %q, %v", b, err)
			}
		})
	}
	if _, err := Read(filepath.Join(dir, "missing"), 5); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestReadFollowing(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	os.WriteFile(good, []byte("hello"), 0o600)
	fifo := filepath.Join(dir, "fifo")
	syscall.Mkfifo(fifo, 0o600)
	for _, tc := range []struct{ name, target, want, wantErr string }{
		{name: "link to a regular file", target: good, want: "hello"},
		{name: "link to a FIFO", target: fifo, wantErr: "not a regular file"},
		{name: "link to a device", target: "/dev/zero", wantErr: "not a regular file"},
		{name: "link to a directory", target: dir, wantErr: "not a regular file"},
		{name: "dangling link", target: filepath.Join(dir, "missing"), wantErr: "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "link")
			if err := os.Symlink(tc.target, p); err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			var b []byte
			var err error
			go func() { b, err = ReadFollowing(p, 5); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("ReadFollowing hangs")
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ReadFollowing: %q, %v; want %q", b, err, tc.wantErr)
				}
				return
			}
			if err != nil || string(b) != tc.want {
				t.Fatalf("ReadFollowing: %q, %v", b, err)
			}
		})
	}
}
