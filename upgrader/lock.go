package upgrader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// lock is an exclusive flock on the state directory's lock file.
type lock struct{ f *os.File }

func acquire(dir string) (*lock, error) {
	if err := ensurePrivateDir(dir); err != nil {
		return nil, fmt.Errorf("cannot create state directory: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cannot open lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("cannot lock %s: %w", dir, ErrBusy)
		}
		return nil, fmt.Errorf("cannot lock %s: %w", dir, err)
	}
	return &lock{f: f}, nil
}

func (l *lock) release() {
	if l != nil && l.f != nil {
		l.f.Close()
	}
}

// locked reports whether some process holds the lock of dir now.
func locked(dir string) bool {
	f, err := os.Open(filepath.Join(dir, ".lock"))
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK)
	}
	return false
}

// begin starts a state-changing operation: it takes the state directory's
// lock and settles what a crashed run left behind. The caller releases the
// lock when done.
func (e *Engine) begin(ctx context.Context, st store) (*lock, *State, error) {
	l, err := acquire(st.dir)
	if err != nil {
		return nil, nil, err
	}
	state, err := e.settle(ctx, st)
	if err != nil {
		l.release()
		return nil, nil, err
	}
	return l, state, nil
}
