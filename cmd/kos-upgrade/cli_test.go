package main

// Tests of the command line as a user meets it, through the real binary:
// flags where they are typed, typos, help, generated man page and
// completions, refusals before changes, honest output.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/preflight"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// runKU runs the kos-upgrade binary with args (and extra environment) and
// returns stdout, stderr and the exit code.
func runKU(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(kosUpgradeBinary(t), args...)
	cmd.Env = append(append(os.Environ(), "KOS_UPGRADE_NO_DAEMON=1"), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

func requireBinary(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary")
	}
	testenv.RequireTools(t, "go")
}

// The commands a user runs, each of which must document itself.
var userCommands = []string{"check", "prepare", "reboot", "apply", "status", "cancel", "rollback", "history", "clean", "bundle"}

func TestGlobalFlagsAnywhere(t *testing.T) {
	requireBinary(t)
	root := t.TempDir()
	tests := []struct {
		name string
		args []string
		json bool
	}{
		{name: "before the command", args: []string{"--root", root, "--json", "status"}, json: true},
		{name: "after the command", args: []string{"status", "--json", "--root", root}, json: true},
		{name: "on both sides", args: []string{"--root", root, "status", "--json"}, json: true},
		{name: "after wins", args: []string{"--root", "/nonexistent", "status", "--root", root, "--json"}, json: true},
		{name: "-v is verbose", args: []string{"-v", "--root", root, "status"}},
		{name: "--verbose after", args: []string{"status", "--verbose", "--root", root}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runKU(t, nil, tc.args...)
			if code != 0 {
				t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
			}
			if !tc.json {
				if !strings.Contains(out, "State:    idle") {
					t.Errorf("status did not run:\n%s", out)
				}
				return
			}
			var r map[string]any
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				t.Fatalf("not JSON: %v\n%s", err, out)
			}
		})
	}
	for _, c := range userCommands {
		t.Run(c+" --help lists the global flags", func(t *testing.T) {
			out, errOut, code := runKU(t, nil, c, "--help")
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			for _, want := range []string{"--json", "--root DIR", "--verbose, -v"} {
				if !strings.Contains(out, want) {
					t.Errorf("%s --help does not list %s:\n%s", c, want, out)
				}
			}
		})
	}
}

func TestTyposAndHelp(t *testing.T) {
	requireBinary(t)
	tests := []struct {
		name       string
		args       []string
		code       int
		stdout     []string
		stderr     []string
		notStderr  []string
		notStdout  []string
		stdoutOnly bool
	}{
		{name: "typo of a command", args: []string{"stauts"}, code: exitUsage, stderr: []string{`did you mean "status"?`, "(see kos-upgrade --help)"}},
		{name: "help of a typo", args: []string{"help", "stauts"}, code: exitUsage, stderr: []string{`unknown command "stauts": did you mean "status"?`}},
		{name: "unknown global flag", args: []string{"--bogus"}, code: exitUsage, stderr: []string{"(see kos-upgrade --help)"}, notStderr: []string{"kos-upgrade kos-upgrade"}},
		{name: "unknown command flag", args: []string{"status", "--bogus"}, code: exitUsage, stderr: []string{"(see kos-upgrade status --help)"}},
		{name: "help of a command", args: []string{"help", "rollback"}, stdout: []string{"kos-upgrade rollback -", "reboots"}},
		{name: "version", args: []string{"--version"}, stdout: []string{"kos-upgrade version devel"}},
		{name: "-v is not the version", args: []string{"-v"}, stdout: []string{"USAGE"}, notStdout: []string{"version devel"}},
		{name: "workflow", args: []string{"--help"}, stdout: []string{
			"kos-upgrade check --to 5.9", "kos-upgrade prepare --to 5.9", "kos-upgrade reboot", "kos-upgrade rollback",
			"before or after the", "kos-upgrade(8)", "/usr/share/doc/kos-upgrade/"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runKU(t, nil, tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d\n%s\n%s", code, tc.code, out, errOut)
			}
			for _, w := range tc.stdout {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tc.notStdout {
				if strings.Contains(out, w) {
					t.Errorf("stdout has %q:\n%s", w, out)
				}
			}
			for _, w := range tc.stderr {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errOut)
				}
			}
			for _, w := range tc.notStderr {
				if strings.Contains(errOut, w) {
					t.Errorf("stderr has %q:\n%s", w, errOut)
				}
			}
		})
	}
	// Every command a user runs teaches: a description and an example.
	for _, c := range userCommands {
		t.Run(c+" describes itself", func(t *testing.T) {
			out, _, _ := runKU(t, nil, c, "--help")
			if !strings.Contains(out, "DESCRIPTION:") || !regexp.MustCompile(`(?m)^\s+Examples?:\n(\s+kos-upgrade .*\n)+`).MatchString(out) {
				t.Errorf("%s --help has no description with examples:\n%s", c, out)
			}
			if strings.Contains(out, " docs/") {
				t.Errorf("%s --help points into the source tree (docs/), not the installed documentation:\n%s", c, out)
			}
		})
	}
}

// generatedPart returns the part of docs/cli.md between the markers.
func generatedPart(t *testing.T, doc string) string {
	t.Helper()
	_, rest, ok := strings.Cut(doc, cliDocBeginMarker+"\n")
	if !ok {
		t.Fatalf("%s has no %q", cliDocFile, cliDocBeginMarker)
	}
	part, _, ok := strings.Cut(rest, cliDocEndMarker)
	if !ok {
		t.Fatalf("%s has no %q", cliDocFile, cliDocEndMarker)
	}
	return part
}

// The man page, the command reference and the completions in the tree are
// what the binary generates: `make docs` after a change of the CLI.
func TestGeneratedFilesAreCurrent(t *testing.T) {
	requireBinary(t)
	tests := []struct {
		what, file string
		part       func(t *testing.T, s string) string
	}{
		{what: "man", file: manPageFile},
		{what: "markdown", file: cliDocFile, part: generatedPart},
		{what: "bash", file: bashCompletion},
		{what: "zsh", file: zshCompletion},
	}
	for _, tc := range tests {
		t.Run(tc.what, func(t *testing.T) {
			out, errOut, code := runKU(t, nil, "generate", tc.what)
			if code != 0 || out == "" {
				t.Fatalf("generate %s: exit %d: %s", tc.what, code, errOut)
			}
			b, err := os.ReadFile(filepath.Join("..", "..", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			have := string(b)
			if tc.part != nil {
				have = tc.part(t, have)
			}
			if have != out {
				t.Errorf("%s is stale: run make docs", tc.file)
			}
		})
	}
	// The man page has a section per command and renders.
	out, _, _ := runKU(t, nil, "generate", "man")
	for _, c := range userCommands {
		if !strings.Contains(out, ".SH "+c+"\n") && !strings.Contains(out, ".SS "+c+"\n") {
			t.Errorf("the man page has no section for %s", c)
		}
	}
	if _, err := exec.LookPath("man"); err == nil {
		cmd := exec.Command("man", "-l", "-")
		cmd.Stdin = strings.NewReader(out)
		cmd.Env = append(os.Environ(), "MANWIDTH=100", "MAN_KEEP_FORMATTING=0")
		text, err := cmd.Output()
		if err != nil || !strings.Contains(string(text), "kos-upgrade rollback --no-reboot") {
			t.Errorf("man -l: %v\n%s", err, text)
		}
	}
}

// bashComplete completes line (the cursor at its end) with the completion
// file loaded into a real bash, as readline does: `complete -p` says which
// function completes kos-upgrade, which is called with COMP_WORDS and
// COMP_CWORD set and answers with compgen. The result is sorted.
func bashComplete(t *testing.T, pathDir, line string) []string {
	t.Helper()
	script := `set -e
source "$1"
spec=$(complete -p kos-upgrade)
case $spec in *"-F _kos_upgrade kos-upgrade"*) ;; *) echo "complete -p: $spec" >&2; exit 1 ;; esac
fn=${spec#*-F }; fn=${fn%% *}
read -r -a COMP_WORDS <<<"$2"
[[ $2 == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
COMP_LINE=$2; COMP_POINT=${#2}
"$fn" kos-upgrade "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
`
	cmd := exec.Command("bash", "-c", script, "bash", filepath.Join("..", "..", bashCompletion), line)
	cmd.Env = append(os.Environ(), "PATH="+pathDir+":"+os.Getenv("PATH"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bash completion of %q: %v: %s", line, err, stderr.String())
	}
	words := strings.Fields(string(out))
	sort.Strings(words)
	return words
}

func TestBashCompletion(t *testing.T) {
	requireBinary(t)
	testenv.RequireTools(t, "bash")
	// kos-upgrade on PATH, as installed, for --to's values.
	bin := t.TempDir()
	if err := os.Symlink(kosUpgradeBinary(t), filepath.Join(bin, "kos-upgrade")); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc/yum.repos.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	repo := "[kos]\nname=KOS\nbaseurl=https://mirror.example/kos/5.9/os/\n[kos-next]\nbaseurl=https://mirror.example/kos/5.10/os/\n"
	if err := os.WriteFile(filepath.Join(root, "etc/yum.repos.d/kos.repo"), []byte(repo), 0o644); err != nil {
		t.Fatal(err)
	}
	// A CentOS 8 root whose admin added KOS's repository for the migration.
	centos := t.TempDir()
	for p, c := range map[string]string{
		"etc/os-release":           "NAME=\"CentOS Linux\"\nID=\"centos\"\nVERSION_ID=\"8\"\n",
		"etc/yum.repos.d/kos.repo": "[kos]\nbaseurl=https://mirror.example/kos/5.9/BaseOS/x86_64/os/\n",
	} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(centos, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(centos, p), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name, line string
		want       []string
	}{
		{name: "commands", line: "kos-upgrade sta", want: []string{"status"}},
		{name: "commands after a global flag", line: "kos-upgrade --root / r", want: []string{"reboot", "rollback"}},
		{name: "a command's flags", line: "kos-upgrade rollback --", want: []string{"--help", "--json", "--no-reboot", "--root", "--verbose"}},
		{name: "flag values", line: "kos-upgrade prepare --snapshot ", want: []string{"auto", "btrfs", "lvm", "none", "undo"}},
		{name: "mode", line: "kos-upgrade prepare --mode i", want: []string{"initramfs"}},
		{name: "--to from the repositories", line: "kos-upgrade --root " + root + " prepare --to 5", want: []string{"5.10", "5.9"}},
		{name: "--to on CentOS: a migration", line: "kos-upgrade --root " + centos + " check --to ", want: []string{"kos-5.9"}},
		{name: "help topics", line: "kos-upgrade help cl", want: []string{"clean"}},
		{name: "downgrade flag", line: "kos-upgrade check --allow", want: []string{"--allow-downgrade"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := bashComplete(t, bin, tc.line)
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("completion of %q = %q, want %q", tc.line, got, tc.want)
			}
		})
	}
}

// The zsh completion is valid zsh and compinit binds it to kos-upgrade
// from an fpath directory, as /usr/share/zsh/site-functions is.
func TestZshCompletion(t *testing.T) {
	requireBinary(t)
	testenv.RequireTools(t, "zsh")
	file := filepath.Join("..", "..", zshCompletion)
	if out, err := exec.Command("zsh", "-n", file).CombinedOutput(); err != nil {
		t.Errorf("zsh -n: %v: %s", err, out)
	}
	dir := t.TempDir()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "_kos-upgrade"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	script := `fpath=("$1" $fpath); autoload -Uz compinit; compinit -u -d "$1/zcompdump"; print -r -- "$_comps[kos-upgrade]"`
	out, err := exec.Command("zsh", "-f", "-c", script, "zsh", dir).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "_kos-upgrade" {
		t.Errorf("compinit does not bind _kos-upgrade to kos-upgrade: %v %q", err, out)
	}
}

// rollback and reboot refuse before the first change when the reboot they
// end with cannot happen; rollback checks its rollback point first too.
func TestRefusalsComeBeforeChanges(t *testing.T) {
	requireBinary(t)
	testenv.RequireRoot(t)
	root := t.TempDir()
	state := filepath.Join(root, sysroot.StateDirRel, "state.json")
	if err := os.MkdirAll(filepath.Dir(state), 0o700); err != nil {
		t.Fatal(err)
	}
	// A successful btrfs upgrade whose rollback point is not there (this
	// root is no btrfs subvolume).
	doc := `{"version": 1, "status": "succeeded", "backend": "btrfs", "snapshot": "kos-upgrade-new", "previous": "kos-upgrade-old",
	  "target": "5.9", "plan_id": "p1"}`
	if err := os.WriteFile(state, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "rollback on another root", args: []string{"rollback"}, want: "use --no-reboot (nothing was changed)"},
		{name: "rollback without its rollback point", args: []string{"rollback", "--no-reboot"}, want: "cannot roll back"},
		{name: "reboot on another root", args: []string{"reboot"}, want: "use --no-reboot (nothing was changed)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runKU(t, nil, append([]string{"--root", root}, tc.args...)...)
			if code != exitFailed || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, want %d with %q\n%s\n%s", code, exitFailed, tc.want, out, errOut)
			}
			if b, err := os.ReadFile(state); err != nil || string(b) != doc {
				t.Errorf("the state changed: %v\n%s", err, b)
			}
			if _, err := os.Lstat(filepath.Join(root, "system-update")); !os.IsNotExist(err) {
				t.Errorf("/system-update was made: %v", err)
			}
			if ents, _ := os.ReadDir(filepath.Join(root, sysroot.StateDirRel, "history")); len(ents) > 0 {
				t.Errorf("a run was recorded: %d", len(ents))
			}
		})
	}
}

// Output says what happened, and errors say how to get on.
func TestHonestOutput(t *testing.T) {
	requireBinary(t)
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "setpriv")
	root := t.TempDir()
	out, errOut, code := runKU(t, nil, "--root", root, "status", "--json")
	if code != 0 || strings.Contains(out, "updated_at") || strings.Contains(out, "0001-01-01") {
		t.Errorf("fresh status: exit %d, a zero time:\n%s\n%s", code, out, errOut)
	}
	out, errOut, code = runKU(t, nil, "--root", root, "clean")
	if code != 0 || strings.TrimSpace(out) != "Nothing to clean." {
		t.Errorf("clean of nothing: exit %d\n%s\n%s", code, out, errOut)
	}
	out, _, _ = runKU(t, nil, "--root", root, "clean", "--json")
	if strings.TrimSpace(strings.Join(strings.Fields(out), "")) != `{"removed":[]}` {
		t.Errorf("clean --json of nothing: %s", out)
	}
	// Staged packages are removed and said to be.
	pkgs := filepath.Join(root, sysroot.StateDirRel, "packages")
	if err := os.MkdirAll(pkgs, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pkgs, "a.rpm"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code = runKU(t, nil, "--root", root, "clean"); code != 0 || !strings.Contains(out, "removed staged packages") {
		t.Errorf("clean of staged packages: exit %d\n%s\n%s", code, out, errOut)
	}

	// A user who is not root is told to be.
	dir, err := os.MkdirTemp("", "kos-upgrade-perm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "kos-upgrade")
	b, err := os.ReadFile(kosUpgradeBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	proot := filepath.Join(dir, "root")
	if err := os.MkdirAll(filepath.Join(proot, sysroot.StateDirRel), 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chmod(proot, 0o755)
	for _, p := range []string{"var", "var/lib"} {
		os.Chmod(filepath.Join(proot, p), 0o755)
	}
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bin, "--root", proot, "clean")
	cmd.Env = append(os.Environ(), "KOS_UPGRADE_NO_DAEMON=1")
	outb, _ := cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() == 0 || !strings.Contains(string(outb), "run it as root") {
		t.Errorf("clean as nobody: exit %d\n%s", cmd.ProcessState.ExitCode(), outb)
	}
}

// check and prepare treat a target older than the running release as a
// downgrade to ask for; prepare --json shows the report that stopped it and
// the hint repeats the user's flags.
func TestDowngradeIsInhibited(t *testing.T) {
	c := newCLIRoot(t)
	out, errOut, code := c.run("check", "--to", "5.7", "--snapshot", "none")
	if code != exitInhibited || !strings.Contains(out, "key: release.downgrade") || !strings.Contains(out, "--allow-downgrade") {
		t.Errorf("check --to 5.7 on 5.8: exit %d\n%s\n%s", code, out, errOut)
	}
	out, errOut, code = c.run("check", "--to", "5.7", "--snapshot", "none", "--allow-downgrade", "--json")
	r := decodeReport(t, out)
	if f := r.Finding(preflight.KeyDowngrade); f == nil || f.Inhibitor() || f.Question == nil || f.Question.Answer != "yes" {
		t.Errorf("check --allow-downgrade: exit %d, finding %+v\n%s", code, f, errOut)
	}
	out, errOut, code = c.run("prepare", "--to", "5.7", "--snapshot", "none", "--json")
	if code != exitInhibited {
		t.Fatalf("prepare --to 5.7: exit %d\n%s\n%s", code, out, errOut)
	}
	if f := decodeReport(t, out).Finding(preflight.KeyDowngrade); f == nil || !f.Inhibitor() {
		t.Errorf("prepare --json did not print the report with the downgrade: %s", out)
	}
	if want := "kos-upgrade --root " + c.root + " check --to 5.7 --snapshot none shows the whole report"; !strings.Contains(errOut, want) {
		t.Errorf("prepare's hint is not %q:\n%s", want, errOut)
	}
	// An upgrade is no downgrade.
	out, errOut, _ = c.run("check", "--to", "5.9", "--snapshot", "none", "--json")
	up := decodeReport(t, out)
	if up.Finding(preflight.KeyDowngrade) != nil {
		t.Errorf("5.8 → 5.9 reported as a downgrade")
	}
	// The per-package list behind transaction.summary (what Ansible's
	// dry run shows as a diff): every item named, the counts agreeing.
	perAction := map[string]int{}
	for _, it := range up.Transaction {
		if it.NEVRA == "" || it.Name == "" || (it.Action == "upgrade" && len(it.Replaces) == 0) {
			t.Errorf("transaction item %+v", it)
		}
		perAction[it.Action]++
	}
	sum := up.Finding(preflight.KeyTransaction)
	if sum == nil || perAction["upgrade"] == 0 || !strings.Contains(sum.Title, fmt.Sprintf("%d upgrade", perAction["upgrade"])) {
		t.Errorf("check --json: transaction %v, summary %+v\n%s", perAction, sum, out)
	}
	// -v is --verbose: the helper's runs are logged, which they are not
	// without it.
	if strings.Contains(errOut, "running package helper") {
		t.Errorf("check without -v logs at debug level:\n%s", errOut)
	}
	if _, errOut, _ = c.run("check", "--to", "5.9", "--snapshot", "none", "-v"); !strings.Contains(errOut, "running package helper") {
		t.Errorf("check -v does not log the helper's runs:\n%s", errOut)
	}
	// On a distribution without a migration map, no migration is offered.
	osr := filepath.Join(c.root, "etc/os-release")
	os.Remove(osr)
	if err := os.WriteFile(osr, []byte("ID=debian\nVERSION_ID=\"12\"\nNAME=\"Debian GNU/Linux\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, _ = c.run("check", "--to", "5.9", "--snapshot", "none")
	if !strings.Contains(out, "key: release.other-distribution") || strings.Contains(out, "--to kos-5.9") {
		t.Errorf("check on Debian offers a migration:\n%s\n%s", out, errOut)
	}
}

// pythonRepr matches what a Python tuple or bytes repr looks like in a
// message: ('...', (8, None, 10)) or b'...'.
var pythonRepr = regexp.MustCompile(`\('|\(\d+, None|None\)|\bb'|\\x[0-9a-f]{2}`)

// A downgrade that is allowed runs into rpm's refusals in the test
// transaction only as sentences: no librpm tuples reach the user.
func TestDowngradeMessages(t *testing.T) {
	c := newCLIRoot(t)
	// The system runs 5.9.
	pkgs, err := c.set.Packages(fixture.Repo59)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "rpm", append([]string{"--root", c.root, "--dbpath", fixture.DBPath, "-U", "--replacepkgs", "--force-debian", "--nodeps",
		"--define", "_pkgverify_level signature"}, pkgs...)...)
	repo58 := "kos=file://" + filepath.Join(c.set.Dir, "repos", fixture.Repo58)
	out, errOut, code := c.run("check", "--to", "5.8", "--repo", repo58, "--snapshot", "none")
	if code != exitInhibited || !strings.Contains(out, "key: release.downgrade") {
		t.Errorf("check --to 5.8 on 5.9: exit %d\n%s\n%s", code, out, errOut)
	}
	// Refused in the test transaction, the way the issue met it: rpm's
	// problems are sentences.
	out, errOut, code = c.run("prepare", "--to", "5.8", "--repo", repo58, "--snapshot", "none", "--answer", "allow-downgrade=no")
	if code != exitInhibited {
		t.Errorf("prepare --to 5.8 with allow-downgrade=no: exit %d\n%s\n%s", code, out, errOut)
	}
	// Allowed: the plan downgrades, and rpm's test transaction accepts the
	// older packages (rpm -U --oldpackage).
	out, errOut, code = c.run("prepare", "--to", "5.8", "--repo", repo58, "--snapshot", "none", "--allow-downgrade")
	if code != 0 || !strings.Contains(out, "to downgrade") || strings.Contains(out, " 0 to downgrade") {
		t.Errorf("prepare --to 5.8 --allow-downgrade: exit %d\n%s\n%s", code, out, errOut)
	}
	if m := pythonRepr.FindString(out + errOut); m != "" {
		t.Errorf("a Python repr (%q) reaches the user:\n%s\n%s", m, out, errOut)
	}
}

// make install ships the binary with the Makefile's VERSION, the man page
// and completions as generated, the report schema, and commented examples
// for /etc/kos-upgrade that change nothing.
func TestMakeInstallShips(t *testing.T) {
	requireBinary(t)
	testenv.RequireTools(t, "make", "install")
	dest := t.TempDir()
	bin := filepath.Join(t.TempDir(), "kos-upgrade")
	cmd := exec.Command("make", "-s", "install", "DESTDIR="+dest, "BIN="+bin)
	cmd.Dir = filepath.Join("..", "..")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	mk, err := os.ReadFile(filepath.Join("..", "..", "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^VERSION\s*:=\s*(\S+)`).FindSubmatch(mk)
	if m == nil {
		t.Fatal("no VERSION in the Makefile")
	}
	out, err := exec.Command(filepath.Join(dest, "usr/bin/kos-upgrade"), "--version").Output()
	if err != nil || strings.TrimSpace(string(out)) != "kos-upgrade version "+string(m[1]) {
		t.Errorf("installed kos-upgrade --version = %q (%v), want the Makefile's VERSION %s", out, err, m[1])
	}
	same := map[string]string{
		"usr/share/man/man8/kos-upgrade.8":                  manPageFile,
		"usr/share/bash-completion/completions/kos-upgrade": bashCompletion,
		"usr/share/zsh/site-functions/_kos-upgrade":         zshCompletion,
		"usr/share/doc/kos-upgrade/report.schema.json":      "docs/report.schema.json",
		"usr/share/doc/kos-upgrade/cli.md":                  cliDocFile,
	}
	for inst, src := range same {
		a, err1 := os.ReadFile(filepath.Join(dest, inst))
		b, err2 := os.ReadFile(filepath.Join("..", "..", src))
		if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
			t.Errorf("/%s is not %s: %v %v", inst, src, err1, err2)
		}
	}
	for _, ex := range []string{"etc/kos-upgrade/boot.conf", "etc/kos-upgrade/answers.conf", "etc/kos-upgrade/health.d/README"} {
		fi, err := os.Stat(filepath.Join(dest, ex))
		if err != nil || fi.Mode().Perm()&0o111 != 0 {
			t.Errorf("/%s: %v (an executable in health.d would run as a check)", ex, err)
		}
	}
	// The examples change nothing: check reads the same answers with and
	// without them, and they name only real questions once uncommented.
	answers, err := os.ReadFile(filepath.Join(dest, "etc/kos-upgrade/answers.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if a, err := preflight.ParseAnswers(answers, "answers.conf"); err != nil || len(a) != 0 {
		t.Errorf("the example answers.conf answers something: %v %v", a, err)
	}
	var uncommented []string
	for _, l := range strings.Split(string(answers), "\n") {
		// "#key = value" (no blank after the #) is a commented answer.
		if strings.HasPrefix(l, "#") && !strings.HasPrefix(l, "# ") && strings.Contains(l, " = ") {
			uncommented = append(uncommented, strings.TrimPrefix(l, "#"))
		}
	}
	a, err := preflight.ParseAnswers([]byte(strings.Join(uncommented, "\n")), "answers.conf")
	if err != nil || len(a) == 0 {
		t.Fatalf("the example's answers do not parse: %v", err)
	}
	q := preflight.Questions()
	for k, v := range a {
		if ch, ok := q[k]; !ok || !slices.Contains(ch, v.Value) {
			t.Errorf("the example answers %s = %s, which is no question's choice (%v)", k, v.Value, q)
		}
	}
}

// Progress and warnings go to stderr, the result to stdout; a terminal gets
// a redrawn bar unless TERM=dumb.
func TestProgressGoesToStderr(t *testing.T) {
	c := newCLIRoot(t)
	testenv.RequireTools(t, "script")
	out, errOut, code := c.run("prepare", "--to", "5.9", "--snapshot", "none")
	if code != 0 {
		t.Fatalf("prepare: exit %d\n%s\n%s", code, out, errOut)
	}
	if !strings.Contains(out, "Next: kos-upgrade reboot") || strings.Contains(out, "WARNING") || strings.Contains(out, "stage: ") {
		t.Errorf("stdout is not only the result:\n%s", out)
	}
	if !strings.Contains(errOut, "WARNING: --snapshot none") || !strings.Contains(errOut, "stage: [1/") {
		t.Errorf("stderr lacks the progress and the warning:\n%s", errOut)
	}
	for _, tc := range []struct {
		term string
		bar  bool
	}{{"xterm", true}, {"dumb", false}} {
		t.Run("TERM="+tc.term, func(t *testing.T) {
			if _, errOut, code := c.run("cancel"); code != 0 {
				t.Fatalf("cancel: %s", errOut)
			}
			line := kosUpgradeBinary(t) + " --root " + c.root + " prepare --to 5.9 --snapshot none"
			cmd := exec.Command("script", "-qec", line, "/dev/null")
			cmd.Env = append(os.Environ(), "TERM="+tc.term, "KOS_UPGRADE_NO_DAEMON=1")
			tty, err := cmd.Output()
			if err != nil {
				t.Fatalf("%s: %v\n%s", line, err, tty)
			}
			if got := bytes.Contains(tty, []byte("\033[K")); got != tc.bar {
				t.Errorf("TERM=%s: redrawn bar %v, want %v:\n%q", tc.term, got, tc.bar, tty)
			}
		})
	}
}

// An unreachable repository: the download error shows without --verbose.
func TestUnreachableRepository(t *testing.T) {
	c := newCLIRoot(t)
	out, errOut, code := c.run("prepare", "--to", "5.9", "--snapshot", "none", "--repo", "kos=http://127.0.0.1:9/kos/5.9/")
	if code != exitInhibited || !regexp.MustCompile(`(?m)^    .*(Cannot download|Failed to download|Couldn't connect)`).MatchString(errOut) {
		t.Errorf("the download error is not shown: exit %d\n%s\n%s", code, out, errOut)
	}
}

// dnfIn runs the real dnf on root (no repositories; rpm's database where
// the fixture has it, as on EL8) and returns its output.
func dnfIn(t *testing.T, root string, args ...string) string {
	t.Helper()
	home := t.TempDir()
	if err := os.WriteFile(filepath.Join(home, ".rpmmacros"), []byte("%_dbpath "+fixture.DBPath+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("dnf", append([]string{"--installroot", root, "--setopt=reposdir=/nonexistent", "--disablerepo=*",
		"--setopt=cachedir=" + filepath.Join(home, "cache"), "--setopt=logdir=" + home, "-y", "-q"}, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+home, "LC_ALL=C.UTF-8")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("dnf %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// After apply, `dnf history` in the upgraded root shows the upgrade as one
// transaction: every package of the plan with its action, the command line
// kos-upgrade apply, reasons carried over.
func TestDnfHistoryShowsTheUpgrade(t *testing.T) {
	c := newCLIRoot(t)
	testenv.RequireTools(t, "dnf")
	// Before: app was installed by the admin, libfoo as a dependency.
	dnfIn(t, c.root, "mark", "install", "app")
	dnfIn(t, c.root, "mark", "remove", "libfoo")
	for _, args := range [][]string{
		{"prepare", "--to", "5.9", "--snapshot", "none"},
		{"reboot", "--no-reboot"},
		{"apply"},
	} {
		if out, errOut, code := c.run(args...); code != 0 {
			t.Fatalf("%s: exit %d\n%s\n%s", args, code, out, errOut)
		}
	}
	info := dnfIn(t, c.root, "history", "info", "last")
	t.Logf("dnf history info last:\n%s", info)
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^Command Line\s*:\s*kos-upgrade apply$`),
		regexp.MustCompile(`(?m)^Return-Code\s*:\s*Success`),
		regexp.MustCompile(`(?m)^End rpmdb\s*:\s*[0-9a-f:]{8,}\s*$`),
		regexp.MustCompile(`(?m)^\s+Upgrade\s+app-2\.0-1\.noarch\s+@kos`),
		regexp.MustCompile(`(?m)^\s+Upgraded\s+app-1\.0-1\.noarch\s+@`),
		regexp.MustCompile(`(?m)^\s+Upgrade\s+libfoo-2\.0-1\.noarch`),
		regexp.MustCompile(`(?m)^\s+Install\s+libbar-1\.0-1\.noarch`),
		regexp.MustCompile(`(?m)^\s+Install\s+newtool-2\.0-1\.noarch`),
		regexp.MustCompile(`(?m)^\s+Obsoleted\s+oldtool-1\.0-1\.noarch`),
		regexp.MustCompile(`(?m)^\s+Removed?\s+legacy-1\.0-1\.noarch`),
	} {
		if !want.MatchString(info) {
			t.Errorf("dnf history info last lacks %s", want)
		}
	}
	user := dnfIn(t, c.root, "history", "userinstalled")
	if !strings.Contains(user, "app-2.0-1.noarch") || strings.Contains(user, "libfoo") || strings.Contains(user, "libbar") {
		t.Errorf("dnf history userinstalled: app should stay user-installed, libfoo and libbar dependencies:\n%s", user)
	}
	// The result says nothing of a missing history.
	out, _, _ := c.run("history", "--json")
	if strings.Contains(out, "no dnf history") {
		t.Errorf("the run's record says no dnf history was written:\n%s", out)
	}
}

// Where the apply's Python cannot import dnf (EL8 guests with only
// python3-rpm), the upgrade succeeds and its result says that no dnf
// history was written.
func TestApplyWithoutDnfWarnsOfNoHistory(t *testing.T) {
	c := newCLIRoot(t)
	testenv.RequireTools(t, "dnf")
	for _, args := range [][]string{{"prepare", "--to", "5.9", "--snapshot", "none"}, {"reboot", "--no-reboot"}} {
		if out, errOut, code := c.run(args...); code != 0 {
			t.Fatalf("%s: exit %d\n%s\n%s", args, code, out, errOut)
		}
	}
	// An interpreter with rpm but no dnf: python3 with dnf's import
	// blocked, running the helper it is given (-I -c SOURCE COMMAND).
	wrapper := filepath.Join(t.TempDir(), "python-without-dnf")
	script := `#!/bin/sh
exec /usr/bin/python3 "$1" -c 'import sys
sys.modules["dnf"] = None
src = sys.argv[1]
sys.argv = ["-c"] + sys.argv[2:]
exec(compile(src, "<helper>", "exec"))' "$3" "$4"
`
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(kosUpgradeBinary(t), "--root", c.root, "apply", "--json")
	cmd.Env = append(os.Environ(), "KOS_UPGRADE_NO_DAEMON=1", "KOS_UPGRADE_PYTHON="+wrapper)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("apply without dnf: %v\n%s\n%s", err, stdout.String(), stderr.String())
	}
	var res struct {
		Result struct {
			Success  bool     `json:"success"`
			Warnings []string `json:"warnings"`
		} `json:"result"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("apply --json: %v\n%s", err, stdout.String())
	}
	found := false
	for _, w := range res.Result.Warnings {
		found = found || strings.Contains(w, "no dnf history was written: dnf cannot be imported")
	}
	if !res.Result.Success || !found {
		t.Errorf("apply without dnf: success %v, warnings %q\n%s", res.Result.Success, res.Result.Warnings, stderr.String())
	}
	if h := dnfIn(t, c.root, "history", "list"); strings.Contains(h, "kos-upgrade") {
		t.Errorf("a dnf history was written:\n%s", h)
	}
}

// journalRemote is where Debian's systemd-journal-remote lives.
const journalRemote = "/lib/systemd/systemd-journal-remote"

// writeJournal writes entries (journal export format, one map each) into a
// real journal file at file with systemd-journal-remote.
func writeJournal(t *testing.T, file string, entries []map[string]string) {
	t.Helper()
	var b strings.Builder
	for _, en := range entries {
		keys := make([]string, 0, len(en))
		for k := range en {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			b.WriteString(k + "=" + en[k] + "\n")
		}
		b.WriteString("\n")
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(journalRemote, "-o", file, "-")
	cmd.Stdin = strings.NewReader(b.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", journalRemote, err, out)
	}
}

// log finds a run's boot in the root's journal by the run's MESSAGE_ID
// fields and shows that boot, with the run's history record.
func TestLogShowsTheRunsJournal(t *testing.T) {
	c := newCLIRoot(t)
	testenv.RequireTools(t, "journalctl", journalRemote)
	for _, args := range [][]string{{"prepare", "--to", "5.9", "--snapshot", "none"}, {"reboot", "--no-reboot"}, {"apply"}} {
		if out, errOut, code := c.run(args...); code != 0 {
			t.Fatalf("%s: exit %d\n%s\n%s", args, code, out, errOut)
		}
	}
	out, _, _ := c.run("history", "--json")
	var runs []struct {
		RunID     string    `json:"run_id"`
		StartedAt time.Time `json:"started_at"`
	}
	if err := json.Unmarshal([]byte(out), &runs); err != nil || len(runs) != 1 || runs[0].RunID == "" {
		t.Fatalf("history: %v\n%s", err, out)
	}
	run := runs[0]
	// The journal of three boots: the one before, the offline boot the
	// apply ran in (what pkg/progress sends, with the run's fields), the
	// first boot of the upgraded system.
	const before, offline, after = "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a", "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b", "0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c"
	at := run.StartedAt
	n := 0
	entry := func(boot string, d time.Duration, fields ...string) map[string]string {
		n++
		en := map[string]string{
			"__REALTIME_TIMESTAMP": strconv.FormatInt(at.Add(d).UnixMicro(), 10), "__MONOTONIC_TIMESTAMP": strconv.Itoa(n * 1000),
			"_BOOT_ID": boot, "_MACHINE_ID": fixture.MachineID, "PRIORITY": "6", "_UID": "0",
		}
		for i := 0; i+1 < len(fields); i += 2 {
			en[fields[i]] = fields[i+1]
		}
		return en
	}
	writeJournal(t, filepath.Join(c.root, "var/log/journal", fixture.MachineID, "system.journal"), []map[string]string{
		entry(before, -time.Hour, "SYSLOG_IDENTIFIER", "sshd", "MESSAGE", "the boot before"),
		entry(offline, -time.Second, "SYSLOG_IDENTIFIER", "systemd", "MESSAGE", "Starting system-update.target"),
		entry(offline, 0, "SYSLOG_IDENTIFIER", "kos-upgrade", "MESSAGE_ID", "9660ba8c44554c62b2f31c59c5b5b257",
			"KOS_UPGRADE_OP", "apply", "MESSAGE", "kos-upgrade apply started"),
		entry(offline, time.Second, "SYSLOG_IDENTIFIER", "kos-upgrade", "_SYSTEMD_UNIT", "kos-upgrade-apply.service",
			"MESSAGE", "transaction: [3/9] upgrade app-0:2.0-1.noarch"),
		entry(offline, 2*time.Second, "SYSLOG_IDENTIFIER", "kos-upgrade", "MESSAGE_ID", "8847a9f7023146d69bf6d09d34bd0949",
			"KOS_UPGRADE_OP", "apply", "KOS_UPGRADE_RUN_ID", run.RunID, "KOS_UPGRADE_FROM", "5.8", "KOS_UPGRADE_TO", "5.9",
			"MESSAGE", "kos-upgrade apply finished: 5.8 → 5.9"),
		entry(after, time.Hour, "SYSLOG_IDENTIFIER", "kos-upgrade", "MESSAGE", "the first boot of 5.9"),
		// A user's forgery of the run's entry (logger --journald can send
		// any field but _UID): never taken for the run.
		entry(after, 2*time.Hour, "SYSLOG_IDENTIFIER", "kos-upgrade", "MESSAGE_ID", "8847a9f7023146d69bf6d09d34bd0949",
			"KOS_UPGRADE_OP", "apply", "KOS_UPGRADE_RUN_ID", run.RunID, "MESSAGE", "forged", "_UID", "1000"),
	})

	out, errOut, code := c.run("log")
	if code != 0 || !strings.Contains(out, "  1  ") || !strings.Contains(out, "boot "+offline) {
		t.Errorf("log: exit %d\n%s\n%s", code, out, errOut)
	}
	for _, which := range []string{"last", "1", run.RunID} {
		out, errOut, code = c.run("log", which)
		if code != 0 || !strings.Contains(out, "run ID: "+run.RunID) || !strings.Contains(out, "Journal of boot "+offline) ||
			!strings.Contains(out, "transaction: [3/9] upgrade app-0:2.0-1.noarch") || !strings.Contains(out, "Starting system-update.target") ||
			strings.Contains(out, "the boot before") || strings.Contains(out, "first boot of 5.9") {
			t.Errorf("log %s: exit %d\n%s\n%s", which, code, out, errOut)
		}
	}
	out, errOut, code = c.run("log", "last", "--json")
	var l struct {
		Number int `json:"number"`
		Run    struct {
			RunID string `json:"run_id"`
		} `json:"run"`
		BootID  string `json:"boot_id"`
		Entries []struct {
			Message   string `json:"message"`
			MessageID string `json:"message_id"`
		} `json:"entries"`
	}
	if err := json.Unmarshal([]byte(out), &l); err != nil || code != 0 {
		t.Fatalf("log --json: exit %d %v\n%s\n%s", code, err, out, errOut)
	}
	if l.Number != 1 || l.Run.RunID != run.RunID || l.BootID != offline || len(l.Entries) != 4 || l.Entries[3].MessageID != "8847a9f7023146d69bf6d09d34bd0949" {
		t.Errorf("log --json: %+v", l)
	}
	if _, errOut, code := c.run("log", "7"); code != exitUsage || !strings.Contains(errOut, "no run 7") {
		t.Errorf("log 7: exit %d %s", code, errOut)
	}

	// A run cut short (a power cut: no Finished entry) is found by its
	// Started entry near the run's start; a Started entry of another
	// time is not taken for it.
	if err := os.RemoveAll(filepath.Join(c.root, "var/log/journal")); err != nil {
		t.Fatal(err)
	}
	const cut, old = "0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d", "0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e"
	writeJournal(t, filepath.Join(c.root, "var/log/journal", fixture.MachineID, "system.journal"), []map[string]string{
		entry(old, -48*time.Hour, "SYSLOG_IDENTIFIER", "kos-upgrade", "MESSAGE_ID", "9660ba8c44554c62b2f31c59c5b5b257",
			"KOS_UPGRADE_OP", "apply", "MESSAGE", "an apply two days before"),
		entry(cut, time.Second, "SYSLOG_IDENTIFIER", "kos-upgrade", "MESSAGE_ID", "9660ba8c44554c62b2f31c59c5b5b257",
			"KOS_UPGRADE_OP", "apply", "MESSAGE", "kos-upgrade apply started"),
		entry(cut, 2*time.Second, "SYSLOG_IDENTIFIER", "kos-upgrade", "MESSAGE", "transaction: [1/9] upgrade libfoo-0:2.0-1.noarch"),
	})
	out, errOut, code = c.run("log", "last")
	if code != 0 || !strings.Contains(out, "Journal of boot "+cut) || !strings.Contains(out, "[1/9] upgrade libfoo") || strings.Contains(out, "two days before") {
		t.Errorf("log of a run without its Finished entry: exit %d\n%s\n%s", code, out, errOut)
	}
}

// When rpm's test transaction refuses the upgrade (here a file conflict
// with a local package), the user reads rpm's problems as sentences, never
// librpm's Python tuples.
func TestRpmProblemsAreSentences(t *testing.T) {
	c := newCLIRoot(t)
	testenv.RequireTools(t, "rpmbuild")
	// squatter, installed by hand, owns the file libbar-1.0 of 5.9 ships.
	top := t.TempDir()
	spec := filepath.Join(top, "squatter.spec")
	if err := os.WriteFile(spec, []byte(`Name: squatter
Version: 1.0
Release: 1
Summary: owns a file the next release ships
License: MIT
BuildArch: noarch
%description
A local package whose file conflicts with libbar of 5.9.
%install
mkdir -p %{buildroot}/usr/lib64
echo squatter > %{buildroot}/usr/lib64/libbar.so.1
%files
/usr/lib64/libbar.so.1
`), 0o644); err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "rpmbuild", "-bb", "--nodeps", "--quiet", "--define", "_topdir "+top, "--define", "_rpmdir "+top,
		"--define", "_tmppath "+top, "--define", "__os_install_post %{nil}", "--define", "_build_id_links none",
		"--define", "_dbpath "+filepath.Join(top, "db"), spec)
	testenv.Run(t, "rpm", "--root", c.root, "--dbpath", fixture.DBPath, "-i", "--force-debian", "--nosignature",
		filepath.Join(top, "noarch", "squatter-1.0-1.noarch.rpm"))
	out, errOut, code := c.run("prepare", "--to", "5.9", "--snapshot", "none", "--answer", "packages.third-party=keep")
	if code == 0 {
		t.Fatalf("prepare with a file conflict succeeded:\n%s\n%s", out, errOut)
	}
	if !strings.Contains(errOut, "libbar.so.1") || !strings.Contains(errOut, "squatter") {
		t.Errorf("prepare does not name the conflict:\n%s", errOut)
	}
	if strings.Count(errOut, "the test transaction failed") != 1 {
		t.Errorf("the failure is not said once:\n%s", errOut)
	}
	if m := pythonRepr.FindString(out + errOut); m != "" {
		t.Errorf("a Python repr (%q) reaches the user:\n%s\n%s", m, out, errOut)
	}
}

// A btrfs upgrade: the offline apply runs in the pre-upgrade root, so its
// journal is there. log finds the run from the upgraded root too, and from
// both after a rollback.
func TestLogFromEitherRoot(t *testing.T) {
	requireBinary(t)
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "rpm", "rpmkeys", "/usr/bin/python3", "journalctl", journalRemote)
	set := fixture.MustBuild(t)
	b := testenv.NewBtrfs(t, 512)
	oldRoot := filepath.Join(t.TempDir(), "root")
	b.MakeDefaultRoot(t, "@", oldRoot)
	if err := fixture.InstallBase(context.Background(), set, oldRoot); err != nil {
		t.Fatal(err)
	}
	kos := func(root string, args ...string) string {
		t.Helper()
		out, errOut, code := runKU(t, nil, append([]string{"--root", root}, args...)...)
		if code != 0 {
			t.Fatalf("--root %s %s: exit %d\n%s\n%s", root, args, code, out, errOut)
		}
		return out
	}
	kos(oldRoot, "prepare", "--to", "5.9")
	kos(oldRoot, "reboot", "--no-reboot")
	kos(oldRoot, "apply")
	// The upgraded root: the default subvolume, as the next boot mounts it.
	newRoot := filepath.Join(t.TempDir(), "next")
	if err := os.MkdirAll(newRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "mount", b.Device, newRoot)
	t.Cleanup(func() { testenv.UnmountAll(newRoot) })
	if _, err := os.Stat(filepath.Join(newRoot, "etc/yum.repos.d")); err != nil {
		t.Fatalf("the default subvolume is no root: %v", err)
	}
	var runs []struct {
		RunID     string    `json:"run_id"`
		StartedAt time.Time `json:"started_at"`
	}
	if err := json.Unmarshal([]byte(kos(newRoot, "history", "--json")), &runs); err != nil || len(runs) != 1 {
		t.Fatalf("history of the upgraded root: %v %+v", err, runs)
	}
	// The journal the offline boot wrote, in the pre-upgrade root only.
	const boot = "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f"
	ts := func(d time.Duration) string { return strconv.FormatInt(runs[0].StartedAt.Add(d).UnixMicro(), 10) }
	writeJournal(t, filepath.Join(oldRoot, "var/log/journal", fixture.MachineID, "system.journal"), []map[string]string{
		{"__REALTIME_TIMESTAMP": ts(0), "__MONOTONIC_TIMESTAMP": "1000", "_BOOT_ID": boot, "_MACHINE_ID": fixture.MachineID,
			"SYSLOG_IDENTIFIER": "kos-upgrade", "MESSAGE": "transaction: [9/9] upgrade kos-release-0:5.9-1.noarch"},
		{"__REALTIME_TIMESTAMP": ts(time.Second), "__MONOTONIC_TIMESTAMP": "2000", "_BOOT_ID": boot, "_MACHINE_ID": fixture.MachineID,
			"SYSLOG_IDENTIFIER": "kos-upgrade", "MESSAGE_ID": "8847a9f7023146d69bf6d09d34bd0949", "KOS_UPGRADE_OP": "apply",
			"KOS_UPGRADE_RUN_ID": runs[0].RunID, "MESSAGE": "kos-upgrade apply finished", "_UID": "0"},
	})
	check := func(what, root, which string) {
		t.Helper()
		out := kos(root, "log", which)
		if !strings.Contains(out, "Journal of boot "+boot) || !strings.Contains(out, "[9/9] upgrade kos-release") {
			t.Errorf("%s: log %s does not show the offline boot:\n%s", what, which, out)
		}
	}
	check("from the upgraded root", newRoot, "last")
	check("from the pre-upgrade root", oldRoot, "1")
	kos(newRoot, "rollback", "--no-reboot")
	check("after the rollback, from the pre-upgrade root", oldRoot, "1")
	check("after the rollback, from the upgraded root", newRoot, "1")
}
