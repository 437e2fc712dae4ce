package bundle_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/bundle"
)

// FuzzReadNeeds: a needs file (collected from hosts: untrusted) is read or
// refused without a panic, and what is read validates.
func FuzzReadNeeds(f *testing.F) {
	f.Add([]byte(`{"version": 1, "created_at": "2026-01-01T00:00:00Z", "machine_id": "0123456789abcdef0123456789abcdef",
"arch": "x86_64", "release": {"id": "kos", "version_id": "5.8"}, "target": "5.9", "repos": ["baseos"],
"installed": [{"name": "bash", "nevra": "bash-0:4.4.20-1.el8.x86_64", "arch": "x86_64"}]}`))
	f.Add([]byte(`{"version": 1, "installed": []}`))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(dir, "needs.json")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		n, err := bundle.ReadNeeds(p)
		if err == nil {
			if err := n.Validate(); err != nil {
				t.Fatalf("ReadNeeds returned needs that do not validate: %v", err)
			}
		}
	})
}
