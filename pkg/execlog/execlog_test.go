package execlog

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestRunner(t *testing.T) {
	var logged bytes.Buffer
	r := Runner{Log: slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	out, err := r.Run(context.Background(), "say hello", "sh", "-c", "echo hello")
	if err != nil || out != "hello\n" {
		t.Fatalf("run() = %q, %v", out, err)
	}
	if !strings.Contains(logged.String(), "argv") || !strings.Contains(logged.String(), "echo hello") {
		t.Fatalf("argv not logged: %s", logged.String())
	}
	_, err = r.Run(context.Background(), "fail on purpose", "sh", "-c", "echo oops >&2; exit 3")
	want := `cannot fail on purpose: sh -c "echo oops >&2; exit 3": oops: exit status 3`
	if err == nil || err.Error() != want {
		t.Fatalf("run() error = %v, want %s", err, want)
	}
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != 3 {
		t.Fatalf("run() error does not wrap the exit error: %#v", err)
	}
}

// TestIsolated: a command starts in / with the fixed environment, whatever
// the caller's directory and environment hold.
func TestIsolated(t *testing.T) {
	t.Chdir(t.TempDir())
	t.Setenv("PYTHONPATH", "/tmp/evil")
	t.Setenv("LD_PRELOAD", "/tmp/evil.so")
	t.Setenv("KOS_UPGRADE_TEST_CRASH_AT", "nowhere")
	r := Runner{Log: slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)), Env: []string{"LANG=C.UTF-8", "X=1"}}
	out, err := r.Run(context.Background(), "show the environment", "sh", "-c", "pwd; env | sort")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if lines[0] != "/" {
		t.Errorf("working directory %q, want /", lines[0])
	}
	got := map[string]bool{}
	for _, l := range lines[1:] {
		got[l] = true
	}
	for _, want := range []string{"PATH=" + Path, "LANG=C.UTF-8", "X=1"} {
		if !got[want] {
			t.Errorf("environment lacks %s: %q", want, lines[1:])
		}
	}
	// The test hooks' variables pass only in a binary built with them.
	if hook := "KOS_UPGRADE_TEST_CRASH_AT=nowhere"; got[hook] != TestHooks {
		t.Errorf("%s passed on: %v, built with the test hooks: %v", hook, got[hook], TestHooks)
	}
	for _, l := range lines[1:] {
		if strings.HasPrefix(l, "PYTHONPATH=") || strings.HasPrefix(l, "LD_PRELOAD=") || l == "LANG=C" {
			t.Errorf("environment has %s", l)
		}
	}
}

// TestPythonFlags: -I where the interpreter has it, else -E -s; real
// interpreters (python3 and, when installed, the Python 3.6 of the EL8
// helper checks) and one without -I (an interpreter replaced in place by
// one that refuses it). Nothing is remembered between calls: the answer
// follows the interpreter at the path.
func TestPythonFlags(t *testing.T) {
	ctx := context.Background()
	py := filepath.Join(t.TempDir(), "python")
	if err := os.Symlink("/usr/bin/python3", py); err != nil {
		t.Fatal(err)
	}
	if got := PythonFlags(ctx, py); !slices.Equal(got, []string{"-I"}) {
		t.Fatalf("python3: %q, want -I", got)
	}
	// The same path, now an interpreter without -I (as Python 2 was).
	os.Remove(py)
	noI := "#!/bin/sh\nfor a; do [ \"$a\" = -I ] && { echo 'Unknown option: -I' >&2; exit 2; }; done\nexit 0\n"
	if err := os.WriteFile(py, []byte(noI), 0o755); err != nil {
		t.Fatal(err)
	}
	if got := PythonFlags(ctx, py); !slices.Equal(got, []string{"-E", "-s"}) {
		t.Fatalf("interpreter without -I: %q, want -E -s", got)
	}
	cmd := Python(ctx, py, []string{"-c", "pass"})
	if want := []string{py, "-E", "-s", "-c", "pass"}; !slices.Equal(cmd.Args, want) {
		t.Errorf("Python: %q, want %q", cmd.Args, want)
	}
}

func TestTailBuffer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		writes []string
		want   string
	}{
		{name: "nothing", want: ""},
		{name: "short", writes: []string{"ab", "cd"}, want: "abcd"},
		{name: "exactly full", writes: []string{"abc", "def", "gh"}, want: "abcdefgh"},
		{name: "cut across writes", writes: []string{"abcdef", "ghij"}, want: "[...]cdefghij"},
		{name: "one large write", writes: []string{strings.Repeat("x", 1000) + "12345678"}, want: "[...]12345678"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &TailBuffer{Max: 8}
			for _, w := range tc.writes {
				if n, err := b.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("Write(%q) = %d, %v", w, n, err)
				}
			}
			if got := b.String(); got != tc.want {
				t.Errorf("String() = %q, want %q", got, tc.want)
			}
		})
	}
	// A command's stdout and stderr write at once.
	b := &TailBuffer{Max: 64}
	cmd := Command(context.Background(), []string{"sh", "-c", "for i in $(seq 2000); do echo out$i; echo err$i >&2; done"})
	cmd.Stdout, cmd.Stderr = b, b
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if s := b.String(); !strings.HasPrefix(s, "[...]") || len(s) != 64+len("[...]") || !strings.Contains(s, "2000\n") {
		t.Errorf("String() = %q", s)
	}
}
