package execlog

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os/exec"
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
