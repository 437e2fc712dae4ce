package upgrader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/migrate"
	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/pkg/preflight"
	"github.com/keyarchos/kos-upgrade/pkg/progress"
)

// Target is a parsed --to: a KOS release version ("5.9"), or a
// distribution and a version ("kos-5.9"). Naming the distribution on a
// system of another one (CentOS) asks for a migration.
type Target struct {
	Distro  string // os-release ID, "" when not given
	Version string
}

func (t Target) String() string {
	if t.Distro == "" {
		return t.Version
	}
	return t.Distro + "-" + t.Version
}

var distroTargetRE = regexp.MustCompile(`^([a-z][a-z0-9_]*)-([0-9][0-9A-Za-z._-]*)$`)

// ParseTarget parses --to: "VERSION" or "DISTRO-VERSION" (a version starts
// with a digit, a distribution with a letter).
func ParseTarget(s string) (Target, error) {
	if m := distroTargetRE.FindStringSubmatch(s); m != nil {
		return Target{Distro: m[1], Version: m[2]}, nil
	}
	if !ValidVersion(s) || s[0] < '0' || s[0] > '9' {
		return Target{}, fmt.Errorf("%q is not a release: give a KOS version (--to 5.9) or, to migrate from another distribution, kos-VERSION (--to kos-5.9)", s)
	}
	return Target{Version: s}, nil
}

// Migration is the plan's migration section: what a move from another
// distribution does beyond the transaction (docs/migration.md).
type Migration struct {
	// From is the distribution migrated from.
	From Release `json:"from"`
	// Map identifies the migration map: its name, the file it was read
	// from ("built-in:centos-to-kos.json" when built in) and its sha256.
	Map MapRef `json:"map"`
	// Applied are the map's swaps that apply to this system, as dnf
	// resolved them (from = the installed packages replaced).
	Applied []pkgmgr.Swap `json:"applied"`
	// Keys are the target's public keys; apply imports them into the new
	// root's rpm database before the transaction.
	Keys []Key `json:"keys,omitempty"`
}

// MapRef identifies a migration map.
type MapRef struct {
	Name   string `json:"name"`
	Origin string `json:"origin"`
	SHA256 string `json:"sha256"`
}

// Key is an armored public key and the file it came from.
type Key struct {
	File    string `json:"file"`
	Armored string `json:"armored"`
}

// migrationSetup is what prepare derives from the map before resolving.
type migrationSetup struct {
	m         *migrate.Map // nil when no map covers the source
	preflight *preflight.Migration
	keys      []Key
	keyFiles  []string // for the verification keyring
}

// setupMigration loads the map for a migration from source to t and reads
// the target's keys. A missing map is not an error here: the assessment
// reports it (migration.unsupported-source); a broken map or an unreadable
// --gpgkey is.
func setupMigration(source Release, t Target, opts PrepareOptions) (*migrationSetup, error) {
	var m *migrate.Map
	var err error
	if opts.MigrationMap != "" {
		m, err = migrate.Load(opts.MigrationMap)
	} else {
		m, err = migrate.Find(source.ID, t.Distro)
	}
	pf := &preflight.Migration{Target: t.Distro}
	if err != nil {
		if !errors.Is(err, migrate.ErrNoMap) {
			return nil, err
		}
		pf.MapError = err.Error()
		return &migrationSetup{preflight: pf}, nil
	}
	if m.Target.ID != t.Distro {
		return nil, fmt.Errorf("the migration map %s leads to %s, not to %s", m.Origin, m.Target.ID, t.Distro)
	}
	pf.TargetName, pf.Map = m.Target.Name, m.Origin
	pf.SourceIDs, pf.SourceVersions, pf.TargetEL = m.Source.IDs, m.Source.Versions, m.Target.EL
	pf.Request = m.Request()
	s := &migrationSetup{m: m, preflight: pf}
	// Keys: the map's (skipped when not installed), then --gpgkey (must
	// exist).
	add := func(file string, must bool) error {
		p := strings.TrimPrefix(file, "file://")
		b, err := os.ReadFile(p)
		if err != nil {
			if must {
				return fmt.Errorf("cannot read --gpgkey %s: %w", file, err)
			}
			return nil
		}
		if !strings.Contains(string(b), "BEGIN PGP PUBLIC KEY BLOCK") {
			return fmt.Errorf("cannot use key %s: it is not an armored public key", file)
		}
		for _, k := range s.keys {
			if k.Armored == string(b) {
				return nil
			}
		}
		s.keys = append(s.keys, Key{File: p, Armored: string(b)})
		s.keyFiles = append(s.keyFiles, p)
		pf.Keys = append(pf.Keys, p)
		return nil
	}
	for _, k := range m.GPGKeys {
		if err := add(k, false); err != nil {
			return nil, err
		}
	}
	for _, k := range opts.GPGKeys {
		if err := add(k, true); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// importKeys imports the target's keys into the rpm database at root.
func (e *Engine) importKeys(ctx context.Context, root string, keys []Key) error {
	ki, ok := e.PM.(pkgmgr.KeyImporter)
	if !ok {
		return fmt.Errorf("cannot import the target's keys: the package backend cannot import keys")
	}
	var armored []string
	for _, k := range keys {
		armored = append(armored, k.Armored)
	}
	e.report(progress.Event{Step: StepTransaction, Message: fmt.Sprintf("importing %d public key(s) of the target into the new root", len(keys))})
	return ki.ImportKeys(ctx, root, armored)
}

// AssessTarget turns a --to (and the --repo, --migration-map and --gpgkey
// of a migration) into what the assessment needs, as prepare does: the
// release version for dnf, the repositories, and the migration when --to
// names another distribution than the running one (nil otherwise).
// kos-upgrade check uses it so that check --to kos-5.9 assesses the same
// migration prepare would run.
func (e *Engine) AssessTarget(to string, repos []pkgmgr.Repo, mapFile string, keys []string) (string, []pkgmgr.Repo, *preflight.Migration, error) {
	t, err := ParseTarget(to)
	if err != nil {
		return "", nil, nil, err
	}
	source, err := readRelease(e.Root.Dir)
	if err != nil {
		return "", nil, nil, err
	}
	if t.Distro == "" || t.Distro == source.ID {
		return t.Version, repos, nil, nil
	}
	s, err := setupMigration(source, t, PrepareOptions{MigrationMap: mapFile, GPGKeys: keys})
	if err != nil {
		return "", nil, nil, err
	}
	if len(repos) == 0 && s.m != nil {
		repos = s.m.PkgRepos()
	}
	return t.Version, repos, s.preflight, nil
}
