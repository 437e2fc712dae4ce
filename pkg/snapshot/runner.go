package snapshot

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os/exec"
	"strconv"
	"strings"
)

// Tools the backends run; the one place their names live.
const (
	btrfsTool  = "btrfs"
	mountTool  = "mount"
	umountTool = "umount"
)

// runner runs external commands: every command is logged with its argv, and
// a failure comes back as "cannot <what>: <argv>: <stderr>: <err>".
type runner struct {
	log *slog.Logger // nil: slog.Default()
}

func (r runner) logger() *slog.Logger {
	if r.log != nil {
		return r.log
	}
	return slog.Default()
}

// run runs argv and returns its standard output.
func (r runner) run(ctx context.Context, what string, argv ...string) (string, error) {
	r.logger().Debug("run", "argv", argv)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = "(no error output)"
		}
		return stdout.String(), fmt.Errorf("cannot %s: %s: %s: %w", what, quoteArgv(argv), msg, err)
	}
	return stdout.String(), nil
}

// quoteArgv renders argv for messages, quoting what a shell would split.
func quoteArgv(argv []string) string {
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
