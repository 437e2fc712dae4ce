// Command sandbox upgrades a throwaway KOS system from 5.8 to 5.9 with the
// real kos-upgrade binary, and shows every step to the person watching:
//
//	make build && go run ./test/sandbox --binary bin/kos-upgrade
//
// It builds the fixture repositories (test/fixture), makes a btrfs
// filesystem on a loop device with the root in subvolume @ (the default),
// installs the KOS 5.8 fixture system into it, then runs kos-upgrade status,
// prepare --to 5.9, reboot --no-reboot and apply against it with --root. In
// place of a reboot it mounts the filesystem's default subvolume, as a
// bootloader would, and compares the two roots. Everything is removed at the
// end unless --keep. Needs root (exit 2 otherwise); exit 1 names the failing
// step.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keyarchos/kos-upgrade/test/fixture"
)

// options are the command line.
type options struct {
	Binary string // the built kos-upgrade
	Dir    string // work directory: image and mount points
	Keep   bool   // leave image and mounts for inspection
	SizeMB int    // image size
}

// paths inside the work directory.
func (o options) image() string { return filepath.Join(o.Dir, "sandbox.img") }
func (o options) top() string   { return filepath.Join(o.Dir, "top") }
func (o options) root() string  { return filepath.Join(o.Dir, "root") }
func (o options) next() string  { return filepath.Join(o.Dir, "next") }

func main() {
	var o options
	flag.StringVar(&o.Binary, "binary", "bin/kos-upgrade", "the built kos-upgrade `PATH` (make build)")
	flag.StringVar(&o.Dir, "dir", "/var/tmp/kos-upgrade-sandbox", "work `DIR` for the image and the mount points")
	flag.BoolVar(&o.Keep, "keep", false, "leave the image and the mounts for inspection (prints how to clean up)")
	flag.IntVar(&o.SizeMB, "size", 1024, "image size in `MiB`")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "sandbox: unexpected argument %q\n", flag.Arg(0))
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "sandbox: needs root (it makes a loop device, a btrfs filesystem and mounts); run it with sudo or as root")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stdout, "\nsandbox FAILED: %v\n", err)
		os.Exit(1)
	}
}

// sandbox is one run.
type sandbox struct {
	o        options
	out, err io.Writer
	step     int
	device   string // loop device
}

const totalSteps = 9

// stepError names the step that failed.
type stepError struct {
	step string
	err  error
}

func (e *stepError) Error() string { return fmt.Sprintf("step %q: %v", e.step, e.err) }
func (e *stepError) Unwrap() error { return e.err }

// run is the whole demonstration; out and errOut receive what the person
// sees (kos-upgrade's own output included).
func run(ctx context.Context, o options, out, errOut io.Writer) (err error) {
	start := time.Now()
	if o.SizeMB < 256 {
		return fmt.Errorf("--size %d is too small (at least 256 MiB: btrfs and the fixture system need room)", o.SizeMB)
	}
	var aerr error
	if o.Binary, aerr = filepath.Abs(o.Binary); aerr != nil {
		return aerr
	}
	if o.Dir, aerr = filepath.Abs(o.Dir); aerr != nil {
		return aerr
	}
	if fi, err := os.Stat(o.Binary); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("no kos-upgrade binary at %s: run make build first (or pass --binary PATH)", o.Binary)
	}
	s := &sandbox{o: o, out: out, err: errOut}
	if err := s.checkTools(); err != nil {
		return err
	}

	s.heading("Cleaning leftovers of a previous run in " + o.Dir)
	if err := s.cleanup(); err != nil {
		return &stepError{"clean leftovers", err}
	}
	defer func() {
		if o.Keep {
			s.printKeep()
			return
		}
		fmt.Fprintln(out)
		fmt.Fprintln(out, "==> Cleaning up (pass --keep to inspect the sandbox instead)")
		if cerr := s.cleanup(); cerr != nil {
			err = errors.Join(err, &stepError{"clean up", cerr})
		}
	}()

	s.heading("Building the fixture repositories (signed RPMs of KOS 5.8 and 5.9; cached)")
	set, err := fixture.Build(ctx)
	if err != nil {
		return &stepError{"build fixtures", err}
	}
	for _, r := range []string{fixture.Repo58, fixture.Repo59} {
		pkgs, _ := set.Packages(r)
		fmt.Fprintf(out, "    repo %-4s %2d packages  %s\n", r, len(pkgs), set.Repos[r])
	}

	s.heading(fmt.Sprintf("Making a %d MiB btrfs filesystem on a loop device, root in subvolume @ (the default)", o.SizeMB))
	if err := s.makeFilesystem(ctx); err != nil {
		return &stepError{"make filesystem", err}
	}

	s.heading("Installing the KOS 5.8 system into " + o.root())
	fmt.Fprintf(out, "    fixture.InstallBase: rpm --root %s -i <repo 5.8>, /etc/machine-id\n", o.root())
	if err := fixture.InstallBase(ctx, set, o.root()); err != nil {
		return &stepError{"install base", err}
	}
	before, err := s.packages(ctx, o.root())
	if err != nil {
		return &stepError{"install base", err}
	}
	oldPretty := prettyName(o.root())
	fmt.Fprintf(out, "    %s, %d packages\n", oldPretty, len(before))
	if _, err := s.cmd(ctx, "cat", filepath.Join(o.root(), "etc/yum.repos.d/kos.repo")); err != nil {
		return &stepError{"install base", err}
	}

	s.heading("kos-upgrade status, prepare --to 5.9, status (online: the running root is not changed)")
	if err := s.kos(ctx, o.root(), "status"); err != nil {
		return &stepError{"status", err}
	}
	t0 := time.Now()
	if err := s.kos(ctx, o.root(), "prepare", "--to", "5.9"); err != nil {
		return &stepError{"prepare", err}
	}
	prepareTime := time.Since(t0)
	if err := s.kos(ctx, o.root(), "status"); err != nil {
		return &stepError{"status", err}
	}

	s.heading("kos-upgrade reboot --no-reboot (arm the offline upgrade)")
	if err := s.kos(ctx, o.root(), "reboot", "--no-reboot"); err != nil {
		return &stepError{"arm", err}
	}
	link := filepath.Join(o.root(), "system-update")
	if _, err := s.cmd(ctx, "ls", "-l", link); err != nil {
		return &stepError{"arm", err}
	}
	if target, err := os.Readlink(link); err != nil || target != "/var/lib/kos-upgrade" {
		return &stepError{"arm", fmt.Errorf("%s should link to /var/lib/kos-upgrade, got %q (%v)", link, target, err)}
	}

	s.heading("kos-upgrade apply (what kos-upgrade-apply.service runs at boot)")
	t0 = time.Now()
	if err := s.kos(ctx, o.root(), "apply"); err != nil {
		return &stepError{"apply", err}
	}
	applyTime := time.Since(t0)
	if _, err := os.Lstat(link); !errors.Is(err, os.ErrNotExist) {
		return &stepError{"apply", fmt.Errorf("%s is still there after apply (reboot loop!)", link)}
	}
	fmt.Fprintf(out, "    %s is gone (removed before anything else)\n", link)

	s.heading("\"Reboot\": mounting the default subvolume at " + o.next() + ", as a bootloader would")
	if _, err := s.cmd(ctx, "btrfs", "subvolume", "list", o.top()); err != nil {
		return &stepError{"reboot", err}
	}
	def, err := s.cmd(ctx, "btrfs", "subvolume", "get-default", o.top())
	if err != nil {
		return &stepError{"reboot", err}
	}
	defName := afterPath(def)
	// No subvol= option: the kernel mounts the default subvolume, which is
	// exactly what a boot with no rootflags=subvol= gets.
	if err := os.MkdirAll(o.next(), 0o755); err != nil {
		return &stepError{"reboot", err}
	}
	if _, err := s.cmd(ctx, "mount", s.device, o.next()); err != nil {
		return &stepError{"reboot", err}
	}
	if _, err := s.cmd(ctx, "findmnt", "-n", "-o", "TARGET,SOURCE,OPTIONS", o.next()); err != nil {
		return &stepError{"reboot", err}
	}
	after, err := s.packages(ctx, o.next())
	if err != nil {
		return &stepError{"reboot", err}
	}
	// The old root, again: it must be exactly as before.
	beforeAgain, err := s.packages(ctx, o.root())
	if err != nil {
		return &stepError{"reboot", err}
	}
	newPretty := prettyName(o.next())
	fmt.Fprintln(out)
	fmt.Fprintf(out, "    old root:  @ (mounted at %s): %s\n", o.root(), prettyName(o.root()))
	fmt.Fprintf(out, "    next boot: %s (mounted at %s): %s\n", defName, o.next(), newPretty)
	fmt.Fprintln(out)
	printTable(out, "@ (old root)", defName+" (next boot)", beforeAgain, after)

	s.heading("kos-upgrade status and history, in the upgraded root")
	if err := s.kos(ctx, o.next(), "status"); err != nil {
		return &stepError{"status after", err}
	}
	if err := s.kos(ctx, o.next(), "history"); err != nil {
		return &stepError{"history", err}
	}
	st, err := s.statusJSON(ctx, o.next())
	if err != nil {
		return &stepError{"status after", err}
	}

	// The verdict, from facts checked here rather than from what
	// kos-upgrade says about itself.
	var problems []string
	if !strings.HasPrefix(defName, "kos-upgrade/") {
		problems = append(problems, "the default subvolume is "+defName+", not a kos-upgrade snapshot")
	}
	if !strings.Contains(newPretty, "5.9") {
		problems = append(problems, "the next boot's os-release says "+newPretty)
	}
	if !equal(before, beforeAgain) || !strings.Contains(prettyName(o.root()), "5.8") {
		problems = append(problems, "the old root @ changed")
	}
	if st.State.Status != "succeeded" || st.State.Previous != "@" || st.State.Backend != "btrfs" {
		problems = append(problems, fmt.Sprintf("the upgraded root's state is %s (previous %q, backend %q), want succeeded with previous @ on btrfs",
			st.State.Status, st.State.Previous, st.State.Backend))
	}
	if len(problems) > 0 {
		return &stepError{"verdict", errors.New(strings.Join(problems, "; "))}
	}
	fmt.Fprintf(out, "\nsandbox upgraded 5.8 -> 5.9 in %.2f s (prepare %.2f s, apply %.2f s; whole run %.1f s); old root @ untouched, rollback available\n",
		(prepareTime + applyTime).Seconds(), prepareTime.Seconds(), applyTime.Seconds(), time.Since(start).Seconds())
	return nil
}

// checkTools says which required commands are missing.
func (s *sandbox) checkTools() error {
	var missing []string
	for _, t := range append([]string{"losetup", "mkfs.btrfs", "btrfs", "mount", "umount", "findmnt", "/usr/bin/python3"}, fixture.Tools...) {
		if filepath.IsAbs(t) {
			if _, err := os.Stat(t); err != nil {
				missing = append(missing, t)
			}
		} else if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing tools: %s (bash test/run.sh demo installs them)", strings.Join(missing, ", "))
	}
	return nil
}

func (s *sandbox) heading(title string) {
	s.step++
	fmt.Fprintf(s.out, "\n==> [%d/%d] %s\n", s.step, totalSteps, title)
}

// cmd runs a helper command, logging its argv, and shows and returns its
// output.
func (s *sandbox) cmd(ctx context.Context, name string, args ...string) (string, error) {
	out, err := s.quiet(ctx, name, args...)
	if t := strings.TrimRight(out, "\n"); t != "" {
		fmt.Fprintln(s.out, indent(t, "    "))
	}
	return out, err
}

// quiet runs a command, logging its argv, and returns its output without
// showing it.
func (s *sandbox) quiet(ctx context.Context, name string, args ...string) (string, error) {
	fmt.Fprintf(s.out, "  $ %s\n", quote(append([]string{name}, args...)))
	c := exec.CommandContext(ctx, name, args...)
	var stdout, stderr strings.Builder
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %w: %s", quote(append([]string{name}, args...)), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// kos runs the real binary on root with its output on the terminal.
func (s *sandbox) kos(ctx context.Context, root string, args ...string) error {
	argv := append([]string{"--root", root}, args...)
	fmt.Fprintf(s.out, "\n  $ %s\n", quote(append([]string{s.o.Binary}, argv...)))
	c := exec.CommandContext(ctx, s.o.Binary, argv...)
	c.Stdout, c.Stderr = s.out, s.err
	if err := c.Run(); err != nil {
		return fmt.Errorf("kos-upgrade %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

// statusReport is the part of `status --json` the verdict checks.
type statusReport struct {
	State struct {
		Status   string `json:"status"`
		Previous string `json:"previous"`
		Backend  string `json:"backend"`
	} `json:"state"`
}

func (s *sandbox) statusJSON(ctx context.Context, root string) (*statusReport, error) {
	out, err := s.quiet(ctx, s.o.Binary, "--root", root, "--json", "status")
	if err != nil {
		return nil, err
	}
	var r statusReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return nil, fmt.Errorf("cannot decode status --json: %w", err)
	}
	return &r, nil
}

// makeFilesystem creates the image, the loop device, btrfs, subvolume @ as
// the default, and mounts the top level and @.
func (s *sandbox) makeFilesystem(ctx context.Context) error {
	o := s.o
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return err
	}
	fmt.Fprintf(s.out, "  sparse image %s (%d MiB)\n", o.image(), o.SizeMB)
	f, err := os.Create(o.image())
	if err != nil {
		return err
	}
	if err := errors.Join(f.Truncate(int64(o.SizeMB)<<20), f.Close()); err != nil {
		return err
	}
	dev, err := s.cmd(ctx, "losetup", "--find", "--show", o.image())
	if err != nil {
		return err
	}
	s.device = strings.TrimSpace(dev)
	// mkfs.btrfs prints notes about its defaults even with -q: not shown.
	if _, err := s.quiet(ctx, "mkfs.btrfs", "-q", "-f", "-L", "kos-sandbox", s.device); err != nil {
		return err
	}
	steps := [][]string{
		{"mkdir", "-p", o.top(), o.root()},
		{"mount", "-o", "subvolid=5", s.device, o.top()},
		{"btrfs", "subvolume", "create", filepath.Join(o.top(), "@")},
	}
	for _, a := range steps {
		if _, err := s.cmd(ctx, a[0], a[1:]...); err != nil {
			return err
		}
	}
	id, err := s.cmd(ctx, "btrfs", "inspect-internal", "rootid", filepath.Join(o.top(), "@"))
	if err != nil {
		return err
	}
	for _, a := range [][]string{
		{"btrfs", "subvolume", "set-default", strings.TrimSpace(id), o.top()},
		{"mount", "-o", "subvol=@", s.device, o.root()},
	} {
		if _, err := s.cmd(ctx, a[0], a[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// packages returns name -> version-release.arch of the packages installed
// in root.
func (s *sandbox) packages(ctx context.Context, root string) (map[string]string, error) {
	out, err := s.quiet(ctx, "rpm", "--root", root, "--dbpath", "/var/lib/rpm", "-qa", "--qf", `%{NAME} %{VERSION}-%{RELEASE}.%{ARCH}\n`)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if name, ver, ok := strings.Cut(strings.TrimSpace(l), " "); ok {
			if m[name] != "" {
				m[name] += ", " + ver
			} else {
				m[name] = ver
			}
		}
	}
	if len(m) == 0 {
		return nil, fmt.Errorf("no package is installed in %s", root)
	}
	return m, nil
}

// printTable shows the two package sets side by side.
func printTable(w io.Writer, leftTitle, rightTitle string, left, right map[string]string) {
	names := map[string]bool{}
	for n := range left {
		names[n] = true
	}
	for n := range right {
		names[n] = true
	}
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	nameW, verW := len("package"), len(leftTitle)
	for _, n := range sorted {
		nameW = max(nameW, len(n))
		verW = max(verW, len(left[n]))
	}
	row := func(a, b, c, d string) {
		fmt.Fprintf(w, "    %-*s  %-*s  %-*s  %s\n", nameW, a, verW, b, max(len(rightTitle), 18), c, d)
	}
	row("package", leftTitle, rightTitle, "")
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	count := map[string]int{}
	for _, n := range sorted {
		l, r := left[n], right[n]
		change := "unchanged"
		switch {
		case l == "":
			change = "installed"
		case r == "":
			change = "removed"
		case l != r:
			change = "upgraded"
		}
		count[change]++
		row(n, dash(l), dash(r), change)
	}
	fmt.Fprintf(w, "    %d packages before, %d after: %d upgraded, %d installed, %d removed, %d unchanged\n",
		len(left), len(right), count["upgraded"], count["installed"], count["removed"], count["unchanged"])
}

// cleanup unmounts everything of this sandbox (lazily, recursively), detaches
// the loop devices backed by its image and removes the image. Running it
// when nothing is there is harmless.
func (s *sandbox) cleanup() error {
	o := s.o
	ctx := context.Background()
	devices := map[string]bool{}
	if s.device != "" {
		devices[s.device] = true
	}
	if _, err := os.Stat(o.image()); err == nil {
		out, err := s.quiet(ctx, "losetup", "--associated", o.image(), "--noheadings", "--output", "NAME")
		if err != nil {
			return err
		}
		for _, d := range strings.Fields(out) {
			devices[d] = true
		}
	}
	// Mounts under the work directory, and mounts of our loop devices
	// anywhere (kos-upgrade's btrfs backend mounts the top level under
	// /run/kos-upgrade while it works).
	mounts, err := readMounts()
	if err != nil {
		return err
	}
	var targets []string
	for _, m := range mounts {
		if m.target == o.Dir || strings.HasPrefix(m.target, o.Dir+"/") || devices[m.source] {
			targets = append(targets, m.target)
		}
	}
	// Deepest first; umount -R -l takes what is below.
	sort.Slice(targets, func(i, j int) bool { return len(targets[i]) > len(targets[j]) })
	done := map[string]bool{}
	for _, t := range targets {
		if done[t] {
			continue
		}
		done[t] = true
		if _, err := s.quiet(ctx, "umount", "-R", "-l", t); err != nil {
			fmt.Fprintf(s.out, "    (ignored: %v)\n", err)
		}
	}
	for d := range devices {
		if _, err := s.quiet(ctx, "losetup", "-d", d); err != nil {
			fmt.Fprintf(s.out, "    (ignored: %v)\n", err)
		}
	}
	if _, err := os.Stat(o.image()); err == nil {
		fmt.Fprintf(s.out, "  removing %s\n", o.image())
		if err := os.Remove(o.image()); err != nil {
			return err
		}
	}
	// The mount point directories are empty now; a directory that is not
	// (a mount that would not go away) is left alone.
	for _, d := range []string{o.next(), o.root(), o.top()} {
		os.Remove(d)
	}
	return nil
}

func (s *sandbox) printKeep() {
	o := s.o
	fmt.Fprintf(s.out, `
The sandbox is kept (--keep):
    %s
        the old root, subvolume @ (KOS 5.8)
    %s
        the next boot, the default subvolume (KOS 5.9)
    %s
        the btrfs top level (every subvolume)
    %s
        kos-upgrade's state: state.json, plan.json, history/
To clean up, run the sandbox again (it removes leftovers first), or:
    umount -R -l %s %s %s
    losetup -d %s
    rm %s
`, o.root(), o.next(), o.top(), o.root()+"/var/lib/kos-upgrade",
		o.next(), o.root(), o.top(), s.device, o.image())
}

type mount struct{ source, target string }

// readMounts reads /proc/self/mounts.
func readMounts() ([]mount, error) {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ms []mount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 2 {
			ms = append(ms, mount{source: unescape(fs[0]), target: unescape(fs[1])})
		}
	}
	return ms, sc.Err()
}

// unescape decodes the octal escapes (\040) of /proc/self/mounts.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// prettyName returns PRETTY_NAME from root's os-release.
func prettyName(root string) string {
	b, err := os.ReadFile(filepath.Join(root, "etc/os-release"))
	if err != nil {
		return "(no os-release: " + err.Error() + ")"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
			return strings.Trim(v, `"'`)
		}
	}
	return "(no PRETTY_NAME)"
}

// afterPath returns what follows " path " in btrfs subvolume output
// ("ID 257 gen 12 top level 5 path kos-upgrade/...").
func afterPath(s string) string {
	if i := strings.Index(s, " path "); i >= 0 {
		return strings.TrimSpace(s[i+len(" path "):])
	}
	return strings.TrimSpace(s)
}

func equal(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}

// quote renders argv for a person, quoting what the shell would split.
func quote(argv []string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		if a == "" || strings.ContainsAny(a, " \t\n'\"\\$*?[]{}()<>|&;#~") {
			out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		} else {
			out[i] = a
		}
	}
	return strings.Join(out, " ")
}
