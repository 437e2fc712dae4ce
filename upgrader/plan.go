package upgrader

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/atomicfile"
	"github.com/keyarchos/kos-upgrade/pkg/iso"
	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/pkg/preflight"
)

// PlanVersion is the plan format this build writes and the newest it reads.
const PlanVersion = 1

// Release describes an OS release, from os-release.
type Release struct {
	ID        string `json:"id"`
	VersionID string `json:"version_id"`
	Name      string `json:"name,omitempty"`
}

func (r Release) String() string {
	if r.Name != "" {
		return r.Name + " " + r.VersionID
	}
	return r.ID + " " + r.VersionID
}

// Plan is what prepare decided and apply carries out, documented in
// docs/plan.md. Fields this build does not know survive a rewrite.
type Plan struct {
	Version   int       `json:"version"`
	ID        string    `json:"id"`
	CreatedAt time.Time `json:"created_at"`
	MachineID string    `json:"machine_id"`
	Source    Release   `json:"source"`
	Target    Release   `json:"target"`
	// Repos are the repositories given with --repo; empty means the
	// system's own configuration with the target release version.
	Repos []pkgmgr.Repo `json:"repos,omitempty"`
	// Images are the ISO images prepare read packages from (--iso); apply
	// does not need them (docs/iso.md).
	Images []iso.Ref `json:"images,omitempty"`
	// Snapshot is the backend that protects the root: btrfs, lvm or none.
	Snapshot string `json:"snapshot"`
	// Mode is how apply runs: "target" (the root's systemd offline
	// target) or "initramfs" (an upgrade initramfs booted once, before
	// switch-root: docs/initramfs.md). Empty in older plans: target.
	Mode string `json:"mode"`
	// RPMDBFingerprint is the installed package set prepare planned against.
	RPMDBFingerprint string `json:"rpmdb_fingerprint"`
	// SignatureCheck is "enforced", or "skipped" when the user asked for it.
	SignatureCheck string `json:"signature_check"`
	// StageDir holds the staged packages, relative to the state directory.
	StageDir     string        `json:"stage_dir"`
	Transaction  []pkgmgr.Item `json:"transaction"`
	DownloadSize int64         `json:"download_size"`
	InstallSize  int64         `json:"install_size"`
	// Report is the assessment prepare made (docs/report.md): findings
	// that did not inhibit, third-party packages kept, answers given.
	Report *preflight.Report `json:"report,omitempty"`
	// Migration is set when the plan moves the system from another
	// distribution (docs/migration.md): the source, the migration map,
	// the swaps that apply and the keys apply imports into the new root.
	Migration *Migration `json:"migration,omitempty"`

	unknown map[string]json.RawMessage
}

// Counts returns how many items the plan has per action.
func (p *Plan) Counts() map[string]int {
	c := map[string]int{}
	for _, it := range p.Transaction {
		c[it.Action]++
	}
	return c
}

type planAlias Plan

// UnmarshalJSON keeps fields it does not know.
func (p *Plan) UnmarshalJSON(b []byte) error {
	var a planAlias
	if err := json.Unmarshal(b, &a); err != nil {
		return err
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(b, &all); err != nil {
		return err
	}
	for _, k := range planKeys {
		delete(all, k)
	}
	*p = Plan(a)
	if len(all) > 0 {
		p.unknown = all
	}
	return nil
}

// MarshalJSON writes the known fields and the unknown ones it read.
func (p Plan) MarshalJSON() ([]byte, error) {
	b, err := json.Marshal(planAlias(p))
	if err != nil || len(p.unknown) == 0 {
		return b, err
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(b, &all); err != nil {
		return nil, err
	}
	for k, v := range p.unknown {
		if _, known := all[k]; !known {
			all[k] = v
		}
	}
	return json.Marshal(all)
}

var planKeys = []string{"version", "id", "created_at", "machine_id", "source", "target", "repos", "snapshot",
	"mode", "rpmdb_fingerprint", "signature_check", "stage_dir", "transaction", "download_size", "install_size", "report",
	"migration", "images"}

// ParsePlan decodes and validates a plan document.
func ParsePlan(b []byte) (*Plan, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, fmt.Errorf("%w: the file is empty (truncated?); run kos-upgrade prepare again", ErrBadPlan)
	}
	var head struct {
		Version *int `json:"version"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return nil, fmt.Errorf("%w: %s; run kos-upgrade prepare again", ErrBadPlan, describeJSONError(b, err))
	}
	switch {
	case head.Version == nil:
		return nil, fmt.Errorf("%w: no \"version\" field; run kos-upgrade prepare again", ErrBadPlan)
	case *head.Version > PlanVersion:
		return nil, fmt.Errorf("%w: plan version %d is newer than this kos-upgrade understands (%d); update kos-upgrade or run prepare again", ErrBadPlan, *head.Version, PlanVersion)
	case *head.Version < 1:
		return nil, fmt.Errorf("%w: plan version %d is not valid; run kos-upgrade prepare again", ErrBadPlan, *head.Version)
	}
	var p Plan
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("%w: %s; run kos-upgrade prepare again", ErrBadPlan, describeJSONError(b, err))
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

func describeJSONError(b []byte, err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("malformed JSON at byte %d of %d: %v", se.Offset, len(b), err)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("field %q has the wrong type (%s, want %s)", te.Field, te.Value, te.Type)
	}
	return err.Error()
}

// Validate checks that the plan can be carried out.
func (p *Plan) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s; run kos-upgrade prepare again", ErrBadPlan, fmt.Sprintf(format, a...))
	}
	switch {
	case p.ID == "":
		return bad("no plan id")
	case !validID(p.ID):
		return bad("id %q is not a plan id", p.ID)
	case p.Target.VersionID == "":
		return bad("no target release")
	case !ValidVersion(p.Target.VersionID):
		return bad("target version_id %q is not a release version", p.Target.VersionID)
	case p.RPMDBFingerprint == "":
		return bad("no rpmdb fingerprint")
	case p.Snapshot == "":
		return bad("no snapshot backend")
	case p.Mode != "" && !ValidMode(p.Mode):
		return bad("mode %q is neither target nor initramfs", p.Mode)
	case !validRel(p.StageDir):
		return bad("stage_dir %q is not a relative directory", p.StageDir)
	}
	if m := p.Migration; m != nil {
		for i, k := range m.Keys {
			if !strings.Contains(k.Armored, "BEGIN PGP PUBLIC KEY BLOCK") {
				return bad("migration key %d (%s) is not an armored public key", i, k.File)
			}
		}
		for i, s := range m.Applied {
			if s.Kind == "" || len(s.From) == 0 && !s.Required {
				return bad("migration swap %d has no kind or no package", i)
			}
		}
	}
	seen := map[string]bool{}
	for i, it := range p.Transaction {
		if it.NEVRA == "" || it.Name == "" {
			return bad("transaction item %d has no package name", i)
		}
		switch it.Action {
		case pkgmgr.ActionInstall, pkgmgr.ActionUpgrade, pkgmgr.ActionDowngrade, pkgmgr.ActionReinstall:
			if !validFileName(it.File) || it.SHA256 == "" || it.Size < 0 {
				return bad("transaction item %s has no valid file and sha256", it.NEVRA)
			}
		case pkgmgr.ActionRemove, pkgmgr.ActionObsoleted:
		default:
			return bad("transaction item %s has unknown action %q", it.NEVRA, it.Action)
		}
		key := it.Action + " " + it.NEVRA
		if seen[key] {
			return bad("transaction item %s appears twice", it.NEVRA)
		}
		seen[key] = true
	}
	return nil
}

// loadPlan reads the plan file at path.
func loadPlan(path string) (*Plan, error) {
	b, err := readDoc(path, maxPlanSize)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("cannot read plan: %w", ErrNoPlan)
		}
		return nil, fmt.Errorf("cannot read plan %s: %w", path, err)
	}
	p, err := ParsePlan(b)
	if err != nil {
		return nil, fmt.Errorf("cannot use plan %s: %w", path, err)
	}
	return p, nil
}

// savePlan writes the plan atomically.
func savePlan(path string, p *Plan) error {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return fmt.Errorf("cannot encode plan: %w", err)
	}
	return atomicfile.WriteFile(path, append(b, '\n'), 0o600)
}
