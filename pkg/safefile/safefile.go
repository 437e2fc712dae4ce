// Package safefile opens and reads files that someone other than
// kos-upgrade may have put in place (documents in the state directory,
// staged packages): regular files only, judged by Lstat and again on the
// open descriptor, never through a symbolic link, never blocking on a FIFO
// or a device, and size-capped.
package safefile

import (
	"fmt"
	"io"
	"os"
	"syscall"
)

// Open opens the regular file at path for reading. A symbolic link, a FIFO,
// a device or a directory is refused without blocking; a missing file is
// an error satisfying errors.Is(err, fs.ErrNotExist).
func Open(path string) (*os.File, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s)", path, fi.Mode().Type())
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	fi2, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi2.Mode().IsRegular() || !os.SameFile(fi, fi2) {
		f.Close()
		return nil, fmt.Errorf("%s changed while it was opened", path)
	}
	return f, nil
}

// Read returns the content of the regular file at path (see Open), at
// most max bytes: a larger file is an error.
func Read(path string, max int64) ([]byte, error) {
	f, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readMax(f, path, max)
}

func readMax(f *os.File, path string, max int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, max)
	}
	return b, nil
}

// ReadFollowing is Read for a path whose symbolic links are followed (the
// caller resolved them, or trusts them: a grubenv linked into the ESP):
// the file they lead to must still be a regular file, judged on the open
// descriptor, opened without blocking, and at most max bytes.
func ReadFollowing(path string, max int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s)", path, fi.Mode().Type())
	}
	return readMax(f, path, max)
}
