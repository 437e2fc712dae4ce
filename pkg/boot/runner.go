package boot

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// Tools run by this package; the one place their names live.
const (
	bootctlTool = "bootctl"
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

// resolveIn follows symbolic links at p (a host path below root) the way
// they resolve inside the root: absolute targets are re-rooted. A missing
// file is returned as it is.
func resolveIn(rootDir, p string) string {
	for i := 0; i < 16; i++ {
		fi, err := os.Lstat(p)
		if err != nil || fi.Mode()&os.ModeSymlink == 0 {
			return p
		}
		t, err := os.Readlink(p)
		if err != nil {
			return p
		}
		if filepath.IsAbs(t) {
			p = filepath.Join(rootDir, t)
		} else {
			p = filepath.Join(filepath.Dir(p), t)
		}
	}
	return p
}

// resolveFile follows a symbolic link at p with host semantics.
func resolveFile(p string) (string, error) {
	fi, err := os.Lstat(p)
	if err != nil || fi.Mode()&os.ModeSymlink == 0 {
		return p, err
	}
	return filepath.EvalSymlinks(p)
}
