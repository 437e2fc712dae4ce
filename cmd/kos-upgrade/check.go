package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/pkg/preflight"
	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

func checkCmd() *cli.Command {
	return &cli.Command{
		Name:  "check",
		Usage: "assess whether the system can be upgraded (changes nothing); exit 1 when something inhibits the upgrade",
		Description: `check collects facts about the system (release, free space, /boot, the boot
loader, the snapshot backend, installed packages and their signatures, loaded
kernel modules, SELinux, FIPS, kos-upgrade's own state) and, with --to, asks
dnf to resolve the upgrade without downloading anything. Then each check turns
the facts into findings with a stable key, a severity (info, low, medium,
high) and remediations; a finding in the group "inhibitor" blocks the upgrade,
and prepare refuses to run while one is left. The report is printed most
risky first (or as JSON with --json, see /usr/share/doc/kos-upgrade/report.md) and kept in
/var/lib/kos-upgrade/report.json.

Without --to only what needs no target is checked (no dependency, package,
key, module or staging-space checks); the report says so.

Some findings are questions a person may answer (for example keeping
third-party packages): answer them with --answer KEY=VALUE or with a
"KEY = VALUE" line in /etc/kos-upgrade/answers.conf; prepare reads both.

Examples:
   kos-upgrade check --to 5.9
   kos-upgrade check --to 5.9 --json
   kos-upgrade check --iso /srv/KOS-5.9-x86_64-dvd.iso
   kos-upgrade check --to 5.9 --answer packages.third-party=keep`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "to", Usage: "target release `VERSION`, e.g. 5.9 (without it, only target-independent checks run)"},
			&cli.StringSliceFlag{Name: "repo", Usage: "use repository `ID=URL` (or ID=/directory) instead of the system's configuration (repeatable)"},
			&cli.StringSliceFlag{Name: "iso", Usage: "use the repositories of the ISO 9660 image `FILE`, read in place (repeatable; as prepare --iso)"},
			&cli.StringFlag{Name: "snapshot", Value: "auto", Usage: "the snapshot backend prepare would use: auto, btrfs, lvm, undo or none"},
			&cli.BoolFlag{Name: "no-gpg-check", Usage: "assess as prepare --no-gpg-check would run"},
			&cli.StringSliceFlag{Name: "answer", Usage: "answer the finding `KEY=VALUE` (repeatable)"},
			&cli.BoolFlag{Name: "allow-downgrade", Usage: "assess a target release older than the running one as allowed (the answer allow-downgrade=yes)"},
		},
		Action: action(func(c *cli.Context, e *env) error {
			jsonOut := e.json
			repos, err := parseRepos(c.StringSlice("repo"))
			if err != nil {
				return err
			}
			if to := c.String("to"); to != "" && strings.ContainsAny(to, "/ \t") {
				return usageError{fmt.Errorf("cannot use --to %q: not a release version (for example --to 5.9)", to)}
			}
			if _, err := snapshot.ParseBackend(c.String("snapshot")); err != nil {
				return usageError{err}
			}
			answers, err := preflight.LoadAnswers(e.engine.Root, answerFlags(c))
			if err != nil {
				return usageError{err}
			}
			images, err := upgrader.OpenImages(absPaths(c.StringSlice("iso")), c.String("to"))
			if err != nil {
				return err
			}
			defer images.Close()
			images.VerifyMetadata(e.engine.Root.Dir)
			to := c.String("to")
			if to == "" {
				to = images.Release()
			}
			opts, err := checkOptions(c.Context, e.engine, to, append(repos, images.Repos()...), c.String("snapshot"), c.Bool("no-gpg-check"))
			if err != nil {
				return err
			}
			opts.Images = images.Refs()
			sink := progress.NewWriter(os.Stderr) // stdout is for the report
			opts.Sink = sink
			r, _, err := preflight.Run(c.Context, opts, answers)
			sink.Close()
			if err != nil {
				return err
			}
			if err := r.Save(e.engine.Root.StateDir()); err != nil {
				fmt.Fprintf(os.Stderr, "kos-upgrade: warning: %v\n", err)
			}
			if jsonOut {
				if err := e.printJSON(r); err != nil {
					return err
				}
			} else if err := r.WriteText(e.out); err != nil {
				return err
			}
			return r.Err()
		}),
	}
}

// checkOptions gathers what the engine knows for an assessment: its state,
// the owner of /system-update, and whether the snapshot backend fits.
func checkOptions(ctx context.Context, eng *upgrader.Engine, to string, repos []pkgmgr.Repo, snapshot string, noGPG bool) (preflight.Options, error) {
	st, err := eng.Status(ctx)
	if err != nil {
		return preflight.Options{}, err
	}
	opts := preflight.Options{
		Root: eng.Root, To: to, Repos: repos, SkipSignatures: noGPG, Log: eng.Log,
		State: preflight.StateFacts{
			Status: string(st.State.Status), PlanID: st.State.PlanID, Target: st.State.Target,
			Snapshot: st.State.Snapshot, Previous: st.State.Previous,
		},
		SystemUpdate: st.ForeignUpdate,
		Snapshot:     preflight.SnapshotFacts{Requested: snapshot},
	}
	if st.Armed {
		opts.SystemUpdate = "kos-upgrade"
	}
	if to != "" {
		// --to kos-VERSION on another distribution assesses a migration.
		if opts.To, opts.Repos, opts.Migration, err = eng.AssessTarget(to, repos, "", nil); err != nil {
			return preflight.Options{}, usageError{fmt.Errorf("cannot use --to: %w", err)}
		}
	}
	s, err := eng.Snapshotters(ctx, snapshot, eng.Root)
	if err != nil {
		opts.Snapshot.Error = err.Error()
	} else {
		opts.Snapshot.Backend = s.Backend()
		s.Close()
	}
	return opts, nil
}

// absPaths makes the --iso paths absolute.
func absPaths(paths []string) []string {
	var out []string
	for _, p := range paths {
		if abs, err := filepath.Abs(p); err == nil {
			p = abs
		}
		out = append(out, p)
	}
	return out
}

func parseRepos(flags []string) ([]pkgmgr.Repo, error) {
	var repos []pkgmgr.Repo
	for _, r := range flags {
		repo, err := pkgmgr.ParseRepo(r)
		if err != nil {
			return nil, usageError{fmt.Errorf("cannot use --repo: %w", err)}
		}
		repos = append(repos, repo)
	}
	return repos, nil
}

// printPlanReport adds what prepare's assessment said to a plan's
// description: third-party packages kept, answers, findings to read.
func printPlanReport(w io.Writer, p *upgrader.Plan) {
	r := p.Report
	if r == nil {
		return
	}
	for _, f := range r.Findings {
		switch {
		case f.Key == preflight.KeyThirdParty || f.Key == preflight.KeyOrphaned:
			fmt.Fprintf(w, "  kept, from no repository of %s (%s):\n", r.Target, f.Key)
			for _, d := range f.Details {
				fmt.Fprintf(w, "    %s\n", d)
			}
		case f.Severity == preflight.High || f.Severity == preflight.Medium:
			if f.Key != preflight.KeyRemoved {
				fmt.Fprintf(w, "  note (%s): %s\n", f.Key, f.Title)
			}
		}
		if f.Question != nil && f.Question.Answer != "" {
			fmt.Fprintf(w, "  answered %s=%s (%s)\n", f.Key, f.Question.Answer, f.Question.Source)
		}
	}
}

// runCheck runs the assessment as the daemon's Check method does: the
// system's own repositories and answers.conf, the automatic snapshot
// backend. The report is saved like the CLI's and returned as JSON.
func runCheck(ctx context.Context, eng *upgrader.Engine, to string, answerFlags []string) (inhibited bool, report []byte, err error) {
	if to != "" && !upgrader.ValidVersion(to) {
		return false, nil, fmt.Errorf("cannot check: %q is not a release version (for example 5.9)", to)
	}
	answers, err := preflight.LoadAnswers(eng.Root, answerFlags)
	if err != nil {
		return false, nil, err
	}
	opts, err := checkOptions(ctx, eng, to, nil, snapshot.BackendAuto, false)
	if err != nil {
		return false, nil, err
	}
	opts.Sink = eng.Sink
	r, _, err := preflight.Run(ctx, opts, answers)
	if err != nil {
		return false, nil, err
	}
	if err := r.Save(eng.Root.StateDir()); err != nil {
		eng.Log.Warn("cannot save the report", "error", err)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return false, nil, fmt.Errorf("cannot encode the report: %w", err)
	}
	return r.Err() != nil, b, nil
}
