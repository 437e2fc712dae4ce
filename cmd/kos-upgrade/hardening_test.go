package main

// Attacks on kos-upgrade run through the real binary (issue 11): each test
// performs one and asserts that it is refused and that nothing outside the
// state directory changed.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// runBinary runs the kos-upgrade binary in dir with env added to the
// process environment (no daemon: the CLI works in-process).
func runBinary(t *testing.T, dir string, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(testenv.Binary(t), args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "KOS_UPGRADE_NO_DAEMON=1"), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestHelperIgnoresPlantedModules: a json.py planted in the caller's
// working directory and one on PYTHONPATH are never imported by the dnf
// helper; the helper runs in / with a fixed environment.
func TestHelperIgnoresPlantedModules(t *testing.T) {
	// /usr/bin/python3, not the first python3 on PATH: a pyenv shim there
	// needs the environment the helper is rightly started without.
	const python = "/usr/bin/python3"
	testenv.RequireTools(t, "/usr/bin/python3")
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/os-release"), []byte("ID=kos\nVERSION_ID=5.8\n"), 0o644)
	evil := testenv.WorldDir(t, "kos-upgrade-evil-")
	marker := filepath.Join(t.TempDir(), "planted-code-ran")
	planted := "open(" + `"` + marker + `"` + ", 'w').write('uid 0')\n"
	for _, d := range []string{evil, filepath.Join(evil, "pypath")} {
		os.MkdirAll(d, 0o777)
		for _, m := range []string{"json.py", "hashlib.py", "sitecustomize.py", "usercustomize.py"} {
			if err := os.WriteFile(filepath.Join(d, m), []byte(planted), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A wrapper interpreter records where and how the helper started.
	log := filepath.Join(t.TempDir(), "started")
	wrapper := filepath.Join(t.TempDir(), "python")
	os.WriteFile(wrapper, []byte("#!/bin/sh\n{ pwd; env | grep -c '^PYTHON'; echo \"$1\"; } >>"+log+"\nexec "+python+" \"$@\"\n"), 0o755)

	out, _ := runBinary(t, evil, []string{"KOS_UPGRADE_PYTHON=" + wrapper, "PYTHONPATH=" + filepath.Join(evil, "pypath"),
		"PYTHONUSERBASE=" + evil}, "--root", root, "check", "--to", "5.9")
	started, err := os.ReadFile(log)
	if err != nil {
		t.Fatalf("the helper never started: %v\n%s", err, out)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatalf("planted code ran as root\n%s", out)
	}
	lines := strings.Split(strings.TrimSpace(string(started)), "\n")
	for i := 0; i+2 < len(lines); i += 3 {
		if lines[i] != "/" {
			t.Errorf("helper started in %s, want /", lines[i])
		}
		if lines[i+1] != "0" {
			t.Errorf("helper inherited %s PYTHON* variables", lines[i+1])
		}
		if lines[i+2] != "-I" && lines[i+2] != "-E" {
			t.Errorf("helper started without isolation flags: %s", lines[i+2])
		}
	}
}

// digestTree maps every path below dir (relative) to its type, mode, size
// and content hash; skip names a subtree left out (the state directory).
func digestTree(t *testing.T, dir, skip string) map[string]string {
	t.Helper()
	m := map[string]string{}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			m[p] = "error " + err.Error()
			return nil
		}
		if skip != "" && p == skip {
			return filepath.SkipDir
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		v := fi.Mode().String()
		if fi.Mode().IsRegular() {
			b, _ := os.ReadFile(p)
			v += " " + sha256Hex(b)
		} else if fi.Mode()&os.ModeSymlink != 0 {
			l, _ := os.Readlink(p)
			v += " -> " + l
		}
		rel, _ := filepath.Rel(dir, p)
		m[rel] = v
		return nil
	})
	return m
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// tamperedRoot is a root with a state directory, next to a sentinel tree
// (victim) that no command may touch.
type tamperedRoot struct {
	parent, root, state, victim string
}

func newTamperedRoot(t *testing.T) *tamperedRoot {
	t.Helper()
	parent := t.TempDir()
	r := &tamperedRoot{parent: parent, root: filepath.Join(parent, "root"), victim: filepath.Join(parent, "victim")}
	r.state = filepath.Join(r.root, "var/lib/kos-upgrade")
	for _, d := range []string{r.state, filepath.Join(r.root, "etc"), filepath.Join(r.root, "boot/loader/entries"),
		filepath.Join(r.victim, "x/deep"), filepath.Join(r.victim, "boot")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(r.root, "etc/os-release"), []byte("ID=kos\nVERSION_ID=5.8\n"), 0o644)
	for _, f := range []string{"x/precious", "x/deep/data", "boot/vmlinuz", "kos-upgrade-initramfs-5.9.img", "escaped"} {
		os.WriteFile(filepath.Join(r.victim, f), []byte("sentinel "+f), 0o644)
	}
	return r
}

// digest is the sentinel tree and the root without its state directory.
func (r *tamperedRoot) digest(t *testing.T) map[string]string {
	return digestTree(t, r.parent, r.state)
}

func diffTrees(a, b map[string]string) []string {
	var d []string
	for k, v := range a {
		if b[k] != v {
			d = append(d, k+": "+v+" → "+b[k])
		}
	}
	for k, v := range b {
		if _, ok := a[k]; !ok {
			d = append(d, k+": new "+v)
		}
	}
	return d
}

// TestTamperedStateRefused feeds damaged and hostile state documents to the
// real binary: each command refuses them as damaged, naming the file,
// without panicking, hanging, or changing anything outside the state
// directory.
func TestTamperedStateRefused(t *testing.T) {
	const applying = `"version": 1, "status": "applying", "step": "backup", "run_id": "20260101T000000.000Z-5.9", "target": "5.9", "updated_at": "2026-01-01T00:00:00Z"`
	validPlan := func(version string) string {
		return `{"version": 1, "id": "20260101T000000Z-5.9", "created_at": "2026-01-01T00:00:00Z", "source": {"id": "kos", "version_id": "5.8"},
"target": {"id": "kos", "version_id": "` + version + `"}, "snapshot": "none", "rpmdb_fingerprint": "sha256:x", "signature_check": "enforced",
"stage_dir": "packages", "transaction": [{"action": "remove", "nevra": "a-0:1-1.noarch", "name": "a"}]}`
	}
	tests := []struct {
		name   string
		state  string // state.json ("" none; "fifo", "symlink" special)
		plan   string
		armed  bool              // /system-update points at the state directory
		args   []string          // the command
		want   string            // in the output; "" = succeeds
		noFile string            // a path (relative to parent) that must not exist afterwards
		files  map[string]string // more files in the state directory
	}{
		{name: "backup path escapes (cancel)", args: []string{"cancel"}, want: "damaged",
			state: `{` + applying + `, "boot": {"loader": "grub2-bls", "backups": [{"dir": "/boot", "path": "boot-backup/../../../../../victim/x"}]}}`},
		{name: "backup dir escapes (cancel)", args: []string{"cancel"}, want: "damaged",
			state: `{` + applying + `, "boot": {"loader": "grub2-bls", "backups": [{"dir": "/../../victim/boot", "path": "boot-backup/20260101T000000.000Z-5.9/boot"}]}}`},
		{name: "backup manifest escapes (cancel)", args: []string{"cancel"}, want: "damaged /boot backup",
			state: `{` + applying + `, "boot": {"loader": "grub2-bls", "backups": [{"dir": "/boot", "path": "boot-backup/20260101T000000.000Z-5.9/boot"}]}}`,
			files: map[string]string{
				"boot-backup/20260101T000000.000Z-5.9/boot/manifest.json":                 `{"version": 1, "boot_dir": "/boot", "files": [{"path": "../../victim/x/precious", "size": 6, "sha256": "x"}]}`,
				"boot-backup/20260101T000000.000Z-5.9/boot/files/../../victim/x/precious": "forged",
			}},
		{name: "short backup path (clean)", args: []string{"clean"}, want: "damaged",
			state: `{"version": 1, "status": "succeeded", "boot": {"loader": "grub2-bls", "backups": [{"path": "x"}]}}`},
		{name: "initramfs image outside /boot (cancel)", args: []string{"cancel"}, want: "damaged",
			state: `{"version": 1, "status": "armed", "plan_id": "20260101T000000Z-5.9", "initramfs": {"loader": "grub2-bls", "entry": "e", "image": "/../../victim/kos-upgrade-initramfs-5.9.img", "step": "entry"}}`},
		{name: "entry id with a slash (cancel)", args: []string{"cancel"}, want: "damaged",
			state: `{"version": 1, "status": "armed", "plan_id": "20260101T000000Z-5.9", "initramfs": {"loader": "grub2-bls", "entry": "../../../victim/x/precious", "image": "/boot/kos-upgrade-initramfs-5.9.img"}}`},
		{name: "run id escapes (status)", args: []string{"status"}, want: "damaged",
			state: `{"version": 1, "status": "failed", "run_id": "../../../../victim/x"}`},
		{name: "snapshot escapes (rollback)", args: []string{"rollback", "--no-reboot"}, want: "damaged",
			state: `{"version": 1, "status": "succeeded", "backend": "btrfs", "snapshot": "../../victim", "previous": "/.."}`},
		{name: "negative version (status)", args: []string{"status"}, want: "damaged", state: `{"version": -5, "status": "idle"}`},
		{name: "unknown status (status)", args: []string{"status"}, want: "damaged", state: `{"version": 1, "status": "bogus-status"}`},
		{name: "not JSON (status)", args: []string{"status"}, want: "damaged", state: `{"version": 1, "status": `},
		{name: "state is a FIFO (status)", args: []string{"status"}, want: "damaged", state: "fifo"},
		{name: "state is a symlink (status)", args: []string{"status"}, want: "damaged", state: "symlink"},
		{name: "target version escapes (apply)", args: []string{"apply"}, want: "not a release version", armed: true,
			state: `{"version": 1, "status": "armed", "plan_id": "20260101T000000Z-5.9", "target": "5.9"}`,
			plan:  validPlan("x/../../../../../victim/escaped"), noFile: "victim/escaped.json"},
		{name: "plan id escapes (apply)", args: []string{"apply"}, want: "not a plan id", armed: true,
			state: `{"version": 1, "status": "armed", "target": "5.9"}`,
			plan:  strings.Replace(validPlan("5.9"), `"id": "20260101T000000Z-5.9"`, `"id": "../../../../victim/x"`, 1)},
		{name: "plan is a FIFO (apply)", args: []string{"apply"}, want: "not a regular file", armed: true,
			state: `{"version": 1, "status": "armed", "target": "5.9"}`, plan: "fifo"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newTamperedRoot(t)
			statePath := filepath.Join(r.state, "state.json")
			switch tc.state {
			case "":
			case "fifo":
				syscall.Mkfifo(statePath, 0o600)
			case "symlink":
				os.WriteFile(filepath.Join(r.victim, "state.json"), []byte(`{"version": 1, "status": "idle"}`), 0o644)
				os.Symlink(filepath.Join(r.victim, "state.json"), statePath)
			default:
				os.WriteFile(statePath, []byte(tc.state), 0o600)
			}
			switch tc.plan {
			case "":
			case "fifo":
				syscall.Mkfifo(filepath.Join(r.state, "plan.json"), 0o600)
			default:
				os.WriteFile(filepath.Join(r.state, "plan.json"), []byte(tc.plan), 0o600)
			}
			for rel, content := range tc.files {
				p := filepath.Join(r.state, rel)
				if !strings.HasPrefix(filepath.Clean(p), r.state) {
					continue // the forged file the manifest points at stays out of the tree
				}
				os.MkdirAll(filepath.Dir(p), 0o700)
				os.WriteFile(p, []byte(content), 0o600)
			}
			if tc.armed {
				os.Symlink("/var/lib/kos-upgrade", filepath.Join(r.root, "system-update"))
			}
			before := r.digest(t)
			type result struct {
				out string
				err error
			}
			done := make(chan result, 1)
			go func() {
				out, err := runBinary(t, r.parent, nil, append([]string{"--root", r.root}, tc.args...)...)
				done <- result{out, err}
			}()
			var res result
			select {
			case res = <-done:
			case <-time.After(2 * time.Minute):
				t.Fatalf("kos-upgrade %v hangs", tc.args)
			}
			if strings.Contains(res.out, "panic") || strings.Contains(res.out, "goroutine ") {
				t.Fatalf("kos-upgrade %v panicked:\n%s", tc.args, res.out)
			}
			if tc.want == "" && res.err != nil {
				t.Errorf("kos-upgrade %v: %v\n%s", tc.args, res.err, res.out)
			}
			if tc.want != "" && (res.err == nil || !strings.Contains(res.out, tc.want)) {
				t.Errorf("kos-upgrade %v: %v, want a refusal with %q:\n%s", tc.args, res.err, tc.want, res.out)
			}
			after := r.digest(t)
			delete(before, "root/system-update") // apply removes its trigger first, by design
			delete(after, "root/system-update")
			if d := diffTrees(before, after); len(d) > 0 {
				t.Errorf("kos-upgrade %v changed things outside the state directory:\n  %s", tc.args, strings.Join(d, "\n  "))
			}
			if tc.noFile != "" {
				if _, err := os.Lstat(filepath.Join(r.parent, tc.noFile)); err == nil {
					t.Errorf("%s was created", tc.noFile)
				}
			}
		})
	}
}

// TestHistoryFIFODoesNotHang: a FIFO among the history records is skipped,
// by history and by status (which settles from history).
func TestHistoryFIFODoesNotHang(t *testing.T) {
	r := newTamperedRoot(t)
	hist := filepath.Join(r.state, "history")
	os.MkdirAll(hist, 0o700)
	if err := syscall.Mkfifo(filepath.Join(hist, "20260101T000000.000Z-5.9.json"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Symlink(filepath.Join(r.victim, "x/precious"), filepath.Join(hist, "20260102T000000.000Z-5.9.json"))
	for _, args := range [][]string{{"history"}, {"status"}, {"--json", "history"}, {"cancel"}, {"clean"}, {"log"}} {
		done := make(chan error, 1)
		var out string
		go func() {
			var err error
			out, err = runBinary(t, r.parent, nil, append([]string{"--root", r.root}, args...)...)
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("kos-upgrade %v: %v\n%s", args, err, out)
			}
		case <-time.After(time.Minute):
			t.Fatalf("kos-upgrade %v hangs on a FIFO in history/", args)
		}
	}
}

// TestHealthScriptsMustBeRootOnly: a health.d script (or directory) that
// another user could have written, or a symbolic link, is not run as root
// and fails the check; a root-only script runs in / with a fixed
// environment.
func TestHealthScriptsMustBeRootOnly(t *testing.T) {
	testenv.RequireRoot(t)
	marker := "ran"
	tests := []struct {
		name    string
		setup   func(dir, script string) error
		wantErr string
	}{
		{name: "root only", setup: func(dir, script string) error { return nil }},
		{name: "world-writable script", setup: func(dir, script string) error { return os.Chmod(script, 0o757) }, wantErr: "writable by its group or others"},
		{name: "group-writable directory", setup: func(dir, script string) error { return os.Chmod(dir, 0o775) }, wantErr: "writable by its group or others"},
		{name: "script owned by nobody", setup: func(dir, script string) error { return os.Chown(script, 65534, 65534) }, wantErr: "not owned by root"},
		{name: "symlink", setup: func(dir, script string) error {
			target := filepath.Join(filepath.Dir(dir), "elsewhere")
			os.Rename(script, target)
			return os.Symlink(target, script)
		}, wantErr: "not a regular file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, healthDirRel)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(root, marker)
			script := filepath.Join(dir, "10-check")
			os.WriteFile(script, []byte("#!/bin/sh\n{ pwd; env | grep -c '^SECRET='; } > "+out+"; exit 0\n"), 0o755)
			if err := tc.setup(dir, script); err != nil {
				t.Fatal(err)
			}
			t.Setenv("SECRET", "x")
			err := runHealthScripts(context.Background(), sysroot.Root{Dir: root})
			b, _ := os.ReadFile(out)
			if tc.wantErr == "" {
				if err != nil || string(b) != "/\n0\n" {
					t.Errorf("root-only script: %v, it saw %q", err, b)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %v, want %q", err, tc.wantErr)
			}
			if len(b) > 0 {
				t.Errorf("the unsafe script ran")
			}
		})
	}
}

// TestDamagedStateProperty: for random damaged state documents (a valid
// one with fields replaced by hostile values: escaping paths, absolute
// paths, ids with slashes, unknown statuses and versions, wrong types),
// every command either refuses with an error message or succeeds, never
// panics or hangs, and nothing next to --root (a sentinel tree the hostile
// paths point at) changes.
func TestDamagedStateProperty(t *testing.T) {
	const docs = 40
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	hostile := []any{
		"../../../../../victim/x", "boot-backup/../../../../../victim/x", "/../../victim/boot", "/", "", ".", "..",
		"../victim", "x/../../../../../victim/escaped", "/../../victim/kos-upgrade-initramfs-5.9.img",
		"boot-backup/20260101T000000.000Z-5.9/../../../../../../victim", "a\x00b", strings.Repeat("x", 300),
		"bogus-status", "applying", "failed", "succeeded", "armed", "backup", "transaction", -5, 0, 2, 1e30, true,
		nil, []any{}, map[string]any{}, []any{map[string]any{"path": "x"}}, []any{map[string]any{"dir": "/", "path": "boot-backup"}},
	}
	fields := []string{"version", "status", "step", "plan_id", "run_id", "target", "backend", "snapshot", "previous",
		"boot.backups", "boot.backups.0.path", "boot.backups.0.dir", "boot.entry", "boot.previous", "boot.entries",
		"initramfs.image", "initramfs.entry", "last_result.run_id", "last_result.status"}
	commands := [][]string{{"status"}, {"history"}, {"cancel"}, {"clean"}, {"rollback", "--no-reboot"}, {"apply"}}
	for i := 0; i < docs; i++ {
		doc := map[string]any{
			"version": 1, "status": "applying", "step": "backup", "run_id": "20260101T000000.000Z-5.9", "target": "5.9",
			"plan_id": "20260101T000000Z-5.9", "backend": "btrfs", "snapshot": "kos-upgrade/20260101T000000.000Z-5.9", "previous": "@",
			"boot": map[string]any{"loader": "grub2-bls", "entry": "kos-upgrade-5.9", "previous": "old", "entries": []any{"kos-upgrade-5.9"},
				"backups": []any{map[string]any{"dir": "/boot", "path": "boot-backup/20260101T000000.000Z-5.9/boot"}}},
			"initramfs":   map[string]any{"loader": "grub2-bls", "entry": "e", "image": "/boot/kos-upgrade-initramfs-5.9.img", "step": "entry"},
			"last_result": map[string]any{"run_id": "20251201T000000.000Z-5.8", "kind": "apply", "status": "failed"},
		}
		var changed []string
		for n := 1 + rng.Intn(3); n > 0; n-- {
			f := fields[rng.Intn(len(fields))]
			v := hostile[rng.Intn(len(hostile))]
			setPath(doc, strings.Split(f, "."), v)
			changed = append(changed, fmt.Sprintf("%s=%#v", f, v))
		}
		b, _ := json.Marshal(doc)
		for _, args := range commands {
			r := newTamperedRoot(t)
			os.WriteFile(filepath.Join(r.state, "state.json"), b, 0o600)
			if args[0] == "apply" {
				os.Symlink("/var/lib/kos-upgrade", filepath.Join(r.root, "system-update"))
			}
			before := digestTree(t, r.parent, r.root)
			done := make(chan struct{})
			var out string
			var err error
			go func() {
				out, err = runBinary(t, r.parent, nil, append([]string{"--root", r.root}, args...)...)
				close(done)
			}()
			select {
			case <-done:
			case <-time.After(time.Minute):
				t.Fatalf("doc %d (%s): kos-upgrade %v hangs", i, strings.Join(changed, " "), args)
			}
			if strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") {
				t.Fatalf("doc %d (%s): kos-upgrade %v panicked:\n%s", i, strings.Join(changed, " "), args, out)
			}
			if err != nil && !strings.Contains(out, "kos-upgrade: ") {
				t.Errorf("doc %d (%s): kos-upgrade %v failed without a message: %v\n%s", i, strings.Join(changed, " "), args, err, out)
			}
			if d := diffTrees(before, digestTree(t, r.parent, r.root)); len(d) > 0 {
				t.Errorf("doc %d (%s): kos-upgrade %v changed the sentinel tree:\n  %s", i, strings.Join(changed, " "), args, strings.Join(d, "\n  "))
			}
		}
	}
}

// setPath sets doc[path...] = v, making maps (and list element 0) on the
// way.
func setPath(doc map[string]any, path []string, v any) {
	cur := doc
	for i, k := range path {
		if i == len(path)-1 {
			cur[k] = v
			return
		}
		if path[i+1] == "0" {
			l, _ := cur[k].([]any)
			if len(l) == 0 {
				l = []any{map[string]any{}}
			}
			m, ok := l[0].(map[string]any)
			if !ok {
				m = map[string]any{}
				l[0] = m
			}
			cur[k] = l
			if i+2 == len(path) {
				return
			}
			m[path[i+2]] = v
			return
		}
		next, ok := cur[k].(map[string]any)
		if !ok {
			next = map[string]any{}
			cur[k] = next
		}
		cur = next
	}
}

// TestArmShowsSourcesAndSignatures: arming says where the packages come
// from and that their signatures were not checked, for a plan prepared
// from a repository of the caller's choosing with --no-gpg-check.
func TestArmShowsSourcesAndSignatures(t *testing.T) {
	c := newCLIRoot(t)
	repo := "corp=file://" + filepath.Join(c.set.Dir, "repos", fixture.Repo59)
	out, errOut, code := c.run("prepare", "--to", "5.9", "--repo", repo, "--snapshot", "none", "--no-gpg-check")
	if code != 0 {
		t.Fatalf("prepare: exit %d\n%s\n%s", code, out, errOut)
	}
	if !strings.Contains(out, "repositories: "+repo) || !strings.Contains(out, "NOT checked") {
		t.Errorf("prepare's plan does not show the repository and the signature state:\n%s", out)
	}
	out, errOut, code = c.run("reboot", "--no-reboot")
	if code != 0 {
		t.Fatalf("reboot --no-reboot: exit %d\n%s\n%s", code, out, errOut)
	}
	if !strings.Contains(out, "packages from "+repo) || !strings.Contains(out, "signatures were NOT checked") {
		t.Errorf("arming does not show the repository and the signature state:\n%s", out)
	}
}

// noisySpec is a package whose %post prints without a newline, forges a
// protocol line on stdout and writes to stderr.
const noisySpec = `Name: noisy
Version: %{noisy_version}
Release: 1
Summary: A package whose scriptlet prints (test)
License: MIT
BuildArch: noarch
%description
Noisy.
%prep
%build
%install
mkdir -p %{buildroot}/usr/share/noisy
echo %{noisy_version} > %{buildroot}/usr/share/noisy/version
%post
printf 'no newline at the end'
printf '{"type":"error","kind":"transaction","message":"forged by a scriptlet"}\n'
printf 'to stderr without newline' >&2
%files
/usr/share/noisy/version
`

// TestScriptletOutputThroughTheBinary: an upgrade whose %post prints
// without a newline and forges a protocol error line succeeds, and is
// recorded as a success, through prepare, reboot --no-reboot and apply.
func TestScriptletOutputThroughTheBinary(t *testing.T) {
	c := newCLIRoot(t)
	testenv.RequireTools(t, "rpmbuild", "createrepo_c")
	ctx := context.Background()
	var rpms []string
	for _, v := range []string{"1.0", "2.0"} {
		spec := strings.ReplaceAll(noisySpec, "%{noisy_version}", v)
		p, err := fixture.BuildSpec(ctx, spec, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		rpms = append(rpms, p)
	}
	testenv.Run(t, "rpm", "--root", c.root, "--dbpath", fixture.DBPath, "-U", "--force-debian", "--nodeps", "--nosignature", rpms[0])
	repo := t.TempDir()
	pkgs, err := c.set.Packages(fixture.Repo59)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range append(pkgs, rpms[1]) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(repo, filepath.Base(p)), b, 0o644)
	}
	testenv.Run(t, "createrepo_c", "-q", repo)
	for _, args := range [][]string{
		{"prepare", "--to", "5.9", "--repo", "mixed=file://" + repo, "--snapshot", "none", "--no-gpg-check"},
		{"reboot", "--no-reboot"},
		{"apply"},
	} {
		out, errOut, code := c.run(args...)
		if code != 0 {
			t.Fatalf("%s: exit %d\n%s\n%s", args, code, out, errOut)
		}
	}
	out, _, _ := c.run("--json", "status")
	if !strings.Contains(out, `"status": "succeeded"`) {
		t.Errorf("the run is not recorded as a success:\n%s", out)
	}
	if b, err := os.ReadFile(filepath.Join(c.root, "usr/share/noisy/version")); err != nil || strings.TrimSpace(string(b)) != "2.0" {
		t.Errorf("noisy 2.0 not installed: %q %v", b, err)
	}
}
