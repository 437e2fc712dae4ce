package main

// Attacks on kos-upgrade run through the real binary (issue 11): each test
// performs one and asserts that it is refused and that nothing outside the
// state directory changed.

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

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
	testenv.RequireTools(t, "python3")
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal(err)
	}
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
