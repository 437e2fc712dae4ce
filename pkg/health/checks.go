package health

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/execlog"
)

// Classes of site checks.
const (
	ClassRequired = "required" // health.d and required.d: a failure is fatal
	ClassWanted   = "wanted"   // wanted.d: a failure is a warning
	ClassHook     = "hook"     // green.d, red.d: run after the verdict
	ClassProbe    = "probe"    // confirm.d: application probes ending the confirmation window
)

// Results of a check.
const (
	ResultPassed   = "passed"
	ResultFailed   = "failed"
	ResultTimedOut = "timed out"
	ResultRefused  = "refused" // not run: not root-only, not a regular file
)

// CheckResult is one site check (or hook) run.
type CheckResult struct {
	Name   string `json:"name"` // DIR/FILE, relative to /etc/kos-upgrade
	Class  string `json:"class"`
	Result string `json:"result"`
	// Detail says why it did not pass (exit status, timeout, refusal).
	Detail   string  `json:"detail,omitempty"`
	Output   string  `json:"output,omitempty"`
	Duration float64 `json:"seconds"`
}

// CheckDir is a directory of executables and the class of its checks.
type CheckDir struct {
	Dir   string // absolute path
	Name  string // as shown: "health.d"
	Class string
}

// maxOutput caps the output kept of one check (its end is kept).
const maxOutput = 8 << 10

// killGrace is how long a killed check's process group has to let go of
// its output pipe.
const killGrace = 5 * time.Second

// RunChecks runs every executable regular file of the directories, all in
// parallel, each in its own process group, bounded by timeout (then the
// whole group is killed), isolated (execlog: working directory /, fixed
// environment plus env), output captured. Results are in directory order,
// then by name. A directory or file someone other than root could have
// written (not owned by root, writable by group or others, a symbolic
// link: judged by Lstat) is not run and is reported refused. A missing
// directory has no checks.
func RunChecks(ctx context.Context, dirs []CheckDir, timeout time.Duration, env ...string) []CheckResult {
	type job struct {
		res  *CheckResult
		path string
	}
	var results []*CheckResult
	var jobs []job
	for _, d := range dirs {
		fi, err := os.Lstat(d.Dir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err == nil {
			err = safeRootOwned(d.Dir, fi, true)
		}
		if err != nil {
			results = append(results, &CheckResult{Name: d.Name, Class: d.Class, Result: ResultRefused, Detail: err.Error()})
			continue
		}
		ents, err := os.ReadDir(d.Dir)
		if err != nil {
			results = append(results, &CheckResult{Name: d.Name, Class: d.Class, Result: ResultRefused, Detail: err.Error()})
			continue
		}
		sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".") {
				continue
			}
			p := filepath.Join(d.Dir, e.Name())
			r := &CheckResult{Name: d.Name + "/" + e.Name(), Class: d.Class}
			fi, err := os.Lstat(p)
			if err != nil {
				continue // removed meanwhile
			}
			if fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 == 0 {
				continue // not executable: not a check
			}
			if err := safeRootOwned(p, fi, false); err != nil {
				r.Result, r.Detail = ResultRefused, err.Error()
				results = append(results, r)
				continue
			}
			results = append(results, r)
			jobs = append(jobs, job{res: r, path: p})
		}
	}
	var wg sync.WaitGroup
	for _, j := range jobs {
		wg.Add(1)
		go func(j job) {
			defer wg.Done()
			runOne(ctx, j.path, timeout, j.res, env)
		}(j)
	}
	wg.Wait()
	out := make([]CheckResult, len(results))
	for i, r := range results {
		out[i] = *r
	}
	return out
}

// runOne runs one check into r.
func runOne(ctx context.Context, path string, timeout time.Duration, r *CheckResult, env []string) {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := execlog.Command(cctx, []string{path}, env...)
	out := &execlog.TailBuffer{Max: maxOutput}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = killGrace
	t0 := time.Now()
	err := cmd.Run()
	if cmd.Process != nil {
		// Children left behind by a check that passed or failed.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	r.Duration = time.Since(t0).Round(time.Millisecond).Seconds()
	r.Output = strings.TrimSpace(out.String())
	var ee *exec.ExitError
	switch {
	case err == nil:
		r.Result = ResultPassed
	case errors.Is(cctx.Err(), context.DeadlineExceeded):
		r.Result, r.Detail = ResultTimedOut, fmt.Sprintf("killed after %s", timeout)
	case errors.As(err, &ee):
		r.Result, r.Detail = ResultFailed, ee.ProcessState.String()
	default:
		r.Result, r.Detail = ResultFailed, err.Error()
	}
}

// safeRootOwned refuses a check (dir: its directory) that someone other
// than root could have written: not a regular file (directory), not owned
// by root, or writable by its group or others.
func safeRootOwned(p string, fi os.FileInfo, dir bool) error {
	what := "a regular file"
	ok := fi.Mode().IsRegular()
	if dir {
		what, ok = "a directory", fi.IsDir()
	}
	if !ok {
		return fmt.Errorf("health check %s is not %s (%s): not run; it must be owned by root and writable by root only", p, what, fi.Mode().Type())
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	if st == nil || st.Uid != 0 {
		return fmt.Errorf("health check %s is not owned by root: not run; it must be owned by root and writable by root only", p)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("health check %s is writable by its group or others (%04o): not run; it must be owned by root and writable by root only", p, fi.Mode().Perm())
	}
	return nil
}
