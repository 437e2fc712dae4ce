// Package upgrader is the engine of kos-upgrade: the plan, the persisted
// state machine, and the prepare, arm, apply, cancel, rollback and clean
// operations built on the package manager and snapshotter interfaces.
package upgrader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/execlog"
	"github.com/keyarchos/kos-upgrade/pkg/health"
	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// SnapshotterFactory opens the snapshot backend named backend (a name
// snapshot.ParseBackend accepts) for the system at root. snapshot.BackendAuto
// resolves to a concrete backend or fails with snapshot.ErrNotSupported.
type SnapshotterFactory func(ctx context.Context, backend string, root sysroot.Root) (snapshot.Snapshotter, error)

// Engine carries out kos-upgrade's operations on one system.
type Engine struct {
	Root         sysroot.Root
	PM           pkgmgr.Manager
	Snapshotters SnapshotterFactory
	Sink         progress.Sink
	Log          *slog.Logger
	Now          func() time.Time
	// Dracut is the dracut command that builds the upgrade initramfs of
	// initramfs mode, run on the live system; "" means $KOS_UPGRADE_DRACUT,
	// else the root's dracut when the root is / (initramfs.go).
	Dracut string
	// Cmdline is the kernel command line file apply reads to tell whether
	// it runs from the upgrade initramfs; "" means /proc/cmdline.
	Cmdline string
	// Observe measures the system for the health baseline and the
	// first-boot verdict; nil means health.Observe (live on a running
	// root, offline under --root).
	Observe func(ctx context.Context, root sysroot.Root) *health.Baseline
}

// New returns an engine for root with the real backends.
func New(root sysroot.Root, sink progress.Sink, log *slog.Logger) *Engine {
	return &Engine{
		Root:         root,
		PM:           pkgmgr.NewDNF(log),
		Snapshotters: OpenSnapshotter,
		Sink:         sink,
		Log:          log,
		Now:          time.Now,
	}
}

// OpenSnapshotter is the real SnapshotterFactory.
func OpenSnapshotter(ctx context.Context, backend string, root sysroot.Root) (snapshot.Snapshotter, error) {
	work := filepath.Join("/run/kos-upgrade", "mnt-"+strings.NewReplacer("/", "_").Replace(strings.Trim(root.Dir, "/")))
	backend, err := snapshot.ParseBackend(backend)
	if err != nil {
		return nil, err
	}
	switch backend {
	case snapshot.BackendNone:
		return snapshot.NewNone(root.Dir), nil
	case snapshot.BackendBtrfs:
		return snapshot.NewBtrfs(ctx, root.Dir, work)
	case snapshot.BackendLVM:
		return snapshot.NewLVM(ctx, root.Dir, work)
	case snapshot.BackendUndo:
		return snapshot.NewUndo(root.Dir)
	}
	// Each backend looks at the root's device first and says
	// ErrNotSupported, without running anything, when it is not its
	// kind: btrfs for a btrfs root, LVM for a device-mapper one.
	s, berr := snapshot.NewBtrfs(ctx, root.Dir, work)
	if berr == nil {
		return s, nil
	}
	if !errors.Is(berr, snapshot.ErrNotSupported) {
		return nil, berr
	}
	l, lerr := snapshot.NewLVM(ctx, root.Dir, work)
	if lerr == nil {
		if ferr := l.ThickFits(ctx); ferr == nil {
			return l, nil
		} else {
			l.Close()
			lerr = ferr
		}
	}
	if !errors.Is(lerr, snapshot.ErrNotSupported) {
		return nil, lerr
	}
	// Neither fits (XFS or ext4 on a partition, a thick LV in a full
	// VG): an undo journal in the state directory is the rollback point.
	u, uerr := snapshot.NewUndo(root.Dir)
	if uerr == nil {
		return u, nil
	}
	return nil, fmt.Errorf("cannot pick a snapshot backend automatically: btrfs: %v; lvm: %v; undo: %w; kos-upgrade needs the root on a btrfs subvolume or an LVM logical volume, or its state directory on the root's filesystem, or --snapshot none to upgrade without a safety net", berr, lerr, uerr)
}

func (e *Engine) store() store { return store{dir: e.Root.StateDir()} }

func (e *Engine) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

func (e *Engine) report(ev progress.Event) {
	if e.Sink != nil {
		e.Sink.Report(ev)
	}
}

func (e *Engine) log() *slog.Logger {
	if e.Log != nil {
		return e.Log
	}
	return slog.New(slog.DiscardHandler)
}

// readRelease parses os-release of the system at dir; it needs VERSION_ID.
func readRelease(dir string) (Release, error) {
	r, err := sysroot.Root{Dir: dir}.OSRelease()
	if err != nil {
		return Release{}, err
	}
	if r.VersionID == "" {
		return Release{}, fmt.Errorf("cannot read os-release: no VERSION_ID")
	}
	return Release{ID: r.ID, VersionID: r.VersionID, Name: r.Name}, nil
}

func readMachineID(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, sysroot.MachineIDRel))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

var versionRE = regexp.MustCompile(`^[0-9A-Za-z][0-9A-Za-z._-]*$`)

// ValidVersion reports whether v can be a target release version.
func ValidVersion(v string) bool { return versionRE.MatchString(v) }

// crashAt kills the process at an apply step boundary when
// KOS_UPGRADE_TEST_CRASH_AT names the step: the crash tests use it. When
// KOS_UPGRADE_TEST_HANG_AT names it, the process says so on the console
// and stops there for good: the VM tests cut the power at that line. Only
// in a binary built with the test hooks (execlog.TestHooks, build tag
// kostesthooks); the product's crashAt does nothing.
func crashAt(step string) {
	if !execlog.TestHooks {
		return
	}
	if os.Getenv("KOS_UPGRADE_TEST_CRASH_AT") == step {
		p, _ := os.FindProcess(os.Getpid())
		p.Kill()
		select {}
	}
	if os.Getenv("KOS_UPGRADE_TEST_HANG_AT") == step {
		msg := "KOS-TEST: hanging at " + step + "\n"
		if c, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
			c.WriteString(msg)
			c.Close()
		}
		os.Stderr.WriteString(msg)
		select {}
	}
}

// StepError wraps an apply failure with the step it happened in.
type StepError struct {
	Step string
	Err  error
}

func (e *StepError) Error() string { return fmt.Sprintf("%s: %v", e.Step, e.Err) }
func (e *StepError) Unwrap() error { return e.Err }
