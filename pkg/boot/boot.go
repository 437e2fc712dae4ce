// Package boot reads and writes what the boot loader needs to boot the
// upgraded system, and only that: Boot Loader Specification (BLS) entries,
// the grub2 environment block, systemd-boot's loader.conf and boot counting,
// backups of /boot, and the disk's partition table (ESP, XBOOTLDR).
//
// The model (docs/boot.md has the details and the exact on-disk states):
// the new kernel gets its own entry (NewEntryFrom copies the current
// default's options and points them at the upgraded root), the old entries
// stay, and the new entry is booted as a trial: it is tried a bounded number
// of times, and unless the new system blesses it, the old default boots
// again on its own. Bless makes the new entry the permanent default;
// Fallback ends a trial in favour of the old default.
package boot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// Sentinel errors, wrapped with %w.
var (
	// ErrNotFound: no such entry (or no default could be determined).
	ErrNotFound = errors.New("boot entry not found")
	// ErrExists: an entry with this id exists already with other content.
	ErrExists = errors.New("boot entry already exists")
	// ErrNotSupported: this boot loader setup cannot do what was asked
	// (no BLS, no EFI variables for a one-shot, ...).
	ErrNotSupported = errors.New("not supported by this boot loader setup")
	// ErrUnsafeEnv: grub cannot write its environment block at boot
	// (grubenv on btrfs, LVM, MD RAID, ...), so a one-time or trial boot
	// would not be undone by the boot loader and could become permanent.
	ErrUnsafeEnv = errors.New("boot loader environment cannot be written safely at boot")
	// ErrNoBackup: the backup directory holds no complete backup.
	ErrNoBackup = errors.New("no complete /boot backup")
)

// Boot loader kinds returned by Bootloader.Kind.
const (
	KindGrub2BLS    = "grub2-bls"
	KindSystemdBoot = "systemd-boot"
)

// Trial limits. Grub counts tries without arithmetic (see grub/), which
// bounds them.
const (
	DefaultTrialTries = 3
	MaxTrialTries     = 9
)

// EntryIDPrefix starts the id of every entry kos-upgrade creates; Leftovers
// uses it to find what a failed attempt left behind.
const EntryIDPrefix = "kos-upgrade-"

// TrialState describes a trial boot in progress.
type TrialState struct {
	// Active is true while a trial is armed or running: the new entry is
	// neither blessed nor abandoned.
	Active bool `json:"active"`
	// Entry is the id of the entry on trial.
	Entry string `json:"entry,omitempty"`
	// Fallback is the id of the entry that boots when the trial fails
	// (the default before the trial); empty if the loader does not know.
	Fallback string `json:"fallback,omitempty"`
	// TriesLeft is how many more boots of Entry the boot loader will
	// attempt; 0 means the next boot is the fallback. -1 if unknown.
	TriesLeft int `json:"tries_left"`
}

// Bootloader is the boot loader of one system root. Every method that
// changes something leaves the files either as they were or completely
// changed (atomic writes), and is safe to call again after a crash.
type Bootloader interface {
	// Kind returns KindGrub2BLS or KindSystemdBoot.
	Kind() string

	// EntriesDir returns the loader/entries directory (host path).
	EntriesDir() string

	// Entries returns every BLS entry, sorted by file name.
	Entries(ctx context.Context) ([]*Entry, error)

	// Default returns the id of the entry that boots next when no
	// one-time or trial boot is pending. It returns ErrNotFound when the
	// configuration names no existing entry (the boot loader would then
	// pick by its own ordering).
	Default(ctx context.Context) (string, error)

	// AddEntry writes e into the entries directory. Adding an entry whose
	// id exists with the same content is a no-op returning nil (so a
	// retried step succeeds); with different content it returns
	// ErrExists. It never changes the default.
	AddEntry(ctx context.Context, e *Entry) error

	// RemoveEntry deletes the entry id. It refuses to remove the default
	// or the entry on trial. Removing an entry that does not exist
	// returns ErrNotFound, so a retrying caller can treat it as done.
	RemoveEntry(ctx context.Context, id string) error

	// SetDefault makes id the permanent default and cancels any pending
	// one-time boot of another entry. Setting the current default again
	// is a no-op. ErrNotFound if id does not exist.
	SetDefault(ctx context.Context, id string) error

	// SetOneShot boots id on the next boot only, then the default again.
	// Calling it twice arms it once. ErrUnsafeEnv / ErrNotSupported when
	// the boot loader cannot undo it by itself.
	SetOneShot(ctx context.Context, id string) error

	// CheckTrial returns nil if a trial boot can be armed safely here, else
	// an error wrapping ErrUnsafeEnv or ErrNotSupported that says why. It
	// changes nothing: use it in preflight checks.
	CheckTrial(ctx context.Context) error

	// TrialBoot arms a trial of id: the next boot starts id, which is
	// tried at most tries times (1..MaxTrialTries); unless Bless is called
	// from the new system, the boot after the last try is the current
	// default again, with no further action. The default is not changed.
	// Arming the same trial again resets the tries. It refuses (see
	// CheckTrial) where the boot loader cannot count safely.
	TrialBoot(ctx context.Context, id string, tries int) error

	// Trial returns the state of the trial (Active false when none).
	Trial(ctx context.Context) (TrialState, error)

	// Bless makes id the permanent default and ends the trial (when id is
	// the entry on trial). Blessing the default again is a no-op.
	Bless(ctx context.Context, id string) error

	// Fallback ends a trial in favour of the entry that was the default
	// before it: the trial entry is never booted again (it is kept, the
	// caller may RemoveEntry it). Without a trial it is a no-op.
	Fallback(ctx context.Context) error
}

// OneShotChecker is implemented by boot loaders whose one-time boot
// (SetOneShot) depends on the machine: grub2 (grubenv must be writable at
// boot) and systemd-boot (EFI variables of the running system).
type OneShotChecker interface {
	// CheckOneShot returns nil when SetOneShot can work here, else an
	// error wrapping ErrUnsafeEnv or ErrNotSupported that says why. It
	// changes nothing.
	CheckOneShot(ctx context.Context) error
}

// OneShotClearer is implemented by boot loaders that keep a pending
// one-time boot after its entry is removed (grub2's next_entry);
// systemd-boot ignores a one-shot naming an entry that is gone.
type OneShotClearer interface {
	// ClearOneShot cancels a pending one-time boot of id; a one-time boot
	// of another entry, or none, is left as it is. Calling it twice is
	// harmless.
	ClearOneShot(ctx context.Context, id string) error
}

// Detect finds the boot loader of the system at root from the files under
// <root>/boot, <root>/boot/efi and <root>/efi: grub2 with BLS entries
// (EL8) first, else systemd-boot. Anything else (grub2 without BLS, no boot
// loader found) is ErrNotSupported.
func Detect(root sysroot.Root) (Bootloader, error) {
	if g, err := NewGrub(root); err == nil {
		return g, nil
	} else if !errors.Is(err, ErrNotSupported) {
		return nil, err
	}
	if s, err := NewSystemdBoot(root); err == nil {
		return s, nil
	} else if !errors.Is(err, ErrNotSupported) {
		return nil, err
	}
	return nil, fmt.Errorf("no grub2 with BLS entries nor systemd-boot found under %s: %w",
		root.Path("/boot"), ErrNotSupported)
}

// ESPDirsRel are where an EFI system partition is mounted, in the order
// they are searched.
var ESPDirsRel = []string{"/efi", "/boot/efi", "/boot"}

// BootDirRel is /boot.
const BootDirRel = "/boot"

// Size caps of what is read from /boot and /etc: a boot entry, grubenv,
// grub.cfg, loader.conf or /etc/default/grub is at most maxBootFile; a
// kernel image at most maxKernel (EL8's are about 10 MiB).
const (
	maxBootFile = 16 << 20
	maxKernel   = 512 << 20
)

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func anyGlob(pattern string) bool {
	m, _ := filepath.Glob(pattern)
	return len(m) > 0
}

// entriesDirIn returns bootDir's loader/entries (bootDir already resolved
// in root). The entries are read and written through that path, following
// links as the host does, so a link there must lead where it leads for
// root's own processes: one out of the root, or one that resolves
// elsewhere from the host (an absolute link in a root other than /), is
// refused before anything is read or written.
func entriesDirIn(root sysroot.Root, bootDir string) (string, error) {
	dir := filepath.Join(bootDir, EntriesDirRel)
	inRoot, err := root.Resolve(dir)
	if err != nil {
		return "", fmt.Errorf("cannot use the boot entries: %w", err)
	}
	if inRoot == dir {
		return dir, nil
	}
	host, herr := filepath.EvalSymlinks(dir)
	want, werr := filepath.EvalSymlinks(inRoot)
	if herr != nil && werr != nil {
		// A dangling link both ways: no entries (a directory cannot be
		// made through it either).
		return dir, nil
	}
	if herr != nil || werr != nil || host != want {
		return "", fmt.Errorf("cannot use the boot entries: %s is a symbolic link that leads to %s inside the root but elsewhere from the host; make it a directory, or a relative link", dir, inRoot)
	}
	return dir, nil
}
