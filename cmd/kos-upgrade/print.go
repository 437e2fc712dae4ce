package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/health"
	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/pkg/preflight"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

func printPlan(w io.Writer, p *upgrader.Plan) {
	fmt.Fprintf(w, "Plan %s: %s → %s\n", p.ID, p.Source, p.Target.VersionID)
	if m := p.Migration; m != nil {
		fmt.Fprintf(w, "  migration from %s to %s (map %s), %d key(s) imported into the new root\n", m.From, p.Target, m.Map.Origin, len(m.Keys))
		for _, s := range m.Applied {
			line := s.Kind + ": " + strings.Join(s.From, " + ")
			if len(s.To) > 0 {
				line += " → " + strings.Join(s.To, " + ")
			}
			fmt.Fprintf(w, "    %s\n", line)
		}
	}
	c := p.Counts()
	fmt.Fprintf(w, "  %d to upgrade, %d to install, %d to downgrade, %d obsoleted, %d to remove\n",
		c[pkgmgr.ActionUpgrade], c[pkgmgr.ActionInstall], c[pkgmgr.ActionDowngrade], c[pkgmgr.ActionObsoleted], c[pkgmgr.ActionRemove])
	fmt.Fprintf(w, "  download %s, installed size %s\n", preflight.Size(p.DownloadSize), preflight.Size(p.InstallSize))
	fmt.Fprintf(w, "  snapshot: %s, signatures: %s\n", p.Snapshot, p.SignatureCheck)
	fmt.Fprintf(w, "  repositories: %s\n", planRepos(p))
	if p.SignatureCheck == "skipped" {
		fmt.Fprintln(w, "  WARNING: the packages' GPG signatures were NOT checked (prepared with --no-gpg-check)")
	}
	if p.Mode == upgrader.ModeInitramfs {
		fmt.Fprintf(w, "  mode: initramfs (applied from an upgrade initramfs booted once, before switch-root)\n")
	}
	for _, it := range p.Transaction {
		if it.Action == pkgmgr.ActionRemove || it.Action == pkgmgr.ActionObsoleted {
			fmt.Fprintf(w, "  %-9s %s: %s\n", it.Action, it.NEVRA, it.Reason)
		}
	}
	printPlanReport(w, p)
}

func printStatus(w io.Writer, r *upgrader.StatusReport) {
	st := r.State
	if r.Current != nil {
		fmt.Fprintf(w, "System:   %s\n", r.Current)
	}
	line := string(st.Status)
	if st.Step != "" {
		line += " (step " + st.Step + ")"
	}
	if r.Running {
		line += ", running now"
	}
	fmt.Fprintf(w, "State:    %s\n", line)
	if r.Armed {
		fmt.Fprintln(w, "Armed:    yes, the upgrade runs at the next boot")
	}
	if r.ForeignUpdate != "" {
		fmt.Fprintf(w, "Note:     another tool's offline update is pending (/system-update → %s)\n", r.ForeignUpdate)
	}
	if r.Plan != nil {
		fmt.Fprintln(w)
		printPlan(w, r.Plan)
	} else if r.PlanError != "" {
		fmt.Fprintf(w, "Plan:     unreadable: %s\n", r.PlanError)
	}
	if st.LastResult != nil {
		fmt.Fprint(w, "\nLast run: ")
		printResultLine(w, st.LastResult)
		if st.LastResult.Error != "" {
			fmt.Fprintf(w, "  error: %s\n", st.LastResult.Error)
		}
		for _, warn := range st.LastResult.Warnings {
			fmt.Fprintf(w, "  warning: %s\n", warn)
		}
		printPath(w, st.LastResult)
	}
	if st.Stage != nil && st.Stage.Next != "" && (st.Status == upgrader.StatusPrepared || st.Status == upgrader.StatusArmed) {
		fmt.Fprintf(w, "Staged:   %s (%s)\n", st.Stage.Next, st.Stage.Step)
	}
	if r.Health != nil {
		printVerdict(w, r.Health)
	} else if r.HealthError != "" {
		fmt.Fprintf(w, "Health:   unreadable: %s\n", r.HealthError)
	}
	switch {
	case st.RebootRequired:
		fmt.Fprintf(w, "Reboot:   required: the root is rolled back to %s at the next boot\n", st.Previous)
	case st.Status == upgrader.StatusSucceeded && st.Previous != "" && st.InPlace:
		fmt.Fprintf(w, "Rollback: available (kos-upgrade rollback merges the rollback point %s back into the root at the next boot)\n", st.Previous)
	case st.Status == upgrader.StatusSucceeded && st.Previous != "" && st.Backend != snapshot.BackendNone:
		fmt.Fprintf(w, "Rollback: available (kos-upgrade rollback boots %s again)\n", st.Previous)
	}
}

func printResultLine(w io.Writer, r *upgrader.Result) {
	when := r.StartedAt.Local().Format(time.DateTime)
	what := r.Kind
	if r.From != "" || r.To != "" {
		what += " " + r.From + " → " + r.To
	}
	outcome := string(r.Status)
	if r.Step != "" && !r.Success {
		outcome += " at " + r.Step
	}
	fmt.Fprintf(w, "%s  %-28s %s", when, what, outcome)
	if r.Snapshot != "" {
		fmt.Fprintf(w, "  [%s]", r.Snapshot)
	}
	fmt.Fprintln(w)
}

// planRepos says where a plan's packages come from, credentials redacted.
func planRepos(p *upgrader.Plan) string {
	var l []string
	for _, im := range p.Images {
		s := "image " + im.Path
		if im.Label != "" {
			s += " (label " + im.Label + ")"
		}
		l = append(l, s)
	}
	for _, r := range p.Repos {
		l = append(l, r.String())
	}
	if len(l) == 0 {
		return "the system's own (/etc/yum.repos.d, release " + p.Target.VersionID + ")"
	}
	return strings.Join(l, ", ")
}

// printArmedSources says, when an upgrade is armed, where its packages come
// from and whether their signatures were checked.
func printArmedSources(w io.Writer, p *upgrader.Plan) {
	fmt.Fprintf(w, "  packages from %s\n", planRepos(p))
	if p.SignatureCheck == "skipped" {
		fmt.Fprintln(w, "  WARNING: their GPG signatures were NOT checked (prepared with --no-gpg-check)")
	} else {
		fmt.Fprintln(w, "  every package's GPG signature and sha256 was verified")
	}
}

// printVerdict shows a first-boot verdict (health.json).
func printVerdict(w io.Writer, v *health.Verdict) {
	color := "green"
	if !v.Green {
		color = "red"
	}
	fmt.Fprintf(w, "Health:   %s, %s (first boot of the upgraded system, %s)\n", color, v.Decision, v.At.Local().Format(time.DateTime))
	if v.ConfirmBy != nil && v.Decision == "confirming" {
		fmt.Fprintf(w, "  on trial until the application probes (confirm.d) pass or %s; judged again every minute\n", v.ConfirmBy.Local().Format(time.DateTime))
	}
	if v.Confirmed != "" {
		fmt.Fprintf(w, "  confirmation window: %s\n", v.Confirmed)
	}
	for _, r := range v.Reasons {
		fmt.Fprintf(w, "  regression: %s\n", r)
	}
	for _, x := range v.Warnings {
		fmt.Fprintf(w, "  warning: %s\n", x)
	}
	for _, u := range v.PreExisting {
		fmt.Fprintf(w, "  pre-existing: %s had failed before the upgrade already (not counted)\n", u)
	}
	for _, c := range v.Expected {
		fmt.Fprintf(w, "  expected: %s: %s\n", c.Message, c.Rule)
	}
	for _, c := range v.Checks {
		fmt.Fprintf(w, "  check %s: %s", c.Name, c.Result)
		if c.Detail != "" {
			fmt.Fprintf(w, " (%s)", c.Detail)
		}
		fmt.Fprintln(w)
	}
	for _, c := range v.Hooks {
		fmt.Fprintf(w, "  hook %s: %s", c.Name, c.Result)
		if c.Detail != "" {
			fmt.Fprintf(w, " (%s)", c.Detail)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "  baseline: %s\n", v.Baseline)
}

// printPath says how a btrfs run upgraded (docs/stage.md): staged or the
// offline transaction and why, and the offline window.
func printPath(w io.Writer, r *upgrader.Result) {
	window := "unfinished"
	if !r.FinishedAt.IsZero() {
		window = r.FinishedAt.Sub(r.StartedAt).Round(time.Millisecond).String()
	}
	switch r.Path {
	case upgrader.PathStaged:
		where := "offline"
		if r.AtShutdown {
			where = "finalized late in the shutdown (one boot), offline"
		}
		fmt.Fprintf(w, "  path: staged before the reboot; %d paths carried over (%d bytes cloned); %s %s\n",
			r.Carried, r.BytesCloned, where, window)
	case upgrader.PathClassic:
		fmt.Fprintf(w, "  path: offline transaction (%s); offline %s\n", r.PathReason, window)
	}
}
