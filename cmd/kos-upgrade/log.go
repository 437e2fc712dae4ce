package main

// kos-upgrade log: the journal of a past run, as `dnf system-upgrade log`
// shows the boot an offline upgrade ran in. A run is found in the journal by
// the fields of the milestones pkg/progress sends (units/kos-upgrade.catalog):
// the Finished or Failed entry names the run (KOS_UPGRADE_RUN_ID), and its
// _BOOT_ID is the boot the run happened in; a run that never finished (a
// power cut) is found by its Started entry near the run's start. The journal
// is read with journalctl from the root's /var/log/journal and, as the apply
// of a snapshot upgrade runs in the pre-upgrade root, from the other root of
// the run too: the command works from either root, and after a rollback.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/keyarchos/kos-upgrade/pkg/execlog"
	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// journalctlTool reads the journal; tests may re-point it.
var journalctlTool = "journalctl"

// startedWindow is how far from a run's recorded start its Started entry
// may be (the entry is sent at the run's first step).
const startedWindow = 10 * time.Minute

// maxLogEntries bounds the entries of one boot that log reads.
const maxLogEntries = 100000

func logCmd() *cli.Command {
	return &cli.Command{
		Name:      "log",
		Usage:     "show the journal of a past run (the boot it ran in) and its history record",
		ArgsUsage: "[RUN]",
		Description: `log without RUN lists the runs of kos-upgrade history, numbered, with the
boot each ran in when the journal still has it. With RUN (a number of that
list, a run ID, or "last") it prints the run's history record, then the
journal of the boot it ran in, as dnf system-upgrade log does: the run is found
by the structured fields of kos-upgrade's journal entries (KOS_UPGRADE_RUN_ID,
MESSAGE_ID; see journalctl -x). The journal is read from this root's
/var/log/journal and from the run's other root (the pre-upgrade snapshot,
where the offline apply ran, or the upgraded one), so log works from either
root and after a rollback. A journal that is not persistent (no
/var/log/journal) loses the offline boot: the record is then all there is.
With --json: the record, the boot ID and the journal entries.

Examples:
   kos-upgrade log
   kos-upgrade log last
   kos-upgrade log 2 --json`,
		Action: func(c *cli.Context) error {
			// Flags stop at RUN (urfave/cli parses no flag after an
			// argument): --json after it is taken here.
			which, jsonAfter := "", false
			for _, a := range c.Args().Slice() {
				switch {
				case a == "--json":
					jsonAfter = true
				case which == "" && !strings.HasPrefix(a, "-"):
					which = a
				default:
					return usageError{fmt.Errorf("unexpected argument %q (see kos-upgrade log --help)", a)}
				}
			}
			e, err := newEnv(c)
			if err != nil {
				return err
			}
			defer e.sink.Close()
			e.json = e.json || jsonAfter
			return showLog(c.Context, e, which)
		},
	}
}

// journalEntry is what log keeps of a journal entry.
type journalEntry struct {
	Time       time.Time `json:"time"`
	Priority   int       `json:"priority"`
	Identifier string    `json:"identifier,omitempty"`
	Unit       string    `json:"unit,omitempty"`
	MessageID  string    `json:"message_id,omitempty"`
	Message    string    `json:"message"`
}

// runLog is the run's record and the journal of its boot.
type runLog struct {
	Number  int             `json:"number"`
	Run     upgrader.Result `json:"run"`
	BootID  string          `json:"boot_id,omitempty"`
	Journal string          `json:"journal,omitempty"` // the directory read, "" for the system's journal
	Entries []journalEntry  `json:"entries"`
}

func showLog(ctx context.Context, e *env, which string) error {
	runs, err := e.engine.History(ctx)
	if err != nil {
		return err
	}
	if which == "" {
		return listRunLogs(ctx, e, runs)
	}
	n, err := pickRun(runs, which)
	if err != nil {
		return usageError{err}
	}
	l := &runLog{Number: n + 1, Run: runs[n], Entries: []journalEntry{}}
	j := newJournals(e)
	defer j.close()
	src, boot, err := j.findBoot(ctx, &l.Run)
	if err != nil {
		return err
	}
	if boot != "" {
		l.Journal, l.BootID = src, boot
		if l.Entries, err = bootEntries(ctx, src, boot); err != nil {
			return err
		}
	}
	if e.json {
		return e.printJSON(l)
	}
	printRunLog(e.out, l)
	return nil
}

// pickRun finds the run which names: "last", a 1-based number, a run ID.
func pickRun(runs []upgrader.Result, which string) (int, error) {
	if len(runs) == 0 {
		return 0, errors.New("no upgrade has run on this system: there is no log to show")
	}
	if which == "last" {
		return len(runs) - 1, nil
	}
	if n, err := strconv.Atoi(which); err == nil {
		if n < 1 || n > len(runs) {
			return 0, fmt.Errorf("no run %d: kos-upgrade log lists runs 1 to %d", n, len(runs))
		}
		return n - 1, nil
	}
	for i, r := range runs {
		if r.RunID == which {
			return i, nil
		}
	}
	return 0, fmt.Errorf("no run %q: kos-upgrade log lists the runs (a number, a run ID or last)", which)
}

func listRunLogs(ctx context.Context, e *env, runs []upgrader.Result) error {
	j := newJournals(e)
	defer j.close()
	out := []runLog{}
	for i, r := range runs {
		l := runLog{Number: i + 1, Run: r, Entries: []journalEntry{}}
		src, boot, err := j.findBoot(ctx, &l.Run)
		if err != nil {
			return err
		}
		l.Journal, l.BootID = src, boot
		out = append(out, l)
	}
	if e.json {
		return e.printJSON(out)
	}
	if len(out) == 0 {
		fmt.Fprintln(e.out, "No upgrade has run on this system.")
		return nil
	}
	for _, l := range out {
		fmt.Fprintf(e.out, "%3d  ", l.Number)
		printResultLine(e.out, &l.Run)
		if l.BootID != "" {
			fmt.Fprintf(e.out, "       boot %s%s\n", l.BootID, journalWhere(l.Journal))
		} else {
			fmt.Fprintln(e.out, "       (not in the journal)")
		}
	}
	fmt.Fprintln(e.out, "\nShow one: kos-upgrade log NUMBER")
	return nil
}

func journalWhere(dir string) string {
	if dir == "" {
		return ""
	}
	return " (journal in " + dir + ")"
}

func printRunLog(w io.Writer, l *runLog) {
	fmt.Fprintf(w, "Run %d: ", l.Number)
	printResultLine(w, &l.Run)
	fmt.Fprintf(w, "  run ID: %s\n", l.Run.RunID)
	if l.Run.Error != "" {
		fmt.Fprintf(w, "  error: %s\n", l.Run.Error)
	}
	for _, x := range l.Run.Warnings {
		fmt.Fprintf(w, "  warning: %s\n", x)
	}
	printPath(w, &l.Run)
	if l.BootID == "" {
		fmt.Fprintln(w, "\nThe journal has no entry of this run (a journal that is not persistent loses the offline boot).")
		return
	}
	fmt.Fprintf(w, "\nJournal of boot %s%s:\n", l.BootID, journalWhere(l.Journal))
	for _, en := range l.Entries {
		who := en.Identifier
		if who == "" {
			who = en.Unit
		}
		fmt.Fprintf(w, "%s %s: %s\n", en.Time.Local().Format("Jan 02 15:04:05"), who, en.Message)
	}
}

// journals finds the journals a run may be in: this root's, then those of
// the run's other roots (its snapshots), each once. A snapshot's path is
// valid while its backend is open: close closes them all.
type journals struct {
	e     *env
	snaps map[string]snapshot.Snapshotter // by backend
}

func newJournals(e *env) *journals { return &journals{e: e, snaps: map[string]snapshot.Snapshotter{}} }

func (j *journals) close() {
	for _, s := range j.snaps {
		s.Close()
	}
}

func (j *journals) sources(ctx context.Context, r *upgrader.Result) []string {
	root := j.e.engine.Root.Dir
	var dirs []string
	seen := map[string]bool{}
	add := func(d string) {
		if seen[d] {
			return
		}
		seen[d] = true
		dirs = append(dirs, d)
	}
	if root == "/" {
		add("") // the system's journal: /var/log/journal and /run/log/journal
		seen["/var/log/journal"] = true
	} else {
		add(filepath.Join(root, "var/log/journal"))
	}
	if !snapshot.Protects(r.Backend) {
		return dirs
	}
	snap, ok := j.snaps[r.Backend]
	if !ok {
		var err error
		if snap, err = j.e.engine.Snapshotters(ctx, r.Backend, j.e.engine.Root); err != nil {
			return dirs // no other root to read: this one is all there is
		}
		j.snaps[r.Backend] = snap
	}
	for _, name := range []string{r.Previous, r.Snapshot} {
		if name == "" {
			continue
		}
		if p, err := snap.Path(ctx, name); err == nil && p != root {
			add(filepath.Join(p, "var/log/journal"))
		}
	}
	return dirs
}

// rootOnly matches entries that processes of root wrote (_UID is a field
// journald sets, which no sender can forge): any user may send an entry
// with kos-upgrade's MESSAGE_ID and a run's KOS_UPGRADE_RUN_ID.
const rootOnly = "_UID=0"

// findBoot returns the journal (directory) and the boot ID that run r
// happened in, or "" when no journal has it. The entry naming the run wins
// over a Started entry near its start in any journal: a snapshot taken
// during the run has the beginning of its boot only.
func (j *journals) findBoot(ctx context.Context, r *upgrader.Result) (string, string, error) {
	var dirs []string
	for _, dir := range j.sources(ctx, r) {
		if dir != "" {
			if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
				continue
			}
		}
		dirs = append(dirs, dir)
	}
	if r.RunID != "" {
		for _, dir := range dirs {
			ents, err := journalQuery(ctx, dir, 1, "KOS_UPGRADE_RUN_ID="+r.RunID, rootOnly)
			if err != nil {
				return "", "", err
			}
			if len(ents) > 0 && ents[0]["_BOOT_ID"] != "" {
				return dir, ents[0]["_BOOT_ID"], nil
			}
		}
	}
	// A run that never finished: its Started entry near its start.
	for _, dir := range dirs {
		ents, err := journalQuery(ctx, dir, 1000, "MESSAGE_ID="+progress.MessageIDStarted, rootOnly)
		if err != nil {
			return "", "", err
		}
		for _, en := range ents {
			t := entryTime(en)
			if en["KOS_UPGRADE_OP"] == r.Kind && !t.IsZero() && t.Sub(r.StartedAt).Abs() <= startedWindow && en["_BOOT_ID"] != "" {
				return dir, en["_BOOT_ID"], nil
			}
		}
	}
	return "", "", nil
}

// bootEntries reads the journal entries of boot from dir.
func bootEntries(ctx context.Context, dir, boot string) ([]journalEntry, error) {
	ents, err := journalQuery(ctx, dir, maxLogEntries, "_BOOT_ID="+boot)
	if err != nil {
		return nil, err
	}
	out := make([]journalEntry, 0, len(ents))
	for _, en := range ents {
		pri, _ := strconv.Atoi(en["PRIORITY"])
		out = append(out, journalEntry{
			Time: entryTime(en), Priority: pri, Identifier: en["SYSLOG_IDENTIFIER"], Unit: en["_SYSTEMD_UNIT"],
			MessageID: en["MESSAGE_ID"], Message: en["MESSAGE"],
		})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out, nil
}

func entryTime(en map[string]string) time.Time {
	us, err := strconv.ParseInt(en["__REALTIME_TIMESTAMP"], 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.UnixMicro(us).UTC()
}

// journalQuery runs journalctl on dir ("" for the system's journal) with
// matches and returns up to n entries, oldest first, with their string
// fields (binary fields are dropped).
func journalQuery(ctx context.Context, dir string, n int, matches ...string) ([]map[string]string, error) {
	args := []string{journalctlTool, "--no-pager", "-q", "-o", "json", "-n", strconv.Itoa(n)}
	if dir != "" {
		args = append(args, "-D", dir)
	}
	args = append(args, matches...)
	cmd := execlog.Command(ctx, args)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("cannot read the journal%s: %w: %s", journalWhere(dir), err, strings.TrimSpace(stderr.String()))
	}
	var out []map[string]string
	sc := bufio.NewScanner(&stdout)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var raw map[string]any
		if err := json.Unmarshal(sc.Bytes(), &raw); err != nil {
			continue
		}
		en := map[string]string{}
		for k, v := range raw {
			if s, ok := v.(string); ok {
				en[k] = s
			}
		}
		out = append(out, en)
	}
	return out, nil
}
