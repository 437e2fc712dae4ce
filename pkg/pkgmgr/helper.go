package pkgmgr

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/progress"
)

//go:embed helper/kos_upgrade_helper.py
var helperSource string

// HelperSource returns the embedded Python helper (for packaging and the
// Python 3.6 compatibility check).
func HelperSource() string { return helperSource }

// HelperError is an error reported by the helper, with dnf's or rpm's
// problem lines.
type HelperError struct {
	Kind     string   // depsolve, repo, download, test, transaction, stale, package, config, internal
	Message  string   // one line
	Problems []string // each problem as dnf or rpm says it
}

func (e *HelperError) Error() string {
	if len(e.Problems) == 0 {
		return e.Message
	}
	return e.Message + ":\n  " + strings.Join(e.Problems, "\n  ")
}

// ErrDepsolve is matched (errors.Is) by helper errors of kind "depsolve".
var ErrDepsolve = errors.New("dependency problems")

// Is makes errors.Is(err, ErrDepsolve) work.
func (e *HelperError) Is(target error) bool {
	return target == ErrDepsolve && e.Kind == "depsolve"
}

type helperLine struct {
	Type     string   `json:"type"`
	Step     string   `json:"step"`
	Action   string   `json:"action"`
	Package  string   `json:"package"`
	N        int      `json:"n"`
	Total    int      `json:"total"`
	Message  string   `json:"message"`
	Kind     string   `json:"kind"`
	Problems []string `json:"problems"`
}

// runHelper runs one helper command with req on its stdin, forwards progress
// to sink and returns the raw result line.
func (d *DNF) runHelper(ctx context.Context, command string, req any, sink progress.Sink) (json.RawMessage, error) {
	in, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("cannot encode %s request: %w", command, err)
	}
	argv := []string{d.Python, "-c", helperSource, command}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("cannot run package helper: %w", err)
	}
	d.log().Debug("running package helper", "python", d.Python, "command", command)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("cannot start package helper %s: %w", d.Python, err)
	}
	var result json.RawMessage
	var herr *HelperError
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 256<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var l helperLine
		if err := json.Unmarshal(line, &l); err != nil {
			d.log().Warn("package helper printed a non-JSON line", "line", string(line))
			continue
		}
		switch l.Type {
		case "progress":
			if sink != nil {
				sink.Report(progress.Event{Step: l.Step, Action: l.Action, Package: l.Package, N: l.N, Total: l.Total, Message: l.Message})
			}
		case "log":
			d.log().Info(l.Message, "helper", command)
		case "result":
			result = append(json.RawMessage(nil), line...)
		case "error":
			herr = &HelperError{Kind: l.Kind, Message: l.Message, Problems: l.Problems}
		}
	}
	scanErr := sc.Err()
	if scanErr != nil {
		io.Copy(io.Discard, stdout)
	}
	waitErr := cmd.Wait()
	if herr != nil {
		d.log().Debug("package helper failed", "command", command, "stderr", stderr.String())
		return nil, herr
	}
	if waitErr != nil {
		return nil, fmt.Errorf("cannot run package helper %s: %w: %s", command, waitErr, lastLines(stderr.String(), 10))
	}
	if scanErr != nil {
		return nil, fmt.Errorf("cannot read package helper output: %w", scanErr)
	}
	if result == nil {
		return nil, fmt.Errorf("cannot run package helper %s: it gave no result: %s", command, lastLines(stderr.String(), 10))
	}
	return result, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (d *DNF) log() *slog.Logger {
	if d.Logger != nil {
		return d.Logger
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}
