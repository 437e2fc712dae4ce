package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/upgrader"
)

func TestExitCode(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want int
	}{
		{name: "success", err: nil, want: exitOK},
		{name: "plain failure", err: errors.New("cannot do it"), want: exitFailed},
		{name: "usage", err: usageError{errors.New("bad flag")}, want: exitUsage},
		{name: "busy", err: fmt.Errorf("cannot lock: %w", upgrader.ErrBusy), want: exitBusy},
		{name: "stale plan", err: fmt.Errorf("cannot arm: %w", upgrader.ErrStalePlan), want: exitStalePlan},
		{name: "bad plan", err: fmt.Errorf("cannot use plan: %w", upgrader.ErrBadPlan), want: exitStalePlan},
		{name: "staged changed", err: fmt.Errorf("verify: %w", upgrader.ErrStagedChanged), want: exitStalePlan},
	}
	stderr := os.Stderr
	devnull, _ := os.Open(os.DevNull)
	os.Stderr = devnull
	defer func() { os.Stderr = stderr }()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := exitCode(tc.err); got != tc.want {
				t.Errorf("exitCode(%v) = %d, want %d", tc.err, got, tc.want)
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	root := t.TempDir()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "unknown command", args: []string{"frobnicate"}, want: `unknown command "frobnicate"`},
		{name: "prepare without --to", args: []string{"--root", root, "prepare"}, want: "--to VERSION"},
		{name: "bad repo", args: []string{"--root", root, "prepare", "--to", "5.9", "--repo", "nourl"}, want: "want ID=URL"},
		{name: "bad snapshot", args: []string{"--root", root, "prepare", "--to", "5.9", "--snapshot", "zfs"}, want: "choose auto, btrfs, lvm, undo or none"},
		{name: "bad version", args: []string{"--root", root, "prepare", "--to", "../5.9"}, want: "not a release version"},
		{name: "missing root", args: []string{"--root", root + "/nope", "status"}, want: "not a directory"},
		{name: "unknown flag", args: []string{"--root", root, "status", "--bogus"}, want: "bogus"},
		{name: "stray argument", args: []string{"--root", root, "status", "extra"}, want: `unexpected argument "extra"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			app := newApp()
			app.Writer, app.ErrWriter = io.Discard, io.Discard
			err := app.Run(append([]string{"kos-upgrade"}, tc.args...))
			var ue usageError
			if !errors.As(err, &ue) {
				t.Fatalf("error %v is not a usage error", err)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v does not contain %q", err, tc.want)
			}
		})
	}
}
