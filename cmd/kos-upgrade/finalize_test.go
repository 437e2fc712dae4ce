package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// mockFinalize re-points the finalize paths at a fake systemd: the units
// started (their start jobs waited for) and the SystemState it reports.
func mockFinalize(t *testing.T, state string, startErr error) *[]string {
	t.Helper()
	mockReboot(t, "/nonexistent/kexec")
	var started []string
	oldStart, oldState := startAndWait, systemState
	t.Cleanup(func() { startAndWait, systemState = oldStart, oldState })
	startAndWait = func(_ context.Context, unit string) error {
		started = append(started, unit)
		return startErr
	}
	systemState = func(context.Context) (string, error) { return state, nil }
	return &started
}

// TestArmFinalize: the marker, then the unit started; a unit that cannot
// start leaves no marker; another root or no systemd: neither.
func TestArmFinalize(t *testing.T) {
	for _, tc := range []struct {
		name       string
		other      bool // --root is not the running system
		noSystemd  bool
		startErr   error
		wantStart  bool
		wantMarker bool
		wantErr    string
	}{
		{name: "started", wantStart: true, wantMarker: true},
		{name: "unit cannot start", startErr: errors.New("job failed"), wantStart: true, wantErr: "job failed"},
		{name: "another root", other: true, wantErr: "not the running system"},
		{name: "no systemd", noSystemd: true, wantErr: "systemd is not running"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			started := mockFinalize(t, "running", tc.startErr)
			runningRoot = t.TempDir()
			root := runningRoot
			if tc.other {
				root = t.TempDir()
			}
			if tc.noSystemd {
				systemdRunDir = filepath.Join(t.TempDir(), "absent")
			}
			e := testEnv(t, root)
			if err := os.MkdirAll(e.engine.Root.StateDir(), 0o700); err != nil {
				t.Fatal(err)
			}
			err := armFinalize(context.Background(), e)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("armFinalize: %v, want %q", err, tc.wantErr)
			}
			if got := len(*started) == 1 && (*started)[0] == finalizeUnit; got != tc.wantStart {
				t.Errorf("started %q", *started)
			}
			_, serr := os.Stat(filepath.Join(e.engine.Root.StateDir(), finalizeMarker))
			if (serr == nil) != tc.wantMarker {
				t.Errorf("marker there: %v, want %v", serr == nil, tc.wantMarker)
			}
		})
	}
}

// TestFinalizeAtShutdownGates: apply --at-shutdown finalizes only with the
// marker and while systemd shuts down; the marker is used once.
func TestFinalizeAtShutdownGates(t *testing.T) {
	for _, tc := range []struct {
		name, state string
		marker      bool
		want        string
		markerAfter bool
	}{
		{name: "no marker", state: "stopping", want: "Nothing to finalize at shutdown"},
		{name: "not shutting down", state: "running", marker: true, want: "the system is running, not shutting down", markerAfter: true},
		{name: "shutting down, nothing armed", state: "stopping", marker: true, want: "Not finalized at shutdown: no kos-upgrade offline update is armed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mockFinalize(t, tc.state, nil)
			runningRoot = t.TempDir()
			e := testEnv(t, runningRoot)
			var out bytes.Buffer
			e.out = &out
			if err := os.MkdirAll(e.engine.Root.StateDir(), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := setFinalizeMarker(e.engine.Root, tc.marker); err != nil {
				t.Fatal(err)
			}
			if err := finalizeAtShutdown(context.Background(), e); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out.String(), tc.want) {
				t.Errorf("output %q, want %q", out.String(), tc.want)
			}
			_, serr := os.Stat(filepath.Join(e.engine.Root.StateDir(), finalizeMarker))
			if (serr == nil) != tc.markerAfter {
				t.Errorf("marker there afterwards: %v, want %v", serr == nil, tc.markerAfter)
			}
		})
	}
}
