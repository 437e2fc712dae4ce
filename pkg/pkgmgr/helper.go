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
	"os"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/execlog"
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

// callHelper runs one helper command (runHelper) and decodes its result
// into a T; what names the result in the error ("cannot decode <what>").
func callHelper[T any](ctx context.Context, d *DNF, command, what string, req any, sink progress.Sink) (*T, error) {
	raw, err := d.runHelper(ctx, command, req, sink)
	if err != nil {
		return nil, err
	}
	var res T
	if err := json.Unmarshal(raw, &res); err != nil {
		return nil, fmt.Errorf("cannot decode %s: %w", what, err)
	}
	return &res, nil
}

// runHelper runs one helper command with req on its stdin, forwards progress
// to sink and returns the raw result line.
//
// The helper starts isolated (execlog.Python: -I, working directory /, the fixed
// environment of execlog) and speaks its protocol on its own pipe, fd 3,
// which it keeps from the scriptlets; what it or a scriptlet prints on fd 1
// and 2 is output for the log, never part of the protocol.
func (d *DNF) runHelper(ctx context.Context, command string, req any, sink progress.Sink) (json.RawMessage, error) {
	in, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("cannot encode %s request: %w", command, err)
	}
	cmd := execlog.Python(ctx, d.Python, []string{"-c", helperSource, command}, "LANG=C.UTF-8")
	cmd.Stdin = bytes.NewReader(in)
	output := &execlog.TailBuffer{Max: 64 << 10}
	cmd.Stdout = output
	cmd.Stderr = output
	proto, protoW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("cannot run package helper: %w", err)
	}
	defer proto.Close()
	cmd.ExtraFiles = []*os.File{protoW} // fd 3
	d.log().Debug("running package helper", "python", d.Python, "flags", cmd.Args[1:len(cmd.Args)-3], "command", command)
	err = cmd.Start()
	protoW.Close()
	if err != nil {
		return nil, fmt.Errorf("cannot start package helper %s: %w", d.Python, err)
	}
	var result json.RawMessage
	var herr *HelperError
	sc := bufio.NewScanner(proto)
	sc.Buffer(make([]byte, 64<<10), 256<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var l helperLine
		if err := json.Unmarshal(line, &l); err != nil {
			d.log().Warn("package helper sent a non-JSON line", "line", string(line))
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
		io.Copy(io.Discard, proto)
	}
	waitErr := cmd.Wait()
	if out := strings.TrimSpace(output.String()); out != "" {
		d.log().Info("package helper output", "command", command, "output", out)
	}
	if herr != nil {
		return nil, herr
	}
	if waitErr != nil {
		return nil, fmt.Errorf("cannot run package helper %s: %w: %s", command, waitErr, lastLines(output.String(), 10))
	}
	if scanErr != nil {
		return nil, fmt.Errorf("cannot read package helper output: %w", scanErr)
	}
	if result == nil {
		return nil, fmt.Errorf("cannot run package helper %s: it gave no result: %s", command, lastLines(output.String(), 10))
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
