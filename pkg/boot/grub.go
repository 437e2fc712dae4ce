package boot

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// GrubTrialConfig is the grub script that counts trial tries
// (grub/kos-upgrade-trial.cfg); GrubTrialScript is the /etc/grub.d script
// that puts it into grub.cfg (grub/09_kos_upgrade_trial). See docs/boot.md.
var (
	//go:embed grub/kos-upgrade-trial.cfg
	GrubTrialConfig string
	//go:embed grub/09_kos_upgrade_trial
	GrubTrialScript string
)

// grubTrialMarker is how a grub.cfg that contains the trial logic is
// recognised.
const grubTrialMarker = "kos_upgrade_tries"

// Grub is grub2 with BLS entries (EL8): entries in /boot/loader/entries,
// default and one-time boot in grubenv (saved_entry, next_entry).
type Grub struct {
	root       sysroot.Root
	bootDir    string
	entriesDir string
	envPath    string   // resolved grubenv
	cfgPaths   []string // grub.cfg files found
	// Check says where to look for the mount table and sysfs when
	// deciding whether grubenv is safe to use (tests set it).
	Check EnvCheck
	// Log receives warnings; nil: slog.Default().
	Log *slog.Logger
}

// NewGrub returns the grub2-BLS boot loader of root, or ErrNotSupported if
// root has no grub configuration or no BLS entries directory.
func NewGrub(root sysroot.Root) (*Grub, error) {
	// A /boot that is a symbolic link is followed inside the root only.
	boot, err := root.Resolve(root.Path(BootDirRel))
	if err != nil {
		return nil, fmt.Errorf("cannot use /boot: %w", err)
	}
	var cfgs, envs []string
	for _, pat := range []string{"grub2/grub.cfg", "grub/grub.cfg", "efi/EFI/*/grub.cfg"} {
		m, _ := filepath.Glob(filepath.Join(boot, pat))
		cfgs = append(cfgs, m...)
	}
	for _, pat := range []string{"grub2/grubenv", "grub/grubenv", "efi/EFI/*/grubenv"} {
		m, _ := filepath.Glob(filepath.Join(boot, pat))
		envs = append(envs, m...)
	}
	if len(cfgs) == 0 && len(envs) == 0 {
		return nil, fmt.Errorf("no grub configuration under %s: %w", boot, ErrNotSupported)
	}
	entries, err := entriesDirIn(root, boot)
	if err != nil {
		return nil, err
	}
	if !exists(entries) {
		return nil, fmt.Errorf("grub2 without BLS entries (%s missing): %w", entries, ErrNotSupported)
	}
	g := &Grub{root: root, bootDir: boot, entriesDir: entries, cfgPaths: cfgs}
	if len(envs) > 0 {
		p, err := root.Resolve(envs[0])
		if err != nil {
			return nil, fmt.Errorf("cannot use grubenv: %w", err)
		}
		g.envPath = p
	} else {
		g.envPath = filepath.Join(filepath.Dir(cfgs[0]), "grubenv")
	}
	return g, nil
}

// Kind implements Bootloader.
func (g *Grub) Kind() string { return KindGrub2BLS }

// EntriesDir implements Bootloader.
func (g *Grub) EntriesDir() string { return g.entriesDir }

// EnvPath returns the grubenv file used (symbolic links resolved).
func (g *Grub) EnvPath() string { return g.envPath }

func (g *Grub) logger() *slog.Logger {
	if g.Log != nil {
		return g.Log
	}
	return slog.Default()
}

// Env reads grubenv; a missing file is an empty block.
func (g *Grub) Env() (*Env, error) {
	e, err := ReadEnv(g.envPath)
	if errors.Is(err, os.ErrNotExist) {
		return NewEnv(), nil
	}
	return e, err
}

// writeEnv writes grubenv where it resolves inside the root now (a link
// made since NewGrub is followed inside the root too, never to the host).
func (g *Grub) writeEnv(e *Env) error {
	p, err := g.root.Resolve(g.envPath)
	if err != nil {
		return fmt.Errorf("cannot write grubenv: %w", err)
	}
	return WriteEnv(p, e)
}

// Entries implements Bootloader.
func (g *Grub) Entries(ctx context.Context) ([]*Entry, error) { return ListEntries(g.entriesDir) }

func (g *Grub) entry(id string) (*Entry, error) { return ReadEntry(g.entriesDir, id) }

// Default implements Bootloader: saved_entry, when it names an entry.
func (g *Grub) Default(ctx context.Context) (string, error) {
	env, err := g.Env()
	if err != nil {
		return "", err
	}
	id := env.Value(EnvSavedEntry)
	if id == "" {
		return "", fmt.Errorf("grubenv %s has no saved_entry: %w", g.envPath, ErrNotFound)
	}
	if _, err := g.entry(id); err != nil {
		return "", fmt.Errorf("saved_entry %q: %w", id, err)
	}
	return id, nil
}

// AddEntry implements Bootloader.
func (g *Grub) AddEntry(ctx context.Context, e *Entry) error { return addEntry(g.entriesDir, e) }

func addEntry(dir string, e *Entry) error {
	if old, err := ReadEntry(dir, e.ID); err == nil {
		if bytes.Equal(old.Format(), e.Format()) {
			e.Path, e.BootDir, e.Counter = old.Path, old.BootDir, old.Counter
			return nil
		}
		return fmt.Errorf("boot entry %s (%s): %w", e.ID, old.Path, ErrExists)
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}
	return WriteEntry(dir, e)
}

// RemoveEntry implements Bootloader.
func (g *Grub) RemoveEntry(ctx context.Context, id string) error {
	env, err := g.Env()
	if err != nil {
		return err
	}
	switch id {
	case env.Value(EnvSavedEntry):
		return fmt.Errorf("refusing to remove boot entry %s: it is the default", id)
	case env.Value(EnvTrialEntry):
		return fmt.Errorf("refusing to remove boot entry %s: it is on trial (Fallback first)", id)
	}
	return DeleteEntry(g.entriesDir, id)
}

// clearTrial drops the trial keys, and next_entry when it is the trial's,
// and puts back the boot_counter the trial set aside.
func clearTrial(env *Env) {
	if t := env.Value(EnvTrialEntry); t != "" && env.Value(EnvNextEntry) == t {
		env.Unset(EnvNextEntry)
	}
	env.Unset(EnvTrialEntry)
	env.Unset(EnvTrialTries)
	env.Unset(EnvTrialPrev)
	if v, ok := env.Get(EnvTrialBootCounter); ok {
		env.Set(EnvBootCounter, v)
		env.Unset(EnvTrialBootCounter)
	}
}

// SetDefault implements Bootloader: saved_entry=id, no next_entry, no trial.
func (g *Grub) SetDefault(ctx context.Context, id string) error {
	if _, err := g.entry(id); err != nil {
		return err
	}
	env, err := g.Env()
	if err != nil {
		return err
	}
	clearTrial(env)
	env.Unset(EnvNextEntry)
	env.Set(EnvSavedEntry, id)
	return g.writeEnv(env)
}

// SetOneShot implements Bootloader: next_entry=id, refused where grub
// cannot clear it at boot.
func (g *Grub) SetOneShot(ctx context.Context, id string) error {
	if _, err := g.entry(id); err != nil {
		return err
	}
	if err := g.CheckOneShot(ctx); err != nil {
		return err
	}
	env, err := g.Env()
	if err != nil {
		return err
	}
	env.Set(EnvNextEntry, id)
	return g.writeEnv(env)
}

// CheckOneShot returns nil when SetOneShot can work here, else an error
// wrapping ErrUnsafeEnv that says why (grub cannot clear next_entry at
// boot). It changes nothing.
func (g *Grub) CheckOneShot(ctx context.Context) error {
	return g.Check.CheckEnvWritable(g.envPath)
}

// ClearOneShot cancels a pending one-time boot of id (next_entry=id); a
// one-time boot of another entry, or none, is left as it is.
func (g *Grub) ClearOneShot(ctx context.Context, id string) error {
	env, err := g.Env()
	if err != nil {
		return err
	}
	if env.Value(EnvNextEntry) != id {
		return nil
	}
	env.Unset(EnvNextEntry)
	return g.writeEnv(env)
}

// grubDefaultSaved reads GRUB_DEFAULT from <root>/etc/default/grub; it
// returns "" when unset (EL8's grub2-mkconfig then writes saved_entry
// handling anyway, as GRUB_DEFAULT=saved is its default on EL8).
func (g *Grub) grubDefault() string {
	data, err := g.root.ReadFile(g.root.Path("/etc/default/grub"), maxBootFile)
	if err != nil {
		return ""
	}
	val := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if ok && k == "GRUB_DEFAULT" {
			val = strings.Trim(v, `"'`)
		}
	}
	return val
}

// HasTrialConfig reports whether grub.cfg contains the trial logic of
// grub/kos-upgrade-trial.cfg (installed with grub2-mkconfig).
func (g *Grub) HasTrialConfig() bool {
	for _, c := range g.cfgPaths {
		data, err := g.root.ReadFile(c, maxBootFile)
		if err == nil && bytes.Contains(data, []byte(grubTrialMarker)) {
			return true
		}
	}
	return false
}

// CheckTrial implements Bootloader.
func (g *Grub) CheckTrial(ctx context.Context) error {
	if d := g.grubDefault(); d != "" && d != "saved" {
		return fmt.Errorf("GRUB_DEFAULT=%s in /etc/default/grub: grub ignores saved_entry, so the old "+
			"entry would not boot after a failed trial (set GRUB_DEFAULT=saved and run grub2-mkconfig): %w",
			d, ErrNotSupported)
	}
	return g.Check.CheckEnvWritable(g.envPath)
}

// TrialBoot implements Bootloader. The first try is a one-time boot
// (next_entry, honoured by every EL8 grub.cfg); the tries after it need the
// trial logic in grub.cfg (HasTrialConfig). Without it the trial has one
// try, and a warning says so.
func (g *Grub) TrialBoot(ctx context.Context, id string, tries int) error {
	if tries < 1 || tries > MaxTrialTries {
		return fmt.Errorf("trial tries %d out of range 1..%d", tries, MaxTrialTries)
	}
	if _, err := g.entry(id); err != nil {
		return err
	}
	if err := g.CheckTrial(ctx); err != nil {
		return err
	}
	env, err := g.Env()
	if err != nil {
		return err
	}
	prev := env.Value(EnvSavedEntry)
	if prev == "" {
		return fmt.Errorf("cannot arm a trial of %s: grubenv has no saved_entry to fall back to "+
			"(SetDefault the current entry first): %w", id, ErrNotFound)
	}
	if prev == id {
		return fmt.Errorf("cannot arm a trial of %s: it is the default already", id)
	}
	if tries > 1 && !g.HasTrialConfig() {
		g.logger().Warn("grub.cfg has no kos-upgrade trial logic: the new entry gets one try",
			"entry", id, "tries", tries, "grubcfg", g.cfgPaths)
		tries = 1
	}
	env.Set(EnvNextEntry, id)
	env.Set(EnvTrialEntry, id)
	env.Set(EnvTrialTries, strconv.Itoa(tries-1))
	env.Set(EnvTrialPrev, prev)
	env.Set(EnvBootSuccess, "0")
	if v, ok := env.Get(EnvBootCounter); ok {
		// 08_fallback_counting acts on boot_counter while boot_success=0:
		// it decrements it and at 0 or -1 sets default=1, the second menu
		// entry, over next_entry, the trial and saved_entry alike. The
		// trial sets it aside; Fallback puts it back, Bless drops it.
		env.Set(EnvTrialBootCounter, v)
		env.Unset(EnvBootCounter)
	}
	return g.writeEnv(env)
}

// Trial implements Bootloader.
func (g *Grub) Trial(ctx context.Context) (TrialState, error) {
	env, err := g.Env()
	if err != nil {
		return TrialState{}, err
	}
	id := env.Value(EnvTrialEntry)
	if id == "" {
		return TrialState{TriesLeft: -1}, nil
	}
	left, err := strconv.Atoi(env.Value(EnvTrialTries))
	if err != nil {
		left = 0
	}
	if env.Value(EnvNextEntry) == id {
		left++ // the one-time boot has not happened yet
	}
	return TrialState{Active: true, Entry: id, Fallback: env.Value(EnvSavedEntry), TriesLeft: left}, nil
}

// Bless implements Bootloader: saved_entry=id, boot_success=1, trial
// keys and a pending next_entry of id removed.
func (g *Grub) Bless(ctx context.Context, id string) error {
	if _, err := g.entry(id); err != nil {
		return err
	}
	env, err := g.Env()
	if err != nil {
		return err
	}
	if env.Value(EnvTrialEntry) == id || env.Value(EnvTrialEntry) == "" {
		_, aside := env.Get(EnvTrialBootCounter)
		clearTrial(env)
		if aside {
			// A good boot ends greenboot's count too, as its
			// greenboot-grub2-set-success does.
			env.Unset(EnvBootCounter)
		}
	}
	if env.Value(EnvNextEntry) == id || env.Value(EnvNextEntry) == "" {
		env.Unset(EnvNextEntry)
	}
	env.Set(EnvSavedEntry, id)
	env.Set(EnvBootSuccess, "1")
	return g.writeEnv(env)
}

// Fallback implements Bootloader: the trial keys and its next_entry are
// removed; saved_entry, which the trial never changed, boots.
func (g *Grub) Fallback(ctx context.Context) error {
	env, err := g.Env()
	if err != nil {
		return err
	}
	if env.Value(EnvTrialEntry) == "" {
		return nil
	}
	clearTrial(env)
	return g.writeEnv(env)
}
