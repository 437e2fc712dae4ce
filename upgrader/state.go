package upgrader

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/atomicfile"
)

// Status is the state machine's state.
type Status string

// The states. Transitions: idle → prepared (prepare) → armed (arm) →
// applying (apply, with Step) → succeeded | failed; prepared/armed → idle
// (cancel); succeeded → rolled-back (rollback); failed → armed (arm again
// with the same plan) or prepared (prepare again).
const (
	StatusIdle       Status = "idle"
	StatusPrepared   Status = "prepared"
	StatusArmed      Status = "armed"
	StatusApplying   Status = "applying"
	StatusSucceeded  Status = "succeeded"
	StatusFailed     Status = "failed"
	StatusRolledBack Status = "rolled-back"
)

// Apply step names. The order, and what each does and undoes, is the table
// in steps.go (applySteps); each is journaled in the state before its side
// effect runs.
const (
	StepVerify      = "verify"      // checksums and rpmdb fingerprint
	StepBackup      = "backup"      // back up /boot (only with a boot loader)
	StepCarryOver   = "carryover"   // carry the running system's changes into the staged root (reboot --stage)
	StepSnapshot    = "snapshot"    // create the writable snapshot
	StepTransaction = "transaction" // run the transaction inside it
	StepBoot        = "boot"        // new kernel's entry for the new root (only with a boot loader)
	StepFinalize    = "finalize"    // record the result inside the new root
	StepSwitch      = "switch"      // trial boot of the new entry, new root the default
	StepDone        = "done"        // record the result in the old root
)

// StateVersion is the state document format.
const StateVersion = 1

// State is the one persisted state document (state.json).
type State struct {
	Version int    `json:"version"`
	Status  Status `json:"status"`
	// Step is the apply step in progress (status applying) or the step a
	// failed run stopped at.
	Step string `json:"step,omitempty"`
	// PlanID names the plan this state refers to.
	PlanID string `json:"plan_id,omitempty"`
	// RunID names the current or last apply run (its history record).
	RunID string `json:"run_id,omitempty"`
	// Target is the target release of the plan.
	Target string `json:"target,omitempty"`
	// Backend is the snapshot backend of the run.
	Backend string `json:"backend,omitempty"`
	// Snapshot is the snapshot the current run applies into; set before it
	// is created so that a crashed run's leftover can be removed.
	Snapshot string `json:"snapshot,omitempty"`
	// Previous is the pre-upgrade root, the rollback target. For an
	// in-place run it is the rollback point (the same as Snapshot).
	Previous string `json:"previous,omitempty"`
	// InPlace is set for a run whose backend upgrades the live root and
	// keeps the snapshot as the rollback point (LVM thick,
	// snapshot.InPlace): a failure, a crash in the transaction and
	// `kos-upgrade rollback` merge the rollback point back into the root
	// (snapshot.InPlace.Rollback) instead of deleting or activating a
	// snapshot. Journaled before the snapshot is created.
	InPlace bool `json:"in_place,omitempty"`
	// RebootRequired is set once a merge of an in-place rollback point was
	// scheduled: the running root is replaced by the rollback point at
	// the next boot, so nothing may be upgraded before that reboot.
	RebootRequired bool `json:"reboot_required,omitempty"`
	// Blessed is set when the first boot of a system upgraded in place
	// with an undo journal (backend undo, which has no trial boot) passed
	// its health check: the journal is no longer needed, and clean
	// removes it.
	Blessed bool `json:"blessed,omitempty"`
	// Boot is the boot loader side of the run; nil when the system has no
	// boot loader kos-upgrade handles (or the run has no snapshot).
	Boot *BootState `json:"boot,omitempty"`
	// Initramfs is what arming a plan in initramfs mode put into /boot
	// (the upgrade initramfs, the one-time entry, the one-shot boot),
	// journaled before each is made so that cancel, a re-arm and apply
	// can remove it; nil when nothing is there.
	Initramfs *InitramfsState `json:"initramfs,omitempty"`
	// Stage is the root built before the reboot (reboot --stage,
	// stage.go); nil when there is none.
	Stage *StageState `json:"stage,omitempty"`
	// NotStaged says why the armed upgrade of a btrfs root has no staged
	// root ("kos-upgrade reboot --no-stage", staging failed): the run
	// records it as its path_reason.
	NotStaged string `json:"not_staged,omitempty"`
	// LastResult is the result of the last apply or rollback.
	LastResult *Result   `json:"last_result,omitempty"`
	UpdatedAt  time.Time `json:"updated_at,omitzero"`
}

// Trial values of BootState.Trial.
const (
	TrialArmed   = "armed"     // the new entry boots next, as a trial
	TrialNone    = "none"      // the new entry was made the default without a trial (Note says why)
	TrialBlessed = "blessed"   // the new system passed its health check: permanent default
	TrialFailed  = "fell-back" // the trial failed; the old entry is the default again
)

// BootState is what a run did to the boot loader (docs/state.md). It is
// recorded before each side effect, so that a failed or crashed run can put
// /boot back as it was.
type BootState struct {
	// Loader is the boot loader kind (grub2-bls, systemd-boot).
	Loader string `json:"loader"`
	// Backups are the copies of /boot (and of an ESP holding boot loader
	// files) taken before the transaction.
	Backups []BootBackup `json:"backups,omitempty"`
	// Previous is the default entry before the run: the fallback.
	Previous string `json:"previous,omitempty"`
	// Pinned is set when Previous did not name its btrfs subvolume and was
	// pinned to the old root (rootflags=subvol=), so that it keeps booting
	// the old root once the default subvolume is the new one.
	Pinned string `json:"pinned,omitempty"`
	// Entry is the entry that boots the new root (on trial, then default).
	Entry string `json:"entry,omitempty"`
	// Entries are every entry the run created or retargeted.
	Entries []string `json:"entries,omitempty"`
	// Tries is how many boots the trial allows.
	Tries int `json:"tries,omitempty"`
	// Trial is armed, none, blessed or fell-back (the Trial* constants).
	Trial string `json:"trial,omitempty"`
	// Note says why there is no trial, or why it ended.
	Note string `json:"note,omitempty"`
	// ConfirmBy is the end of the confirmation window (health.conf
	// confirm_after), set at the trial's first green verdict: until then
	// (or the application probes pass) the trial stays armed.
	ConfirmBy time.Time `json:"confirm_by,omitzero"`
}

// BootBackup is one backup of a boot directory.
type BootBackup struct {
	// Dir is the backed-up directory, relative to the root ("/boot").
	Dir string `json:"dir"`
	// Path is the backup, relative to the state directory
	// ("boot-backup/<run_id>/boot").
	Path string `json:"path"`
}

// Result is the outcome of one run, also its history record.
type Result struct {
	RunID    string         `json:"run_id"`
	Kind     string         `json:"kind"` // apply, rollback
	Success  bool           `json:"success"`
	Status   Status         `json:"status"`
	Error    string         `json:"error,omitempty"`
	Step     string         `json:"step,omitempty"`
	From     string         `json:"from,omitempty"`
	To       string         `json:"to,omitempty"`
	Backend  string         `json:"backend,omitempty"`
	Snapshot string         `json:"snapshot,omitempty"`
	Previous string         `json:"previous,omitempty"`
	InPlace  bool           `json:"in_place,omitempty"`
	Counts   map[string]int `json:"counts,omitempty"`
	// Warnings are what went wrong without failing the run: scriptlets
	// whose failure rpm only warns about (%post, %posttrans, triggers).
	Warnings []string `json:"warnings,omitempty"`
	// Path is how the offline step upgraded: "staged" (the root built
	// before the reboot, with the running system's changes carried over)
	// or "classic" (the transaction ran offline); empty where staging
	// does not exist (LVM, no snapshot, initramfs mode). PathReason says
	// why a btrfs run took the classic path (a fallback, --no-stage,
	// staging failed).
	Path       string `json:"path,omitempty"`
	PathReason string `json:"path_reason,omitempty"`
	// Carried and BytesCloned: paths carried over, bytes cloned.
	Carried     int   `json:"carried,omitempty"`
	BytesCloned int64 `json:"bytes_cloned,omitempty"`
	// AtShutdown: the run was the shutdown-time finalize of a staged root
	// (kos-upgrade-finalize.service, docs/stage.md): one boot, no
	// offline boot. A finalize that failed is undone and leaves the
	// upgrade armed for the offline boot, which records its own run.
	AtShutdown bool      `json:"at_shutdown,omitempty"`
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at,omitempty"`
}

// ErrInterrupted is the provisional error recorded before the transaction:
// a crash leaves it as the truth.
const errInterrupted = "interrupted: the run stopped before it finished (crash or power cut); the system it left boots the old root"

// store reads and writes the documents of one state directory.
type store struct {
	dir string
}

func (s store) statePath() string          { return filepath.Join(s.dir, "state.json") }
func (s store) planPath() string           { return filepath.Join(s.dir, "plan.json") }
func (s store) historyDir() string         { return filepath.Join(s.dir, "history") }
func (s store) stageDir(rel string) string { return filepath.Join(s.dir, rel) }

func (s store) load() (*State, error) {
	b, err := readDoc(s.statePath(), maxStateSize)
	if os.IsNotExist(err) {
		return &State{Version: StateVersion, Status: StatusIdle}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read state: %w: %w", ErrBadState, err)
	}
	return parseState(b, s.statePath())
}

// parseState decodes and validates a state document read from path.
func parseState(b []byte, path string) (*State, error) {
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("cannot read state %s: %w: %w; remove it to start over (staged plans are lost)", path, ErrBadState, err)
	}
	if st.Version > StateVersion {
		return nil, fmt.Errorf("cannot read state %s: %w: version %d is newer than this kos-upgrade understands", path, ErrBadState, st.Version)
	}
	if st.Status == "" {
		st.Status = StatusIdle
	}
	if err := st.validate(); err != nil {
		return nil, fmt.Errorf("cannot read state %s: %w: %w; nothing was done: remove it to start over (staged plans are lost)", path, ErrBadState, err)
	}
	return &st, nil
}

func (s store) save(st *State, now time.Time) error {
	if err := ensurePrivateDir(s.dir); err != nil {
		return fmt.Errorf("cannot create state directory: %w", err)
	}
	st.Version = StateVersion
	st.UpdatedAt = now.UTC()
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("cannot encode state: %w", err)
	}
	if err := atomicfile.WriteFile(s.statePath(), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("cannot save state: %w", err)
	}
	return nil
}

func (s store) record(r *Result) error {
	if err := ensurePrivateDir(s.historyDir()); err != nil {
		return fmt.Errorf("cannot create history directory: %w", err)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("cannot encode history record: %w", err)
	}
	path := filepath.Join(s.historyDir(), r.RunID+".json")
	if err := atomicfile.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("cannot save history record: %w", err)
	}
	return nil
}

func (s store) history() ([]Result, error) {
	ents, err := os.ReadDir(s.historyDir())
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read history: %w", err)
	}
	var out []Result
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if !e.Type().IsRegular() {
			continue // a FIFO, a link, a directory: not a record
		}
		b, err := readDoc(filepath.Join(s.historyDir(), e.Name()), maxHistorySize)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			continue // a damaged record must not hide the others
		}
		var r Result
		if err := json.Unmarshal(b, &r); err != nil || r.validate() != nil {
			continue
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].StartedAt.Before(out[j].StartedAt) })
	return out, nil
}
