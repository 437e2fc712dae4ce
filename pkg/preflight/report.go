// Package preflight assesses whether a system can be upgraded: it collects
// facts about the system first (Collect), then pure checks turn the facts
// into findings (Evaluate), each with a stable key, a severity, groups (one
// of them "inhibitor" when it blocks the upgrade), a summary and
// remediations. The report format is documented in docs/report.md and
// docs/report.schema.json.
package preflight

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/atomicfile"
	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/pkg/safefile"
)

// ReportVersion is the report format this build writes.
const ReportVersion = 1

// ReportFile is the name of the last report in the state directory.
const ReportFile = "report.json"

// Severity of a finding.
type Severity string

// Severities, from the least to the most serious.
const (
	Info   Severity = "info"
	Low    Severity = "low"
	Medium Severity = "medium"
	High   Severity = "high"
)

func (s Severity) rank() int {
	switch s {
	case High:
		return 3
	case Medium:
		return 2
	case Low:
		return 1
	}
	return 0
}

// GroupInhibitor marks a finding that blocks the upgrade.
const GroupInhibitor = "inhibitor"

// Remediation types.
const (
	RemediationHint    = "hint"    // words for a person
	RemediationCommand = "command" // an exact command line to run
)

// Remediation says how to deal with a finding.
type Remediation struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

func hint(format string, a ...any) Remediation {
	return Remediation{Type: RemediationHint, Text: fmt.Sprintf(format, a...)}
}

func command(format string, a ...any) Remediation {
	return Remediation{Type: RemediationCommand, Text: fmt.Sprintf(format, a...)}
}

// Question is how a person may answer a finding (see Answers).
type Question struct {
	// Choices are the accepted values of the answer.
	Choices []string `json:"choices"`
	// Answer is the value given, "" when unanswered.
	Answer string `json:"answer,omitempty"`
	// Source says where the answer came from: "command line" or the
	// answers file.
	Source string `json:"source,omitempty"`
}

// Finding is one entry of the report.
type Finding struct {
	// Key is stable across releases: scripts and answers refer to it.
	Key      string   `json:"key"`
	Severity Severity `json:"severity"`
	// Groups classify the finding ("space", "packages", "boot", ...);
	// "inhibitor" means it blocks the upgrade.
	Groups  []string `json:"groups"`
	Title   string   `json:"title"`
	Summary string   `json:"summary"`
	// Details are the items the finding is about, one per line (package
	// names with reasons, dnf problems, files).
	Details      []string      `json:"details,omitempty"`
	Remediations []Remediation `json:"remediations,omitempty"`
	// Question is set when a person may answer the finding.
	Question *Question `json:"question,omitempty"`
}

// Inhibitor reports whether the finding blocks the upgrade.
func (f *Finding) Inhibitor() bool {
	for _, g := range f.Groups {
		if g == GroupInhibitor {
			return true
		}
	}
	return false
}

// Report is the outcome of an assessment.
type Report struct {
	Version     int       `json:"version"`
	GeneratedAt time.Time `json:"generated_at"`
	Root        string    `json:"root"`
	// Source is the running release ("kos 5.8"), Target the version
	// assessed ("" when check ran without --to).
	Source string `json:"source"`
	Target string `json:"target,omitempty"`
	// Inhibited is true when at least one finding is an inhibitor.
	Inhibited bool `json:"inhibited"`
	// Counts has the number of inhibitors and of findings per severity.
	Counts   Counts    `json:"counts"`
	Findings []Finding `json:"findings"`
	// Transaction is dnf's resolution of the upgrade, one item per
	// package (action, NEVRA, what it replaces, why it is removed), as
	// the plan's transaction but without staged files: the per-package
	// list of transaction.summary. Empty without a target or when the
	// upgrade cannot be resolved.
	Transaction []pkgmgr.Item `json:"transaction,omitempty"`
}

// Counts summarizes a report.
type Counts struct {
	Inhibitors int `json:"inhibitors"`
	High       int `json:"high"`
	Medium     int `json:"medium"`
	Low        int `json:"low"`
	Info       int `json:"info"`
}

// ErrInhibited is wrapped by the error of an assessment that found an
// inhibitor.
var ErrInhibited = errors.New("the upgrade is inhibited")

// Err returns nil when nothing inhibits the upgrade, else an error wrapping
// ErrInhibited that names each inhibitor and its first remediation.
func (r *Report) Err() error {
	if !r.Inhibited {
		return nil
	}
	var b strings.Builder
	for _, f := range r.Findings {
		if !f.Inhibitor() {
			continue
		}
		fmt.Fprintf(&b, "\n  %s: %s", f.Key, f.Title)
		if len(f.Remediations) > 0 {
			fmt.Fprintf(&b, " (%s)", f.Remediations[0].Text)
		}
		if f.Key == KeyAssessFailed || f.Key == KeyDeps {
			// What dnf said (a download error, the dependency
			// problems) is the lead: shown without --verbose.
			fmt.Fprintf(&b, "\n    %s", f.Summary)
			for i, d := range f.Details {
				if i == maxErrDetails {
					fmt.Fprintf(&b, "\n    ... %d more (kos-upgrade check shows them)", len(f.Details)-i)
					break
				}
				fmt.Fprintf(&b, "\n    %s", d)
			}
		}
	}
	return fmt.Errorf("%w by %d finding(s):%s", ErrInhibited, r.Counts.Inhibitors, b.String())
}

// maxErrDetails bounds the detail lines of one finding in Err's message.
const maxErrDetails = 10

// Inhibitors returns the findings that block the upgrade.
func (r *Report) Inhibitors() []Finding {
	var out []Finding
	for _, f := range r.Findings {
		if f.Inhibitor() {
			out = append(out, f)
		}
	}
	return out
}

// Finding returns the finding with key, or nil.
func (r *Report) Finding(key string) *Finding {
	for i := range r.Findings {
		if r.Findings[i].Key == key {
			return &r.Findings[i]
		}
	}
	return nil
}

// Add puts f into the report (replacing a finding with its key) and sorts
// and counts again, as the checks' findings are.
func (r *Report) Add(f Finding) {
	if old := r.Finding(f.Key); old != nil {
		*old = f
	} else {
		r.Findings = append(r.Findings, f)
	}
	r.finish()
}

// finish sorts the findings by risk (inhibitors first, then by severity,
// then by key) and fills Inhibited and Counts.
func (r *Report) finish() {
	sort.SliceStable(r.Findings, func(i, j int) bool {
		a, b := &r.Findings[i], &r.Findings[j]
		if a.Inhibitor() != b.Inhibitor() {
			return a.Inhibitor()
		}
		if a.Severity.rank() != b.Severity.rank() {
			return a.Severity.rank() > b.Severity.rank()
		}
		return a.Key < b.Key
	})
	r.Counts = Counts{}
	for i := range r.Findings {
		f := &r.Findings[i]
		if f.Groups == nil {
			f.Groups = []string{}
		}
		if f.Inhibitor() {
			r.Counts.Inhibitors++
		}
		switch f.Severity {
		case High:
			r.Counts.High++
		case Medium:
			r.Counts.Medium++
		case Low:
			r.Counts.Low++
		default:
			r.Counts.Info++
		}
	}
	if r.Findings == nil {
		r.Findings = []Finding{}
	}
	r.Inhibited = r.Counts.Inhibitors > 0
}

// maxReportSize caps the report read back.
const maxReportSize = 64 << 20

// Save writes the report atomically as report.json into dir.
func (r *Report) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("cannot save the report: %w", err)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("cannot encode the report: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, ReportFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("cannot save the report: %w", err)
	}
	return nil
}

// Load reads the report saved in dir.
func Load(dir string) (*Report, error) {
	b, err := safefile.Read(filepath.Join(dir, ReportFile), maxReportSize)
	if err != nil {
		return nil, fmt.Errorf("cannot read the last report: %w", err)
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("cannot read the last report %s: %w", filepath.Join(dir, ReportFile), err)
	}
	return &r, nil
}

// WriteText writes the report for people, most risky first.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	if r.Target != "" {
		fmt.Fprintf(&b, "Upgrade assessment of %s: %s → %s\n", r.Root, r.Source, r.Target)
	} else {
		fmt.Fprintf(&b, "Upgrade assessment of %s: %s, no target\n", r.Root, r.Source)
		fmt.Fprintln(&b, "(checks that need a target were skipped: use --to VERSION)")
	}
	switch {
	case r.Inhibited:
		fmt.Fprintf(&b, "Result: INHIBITED: %d finding(s) block the upgrade\n", r.Counts.Inhibitors)
	case len(r.Findings) == 0:
		fmt.Fprintln(&b, "Result: OK: nothing to report")
	default:
		fmt.Fprintln(&b, "Result: OK: nothing blocks the upgrade")
	}
	fmt.Fprintf(&b, "Findings: %d high, %d medium, %d low, %d info\n", r.Counts.High, r.Counts.Medium, r.Counts.Low, r.Counts.Info)
	for _, f := range r.Findings {
		b.WriteString("\n")
		tag := strings.ToUpper(string(f.Severity))
		if f.Inhibitor() {
			tag = "INHIBITOR, " + tag
		}
		fmt.Fprintf(&b, "[%s] %s\n", tag, f.Title)
		fmt.Fprintf(&b, "    key: %s", f.Key)
		var groups []string
		for _, g := range f.Groups {
			if g != GroupInhibitor {
				groups = append(groups, g)
			}
		}
		if len(groups) > 0 {
			fmt.Fprintf(&b, "   groups: %s", strings.Join(groups, ", "))
		}
		b.WriteString("\n")
		writeWrapped(&b, f.Summary, "    ", 78)
		for _, d := range f.Details {
			fmt.Fprintf(&b, "      - %s\n", d)
		}
		if q := f.Question; q != nil {
			if q.Answer != "" {
				fmt.Fprintf(&b, "    Answered: %s=%s (%s)\n", f.Key, q.Answer, q.Source)
			} else {
				fmt.Fprintf(&b, "    Answer with: %s=%s\n", f.Key, strings.Join(q.Choices, "|"))
			}
		}
		for _, rem := range f.Remediations {
			switch rem.Type {
			case RemediationCommand:
				fmt.Fprintf(&b, "    Run: %s\n", rem.Text)
			default:
				writeWrapped(&b, "Hint: "+rem.Text, "    ", 78)
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

var sizeRE = regexp.MustCompile(`(\d) ([KMGTPE]?i?B)\b`)

// writeWrapped writes text as lines of at most width columns (words longer
// than that stay whole), each prefixed with indent.
func writeWrapped(b *strings.Builder, text, indent string, width int) {
	// Keep sizes ("64.0 MiB") on one line.
	text = sizeRE.ReplaceAllString(text, "$1\x00$2")
	for _, para := range strings.Split(text, "\n") {
		line := indent
		empty := true
		for _, word := range strings.Fields(para) {
			if !empty && len(line)+1+len(word) > width {
				b.WriteString(line + "\n")
				line, empty = indent, true
			}
			if !empty {
				line += " "
			}
			line += strings.ReplaceAll(word, "\x00", " ")
			empty = false
		}
		if !empty {
			b.WriteString(line + "\n")
		}
	}
}
