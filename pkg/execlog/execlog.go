// Package execlog runs external commands the one way kos-upgrade does:
// every command is logged with its argv before it runs, and a failure comes
// back as "cannot <what>: <argv>: <stderr>: <err>", wrapping the exit error.
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
)

// Runner runs commands. The zero value logs to slog.Default() and keeps the
// process environment.
type Runner struct {
	Log *slog.Logger // nil: slog.Default()
	Env []string     // added to the environment (LANG=C for tools whose output is parsed)
}

// Logger returns the logger commands are logged to.
func (r Runner) Logger() *slog.Logger {
	if r.Log != nil {
		return r.Log
	}
	return slog.Default()
}

// Run runs argv and returns its standard output. what says what the command
// is for, in the words of the error message ("cannot <what>").
func (r Runner) Run(ctx context.Context, what string, argv ...string) (string, error) {
	r.Logger().Debug("run", "argv", argv)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if len(r.Env) > 0 {
		cmd.Env = append(os.Environ(), r.Env...)
	}
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
