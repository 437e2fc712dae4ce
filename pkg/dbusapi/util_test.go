package dbusapi_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

var sprintf = fmt.Sprintf

// stateDigest hashes the state directory and /system-update of root.
func stateDigest(t testing.TB, root string) map[string]string {
	t.Helper()
	m := map[string]string{}
	if l, err := os.Readlink(filepath.Join(root, "system-update")); err == nil {
		m["/system-update"] = l
	}
	dir := filepath.Join(root, "var/lib/kos-upgrade")
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		d := fi.Mode().String()
		if fi.Mode().IsRegular() {
			f, err := os.Open(p)
			if err == nil {
				h := sha256.New()
				io.Copy(h, f)
				f.Close()
				d += " " + hex.EncodeToString(h.Sum(nil))
			}
		}
		m[rel] = d
		return nil
	})
	return m
}

func diffDigest(a, b map[string]string) string {
	var d []string
	for k, v := range a {
		if b[k] != v {
			d = append(d, k+": "+v+" != "+b[k])
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			d = append(d, k+": new")
		}
	}
	sort.Strings(d)
	return strings.Join(d, "\n")
}
