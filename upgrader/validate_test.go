package upgrader

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// under reports whether p is dir or below it.
func under(dir, p string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// FuzzParseState: no input panics; a document that is refused wraps
// ErrBadState; one that is accepted names only files below the directories
// they belong to, and survives a rewrite.
func FuzzParseState(f *testing.F) {
	f.Add([]byte(`{"version": 1, "status": "applying", "step": "backup", "run_id": "20260101T000000.000Z-5.9", "target": "5.9",
"boot": {"loader": "grub2-bls", "backups": [{"dir": "/boot", "path": "boot-backup/20260101T000000.000Z-5.9/boot"}], "entries": ["a"]},
"initramfs": {"loader": "grub2-bls", "entry": "e", "image": "/boot/kos-upgrade-initramfs-5.9.img", "step": "entry"},
"last_result": {"run_id": "r", "kind": "apply", "success": true, "status": "succeeded", "started_at": "2026-01-01T00:00:00Z"}}`))
	f.Add([]byte(`{"version": 1, "status": "applying", "boot": {"backups": [{"dir": "/boot", "path": "boot-backup/../../../../../victim/x"}]}}`))
	f.Add([]byte(`{"version": 1, "status": "succeeded", "boot": {"backups": [{"path": "x"}]}}`))
	f.Add([]byte(`{"version": -5, "status": "bogus-status"}`))
	f.Add([]byte(`{"version": 1, "status": "armed", "snapshot": "/", "previous": "@"}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, in []byte) {
		st, err := parseState(in, "/state.json")
		if err != nil {
			if !errors.Is(err, ErrBadState) {
				t.Fatalf("error does not wrap ErrBadState: %v", err)
			}
			return
		}
		const dir = "/var/lib/kos-upgrade"
		if st.Boot != nil {
			for _, b := range st.Boot.Backups {
				if p := filepath.Join(dir, b.Path); !under(filepath.Join(dir, bootBackupTop), filepath.Dir(p)) || filepath.Dir(p) == filepath.Join(dir, bootBackupTop) {
					t.Fatalf("backup path %q leaves %s/%s/<run>", b.Path, dir, bootBackupTop)
				}
				if p := filepath.Join("/root", b.Dir); !under("/root", p) || p == "/root" {
					t.Fatalf("backup dir %q leaves the root", b.Dir)
				}
			}
			for _, e := range append([]string{st.Boot.Entry, st.Boot.Previous, st.Boot.Pinned}, st.Boot.Entries...) {
				if strings.Contains(e, "/") || e == ".." {
					t.Fatalf("entry %q is not a file name", e)
				}
			}
		}
		if is := st.Initramfs; is != nil && is.Image != "" {
			if p := filepath.Join("/root", is.Image); !under("/root", p) || !strings.HasPrefix(filepath.Base(p), InitramfsImagePrefix) {
				t.Fatalf("initramfs image %q leaves the root or is not ours", is.Image)
			}
		}
		for _, id := range []string{st.RunID, st.PlanID} {
			if id != "" && filepath.Join(dir, "history", id+".json") != dir+"/history/"+id+".json" {
				t.Fatalf("id %q is not a file name", id)
			}
		}
		if !validStatuses[st.Status] || st.Version != StateVersion {
			t.Fatalf("accepted version %d status %q", st.Version, st.Status)
		}
		out, err := json.Marshal(st)
		if err != nil {
			t.Fatalf("cannot re-encode: %v", err)
		}
		if _, err := parseState(out, "/state.json"); err != nil {
			t.Fatalf("re-encoded state does not parse: %v\n%s", err, out)
		}
	})
}
