// Command kos-upgrade upgrades a KOS system offline, at boot, into a snapshot
// of its root, so that any failure leaves the old system as it was.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/pkg/preflight"
	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// Exit codes, mapped here and only here.
const (
	exitOK        = 0
	exitFailed    = 1 // the operation failed (or check found an inhibitor)
	exitUsage     = 2 // bad command line or input
	exitStalePlan = 3 // the plan no longer matches the system
	exitBusy      = 4 // another kos-upgrade operation is running
	// exitInhibited: check (or prepare) found a finding that blocks the
	// upgrade; the value of exitFailed, by design ("check && prepare").
	exitInhibited = 1
)

// version is set by the Makefile from its VERSION (-X main.version=...);
// a plain `go build` says "devel".
var version = "devel"

type usageError struct{ error }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newApp().RunContext(ctx, os.Args)
	stop()
	os.Exit(exitCode(err))
}

func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(os.Stderr, "kos-upgrade: "+pkgmgr.RedactText(errorMessage(err, os.Geteuid())))
	var ue usageError
	var ce cli.ExitCoder
	if errors.As(err, &ue) {
		return exitUsage
	}
	// upgrader.Classify is the one classification; the daemon's D-Bus
	// error names come from it too, and its client maps them back.
	switch upgrader.Classify(err) {
	case upgrader.ClassBusy:
		return exitBusy
	case upgrader.ClassStalePlan:
		return exitStalePlan
	case upgrader.ClassInhibited:
		return exitInhibited
	}
	if errors.As(err, &ce) {
		return ce.ExitCode()
	}
	return exitFailed
}

func newApp() *cli.App {
	// -v is --verbose, as in dnf; the version has only its long flag.
	cli.VersionFlag = &cli.BoolFlag{Name: "version", Usage: "print the version"}
	app := &cli.App{
		Name:    "kos-upgrade",
		Usage:   "upgrade KOS to a new release offline, safely, at boot",
		Version: version,
		Description: `kos-upgrade moves a KOS server to the next release:

   kos-upgrade check --to 5.9      assess: what blocks the upgrade, what to answer (changes nothing)
   kos-upgrade prepare --to 5.9    resolve, download, verify and test the upgrade (changes nothing)
   kos-upgrade reboot              arm it and reboot into the offline upgrade
   (at boot) kos-upgrade apply     snapshot the root, upgrade the snapshot, boot it
   kos-upgrade status              see where it stands
   kos-upgrade rollback            not happy with the result: boot the old root again (reboots)

The running root is never modified: the upgrade runs in a btrfs (or thin LVM)
snapshot that becomes the default only when the whole transaction succeeded.
On a thick LVM volume the root is upgraded in place and its snapshot is the
rollback point, merged back at the next boot when the upgrade fails.

The global options --root, --json and --verbose (-v) go before or after the
command. Documentation: kos-upgrade(8) and /usr/share/doc/kos-upgrade/.`,
		// urfave/cli adds --help only without a command named help.
		Flags:           append(globalFlags(), cli.HelpFlag),
		Suggest:         true,
		HideHelpCommand: true,                         // helpCmd replaces it: usage errors, suggestions
		ExitErrHandler:  func(*cli.Context, error) {}, // main maps errors to exit codes
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return unknownCommand(c.App, c.Args().First())
			}
			return cli.ShowAppHelp(c)
		},
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			name := "kos-upgrade"
			if c.Command != nil && c.Command.Name != "" && c.Command.Name != c.App.Name {
				name += " " + c.Command.Name
			}
			return usageError{fmt.Errorf("%w (see %s --help)", err, name)}
		},
		Commands: []*cli.Command{
			checkCmd(), prepareCmd(), rebootCmd(), applyCmd(), statusCmd(), cancelCmd(), rollbackCmd(), historyCmd(), logCmd(), cleanCmd(),
			daemonCmd(), healthCmd(), helpCmd(), generateCmd(), bundleCmd(),
		},
	}
	for _, c := range app.Commands {
		c.OnUsageError = app.OnUsageError
		if c.Name != "help" {
			c.Flags = append(c.Flags, globalFlags()...)
		}
	}
	return app
}

// errorMessage is what the user reads of err: a permission error of a user
// other than root says how to get on.
func errorMessage(err error, euid int) string {
	msg := err.Error()
	if euid != 0 && errors.Is(err, fs.ErrPermission) {
		msg += "\nkos-upgrade changes the system and reads root's files: run it as root (for example with sudo)"
	}
	return msg
}

// answerFlags are the command's --answer flags, with --allow-downgrade as
// the answer allow-downgrade=yes.
func answerFlags(c *cli.Context) []string {
	a := c.StringSlice("answer")
	if c.Bool("allow-downgrade") {
		a = append(a, preflight.AnswerAllowDowngrade+"=yes")
	}
	return a
}

// globalCategory groups the global flags in every command's help.
const globalCategory = "global (before or after the command)"

// globalFlags are accepted before and after the command; each command gets
// its own copy so that its help lists them.
func globalFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "root", Value: "/", Usage: "act on the system mounted at `DIR` (tests, initramfs)", Category: globalCategory},
		&cli.BoolFlag{Name: "json", Usage: "print machine-readable JSON on stdout", Category: globalCategory},
		&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "log every external command", Category: globalCategory},
	}
}

// globalString returns a global flag's value where it was given: after the
// command first, else before it, else its default.
func globalString(c *cli.Context, name string) string {
	for _, l := range c.Lineage() {
		if l.IsSet(name) {
			return l.String(name)
		}
	}
	return c.String(name)
}

func globalBool(c *cli.Context, name string) bool {
	for _, l := range c.Lineage() {
		if l.IsSet(name) {
			return l.Bool(name)
		}
	}
	return false
}

// unknownCommand is the usage error for a command that does not exist,
// with the nearest one when there is one.
func unknownCommand(app *cli.App, name string) error {
	msg := fmt.Sprintf("unknown command %q", name)
	if s := cli.SuggestCommand(app.Commands, name); s != "" {
		msg += ": " + strings.ToLower(s[:1]) + s[1:]
	}
	return usageError{fmt.Errorf("%s (see kos-upgrade --help)", msg)}
}

// helpCmd is urfave/cli's help command, except that an unknown topic is a
// usage error with a suggestion.
func helpCmd() *cli.Command {
	return &cli.Command{
		Name:      "help",
		Aliases:   []string{"h"},
		Usage:     "show the commands, or one command's help",
		ArgsUsage: "[COMMAND]",
		Action: func(c *cli.Context) error {
			name := c.Args().First()
			if name == "" {
				return cli.ShowAppHelp(c)
			}
			if c.App.Command(name) == nil {
				return unknownCommand(c.App, name)
			}
			// The app's context: the commands are its subcommands.
			return cli.ShowCommandHelp(c.Lineage()[1], name)
		},
	}
}

// env is what every command needs, built from the global flags.
type env struct {
	engine  *upgrader.Engine
	json    bool
	verbose bool
	out     io.Writer
	sink    *progress.Writer
}

func newEnv(c *cli.Context) (*env, error) {
	root, err := sysroot.New(globalString(c, "root"))
	if err != nil {
		return nil, usageError{fmt.Errorf("cannot use --root %q: %w", globalString(c, "root"), err)}
	}
	if fi, err := os.Stat(root.Dir); err != nil || !fi.IsDir() {
		return nil, usageError{fmt.Errorf("cannot use --root %s: not a directory", root.Dir)}
	}
	level := slog.LevelWarn
	if globalBool(c, "verbose") {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	// The snapshot backends log their commands through the default logger
	// while they are being constructed.
	slog.SetDefault(log)
	e := &env{json: globalBool(c, "json"), verbose: globalBool(c, "verbose"), out: os.Stdout}
	// Progress and warnings go to stderr: stdout is the result (text or
	// JSON), which a script may read.
	if e.json {
		e.sink = progress.NewPlainWriter(os.Stderr)
	} else {
		e.sink = progress.NewWriter(os.Stderr)
	}
	e.engine = upgrader.New(root, e.sink, log)
	return e, nil
}

// printJSON prints v as indented JSON, credentials of URLs redacted
// (pkgmgr.RedactText): the output ends up in logs and tickets.
func (e *env) printJSON(v any) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return err
	}
	_, err := io.WriteString(e.out, pkgmgr.RedactText(b.String()))
	return err
}

func action(fn func(c *cli.Context, e *env) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		if c.NArg() > 0 {
			return usageError{fmt.Errorf("unexpected argument %q", c.Args().First())}
		}
		e, err := newEnv(c)
		if err != nil {
			return err
		}
		defer e.sink.Close()
		return fn(c, e)
	}
}

func prepareCmd() *cli.Command {
	return &cli.Command{
		Name:  "prepare",
		Usage: "resolve, download, verify and test an upgrade; write the plan (changes nothing on the system)",
		Description: `prepare asks dnf to resolve a distro-sync of this system to the target release
(erasing packages only where the new release requires it), downloads every
package into /var/lib/kos-upgrade/packages, verifies each GPG signature and
sha256, runs rpm's test transaction and writes the plan. Without --repo it uses
the system's own repositories with $releasever set to the target.

Migration from CentOS: on a CentOS Linux 8 system, --to kos-VERSION (the
distribution named before the version) prepares a migration to KOS: the
release, repository and key packages are swapped for KOS's, every package is
synced to the KOS repositories only (--repo, else the migration map's), and the
migration map renames, splits, merges and removes the packages whose names
differ (/usr/share/doc/kos-upgrade/migration.md). The packages are verified with KOS's keys (the
map's key files, or --gpgkey), which apply imports into the new root.
CentOS 7 (el7 → el8) is refused: see /usr/share/doc/kos-upgrade/migration.md.

--mode initramfs: the upgrade runs from an upgrade initramfs (built with
dracut --add kos-upgrade when the upgrade is armed) that boots once through a
one-time boot entry, before switch-root, so that nothing of the root's own
userspace runs it (/usr/share/doc/kos-upgrade/initramfs.md). It needs a boot loader that can boot an
entry once (grub2 with a writable grubenv; systemd-boot with bootctl).

--iso FILE: air-gapped sites. The ISO 9660 image (the release DVD, or a bundle
made by kos-upgrade bundle) is read in place, with no loop device and no mount:
every directory holding repodata/repomd.xml is a repository (with --repo, in
addition to those), the release comes from its .treeinfo when --to is not
given, and only the packages the upgrade needs are copied out, each checked
against the metadata's checksum and its GPG signature as for a network
repository. The image is not needed after prepare
(/usr/share/doc/kos-upgrade/iso.md).

--export-needs FILE: on a host that reaches no repository at all, write what
it needs resolved (installed packages, enabled repository ids, architecture,
release, machine id) for kos-upgrade bundle on a connected machine, whose
image then serves prepare --iso here.

Examples:
   kos-upgrade prepare --to 5.9
   kos-upgrade prepare --to 5.9 --repo kos=https://mirror.example/kos/5.9/os/
   kos-upgrade prepare --to 5.9 --mode initramfs
   kos-upgrade prepare --iso /srv/KOS-5.9-x86_64-dvd.iso
   kos-upgrade prepare --to 5.9 --export-needs /media/usb/web1.json
   kos-upgrade prepare --to 5.9 --repo kos=/srv/mirror/kos/5.9/os
   kos-upgrade prepare --to kos-5.9 --repo kos=https://mirror.example/kos/5.9/os/ \
       --gpgkey /root/RPM-GPG-KEY-kos --answer packages.third-party=keep`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "to", Usage: "target release `VERSION`, e.g. 5.9; kos-VERSION on CentOS migrates to KOS"},
			&cli.StringSliceFlag{Name: "repo", Usage: "use repository `ID=URL` (or ID=/directory) instead of the system's configuration (repeatable)"},
			&cli.StringFlag{Name: "export-needs", Usage: "air-gapped hosts: write what this host needs for the upgrade to `FILE` (for kos-upgrade bundle on a connected machine) and prepare nothing"},
			&cli.StringSliceFlag{Name: "iso", Usage: "use the repositories of the ISO 9660 image `FILE`, read in place, instead of the system's configuration (repeatable; with --repo: both)"},
			&cli.StringFlag{Name: "snapshot", Value: "auto", Usage: "how to protect the root: auto, btrfs, lvm, undo (an undo journal, in place), or none (no rollback!)"},
			&cli.StringFlag{Name: "mode", Value: "target", Usage: "where apply runs: target (the root's system-update.target) or initramfs (an upgrade initramfs booted once; /usr/share/doc/kos-upgrade/initramfs.md)"},
			&cli.BoolFlag{Name: "no-gpg-check", Usage: "accept packages whose GPG signature cannot be verified (dangerous)"},
			&cli.StringSliceFlag{Name: "answer", Usage: "answer an assessment finding `KEY=VALUE` (repeatable; see kos-upgrade check)"},
			&cli.BoolFlag{Name: "allow-downgrade", Usage: "allow a target release older than the running one (the answer allow-downgrade=yes)"},
			&cli.StringFlag{Name: "migration-map", Usage: "migration: use the package map `FILE` instead of the installed or built-in one"},
			&cli.StringSliceFlag{Name: "gpgkey", Usage: "migration: a public key `FILE` of the target distribution (repeatable)"},
		},
		Action: action(func(c *cli.Context, e *env) error {
			if c.String("export-needs") != "" {
				return exportNeeds(c, e)
			}
			if c.String("to") == "" && len(c.StringSlice("iso")) == 0 {
				return usageError{fmt.Errorf("prepare needs the target release: kos-upgrade prepare --to VERSION (for example --to 5.9)")}
			}
			var images []string
			for _, p := range c.StringSlice("iso") {
				abs, err := filepath.Abs(p)
				if err != nil {
					return usageError{fmt.Errorf("cannot use --iso %q: %w", p, err)}
				}
				images = append(images, abs)
			}
			if c.String("to") != "" && !upgrader.ValidVersion(c.String("to")) {
				return usageError{fmt.Errorf("cannot use --to %q: not a release version (for example --to 5.9)", c.String("to"))}
			}
			var repos []pkgmgr.Repo
			for _, r := range c.StringSlice("repo") {
				repo, err := pkgmgr.ParseRepo(r)
				if err != nil {
					return usageError{fmt.Errorf("cannot use --repo %q: want ID=URL, for example --repo kos=file:///srv/kos/5.9", r)}
				}
				repos = append(repos, repo)
			}
			if _, err := snapshot.ParseBackend(c.String("snapshot")); err != nil {
				return usageError{err}
			}
			if !upgrader.ValidMode(c.String("mode")) {
				return usageError{fmt.Errorf("cannot use --mode %q: choose target or initramfs", c.String("mode"))}
			}
			opts := upgrader.PrepareOptions{
				To: c.String("to"), Repos: repos, Snapshot: c.String("snapshot"), Mode: c.String("mode"), SkipSignatures: c.Bool("no-gpg-check"),
				Answers: answerFlags(c), MigrationMap: c.String("migration-map"), GPGKeys: c.StringSlice("gpgkey"),
				Images: images,
			}
			if _, err := upgrader.ParseTarget(opts.To); opts.To != "" && err != nil {
				return usageError{fmt.Errorf("cannot use --to: %w", err)}
			}
			// The daemon's options carry no map or key files: with them,
			// prepare runs in-process.
			if opts.MigrationMap == "" && len(opts.GPGKeys) == 0 {
				if ok, err := prepareViaDaemon(c, e, opts); ok {
					return err
				}
			}
			p, err := e.engine.Prepare(c.Context, opts)
			if err != nil {
				if e.json && errors.Is(err, preflight.ErrInhibited) {
					// As check --json: the report that stopped it.
					printInhibitingReport(e, time.Time{})
				}
				return err
			}
			if e.json {
				return e.printJSON(p)
			}
			printPlan(e.out, p)
			fmt.Fprintln(e.out, "\nNext: kos-upgrade reboot")
			return nil
		}),
	}
}

func rebootCmd() *cli.Command {
	return &cli.Command{
		Name:  "reboot",
		Usage: "arm the prepared upgrade and reboot into it",
		Description: `reboot checks that the plan still matches the installed packages, links
/system-update to kos-upgrade's state directory (systemd then boots into
system-update.target, where kos-upgrade apply runs) and reboots. Everything
that can stop the reboot is checked before the upgrade is armed: with --root
other than the running system, reboot refuses (use --no-reboot).

On btrfs, reboot first stages the upgrade: it runs the transaction into a
snapshot now, while the system runs, so that the offline step only carries
over what the running system changes until the reboot (it falls back to the
offline transaction, and says why, whenever it cannot do so exactly). A
stage of the same plan is kept. --no-stage skips this: the offline step runs
the whole transaction. LVM and initramfs mode always take that path.

Examples:
   kos-upgrade reboot
   kos-upgrade reboot --no-reboot     arm only; the upgrade runs at the next boot
   kos-upgrade reboot --kexec         skip the firmware on both reboots
   kos-upgrade reboot --no-stage      btrfs: run the whole transaction offline (/usr/share/doc/kos-upgrade/stage.md)
   kos-upgrade reboot --no-finalize   btrfs: carry over in the offline boot (two boots) instead of at shutdown`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "no-reboot", Usage: "only arm; the upgrade runs at the next boot, whenever that is"},
			&cli.BoolFlag{Name: "kexec", Usage: "reboot with kexec into and out of the offline upgrade (no firmware POST; needs kexec-tools)"},
			&cli.BoolFlag{Name: "no-stage", Usage: "btrfs: do not build the upgraded root before the reboot; the offline step runs the whole transaction"},
			&cli.BoolFlag{Name: "no-finalize", Usage: "btrfs: carry the staged root over in the offline boot (system-update.target, two boots) instead of late in the shutdown (kos-upgrade-finalize.service, one boot); implied by --kexec"},
			// The default since staging is on by default on btrfs.
			&cli.BoolFlag{Name: "stage", Hidden: true},
		},
		Action: action(func(c *cli.Context, e *env) error {
			if c.Bool("kexec") && c.Bool("no-reboot") {
				return usageError{fmt.Errorf("--kexec and --no-reboot exclude each other")}
			}
			if c.Bool("stage") && c.Bool("no-stage") {
				return usageError{fmt.Errorf("--stage and --no-stage exclude each other")}
			}
			if c.Bool("kexec") {
				// Refuse before arming: --kexec without kexec-tools is a
				// mistake to fix, not a reason to reboot differently.
				if err := kexecAvailable(); err != nil {
					return err
				}
			}
			if !c.Bool("no-reboot") {
				if err := rebootPossible(e); err != nil {
					return err
				}
			}
			// Before arming: a reboot while staging runs the classic
			// apply, never half a stage. The daemon, when it arms,
			// keeps this stage (one of the same plan).
			staged, why, err := e.engine.StageBeforeReboot(c.Context, c.Bool("no-stage"))
			if err != nil {
				return err
			}
			if why != "" && !c.Bool("no-stage") {
				fmt.Fprintf(os.Stderr, "kos-upgrade: %s; the offline step runs the whole transaction\n", why)
			}
			// Finalize at shutdown (one boot), else the offline boot
			// carries over; the offline boot is the fallback either way.
			// Not with --kexec: the kernel it loads now is the old
			// root's, and the offline boot's kexec loads the new one.
			finalize := staged && !c.Bool("no-finalize") && !c.Bool("kexec")
			if !finalize {
				if err := setFinalizeMarker(e.engine.Root, false); err != nil {
					return fmt.Errorf("cannot forget the finalize choice: %w", err)
				}
			} else if err := armFinalize(c.Context, e); err != nil && !e.json {
				fmt.Fprintf(e.out, "Not finalizing at shutdown (%v): the staged root is carried over in the offline boot.\n", err)
			}
			if ok, err := rebootViaDaemon(c, e, !staged); ok {
				return err
			}
			p, err := e.engine.Arm(c.Context)
			if err != nil {
				return err
			}
			if err := setKexecMarker(e.engine.Root, c.Bool("kexec")); err != nil {
				return fmt.Errorf("cannot record the kexec choice: %w", err)
			}
			if !e.json {
				fmt.Fprintf(e.out, "The upgrade to %s is armed: it runs at the next boot.\n", p.Target.VersionID)
				printArmedSources(e.out, p)
			}
			if c.Bool("no-reboot") {
				if e.json {
					return e.printJSON(map[string]any{"armed": true, "plan_id": p.ID})
				}
				return nil
			}
			if c.Bool("kexec") {
				return kexecReboot(c.Context, e)
			}
			return reboot(c.Context, e)
		}),
	}
}

func applyCmd() *cli.Command {
	return &cli.Command{
		Name:  "apply",
		Usage: "run the armed upgrade (offline; started by kos-upgrade-apply.service at boot)",
		Description: `apply is the offline step. It does nothing unless /system-update points at
kos-upgrade's state directory, removes that link first (so a failure can never
loop), snapshots the root, upgrades the snapshot from the staged packages only
and makes it the default root. You normally never run it by hand.

The upgraded root's dnf history records the upgrade as one transaction with
the command line "kos-upgrade apply" (dnf history info last), reasons carried
over; where the apply's Python cannot import dnf, the result says that no dnf
history was written.

Examples:
   kos-upgrade apply --reboot         what kos-upgrade-apply.service runs
   kos-upgrade apply --at-shutdown    what kos-upgrade-finalize.service runs at shutdown
   kos-upgrade --root /sysroot apply  what the upgrade initramfs runs`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "reboot", Usage: "reboot when done, whatever the result, when the upgrade was ours (the unit passes it)"},
			&cli.BoolFlag{Name: "at-shutdown", Usage: "finalize a staged upgrade late in the shutdown, or leave it to the offline boot (kos-upgrade-finalize.service's stop action; /usr/share/doc/kos-upgrade/stage.md)"},
		},
		Action: action(func(c *cli.Context, e *env) error {
			if c.Bool("at-shutdown") {
				if c.Bool("reboot") {
					return usageError{fmt.Errorf("--at-shutdown and --reboot exclude each other: the system is shutting down already")}
				}
				return finalizeAtShutdown(c.Context, e)
			}
			done := announceApply(e)
			res, err := e.engine.Apply(c.Context)
			done(res, err)
			if err == nil {
				err = printApply(e, res)
			}
			// Reboot after our own run, failed or not. Not when
			// /system-update is missing or another tool's: that tool's
			// service (or systemd's system-update-cleanup.service) reboots,
			// and rebooting under it would interrupt its update.
			if c.Bool("reboot") && (err != nil || res.Ran) {
				if rerr := rebootAfterApply(e); rerr != nil {
					return errors.Join(err, rerr)
				}
			}
			return err
		}),
	}
}

func printApply(e *env, res *upgrader.ApplyResult) error {
	if e.json {
		return e.printJSON(res)
	}
	if !res.Ran {
		fmt.Fprintln(e.out, "Nothing to do: "+res.Reason)
		return nil
	}
	if res.Result.InPlace {
		fmt.Fprintf(e.out, "Upgrade to %s succeeded in place; %s is kept as the rollback point.\n", res.Result.To, res.Result.Snapshot)
		return nil
	}
	fmt.Fprintf(e.out, "Upgrade to %s succeeded; the next boot starts %s.\n", res.Result.To, res.Result.Snapshot)
	return nil
}

func statusCmd() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show the upgrade's state, plan and last result",
		Description: `status shows where the upgrade stands: the state (idle, prepared, armed,
applying, succeeded, failed, rolled-back), whether it is armed for the next
boot, the prepared plan (what is upgraded, installed and removed), the last
apply or rollback and whether a rollback is available. It reads the daemon's
properties when the daemon runs, else the state file; --json prints the state
document (/usr/share/doc/kos-upgrade/state.md).

Examples:
   kos-upgrade status
   kos-upgrade status --json
   kos-upgrade status --follow        watch the daemon's running job`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "follow", Usage: "stream the progress of the daemon's running job until it ends"},
		},
		Action: action(func(c *cli.Context, e *env) error {
			if ok, err := statusViaDaemon(c, e); ok {
				return err
			}
			r, err := e.engine.Status(c.Context)
			if err != nil {
				return err
			}
			if e.json {
				return e.printJSON(r)
			}
			printStatus(e.out, r)
			return nil
		}),
	}
}

func cancelCmd() *cli.Command {
	return &cli.Command{
		Name:  "cancel",
		Usage: "disarm the upgrade and delete the plan and the staged packages",
		Description: `cancel removes /system-update when it is kos-upgrade's (another tool's link is
left alone), the upgrade initramfs and its one-time boot entry (initramfs
mode), the plan and the staged packages. The system is as before prepare.
It changes nothing once an upgrade ran: use rollback then.

Example:
   kos-upgrade cancel`,
		Action: action(func(c *cli.Context, e *env) error {
			if ok, err := cancelViaDaemon(c, e); ok {
				return err
			}
			if err := e.engine.Cancel(c.Context); err != nil {
				return err
			}
			if e.json {
				return e.printJSON(map[string]any{"cancelled": true})
			}
			fmt.Fprintln(e.out, "Cancelled: nothing is armed, the plan and staged packages are gone.")
			return nil
		}),
	}
}

func rollbackCmd() *cli.Command {
	return &cli.Command{
		Name:  "rollback",
		Usage: "boot the pre-upgrade root again (reboots now unless --no-reboot)",
		Description: `rollback makes the root as it was before the last upgrade the default again
and reboots into it: the snapshot kept by apply (btrfs, thin LVM) boots again
with its own boot entry, or, after an in-place upgrade of a thick LVM volume,
the rollback point is merged back into the root at the next boot. /boot's
entries and grubenv are restored from apply's backup.

It checks everything that could make it fail before it changes anything: that
an upgrade succeeded and left a rollback point, that the rollback point is
still there, and that the reboot can happen (with --root other than the
running system only --no-reboot is possible). The upgraded root is kept, so
a rollback can itself be undone by upgrading again.

Examples:
   kos-upgrade rollback               switch and reboot now
   kos-upgrade rollback --no-reboot   switch; the old root boots at the next boot`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "no-reboot", Usage: "only switch; the old root boots at the next boot"},
		},
		Action: action(func(c *cli.Context, e *env) error {
			// Everything that can fail is checked before the switch.
			if !c.Bool("no-reboot") {
				if err := rebootPossible(e); err != nil {
					return err
				}
			}
			if ok, err := rollbackViaDaemon(c, e); ok {
				return err
			}
			res, err := e.engine.Rollback(c.Context)
			if err != nil {
				return err
			}
			if e.json {
				if err := e.printJSON(res); err != nil {
					return err
				}
			} else {
				if res.InPlace {
					fmt.Fprintf(e.out, "Rolled back: the root is merged back to its rollback point %s at the next boot; reboot to complete the rollback.\n", res.Snapshot)
				} else {
					fmt.Fprintf(e.out, "Rolled back: the next boot starts %s again.\n", res.Snapshot)
				}
			}
			if c.Bool("no-reboot") {
				return nil
			}
			return reboot(c.Context, e)
		}),
	}
}

func historyCmd() *cli.Command {
	return &cli.Command{
		Name:  "history",
		Usage: "list past upgrade and rollback runs with their results",
		Description: `history lists every apply, rollback and first-boot fallback recorded in
/var/lib/kos-upgrade (oldest first): when it started, from and to which
release, how it ended (and at which step it failed) and the snapshot. Apply
and rollback record each run in the state directories of both roots, so the
history is the same from the old and the new root. kos-upgrade log shows a
run's journal.

Examples:
   kos-upgrade history
   kos-upgrade history --json`,
		Action: action(func(c *cli.Context, e *env) error {
			h, err := e.engine.History(c.Context)
			if err != nil {
				return err
			}
			if e.json {
				if h == nil {
					h = []upgrader.Result{}
				}
				return e.printJSON(h)
			}
			if len(h) == 0 {
				fmt.Fprintln(e.out, "No upgrade has run on this system.")
				return nil
			}
			for _, r := range h {
				printResultLine(e.out, &r)
				for _, w := range r.Warnings {
					fmt.Fprintf(e.out, "  warning: %s\n", w)
				}
				printPath(e.out, &r)
			}
			return nil
		}),
	}
}

func cleanCmd() *cli.Command {
	return &cli.Command{
		Name:  "clean",
		Usage: "remove staged packages and old snapshots (keeps the current root and the last good one)",
		Description: `clean frees space: it removes the staged packages of a plan that is not
armed and the snapshots of earlier upgrades, keeping the running root and
the last rollback point. An undo journal (an in-place upgrade's rollback
point, /usr/share/doc/kos-upgrade/undo.md) is kept until the upgraded system's first boot was
judged healthy; --rollback-point removes it now, and with it the
possibility to roll back. It prints what it removed, or that there was
nothing to clean. Refused while an upgrade is armed or running.

Examples:
   kos-upgrade clean
   kos-upgrade clean --rollback-point
   kos-upgrade clean --json`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "rollback-point", Usage: "also remove the undo journal of the last upgrade (kos-upgrade rollback is then no longer possible)"},
		},
		Action: action(func(c *cli.Context, e *env) error {
			var removed []string
			if c.Bool("rollback-point") {
				r, err := e.engine.DropRollbackPoint(c.Context)
				if err != nil {
					return err
				}
				if r != "" {
					removed = append(removed, r)
				}
			}
			more, err := e.engine.Clean(c.Context)
			removed = append(removed, more...)
			if err != nil {
				return err
			}
			if e.json {
				if removed == nil {
					removed = []string{}
				}
				return e.printJSON(map[string]any{"removed": removed})
			}
			if len(removed) == 0 {
				fmt.Fprintln(e.out, "Nothing to clean.")
			}
			for _, r := range removed {
				fmt.Fprintln(e.out, "removed "+r)
			}
			return nil
		}),
	}
}
