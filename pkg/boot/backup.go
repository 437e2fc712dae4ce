package boot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/keyarchos/kos-upgrade/pkg/atomicfile"
	"github.com/keyarchos/kos-upgrade/pkg/safefile"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// Backup layout: <dest>/files/<path relative to bootDir> and
// <dest>/manifest.json, written last: a backup without a manifest is
// incomplete.
const (
	backupManifest = "manifest.json"
	backupFiles    = "files"
)

// BackupManifest lists what a backup holds.
type BackupManifest struct {
	Version int          `json:"version"`
	BootDir string       `json:"boot_dir"`
	Files   []BackupFile `json:"files"`
	// Missing are files named by entries that did not exist.
	Missing []string `json:"missing,omitempty"`
}

// BackupFile is one file of a backup.
type BackupFile struct {
	Path   string `json:"path"` // relative to the boot directory
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// configFilesRel are the boot loader files backed up besides the entries.
var configFilesRel = []string{
	"loader/loader.conf",
	"grub2/grubenv", "grub/grubenv",
	"grub2/grub.cfg", "grub/grub.cfg",
	"grub2/user.cfg", "grub2/custom.cfg",
}

// entryFile returns the host path of a file named by an entry (paths are
// relative to $BOOT; with /boot on the root filesystem EL8 writes
// "/boot/vmlinuz-..."), and whether it exists.
func entryFile(bootDir, p string) (string, bool) {
	cands := []string{filepath.Join(bootDir, p)}
	if strings.HasPrefix(p, "/boot/") {
		cands = append(cands, filepath.Join(bootDir, strings.TrimPrefix(p, "/boot")))
	}
	for _, c := range cands {
		if _, err := relTo(bootDir, c); err != nil {
			continue // "linux /../../etc/x": never a file of bootDir's
		}
		if fi, err := os.Stat(c); err == nil && fi.Mode().IsRegular() {
			return c, true
		}
	}
	return cands[0], false
}

// relTo returns p relative to dir, or an error when p is outside it.
func relTo(dir, p string) (string, error) {
	r, err := filepath.Rel(dir, p)
	if err != nil || r == ".." || strings.HasPrefix(r, "../") {
		return "", fmt.Errorf("%s is outside %s", p, dir)
	}
	return r, nil
}

// Backup copies what the upgrade may change in bootDir (a $BOOT: /boot, or
// the ESP for systemd-boot) into dest: every loader/entries/*.conf,
// loader.conf, grubenv and grub.cfg, and the kernel, initramfs and
// devicetree files the entries name. Each file is copied atomically
// (reflinked where the filesystem can) and the manifest written last.
//
// If dest already holds a complete backup, Backup does nothing and returns
// nil: the backup taken before the upgrade is never overwritten by a
// retried step (which would back up a half-changed /boot). An incomplete
// one is discarded and taken again.
//
// bootDir is a host path below root; symbolic links in it are followed as
// they resolve inside root (EL8 links grub2/grubenv into the ESP), and one
// leading out of root is an error, as is a file that is not regular.
func Backup(ctx context.Context, root sysroot.Root, bootDir, dest string) error {
	if _, err := ReadBackupManifest(dest); err == nil {
		return nil
	}
	files := filepath.Join(dest, backupFiles)
	if err := os.RemoveAll(files); err != nil {
		return fmt.Errorf("cannot discard incomplete backup: %w", err)
	}
	if err := os.MkdirAll(files, 0o700); err != nil {
		return fmt.Errorf("cannot create backup directory: %w", err)
	}
	want := map[string]bool{}
	var missing []string
	es, err := ListEntries(filepath.Join(bootDir, EntriesDirRel))
	if err != nil {
		return err
	}
	for _, e := range es {
		want[filepath.Join(EntriesDirRel, filepath.Base(e.Path))] = true
		for _, p := range e.Files() {
			hp, ok := entryFile(bootDir, p)
			if !ok {
				missing = append(missing, p)
				continue
			}
			r, err := relTo(bootDir, hp)
			if err != nil {
				return err
			}
			want[r] = true
		}
	}
	for _, r := range configFilesRel {
		p, err := root.Resolve(filepath.Join(bootDir, r))
		if err != nil {
			return fmt.Errorf("cannot back up %s: %w", r, err)
		}
		if _, err := os.Lstat(p); err == nil {
			want[r] = true
		}
	}
	m := BackupManifest{Version: 1, BootDir: bootDir, Missing: missing}
	var rels []string
	for r := range want {
		rels = append(rels, r)
	}
	sort.Strings(rels)
	for _, r := range rels {
		if err := ctxErr(ctx); err != nil {
			return err
		}
		p, err := root.Resolve(filepath.Join(bootDir, r))
		if err != nil {
			return fmt.Errorf("cannot back up %s: %w", r, err)
		}
		size, sum, err := copyFileAtomic(p, filepath.Join(files, r))
		if err != nil {
			return err
		}
		m.Files = append(m.Files, BackupFile{Path: r, Size: size, SHA256: sum})
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dest, backupManifest), append(data, '\n'), 0o600)
}

// maxManifestSize caps a backup manifest read back.
const maxManifestSize = 16 << 20

// ErrBadBackup says a backup's manifest names a file outside the boot
// directory: the backup is refused, not restored.
var ErrBadBackup = errors.New("damaged /boot backup")

// ReadBackupManifest returns the manifest of a complete backup in dir, or
// an error wrapping ErrNoBackup (none, or incomplete) or ErrBadBackup (a
// path that leaves the boot directory).
func ReadBackupManifest(dir string) (*BackupManifest, error) {
	data, err := safefile.Read(filepath.Join(dir, backupManifest), maxManifestSize)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (%v)", dir, ErrNoBackup, err)
	}
	var m BackupManifest
	if err := json.Unmarshal(data, &m); err != nil || m.Version != 1 {
		return nil, fmt.Errorf("%s: unreadable manifest: %w", dir, ErrNoBackup)
	}
	// Restore writes each file back below the boot directory: a path
	// that leaves it is a damaged (or forged) manifest, never followed.
	for _, f := range m.Files {
		if f.Path == "" || !filepath.IsLocal(f.Path) || filepath.Clean(f.Path) != f.Path {
			return nil, fmt.Errorf("%s: %w: the manifest names %q, which is not a clean path below the boot directory", dir, ErrBadBackup, f.Path)
		}
	}
	return &m, nil
}

// Restore puts bootDir back as it was when the backup in src was taken:
// every backed-up file is restored (atomically, skipped when identical),
// entries created since are removed, and so are the kernel and initramfs
// files only those entries named. Running it twice gives the same result.
// Symbolic links in bootDir (a host path below root) are followed as they
// resolve inside root; one leading out of root is an error.
func Restore(ctx context.Context, root sysroot.Root, bootDir, src string) error {
	m, err := ReadBackupManifest(src)
	if err != nil {
		return err
	}
	inBackup := map[string]bool{}
	for _, f := range m.Files {
		inBackup[f.Path] = true
		if err := ctxErr(ctx); err != nil {
			return err
		}
		target, err := root.Resolve(filepath.Join(bootDir, f.Path))
		if err != nil {
			return fmt.Errorf("cannot restore %s: %w", f.Path, err)
		}
		if sum, err := fileSHA256(target); err == nil && sum == f.SHA256 {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return fmt.Errorf("cannot restore %s: %w", f.Path, err)
		}
		if _, _, err := copyFileAtomic(filepath.Join(src, backupFiles, f.Path), target); err != nil {
			return err
		}
	}
	dir := filepath.Join(bootDir, EntriesDirRel)
	es, err := ListEntries(dir)
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	var drop []*Entry
	for _, e := range es {
		if inBackup[filepath.Join(EntriesDirRel, filepath.Base(e.Path))] {
			for _, p := range e.Files() {
				hp, _ := entryFile(bootDir, p)
				keep[hp] = true
			}
			continue
		}
		drop = append(drop, e)
	}
	for _, e := range drop {
		if err := atomicfile.Remove(e.Path); err != nil {
			return err
		}
		for _, p := range e.Files() {
			hp, ok := entryFile(bootDir, p)
			r, rerr := relTo(bootDir, hp)
			if !ok || keep[hp] || rerr != nil || inBackup[r] {
				continue
			}
			if err := atomicfile.Remove(hp); err != nil {
				return err
			}
		}
	}
	return nil
}

// Leftover is an entry of a failed attempt and the files only it names.
type Leftover struct {
	Entry *Entry
	Files []string // host paths of kernel/initramfs files no other entry names
}

// Leftovers finds the entries kos-upgrade created (id starting with
// EntryIDPrefix) that are neither the default nor on trial, with the files
// no other entry uses. It changes nothing.
func Leftovers(ctx context.Context, bl Bootloader) ([]Leftover, error) {
	es, err := bl.Entries(ctx)
	if err != nil {
		return nil, err
	}
	def, err := bl.Default(ctx)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	tr, err := bl.Trial(ctx)
	if err != nil {
		return nil, err
	}
	isLeft := func(e *Entry) bool {
		return strings.HasPrefix(e.ID, EntryIDPrefix) && e.ID != def && !(tr.Active && e.ID == tr.Entry)
	}
	used := map[string]bool{}
	for _, e := range es {
		if isLeft(e) {
			continue
		}
		for _, p := range e.Files() {
			hp, _ := entryFile(e.BootDir, p)
			used[hp] = true
		}
	}
	var out []Leftover
	for _, e := range es {
		if !isLeft(e) {
			continue
		}
		l := Leftover{Entry: e}
		for _, p := range e.Files() {
			if hp, ok := entryFile(e.BootDir, p); ok && !used[hp] {
				l.Files = append(l.Files, hp)
			}
		}
		out = append(out, l)
	}
	return out, nil
}

// RemoveLeftovers removes what Leftovers found: each entry through the
// boot loader (which refuses the default and the trial), then its files.
// Already removed entries and files are skipped, so it can be re-run.
func RemoveLeftovers(ctx context.Context, bl Bootloader, ls []Leftover) error {
	for _, l := range ls {
		if err := bl.RemoveEntry(ctx, l.Entry.ID); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		for _, f := range l.Files {
			if err := atomicfile.Remove(f); err != nil {
				return err
			}
		}
	}
	return nil
}

// copyFileAtomic copies src to dst the way atomicfile writes (temporary
// file, fsync, rename, fsync of the directory), streaming, reflinked when
// both are on one filesystem that can. It returns size and sha256.
func copyFileAtomic(src, dst string) (int64, string, error) {
	in, err := safefile.Open(src)
	if err != nil {
		return 0, "", fmt.Errorf("cannot copy: %w", err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return 0, "", fmt.Errorf("cannot copy: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return 0, "", fmt.Errorf("cannot create %s: %w", filepath.Dir(dst), err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return 0, "", fmt.Errorf("cannot create temporary file for %s: %w", dst, err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	var n int64
	if unix.IoctlFileClone(int(tmp.Fd()), int(in.Fd())) == nil {
		if n, err = io.Copy(h, in); err != nil {
			return 0, "", fmt.Errorf("cannot read %s: %w", src, err)
		}
	} else {
		if n, err = io.Copy(io.MultiWriter(tmp, h), in); err != nil {
			return 0, "", fmt.Errorf("cannot copy %s to %s: %w", src, dst, err)
		}
	}
	if err := tmp.Chmod(fi.Mode().Perm()); err != nil {
		return 0, "", fmt.Errorf("cannot set mode of %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return 0, "", fmt.Errorf("cannot sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return 0, "", fmt.Errorf("cannot close %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return 0, "", fmt.Errorf("cannot rename %s to %s: %w", tmp.Name(), dst, err)
	}
	ok = true
	return n, hex.EncodeToString(h.Sum(nil)), atomicfile.SyncDir(filepath.Dir(dst))
}

func fileSHA256(p string) (string, error) {
	f, err := safefile.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
