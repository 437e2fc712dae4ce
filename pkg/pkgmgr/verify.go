package pkgmgr

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/execlog"
	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/pkg/safefile"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// VerifyError names every staged package whose signature is missing or bad.
type VerifyError struct {
	Failures []VerifyFailure
}

// VerifyFailure is one package that failed verification.
type VerifyFailure struct {
	NEVRA  string
	File   string
	Reason string // rpmkeys' words: "SIGNATURES NOT OK", "NOKEY", "not signed", ...
}

func (e *VerifyError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "cannot verify %d package(s):", len(e.Failures))
	for _, f := range e.Failures {
		fmt.Fprintf(&b, "\n  %s (%s): %s", f.NEVRA, f.File, f.Reason)
	}
	return b.String()
}

// Verify implements Manager with rpmkeys against a temporary keyring made of
// the root's installed keys and the given key files; nothing is imported
// into the root.
func (d *DNF) Verify(ctx context.Context, root, stageDir string, items []Item, keys []string, sink progress.Sink) error {
	var files []Item
	for _, it := range items {
		if it.Installs() {
			files = append(files, it)
		}
	}
	if len(files) == 0 {
		return nil
	}
	keyring, err := os.MkdirTemp("", "kos-upgrade-keyring-")
	if err != nil {
		return fmt.Errorf("cannot create temporary keyring: %w", err)
	}
	defer os.RemoveAll(keyring)
	if err := d.buildKeyring(ctx, root, keyring, keys); err != nil {
		return err
	}
	var failures []VerifyFailure
	for i, it := range files {
		reason, err := d.verifyOne(ctx, keyring, stageDir, it)
		if err != nil {
			return err
		}
		if reason != "" {
			failures = append(failures, VerifyFailure{NEVRA: it.NEVRA, File: it.File, Reason: reason})
		}
		if sink != nil {
			sink.Report(progress.Event{Step: "verify", Action: "verify", Package: it.NEVRA, N: i + 1, Total: len(files)})
		}
	}
	if len(failures) > 0 {
		return &VerifyError{Failures: failures}
	}
	return nil
}

// verifyOne checks one staged file's sha256 (when the item has one) and
// signature from one open descriptor, so that both speak of the same bytes
// (rpmkeys reads it as /dev/fd/3). It returns why the file is refused, ""
// when it is good.
func (d *DNF) verifyOne(ctx context.Context, keyring, stageDir string, it Item) (string, error) {
	if it.File == "" || strings.Contains(it.File, "/") || it.File == "." || it.File == ".." {
		return "the plan names no valid staged file", nil
	}
	path := filepath.Join(stageDir, it.File)
	f, err := safefile.Open(path)
	if err != nil {
		return err.Error(), nil
	}
	defer f.Close()
	if it.SHA256 != "" {
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return fmt.Sprintf("cannot read %s: %v", path, err), nil
		}
		if sum := hex.EncodeToString(h.Sum(nil)); sum != it.SHA256 {
			return fmt.Sprintf("sha256 is %s, the resolution says %s", sum, it.SHA256), nil
		}
	}
	const fdPath = "/dev/fd/3"
	argv := []string{"rpmkeys", "--dbpath", keyring, "--define", "_pkgverify_level signature", "-K", fdPath}
	cmd := execlog.Command(ctx, argv)
	cmd.ExtraFiles = []*os.File{f}
	out, err := cmd.CombinedOutput()
	text := strings.TrimSpace(string(out))
	d.log().Debug("ran", "argv", argv, "file", path, "output", text)
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	if err != nil || !strings.HasSuffix(text, " OK") || strings.Contains(text, "NOT OK") {
		return signatureReason(fdPath, text), nil
	}
	return "", nil
}

func signatureReason(path, out string) string {
	r := strings.TrimSpace(strings.TrimPrefix(out, path+":"))
	switch {
	case strings.Contains(out, "NOKEY"):
		return "signed with a key that is not trusted (NOKEY): " + r
	case strings.Contains(out, "SIGNATURES NOT OK") || strings.Contains(out, "signatures NOT OK"):
		return "not signed or badly signed: " + r
	case r == "":
		return "rpmkeys gave no answer"
	}
	return r
}

// buildKeyring imports into the rpm database at keyring every public key
// installed in root and every key file in keys (file:// URLs are looked up
// inside root first, then on the host).
func (d *DNF) buildKeyring(ctx context.Context, root, keyring string, keys []string) error {
	r := sysroot.Root{Dir: root}
	run := execlog.Runner{Log: d.log()}
	if _, err := run.Run(ctx, "create temporary keyring", "rpmdb", "--dbpath", keyring, "--initdb"); err != nil {
		return err
	}
	out, err := run.Run(ctx, "list the installed keys", "rpm", "--root", root, "--dbpath", r.DBPathRel(), "-q", "gpg-pubkey", "--qf", "%{DESCRIPTION}\\n--kos-upgrade-key-end--\\n")
	var files []string
	if err == nil {
		for i, block := range strings.Split(out, "--kos-upgrade-key-end--\n") {
			if !strings.Contains(block, "BEGIN PGP PUBLIC KEY BLOCK") {
				continue
			}
			f := filepath.Join(keyring, fmt.Sprintf("installed-%d.asc", i))
			if err := os.WriteFile(f, []byte(block), 0o600); err != nil {
				return fmt.Errorf("cannot write key: %w", err)
			}
			files = append(files, f)
		}
	} // no installed key is not an error: the repository keys may suffice
	for _, k := range keys {
		p, err := keyPath(root, k)
		if err != nil {
			d.log().Warn("skipping repository key", "key", k, "error", err)
			continue
		}
		files = append(files, p)
	}
	for _, f := range files {
		if _, err := run.Run(ctx, "import key "+f, "rpmkeys", "--dbpath", keyring, "--import", f); err != nil {
			return err
		}
	}
	return nil
}

func keyPath(root, url string) (string, error) {
	p, ok := strings.CutPrefix(url, "file://")
	if !ok {
		if filepath.IsAbs(url) {
			p = url
		} else {
			return "", fmt.Errorf("cannot use key %s: only local keys (file://) are supported; import it with rpmkeys --import first", url)
		}
	}
	for _, c := range []string{filepath.Join(root, p), p} {
		if _, err := os.Stat(c); err == nil {
			return c, nil
		}
	}
	return "", fmt.Errorf("cannot find key %s in %s or on the host", p, root)
}

// ChecksumError names staged files that are missing or changed.
type ChecksumError struct {
	Problems []string
}

func (e *ChecksumError) Error() string {
	return "staged packages changed since prepare:\n  " + strings.Join(e.Problems, "\n  ")
}

// CheckStaged verifies that every staged file of items still has the size
// and sha256 recorded at prepare.
func CheckStaged(stageDir string, items []Item) error {
	var problems []string
	for _, it := range items {
		if !it.Installs() {
			continue
		}
		if it.File == "" || strings.Contains(it.File, "/") || it.SHA256 == "" {
			problems = append(problems, fmt.Sprintf("%s: the plan names no valid staged file and checksum", it.NEVRA))
			continue
		}
		path := filepath.Join(stageDir, it.File)
		sum, size, err := fileSHA256(path)
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("%s: %v", it.File, err))
		case size != it.Size:
			problems = append(problems, fmt.Sprintf("%s: size is %d, the plan says %d", it.File, size, it.Size))
		case sum != it.SHA256:
			problems = append(problems, fmt.Sprintf("%s: sha256 is %s, the plan says %s", it.File, sum, it.SHA256))
		}
	}
	if len(problems) > 0 {
		return &ChecksumError{Problems: problems}
	}
	return nil
}

func fileSHA256(path string) (string, int64, error) {
	f, err := safefile.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// ImportKeys imports armored public keys into root's rpm database with
// rpmkeys (a key already there is not imported twice). Apply of a migration
// calls it on the new root, before the transaction, so that the upgraded
// system trusts the target distribution's packages.
func (d *DNF) ImportKeys(ctx context.Context, root string, armored []string) error {
	if len(armored) == 0 {
		return nil
	}
	dir, err := os.MkdirTemp("", "kos-upgrade-keys-")
	if err != nil {
		return fmt.Errorf("cannot import keys: %w", err)
	}
	defer os.RemoveAll(dir)
	r := sysroot.Root{Dir: root}
	for i, k := range armored {
		f := filepath.Join(dir, fmt.Sprintf("key-%d.asc", i))
		if err := os.WriteFile(f, []byte(k), 0o600); err != nil {
			return fmt.Errorf("cannot import keys: %w", err)
		}
		what := fmt.Sprintf("import key %d into %s", i+1, root)
		if _, err := (execlog.Runner{Log: d.log()}).Run(ctx, what, "rpmkeys", "--root", root, "--dbpath", r.DBPathRel(), "--import", f); err != nil {
			return err
		}
	}
	return nil
}

// KeyImporter is implemented by backends that can import public keys into
// a root's rpm database (DNF).
type KeyImporter interface {
	ImportKeys(ctx context.Context, root string, armored []string) error
}

var _ KeyImporter = (*DNF)(nil)
