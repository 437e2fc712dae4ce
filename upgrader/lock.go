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

// beginWithPlan is begin for an operation on the prepared plan (arm,
// stage, the choice of the offline path): the state must hold one
// (planReady); else it says what to run first, naming the operation
// (what: "arm", "stage", ...).
func (e *Engine) beginWithPlan(ctx context.Context, st store, what string) (*lock, *State, error) {
	l, state, err := e.begin(ctx, st)
	if err != nil {
		return nil, nil, err
	}
	if !planReady(state) {
		l.release()
		return nil, nil, fmt.Errorf("cannot %s: the state is %s; run kos-upgrade prepare --to VERSION first", what, state.Status)
	}
	return l, state, nil
}

// planReady reports whether state holds a prepared plan to arm or stage:
// prepared, armed, or failed (a failed run keeps its plan).
func planReady(state *State) bool {
	switch state.Status {
	case StatusPrepared, StatusArmed, StatusFailed:
		return true
	}
	return false
}
