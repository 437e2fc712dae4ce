package boot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/atomicfile"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// LoaderConfRel is systemd-boot's configuration, below the ESP.
const LoaderConfRel = "loader/loader.conf"

// loaderVendorGUID is systemd-boot's EFI variable vendor GUID.
const loaderVendorGUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"

// sdTrialComment marks the trial state kept in loader.conf as a comment
// (systemd-boot ignores comments): "#kos-upgrade-trial <id> <fallback id> <previous default or ->".
const sdTrialComment = "#kos-upgrade-trial"

// SystemdBoot is systemd-boot (systemd >= 250 naming: an entry's id for
// "default" patterns is its file name, counter and ".conf" included).
// Entries live in $BOOT/loader/entries, where $BOOT is the XBOOTLDR
// partition mounted at /boot when there is one, else the ESP.
type SystemdBoot struct {
	root       sysroot.Root
	esp        string
	bootDir    string
	entriesDir string
	run        runner
	// Bootctl is the tool used for one-shot boots; "" means bootctl on
	// PATH. One-shot needs EFI variables, so only on the running system.
	Bootctl string
}

// NewSystemdBoot returns the systemd-boot boot loader of root, or
// ErrNotSupported when no ESP with systemd-boot (EFI/systemd or
// loader/loader.conf) is found at /efi, /boot/efi or /boot.
func NewSystemdBoot(root sysroot.Root) (*SystemdBoot, error) {
	for _, d := range ESPDirsRel {
		// An ESP directory that is a symbolic link is followed inside
		// the root only.
		esp, err := root.Resolve(root.Path(d))
		if err != nil {
			return nil, fmt.Errorf("cannot use %s: %w", d, err)
		}
		if !exists(filepath.Join(esp, LoaderConfRel)) && !anyGlob(filepath.Join(esp, "EFI/systemd/systemd-boot*.efi")) {
			continue
		}
		s := &SystemdBoot{root: root, esp: esp, bootDir: esp}
		b, err := root.Resolve(root.Path(BootDirRel))
		if err != nil {
			return nil, fmt.Errorf("cannot use /boot: %w", err)
		}
		if b != esp && exists(filepath.Join(b, EntriesDirRel)) {
			s.bootDir = b // XBOOTLDR (or a /boot directory sd-boot reads through it)
		}
		if s.entriesDir, err = entriesDirIn(root, s.bootDir); err != nil {
			return nil, err
		}
		return s, nil
	}
	return nil, fmt.Errorf("no systemd-boot ESP under %s: %w", root.Dir, ErrNotSupported)
}

// Kind implements Bootloader.
func (s *SystemdBoot) Kind() string { return KindSystemdBoot }

// EntriesDir implements Bootloader.
func (s *SystemdBoot) EntriesDir() string { return s.entriesDir }

// ESP returns the ESP directory (host path).
func (s *SystemdBoot) ESP() string { return s.esp }

// Entries implements Bootloader.
func (s *SystemdBoot) Entries(ctx context.Context) ([]*Entry, error) {
	return ListEntries(s.entriesDir)
}

func (s *SystemdBoot) loaderConfPath() string { return filepath.Join(s.esp, LoaderConfRel) }

// loaderConf reads loader.conf (same "key value" syntax as entries); a
// missing file is empty.
func (s *SystemdBoot) loaderConf() (*Entry, error) {
	data, err := s.root.ReadFile(s.loaderConfPath(), maxBootFile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("cannot read loader.conf: %w", err)
	}
	return ParseEntry("loader.conf", data)
}

func (s *SystemdBoot) writeLoaderConf(c *Entry) error {
	if err := os.MkdirAll(filepath.Dir(s.loaderConfPath()), 0o755); err != nil {
		return fmt.Errorf("cannot create %s: %w", filepath.Dir(s.loaderConfPath()), err)
	}
	return atomicfile.WriteFile(s.loaderConfPath(), c.Format(), 0o644)
}

// trialInfo is the trial state kept in loader.conf.
type trialInfo struct {
	entry, fallback, prevDefault string
}

func getTrial(c *Entry) (trialInfo, bool) {
	for _, l := range c.lines {
		if f := strings.Fields(l.raw); len(f) == 4 && f[0] == sdTrialComment {
			t := trialInfo{entry: f[1], fallback: f[2], prevDefault: f[3]}
			if t.prevDefault == "-" {
				t.prevDefault = ""
			}
			return t, true
		}
	}
	return trialInfo{}, false
}

func setTrial(c *Entry, t *trialInfo) {
	var out []line
	for _, l := range c.lines {
		if f := strings.Fields(l.raw); len(f) > 0 && f[0] == sdTrialComment {
			continue
		}
		out = append(out, l)
	}
	if t != nil {
		prev := t.prevDefault
		if prev == "" {
			prev = "-"
		}
		out = append(out, line{raw: strings.Join([]string{sdTrialComment, t.entry, t.fallback, prev}, " ")})
	}
	c.lines = out
}

// selectWith returns what systemd-boot boots by default given pattern,
// with the counter of entry id replaced by c (when id is not "").
func selectWith(es []*Entry, pattern, id string, c Counter) string {
	var sd []sdEntry
	for _, e := range es {
		cc := e.Counter
		if e.ID == id {
			cc = c
		}
		sd = append(sd, sdEntryOf(e, cc))
	}
	return sdSelect(sd, pattern)
}

// Default implements Bootloader: the entry systemd-boot picks with the
// loader.conf default pattern and its own ordering (an EFI variable set
// with bootctl set-default would override it; CheckTrial refuses then).
func (s *SystemdBoot) Default(ctx context.Context) (string, error) {
	es, err := s.Entries(ctx)
	if err != nil {
		return "", err
	}
	c, err := s.loaderConf()
	if err != nil {
		return "", err
	}
	id := selectWith(es, c.Value("default"), "", Counter{})
	if id == "" {
		return "", fmt.Errorf("no boot entries in %s: %w", s.entriesDir, ErrNotFound)
	}
	return id, nil
}

// AddEntry implements Bootloader.
func (s *SystemdBoot) AddEntry(ctx context.Context, e *Entry) error { return addEntry(s.entriesDir, e) }

// RemoveEntry implements Bootloader.
func (s *SystemdBoot) RemoveEntry(ctx context.Context, id string) error {
	def, err := s.Default(ctx)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	c, err := s.loaderConf()
	if err != nil {
		return err
	}
	if t, ok := getTrial(c); ok && t.entry == id {
		return fmt.Errorf("refusing to remove boot entry %s: it is on trial (Fallback first)", id)
	}
	if id == def {
		return fmt.Errorf("refusing to remove boot entry %s: it is the default", id)
	}
	return DeleteEntry(s.entriesDir, id)
}

// SetDefault implements Bootloader: loader.conf "default" matches exactly
// id (with or without counter); a trial is ended. When no trial is armed
// and loader.conf already picks id, it is left as it is: its pattern (say
// "<machine-id>-*") is the admin's, and also picks the kernels installed
// later, which an exact pattern would never boot.
func (s *SystemdBoot) SetDefault(ctx context.Context, id string) error {
	if _, err := ReadEntry(s.entriesDir, id); err != nil {
		return err
	}
	c, err := s.loaderConf()
	if err != nil {
		return err
	}
	if _, armed := getTrial(c); !armed {
		if def, err := s.Default(ctx); err == nil && def == id {
			return nil
		}
	}
	setTrial(c, nil)
	c.Set("default", exactPattern(id))
	return s.writeLoaderConf(c)
}

// SetOneShot implements Bootloader with "bootctl set-oneshot": it needs
// the running system's EFI variables, so it is refused under --root and
// where bootctl or efivarfs are missing.
func (s *SystemdBoot) SetOneShot(ctx context.Context, id string) error {
	e, err := ReadEntry(s.entriesDir, id)
	if err != nil {
		return err
	}
	tool, err := s.oneShotTool()
	if err != nil {
		return err
	}
	_, err = s.run.run(ctx, "set the one-shot boot entry", tool, "set-oneshot", filepath.Base(e.Path))
	return err
}

// CheckOneShot returns nil when SetOneShot can work here (the running
// system's EFI variables and bootctl), else an error wrapping
// ErrNotSupported that says why. It changes nothing.
func (s *SystemdBoot) CheckOneShot(ctx context.Context) error {
	_, err := s.oneShotTool()
	return err
}

func (s *SystemdBoot) oneShotTool() (string, error) {
	if s.root.Dir != "/" {
		return "", fmt.Errorf("one-shot boot needs EFI variables of the running system, not of %s: %w", s.root.Dir, ErrNotSupported)
	}
	if !exists("/sys/firmware/efi/efivars") {
		return "", fmt.Errorf("one-shot boot needs EFI variables (/sys/firmware/efi/efivars missing): %w", ErrNotSupported)
	}
	if s.Bootctl != "" {
		return s.Bootctl, nil
	}
	p, err := exec.LookPath(bootctlTool)
	if err != nil {
		return "", fmt.Errorf("one-shot boot needs bootctl: %w", ErrNotSupported)
	}
	return p, nil
}

// efiDefaultVar is the EFI variable that overrides loader.conf's default.
func (s *SystemdBoot) efiDefaultVar() string {
	return s.root.Path("/sys/firmware/efi/efivars/LoaderEntryDefault-" + loaderVendorGUID)
}

// CheckTrial implements Bootloader.
func (s *SystemdBoot) CheckTrial(ctx context.Context) error {
	if exists(s.efiDefaultVar()) {
		return fmt.Errorf("the EFI variable LoaderEntryDefault overrides loader.conf's default, so a failed "+
			"trial would not fall back (clear it with: bootctl set-default \"\"): %w", ErrNotSupported)
	}
	return nil
}

// planTrial returns the loader.conf default pattern that boots id while it
// has tries left and fallback once it has none, or an error when
// systemd-boot's ordering cannot give both.
func planTrial(es []*Entry, id, fallback string, tries int) (string, error) {
	lcp := commonPrefix(strings.ToLower(Counter{}.FileName(id)), strings.ToLower(Counter{}.FileName(fallback)))
	for _, pattern := range []string{globEscape(lcp) + "*", "*"} {
		if selectWith(es, pattern, id, Counter{Set: true, Left: tries}) == id &&
			selectWith(es, pattern, id, Counter{Set: true, Left: 0, Done: tries, HasDone: true}) == fallback {
			return pattern, nil
		}
	}
	return "", fmt.Errorf("systemd-boot would not boot %s first and %s after it failed: they sort the other way "+
		"(give %s the same sort-key and machine-id as %s and a newer version): %w", id, fallback, id, fallback, ErrNotSupported)
}

// TrialSortKey is the sort-key a trial entry gets when neither it nor its
// fallback has one (see TrialBoot).
const TrialSortKey = "kos-upgrade"

// giveSortKey sets TrialSortKey on entry id of es (in memory) when neither
// it nor fallback has a sort-key, and reports whether it did.
func giveSortKey(es []*Entry, id, fallback string) bool {
	var trial, fb *Entry
	for _, e := range es {
		switch e.ID {
		case id:
			trial = e
		case fallback:
			fb = e
		}
	}
	if trial == nil || fb == nil {
		return false
	}
	if _, ok := trial.Get(KeySortKey); ok {
		return false
	}
	if _, ok := fb.Get(KeySortKey); ok {
		return false
	}
	trial.Set(KeySortKey, TrialSortKey)
	return true
}

func commonPrefix(a, b string) string {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return a[:n]
}

// TrialBoot implements Bootloader with boot counting: the entry file gets
// "+<tries>" and loader.conf a default pattern matching both the trial and
// the current default, under which systemd-boot's order (entries with no
// tries left last) boots the trial first and the old default once the
// tries are spent. The plan is checked against systemd-boot's ordering
// before anything is written; where it cannot work the trial is refused.
func (s *SystemdBoot) TrialBoot(ctx context.Context, id string, tries int) error {
	if tries < 1 || tries > MaxTrialTries {
		return fmt.Errorf("trial tries %d out of range 1..%d", tries, MaxTrialTries)
	}
	if err := s.CheckTrial(ctx); err != nil {
		return err
	}
	e, err := ReadEntry(s.entriesDir, id)
	if err != nil {
		return err
	}
	c, err := s.loaderConf()
	if err != nil {
		return err
	}
	es, err := s.Entries(ctx)
	if err != nil {
		return err
	}
	t, armed := getTrial(c)
	if !armed || t.entry != id {
		// The fallback is what boots today without the new entry.
		var others []*Entry
		for _, x := range es {
			if x.ID != id {
				others = append(others, x)
			}
		}
		t = trialInfo{entry: id, prevDefault: c.Value("default")}
		t.fallback = selectWith(others, t.prevDefault, "", Counter{})
		if t.fallback == "" {
			return fmt.Errorf("cannot arm a trial of %s: no other entry to fall back to: %w", id, ErrNotFound)
		}
	}
	pattern, err := planTrial(es, id, t.fallback, tries)
	sortKey := false
	if errors.Is(err, ErrNotSupported) && giveSortKey(es, id, t.fallback) {
		// Where neither entry has a sort-key, systemd-boot orders them
		// by file name, and a made entry ("kos-upgrade-...") sorts after
		// the distro's ("<machine-id>-<kernel>"): a sort-key puts the
		// trial first (entries with one come first) while it has tries.
		e.Set(KeySortKey, TrialSortKey)
		pattern, err = planTrial(es, id, t.fallback, tries)
		sortKey = err == nil
	}
	if err != nil {
		return err
	}
	// Counter first: if we crash before loader.conf is written, the
	// old default pattern still boots the old entry. A sort-key is
	// written with the counter, in one file: under a default pattern
	// that matches it, an entry with the sort-key but no counter would
	// boot first, uncounted, for good.
	if sortKey {
		e.Counter = Counter{Set: true, Left: tries}
		if err := WriteEntry(s.entriesDir, e); err != nil {
			return err
		}
	} else if err := renameEntry(e, Counter{Set: true, Left: tries}); err != nil {
		return err
	}
	setTrial(c, &t)
	c.Set("default", pattern)
	return s.writeLoaderConf(c)
}

// renameEntry gives e's file the name for counter c, durably.
func renameEntry(e *Entry, c Counter) error {
	dir := filepath.Dir(e.Path)
	np := filepath.Join(dir, c.FileName(e.ID))
	if np != e.Path {
		if err := os.Rename(e.Path, np); err != nil {
			return fmt.Errorf("cannot rename boot entry: %w", err)
		}
		if err := atomicfile.SyncDir(dir); err != nil {
			return err
		}
	}
	e.Path, e.Counter = np, c
	return nil
}

// Trial implements Bootloader.
func (s *SystemdBoot) Trial(ctx context.Context) (TrialState, error) {
	c, err := s.loaderConf()
	if err != nil {
		return TrialState{}, err
	}
	t, ok := getTrial(c)
	if !ok {
		return TrialState{TriesLeft: -1}, nil
	}
	st := TrialState{Active: true, Entry: t.entry, Fallback: t.fallback, TriesLeft: -1}
	if e, err := ReadEntry(s.entriesDir, t.entry); err == nil && e.Counter.Set {
		st.TriesLeft = e.Counter.Left
	}
	return st, nil
}

// Bless implements Bootloader as systemd-bless-boot does (the counter is
// dropped from the file name) and makes id the default.
func (s *SystemdBoot) Bless(ctx context.Context, id string) error {
	e, err := ReadEntry(s.entriesDir, id)
	if err != nil {
		return err
	}
	c, err := s.loaderConf()
	if err != nil {
		return err
	}
	if t, ok := getTrial(c); ok && t.entry == id {
		setTrial(c, nil)
	}
	c.Set("default", exactPattern(id))
	if err := s.writeLoaderConf(c); err != nil {
		return err
	}
	return renameEntry(e, Counter{})
}

// Fallback implements Bootloader: loader.conf gets its previous default
// back and the trial entry is marked bad ("+0-<done>"), so that it sorts
// last and is never picked again.
func (s *SystemdBoot) Fallback(ctx context.Context) error {
	c, err := s.loaderConf()
	if err != nil {
		return err
	}
	t, ok := getTrial(c)
	if !ok {
		return nil
	}
	if e, err := ReadEntry(s.entriesDir, t.entry); err == nil {
		done := e.Counter.Done
		if e.Counter.Set && e.Counter.Left > 0 {
			done = max(done, 1)
		}
		if err := renameEntry(e, Counter{Set: true, Left: 0, Done: done, HasDone: true}); err != nil {
			return err
		}
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}
	setTrial(c, nil)
	if t.prevDefault != "" {
		c.Set("default", t.prevDefault)
	} else {
		c.Remove("default")
	}
	return s.writeLoaderConf(c)
}
