// Package execlog runs external commands the one way kos-upgrade does:
// every command is logged with its argv before it runs, and a failure comes
// back as "cannot <what>: <argv>: <stderr>: <err>", wrapping the exit error.
//
// Every command starts isolated (Command): working directory /, a fixed
// minimal environment, nothing inherited from whoever started kos-upgrade
// (PYTHONPATH, LD_PRELOAD, a planted module in the caller's directory).
package execlog

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
)

// Path is the PATH every command runs with.
const Path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// testEnvPrefix names the test hooks' variables (a crash or a hang at a
// named step) that a binary built with the test hooks (TestHooks) passes
// on to commands so that a helper can honour them; nothing else of the
// caller's environment is.
const testEnvPrefix = "KOS_UPGRADE_TEST_"

// Env returns the environment every command starts with: PATH, LANG=C,
// with TestHooks the test hooks' variables of this process, then extra (a
// later entry overrides an earlier one of the same name).
func Env(extra ...string) []string {
	env := []string{"PATH=" + Path, "LANG=C"}
	for _, kv := range os.Environ() {
		if TestHooks && strings.HasPrefix(kv, testEnvPrefix) {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// Command returns an isolated command: argv run in / with Env(extra...).
// Callers that cannot use Runner.Run (a pipe, extra files) start their
// command from here.
func Command(ctx context.Context, argv []string, extra ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = "/"
	cmd.Env = Env(extra...)
	return cmd
}

// Runner runs commands. The zero value logs to slog.Default().
type Runner struct {
	Log *slog.Logger // nil: slog.Default()
	Env []string     // added to the fixed environment (see Env)
}

// Logger returns the logger commands are logged to.
func (r Runner) Logger() *slog.Logger {
	if r.Log != nil {
		return r.Log
	}
	return slog.Default()
}

// Run runs argv (isolated, see Command) and returns its standard output.
// what says what the command is for, in the words of the error message
// ("cannot <what>").
func (r Runner) Run(ctx context.Context, what string, argv ...string) (string, error) {
	r.Logger().Debug("run", "argv", argv)
	cmd := Command(ctx, argv, r.Env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = "(no error output)"
		}
		return stdout.String(), fmt.Errorf("cannot %s: %s: %s: %w", what, QuoteArgv(argv), msg, err)
	}
	return stdout.String(), nil
}

// QuoteArgv renders argv for messages, quoting what a shell would split.
func QuoteArgv(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a == "" || strings.ContainsAny(a, " \t\n\"'\\$`*?[]{}()<>|&;#~") {
			q[i] = strconv.Quote(a)
		} else {
			q[i] = a
		}
	}
	return strings.Join(q, " ")
}

// PythonFlags returns the isolation flags of the interpreter python: -I
// (no user site, no PYTHON* variables, neither the script's nor the working
// directory on sys.path) where it has it, else -E -s. Both keep a virtual
// environment's interpreter working (pyvenv.cfg is found from the
// executable). The interpreter is asked each time (python -I -c ""):
// nothing is kept between calls, and the probe (20 to 70 ms measured) is
// small beside what it precedes (the dnf helper's "import dnf" alone takes
// about 330 ms).
func PythonFlags(ctx context.Context, python string) []string {
	if err := Command(ctx, []string{python, "-I", "-c", ""}).Run(); err == nil {
		return []string{"-I"}
	}
	return []string{"-E", "-s"}
}

// Python returns an isolated command (Command) running python with its
// isolation flags (PythonFlags) and args, e.g. "-c", source.
func Python(ctx context.Context, python string, args []string, extra ...string) *exec.Cmd {
	argv := append([]string{python}, PythonFlags(ctx, python)...)
	return Command(ctx, append(argv, args...), extra...)
}

// TailBuffer keeps the last Max bytes written to it: the output of a
// command that may print without end (a scriptlet, a site check) never
// fills memory. String marks a cut beginning with "[...]". Writes may come
// from several goroutines (a command's stdout and stderr).
type TailBuffer struct {
	Max int

	mu  sync.Mutex
	b   []byte
	cut bool
}

// Write implements io.Writer; it never fails.
func (t *TailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	if len(p) > t.Max {
		p, t.cut = p[len(p)-t.Max:], true
	}
	t.b = append(t.b, p...)
	if len(t.b) > t.Max {
		t.b, t.cut = append(t.b[:0], t.b[len(t.b)-t.Max:]...), true
	}
	return n, nil
}

// String returns what is kept, "[...]" first when the beginning was cut.
func (t *TailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cut {
		return "[...]" + string(t.b)
	}
	return string(t.b)
}
