// Package migrate holds the data of a migration from another distribution
// (CentOS) to KOS: which release and repository packages are swapped, which
// repositories and keys the target uses, and the package map of packages
// that change names between the distributions (renamed, split, merged,
// removed). The map is data, not code: a JSON file documented in
// docs/migration.md, validated by Parse, and turned into dnf goal
// operations (pkgmgr.Migration) that the package helper gives dnf's own
// solver.
//
// Maps are looked up in Dir (/usr/share/kos-upgrade/migration, where the
// package installs them and an administrator may update them), else in the
// copies built into the binary, so that a kos-upgrade binary copied onto a
// CentOS system needs nothing installed.
package migrate

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
)

// FormatVersion is the map format this build reads.
const FormatVersion = 1

// DefaultDir is where packaged maps live; DirEnv overrides it (tests).
const (
	DefaultDir = "/usr/share/kos-upgrade/migration"
	DirEnv     = "KOS_UPGRADE_MIGRATION_DIR"
)

// Entry kinds.
const (
	KindRelease = "release" // the release/repository/key packages (the "release" section)
	KindRename  = "rename"  // one package → one package of another name
	KindSplit   = "split"   // one package → two or more
	KindMerge   = "merge"   // two or more packages → one
	KindRemove  = "remove"  // removed, nothing replaces it (reason required)
)

// ErrNoMap is wrapped when no map covers a source distribution.
var ErrNoMap = errors.New("no migration map")

//go:embed maps/*.json
var builtin embed.FS

// Map is a migration map. See docs/migration.md for the format.
type Map struct {
	Version     int    `json:"version"`
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	Source      Source `json:"source"`
	Target      Target `json:"target"`
	// Release swaps the source's release, repository and key packages for
	// the target's; it must apply (a system without any of From is not a
	// system this map covers).
	Release Entry `json:"release"`
	// Repos are the target's repositories ($releasever and $basearch are
	// substituted by dnf). --repo replaces them.
	Repos []Repo `json:"repos"`
	// GPGKeys are the target's public key files (absolute paths or
	// file:// URLs): prepare verifies the packages with them and apply
	// imports them into the new root's rpm database. A missing file is
	// skipped; --gpgkey adds more.
	GPGKeys []string `json:"gpg_keys,omitempty"`
	// Packages map packages that change names between the distributions.
	Packages []Entry `json:"packages"`

	// Origin is the file the map was read from, or "built-in:NAME";
	// SHA256 the digest of its bytes. Set by the loaders.
	Origin string `json:"-"`
	SHA256 string `json:"-"`
}

// Source says which systems a map applies to.
type Source struct {
	// IDs are os-release ID values ("centos").
	IDs  []string `json:"ids"`
	Name string   `json:"name,omitempty"`
	// Versions are the supported major versions (VERSION_ID up to the
	// first dot): "8".
	Versions []string `json:"versions"`
}

// Target is the distribution migrated to.
type Target struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// EL is the enterprise Linux major version the target is built on
	// (8 for KOS 5.x): a source of another major version is a major-version
	// jump, which needs the target's own rpm and dnf (docs/migration.md).
	EL int `json:"el"`
}

// Entry is one mapping.
type Entry struct {
	Kind   string   `json:"kind,omitempty"` // empty only in the release section
	From   []string `json:"from"`
	To     []string `json:"to,omitempty"`
	Reason string   `json:"reason,omitempty"`
}

// Repo is a repository of the target.
type Repo struct {
	ID      string   `json:"id"`
	Name    string   `json:"name,omitempty"`
	BaseURL string   `json:"baseurl"`
	GPGKey  []string `json:"gpgkey,omitempty"`
}

// ValidationError lists every problem of a map.
type ValidationError struct {
	Name     string
	Problems []string
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("invalid migration map %s:\n  %s", e.Name, strings.Join(e.Problems, "\n  "))
}

// Parse decodes and validates a map; name is used in errors. Unknown
// fields are errors (a typo must not silently drop a mapping).
func Parse(b []byte, name string) (*Map, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, &ValidationError{Name: name, Problems: []string{"the file is empty"}}
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m Map
	if err := dec.Decode(&m); err != nil {
		return nil, &ValidationError{Name: name, Problems: []string{describeJSONError(b, err)}}
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, &ValidationError{Name: name, Problems: []string{"trailing data after the JSON object"}}
	}
	if err := m.Validate(name); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(b)
	m.SHA256 = hex.EncodeToString(sum[:])
	m.Origin = name
	return &m, nil
}

func describeJSONError(b []byte, err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		line := bytes.Count(b[:min(int(se.Offset), len(b))], []byte("\n")) + 1
		return fmt.Sprintf("malformed JSON on line %d: %v", line, err)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("field %q has the wrong type (%s, want %s)", te.Field, te.Value, te.Type)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return "malformed JSON: the file ends in the middle of the object (truncated?)"
	}
	return err.Error() // unknown field "x"
}

// nameRE is what a package name in a map may look like: no globs, no
// spaces, no version operators.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9_+][A-Za-z0-9._+-]*$`)

var idRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)

// Validate checks the map: known kinds, names that are package names, the
// right number of names per kind, no package mapped twice, no cycles or
// chains (a name both replaced and a replacement), removals with reasons.
func (m *Map) Validate(name string) error {
	var p []string
	bad := func(format string, a ...any) { p = append(p, fmt.Sprintf(format, a...)) }
	switch {
	case m.Version == 0:
		bad(`no "version" (this build reads version %d)`, FormatVersion)
	case m.Version > FormatVersion:
		bad("format version %d is newer than this kos-upgrade reads (%d); update kos-upgrade", m.Version, FormatVersion)
	case m.Version < 0:
		bad("format version %d is not valid", m.Version)
	}
	if len(m.Source.IDs) == 0 {
		bad(`source.ids is empty: name the os-release IDs the map applies to, e.g. ["centos"]`)
	}
	for _, id := range m.Source.IDs {
		if !idRE.MatchString(id) {
			bad("source.ids: %q is not an os-release ID", id)
		}
	}
	if len(m.Source.Versions) == 0 {
		bad(`source.versions is empty: name the supported major versions, e.g. ["8"]`)
	}
	for _, v := range m.Source.Versions {
		if _, err := strconv.Atoi(v); err != nil {
			bad("source.versions: %q is not a major version number", v)
		}
	}
	if !idRE.MatchString(m.Target.ID) {
		bad("target.id %q is not an os-release ID", m.Target.ID)
	}
	if m.Target.EL <= 0 {
		bad("target.el must be the enterprise Linux major version of the target (e.g. 8)")
	}

	// Every entry, the release section first.
	type named struct {
		where string
		e     Entry
	}
	entries := []named{{"release", m.Release}}
	if m.Release.Kind != "" && m.Release.Kind != KindRelease {
		bad("release: kind %q: the release section has no kind (or %q)", m.Release.Kind, KindRelease)
	}
	entries[0].e.Kind = KindRelease
	for i, e := range m.Packages {
		entries = append(entries, named{fmt.Sprintf("packages[%d]", i), e})
	}
	fromOf := map[string]string{} // name -> where it is replaced
	toOf := map[string]string{}   // name -> where it is a replacement
	for _, n := range entries {
		e, where := n.e, n.where
		if e.Kind != KindRelease {
			where += fmt.Sprintf(" (%s %s)", orEmpty(e.Kind), strings.Join(e.From, "+"))
		}
		if !checkNames(where, "from", e.From, bad) || !checkNames(where, "to", e.To, bad) {
			continue
		}
		switch e.Kind {
		case KindRelease:
			if len(e.From) == 0 || len(e.To) == 0 {
				bad("%s: needs the source's release packages in from and the target's in to", where)
			}
		case KindRename:
			if len(e.From) != 1 || len(e.To) != 1 {
				bad("%s: a rename maps one package to one (from has %d, to has %d)", where, len(e.From), len(e.To))
			}
		case KindSplit:
			if len(e.From) != 1 || len(e.To) < 2 {
				bad("%s: a split maps one package to two or more (from has %d, to has %d)", where, len(e.From), len(e.To))
			}
		case KindMerge:
			if len(e.From) < 2 || len(e.To) != 1 {
				bad("%s: a merge maps two or more packages to one (from has %d, to has %d)", where, len(e.From), len(e.To))
			}
		case KindRemove:
			if len(e.From) == 0 || len(e.To) != 0 {
				bad("%s: a removal names packages in from and nothing in to", where)
			}
			if strings.TrimSpace(e.Reason) == "" {
				bad("%s: a removal needs a reason (it is shown to the user)", where)
			}
		case "":
			bad("%s: no kind (want %s, %s, %s or %s)", where, KindRename, KindSplit, KindMerge, KindRemove)
			continue
		default:
			bad("%s: unknown kind %q (want %s, %s, %s or %s)", where, e.Kind, KindRename, KindSplit, KindMerge, KindRemove)
			continue
		}
		for _, f := range e.From {
			if prev, ok := fromOf[f]; ok {
				bad("%s: %s is mapped twice (also in %s)", where, f, prev)
				continue
			}
			fromOf[f] = where
		}
		for _, t := range e.To {
			if prev, ok := toOf[t]; ok {
				bad("%s: %s is the target of two entries (also %s); make them one merge", where, t, prev)
				continue
			}
			toOf[t] = where
		}
	}
	// A name both replaced and a replacement: a cycle (a → b → a) or a
	// chain (a → b → c) that the solver would resolve in one step only.
	edges := map[string][]string{}
	for _, n := range entries {
		for _, f := range n.e.From {
			edges[f] = append(edges[f], n.e.To...)
		}
	}
	var mid []string
	for t := range toOf {
		if _, ok := fromOf[t]; ok {
			mid = append(mid, t)
		}
	}
	sort.Strings(mid)
	for _, t := range mid {
		if cyc := cycle(edges, t); cyc != nil {
			bad("cycle: %s (%s and %s)", strings.Join(cyc, " → "), toOf[t], fromOf[t])
		} else {
			bad("chain: %s is a replacement (%s) and is itself replaced (%s); map the original package to the final name directly", t, toOf[t], fromOf[t])
		}
	}

	repoIDs := map[string]bool{}
	for i, r := range m.Repos {
		where := fmt.Sprintf("repos[%d]", i)
		switch {
		case r.ID == "" || strings.ContainsAny(r.ID, " /"):
			bad("%s: id %q is not a repository id", where, r.ID)
		case repoIDs[r.ID]:
			bad("%s: repository %s is listed twice", where, r.ID)
		}
		repoIDs[r.ID] = true
		if strings.TrimSpace(r.BaseURL) == "" {
			bad("%s: no baseurl", where)
		}
		for _, k := range r.GPGKey {
			if strings.TrimSpace(k) == "" {
				bad("%s: an empty gpgkey", where)
			}
		}
	}
	for i, k := range m.GPGKeys {
		if strings.TrimSpace(k) == "" {
			bad("gpg_keys[%d]: an empty key file name", i)
		}
	}
	if len(p) > 0 {
		return &ValidationError{Name: name, Problems: p}
	}
	return nil
}

func orEmpty(s string) string {
	if s == "" {
		return "(no kind)"
	}
	return s
}

func checkNames(where, field string, names []string, bad func(string, ...any)) bool {
	ok := true
	seen := map[string]bool{}
	for _, n := range names {
		switch {
		case strings.TrimSpace(n) == "":
			bad("%s: an empty package name in %s", where, field)
			ok = false
		case !nameRE.MatchString(n):
			bad("%s: %q in %s is not a package name (no globs, spaces or versions)", where, n, field)
			ok = false
		case seen[n]:
			bad("%s: %s appears twice in %s", where, n, field)
			ok = false
		}
		seen[n] = true
	}
	return ok
}

// cycle returns the path start → ... → start when there is one.
func cycle(edges map[string][]string, start string) []string {
	var path []string
	seen := map[string]bool{}
	var walk func(n string) bool
	walk = func(n string) bool {
		path = append(path, n)
		for _, next := range edges[n] {
			if next == start {
				path = append(path, next)
				return true
			}
			if !seen[next] {
				seen[next] = true
				if walk(next) {
					return true
				}
			}
		}
		path = path[:len(path)-1]
		return false
	}
	if walk(start) {
		return path
	}
	return nil
}

// Load reads and validates the map file at path.
func Load(path string) (*Map, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read migration map: %w", err)
	}
	return Parse(b, path)
}

// Dir returns the directory of packaged maps: $KOS_UPGRADE_MIGRATION_DIR,
// else DefaultDir.
func Dir() string {
	if d := os.Getenv(DirEnv); d != "" {
		return d
	}
	return DefaultDir
}

// FileName is the map file name for a migration from sourceID to targetID.
func FileName(sourceID, targetID string) string { return sourceID + "-to-" + targetID + ".json" }

// Find returns the map from sourceID to targetID: Dir()/<source>-to-<target>.json
// when it exists (an installed, possibly updated map), else the built-in
// copy. It wraps ErrNoMap when neither exists.
func Find(sourceID, targetID string) (*Map, error) {
	if !idRE.MatchString(sourceID) || !idRE.MatchString(targetID) {
		return nil, fmt.Errorf("%w from %q to %q", ErrNoMap, sourceID, targetID)
	}
	name := FileName(sourceID, targetID)
	p := filepath.Join(Dir(), name)
	if _, err := os.Stat(p); err == nil {
		return Load(p)
	}
	b, err := builtin.ReadFile("maps/" + name)
	if err != nil {
		return nil, fmt.Errorf("%w from %s to %s (no %s, and none built in; built-in maps: %s)", ErrNoMap, sourceID, targetID, p, strings.Join(Builtin(), ", "))
	}
	return Parse(b, "built-in:"+name)
}

// Builtin lists the names of the maps built into the binary.
func Builtin() []string {
	ents, _ := builtin.ReadDir("maps")
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// BuiltinFile returns the bytes of a built-in map (for packaging and tests).
func BuiltinFile(name string) ([]byte, error) { return builtin.ReadFile("maps/" + name) }

// Covers says whether the map covers a source release: its os-release ID is
// one of Source.IDs.
func (m *Map) Covers(id string) bool {
	for _, s := range m.Source.IDs {
		if s == id {
			return true
		}
	}
	return false
}

// Request turns the map into dnf goal operations: the release swap first,
// then every package entry, in file order.
func (m *Map) Request() *pkgmgr.Migration {
	r := &pkgmgr.Migration{}
	rel := m.Release
	rel.Kind = KindRelease
	for _, e := range append([]Entry{rel}, m.Packages...) {
		reason := e.Reason
		if reason == "" {
			reason = defaultReason(e, m.Target.Name)
		}
		r.Swaps = append(r.Swaps, pkgmgr.Swap{
			Kind: e.Kind, From: append([]string(nil), e.From...), To: append([]string(nil), e.To...),
			Reason: reason, Required: e.Kind == KindRelease,
		})
	}
	return r
}

func defaultReason(e Entry, target string) string {
	if target == "" {
		target = "the target distribution"
	}
	to := strings.Join(e.To, " and ")
	switch e.Kind {
	case KindRelease:
		return "release package of the source distribution, replaced by " + to
	case KindRename:
		return "renamed to " + to + " in " + target
	case KindSplit:
		return "split into " + to + " in " + target
	case KindMerge:
		return "merged into " + to + " in " + target
	}
	return "not in " + target
}

// Applies returns the swaps of the map that apply to a system with the
// installed package names: those with at least one of From installed, From
// trimmed to the installed ones. The release swap is always returned (From
// possibly empty: the map does not fit the system). The helper decides the
// same way; this pure version serves the assessment.
func (m *Map) Applies(installed []string) []pkgmgr.Swap {
	have := map[string]bool{}
	for _, n := range installed {
		have[n] = true
	}
	var out []pkgmgr.Swap
	for _, s := range m.Request().Swaps {
		var from []string
		for _, f := range s.From {
			if have[f] {
				from = append(from, f)
			}
		}
		if len(from) == 0 && !s.Required {
			continue
		}
		s.From = from
		out = append(out, s)
	}
	return out
}

// PkgRepos returns the map's repositories for the package backend.
func (m *Map) PkgRepos() []pkgmgr.Repo {
	var out []pkgmgr.Repo
	for _, r := range m.Repos {
		out = append(out, pkgmgr.Repo{ID: r.ID, BaseURL: r.BaseURL, GPGKey: append([]string(nil), r.GPGKey...)})
	}
	return out
}
