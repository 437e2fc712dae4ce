package preflight

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// AnswersFileRel is the answers file inside the system root.
const AnswersFileRel = sysroot.ConfigDirRel + "/answers.conf"

// SourceCommandLine is the Source of an answer given with --answer.
const SourceCommandLine = "command line"

// Answer is a person's answer to a finding's question.
type Answer struct {
	Value  string
	Source string // SourceCommandLine or "FILE:LINE"
}

// Answers maps finding keys to answers.
type Answers map[string]Answer

var keyRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)

// ParseAnswers parses an answers file: one "key = value" per line; blank
// lines and lines starting with "#" are ignored. name is used in errors
// and as the answers' source.
func ParseAnswers(b []byte, name string) (Answers, error) {
	a := Answers{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || !keyRE.MatchString(k) || v == "" {
			return nil, fmt.Errorf("%s:%d: want \"key = value\", for example \"packages.third-party = keep\", got %q", name, n, line)
		}
		a[k] = Answer{Value: v, Source: fmt.Sprintf("%s:%d", name, n)}
	}
	return a, sc.Err()
}

// ParseAnswerFlags parses --answer KEY=VALUE arguments.
func ParseAnswerFlags(flags []string) (Answers, error) {
	a := Answers{}
	for _, f := range flags {
		k, v, ok := strings.Cut(f, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || !keyRE.MatchString(k) || v == "" {
			return nil, fmt.Errorf("cannot use --answer %q: want KEY=VALUE, for example --answer packages.third-party=keep", f)
		}
		a[k] = Answer{Value: v, Source: SourceCommandLine}
	}
	return a, nil
}

// LoadAnswers reads root's answers file (a missing file is no answers) and
// lays the command-line answers over it.
func LoadAnswers(root sysroot.Root, flags []string) (Answers, error) {
	a := Answers{}
	path := root.Path(AnswersFileRel)
	b, err := root.ReadFile(path, maxFactFile)
	switch {
	case err == nil:
		a, err = ParseAnswers(b, filepath.Clean(AnswersFileRel))
		if err != nil {
			return nil, fmt.Errorf("cannot read answers: %w", err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("cannot read answers: %w", err)
	}
	fl, err := ParseAnswerFlags(flags)
	if err != nil {
		return nil, err
	}
	for k, v := range fl {
		a[k] = v
	}
	return a, nil
}

// Values returns the answers as key → value (for the plan).
func (a Answers) Values() map[string]string {
	if len(a) == 0 {
		return nil
	}
	m := map[string]string{}
	for k, v := range a {
		m[k] = v.Value
	}
	return m
}

// questions are the findings a person may answer, with their choices.
var questions = map[string][]string{
	KeyThirdParty:       {"keep"},
	KeyModulesUnshipped: {"accept"},
	KeyDowngrade:        {"yes"},
}

// AnswerAllowDowngrade answers KeyDowngrade: the CLI's --allow-downgrade
// and the D-Bus Prepare option allow_downgrade set it to "yes".
const AnswerAllowDowngrade = "allow-downgrade"

// answerKeys are the answer keys of questions not answered by their
// finding's own key.
var answerKeys = map[string]string{KeyDowngrade: AnswerAllowDowngrade}

// answerKey is the key that answers the finding key.
func answerKey(finding string) string {
	if k, ok := answerKeys[finding]; ok {
		return k
	}
	return finding
}

// Questions returns the keys that can be answered, sorted, with their
// choices (for documentation and --help).
func Questions() map[string][]string {
	out := map[string][]string{}
	for k, v := range questions {
		out[answerKey(k)] = append([]string(nil), v...)
	}
	return out
}

// ask attaches the question for f.Key to f and applies the answer: an
// accepted answer removes the inhibitor; a missing or invalid one leaves f
// an inhibitor whose first remediation says how to answer.
func ask(f *Finding, a Answers) {
	choices := questions[f.Key]
	q := &Question{Choices: choices}
	f.Question = q
	key := answerKey(f.Key)
	ans, ok := a[key]
	valid := false
	for _, c := range choices {
		if ok && ans.Value == c {
			valid = true
		}
	}
	if valid {
		q.Answer, q.Source = ans.Value, ans.Source
		return
	}
	f.Groups = append(f.Groups, GroupInhibitor)
	rem := []Remediation{
		command("kos-upgrade check --answer %s=%s", key, choices[0]),
		hint("or add the line \"%s = %s\" to %s", key, choices[0], AnswersFileRel),
	}
	if ok {
		f.Summary += fmt.Sprintf(" The answer %q (%s) is not one of: %s.", ans.Value, ans.Source, strings.Join(choices, ", "))
	}
	f.Remediations = append(rem, f.Remediations...)
}

// unusedAnswers returns a finding naming answers to unknown keys (typos).
func unusedAnswers(a Answers) *Finding {
	var unknown []string
	known := map[string]bool{}
	for k := range questions {
		known[answerKey(k)] = true
	}
	for k, v := range a {
		if !known[k] {
			unknown = append(unknown, fmt.Sprintf("%s=%s (%s)", k, v.Value, v.Source))
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	sort.Strings(unknown)
	var keys []string
	for k := range known {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return &Finding{
		Key: "answers.unknown", Severity: Low, Groups: []string{"answers"},
		Title:        "Answers to questions that do not exist",
		Summary:      "These answers name no question kos-upgrade asks, so they change nothing; a typo?",
		Details:      unknown,
		Remediations: []Remediation{hint("the keys that can be answered are: %s", strings.Join(keys, ", "))},
	}
}
