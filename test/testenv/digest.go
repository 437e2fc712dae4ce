package testenv

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TreeDigest describes every entry under root, by path: its kind, mode,
// owner, extended attributes, and its content's sha256 (files) or target
// (symlinks). Paths under one of exclude (relative to root, "var/log") are
// left out. Two digests compare with DiffDigests.
func TreeDigest(t testing.TB, root string, exclude ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		for _, x := range exclude {
			if rel == x || strings.HasPrefix(rel, x+"/") {
				if fi.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
		}
		st := fi.Sys().(*syscall.Stat_t)
		d := fmt.Sprintf("%v uid=%d gid=%d", fi.Mode(), st.Uid, st.Gid)
		switch {
		case fi.Mode().IsRegular():
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			h := sha256.New()
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return err
			}
			d += " sha256=" + hex.EncodeToString(h.Sum(nil))
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			d += " -> " + target
		}
		buf := make([]byte, 64<<10)
		n, err := unix.Llistxattr(p, buf)
		if err == nil {
			names := strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00")
			sort.Strings(names)
			for _, name := range names {
				if name == "" {
					continue
				}
				v := make([]byte, 64<<10)
				if m, err := unix.Lgetxattr(p, name, v); err == nil {
					d += fmt.Sprintf(" %s=%q", name, v[:m])
				}
			}
		}
		out["/"+rel] = d
		return nil
	})
	if err != nil {
		t.Fatalf("cannot digest %s: %v", root, err)
	}
	return out
}

// DiffDigests lists the differences between two TreeDigests, one a line
// ("" when they are equal).
func DiffDigests(before, after map[string]string) string {
	var lines []string
	for p, b := range before {
		a, ok := after[p]
		switch {
		case !ok:
			lines = append(lines, "missing: "+p+" ("+b+")")
		case a != b:
			lines = append(lines, "changed: "+p+": "+b+" -> "+a)
		}
	}
	for p, a := range after {
		if _, ok := before[p]; !ok {
			lines = append(lines, "added: "+p+" ("+a+")")
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}
