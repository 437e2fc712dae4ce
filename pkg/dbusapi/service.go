package dbusapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"

	"github.com/keyarchos/kos-upgrade/pkg/execlog"
	"github.com/keyarchos/kos-upgrade/pkg/health"
	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/pkg/preflight"
	"github.com/keyarchos/kos-upgrade/pkg/progress"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// Options configure a Service. The zero value is usable.
type Options struct {
	Log *slog.Logger
	// Sinks returns the extra progress sinks of one job of operation op
	// (journal, plymouth, sd_notify: progress.SystemSinks of
	// progress.OpRanges(op)); nil: none.
	Sinks func(op string) progress.Multi
	// Reboot reboots the machine for Reboot and Rollback. The default runs
	// systemctl reboot, and refuses when the engine acts on another root
	// than /.
	Reboot func(ctx context.Context) error
	// Check runs the preflight checks for the target release to; it
	// returns whether an inhibitor was found and the report as JSON. Nil:
	// Check answers org.kos.Upgrade1.Error.NotSupported.
	// answers are KEY=VALUE answers laid over answers.conf.
	Check func(ctx context.Context, to string, answers []string) (inhibited bool, reportJSON []byte, err error)
	// IdleTimeout makes Serve return after this long without a job and
	// without an incoming call; 0 serves until the context ends.
	IdleTimeout time.Duration
	// PollInterval is how often the state files are checked for changes
	// made by other processes (an offline apply, the CLI run in-process);
	// default 1s.
	PollInterval time.Duration
}

// Service is the org.kos.Upgrade1 object: properties read from the
// engine's state, methods that run the engine's operations one at a time,
// the Progress and Finished signals.
//
// Contract: the properties always describe what the state files say (read
// again after every job and whenever they change on disk), except State,
// which is "preparing" while a Prepare job runs in this daemon. A daemon
// that restarts reports the truth: an interrupted prepare left nothing
// prepared; an interrupted apply is reported as Engine.Status settles it.
type Service struct {
	conn   *dbus.Conn
	engine *upgrader.Engine
	opts   Options
	log    *slog.Logger
	auth   authorizer
	props  *properties

	ctx    context.Context // Serve's; jobs run under it
	cancel context.CancelFunc
	jobs   sync.WaitGroup

	mu        sync.Mutex
	job       *job
	pct       uint32 // Progress: the running or last job's figure
	lastCheck string // the last Check report (JSON)

	refreshMu sync.Mutex
	stamp     string

	lastActivity atomic.Int64 // unix nanoseconds of the last incoming call
}

// job is the operation in progress; only one runs at a time.
type job struct {
	name    string
	uid     uint32
	started time.Time
	target  string
	step    string
	overall *progress.Overall
	sinks   progress.Multi
}

// JobInfo describes the running job in GetReport.
type JobInfo struct {
	Name      string    `json:"name"`
	Step      string    `json:"step,omitempty"`
	Percent   uint32    `json:"percent"`
	Target    string    `json:"target,omitempty"`
	UID       uint32    `json:"uid"`
	StartedAt time.Time `json:"started_at"`
}

// Report is what GetReport returns: the status document of
// `kos-upgrade status --json` plus the daemon's running job.
type Report struct {
	upgrader.StatusReport
	Job *JobInfo `json:"job,omitempty"`
}

// New exports the service on conn, for the system engine serves. It sets
// engine.Sink: the service routes the engine's events to the running job.
// Call Serve to claim the name and serve.
func New(conn *dbus.Conn, engine *upgrader.Engine, opts Options) (*Service, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = time.Second
	}
	s := &Service{conn: conn, engine: engine, opts: opts, log: opts.Log,
		auth: authorizer{conn: conn, interactiveTimeout: 5 * time.Minute}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.lastActivity.Store(time.Now().UnixNano())
	engine.Sink = progress.Func(s.onEvent)

	s.props = &properties{conn: conn, path: ObjectPath, touch: s.touch, values: newPropertyValues()}
	if err := conn.Export(s.props, ObjectPath, propertiesIface); err != nil {
		return nil, fmt.Errorf("cannot export the properties: %w", err)
	}
	if err := conn.Export(object{s}, ObjectPath, Interface); err != nil {
		return nil, fmt.Errorf("cannot export %s: %w", ObjectPath, err)
	}
	node := "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n" +
		" \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<node>\n" +
		introspect.IntrospectDataString + propertiesXML +
		"\t<interface name=\"org.freedesktop.DBus.Peer\">\n\t\t<method name=\"Ping\"/>\n" +
		"\t\t<method name=\"GetMachineId\">\n\t\t\t<arg name=\"machine_uuid\" type=\"s\" direction=\"out\"/>\n\t\t</method>\n\t</interface>\n" +
		"  " + interfaceXML() + "\n</node>\n"
	if err := conn.Export(introspect.Introspectable(node), ObjectPath, "org.freedesktop.DBus.Introspectable"); err != nil {
		return nil, fmt.Errorf("cannot export the introspection data: %w", err)
	}
	// Parents, so that busctl tree and gdbus introspect --recurse find us.
	for p, child := range map[dbus.ObjectPath]string{"/": "org", "/org": "kos", "/org/kos": "Upgrade1"} {
		n := &introspect.Node{Children: []introspect.Node{{Name: child}},
			Interfaces: []introspect.Interface{introspect.IntrospectData}}
		if err := conn.Export(introspect.NewIntrospectable(n), p, "org.freedesktop.DBus.Introspectable"); err != nil {
			return nil, fmt.Errorf("cannot export %s: %w", p, err)
		}
	}
	if err := s.refresh(context.Background()); err != nil {
		s.log.Warn("cannot read the upgrade state", "err", err)
	}
	return s, nil
}

// newPropertyValues returns the properties with their initial values (and
// thereby their D-Bus types).
func newPropertyValues() map[string]any {
	return map[string]any{
		"State":             string(upgrader.StatusIdle),
		"Step":              "",
		"Progress":          uint32(0),
		"CurrentRelease":    "",
		"TargetRelease":     "",
		"Armed":             false,
		"Plan":              map[string]dbus.Variant{},
		"LastResult":        map[string]dbus.Variant{},
		"RollbackAvailable": false,
	}
}

// ErrNameTaken says another process owns org.kos.Upgrade1.
var ErrNameTaken = errors.New("another process owns " + BusName)

// Serve claims the bus name (without queueing: a second daemon fails with
// ErrNameTaken) and serves until ctx ends, the bus connection is lost, or
// the service has been idle for Options.IdleTimeout. A running job is
// cancelled and awaited before it returns.
func (s *Service) Serve(ctx context.Context) error {
	defer s.shutdown()
	reply, err := s.conn.RequestName(BusName, dbus.NameFlagDoNotQueue)
	if err != nil {
		return fmt.Errorf("cannot claim %s on the bus: %w", BusName, err)
	}
	if reply != dbus.RequestNameReplyPrimaryOwner {
		return fmt.Errorf("cannot claim %s: %w", BusName, ErrNameTaken)
	}
	progress.SdNotify("READY=1\nSTATUS=" + s.statusLine())
	s.log.Info("serving", "name", BusName, "root", s.engine.Root.Dir)
	tick := time.NewTicker(s.opts.PollInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.conn.Context().Done():
			return fmt.Errorf("lost the bus connection")
		case <-tick.C:
			if err := s.poll(ctx); err != nil {
				s.log.Warn("cannot read the upgrade state", "err", err)
			}
			if s.idle() {
				s.log.Info("exiting: idle", "timeout", s.opts.IdleTimeout)
				return nil
			}
		}
	}
}

func (s *Service) shutdown() {
	progress.SdNotify("STOPPING=1")
	s.cancel()
	s.jobs.Wait()
	_, _ = s.conn.ReleaseName(BusName)
}

func (s *Service) idle() bool {
	if s.opts.IdleTimeout <= 0 {
		return false
	}
	s.mu.Lock()
	busy := s.job != nil
	s.mu.Unlock()
	if busy {
		s.touch()
		return false
	}
	return time.Since(time.Unix(0, s.lastActivity.Load())) >= s.opts.IdleTimeout
}

func (s *Service) touch() { s.lastActivity.Store(time.Now().UnixNano()) }

func (s *Service) statusLine() string {
	line := fmt.Sprintf("state %v", s.props.value("State"))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.job != nil {
		line = fmt.Sprintf("%s: %s (%d%%)", s.job.name, s.job.step, s.pct)
	}
	return line
}

// stampOf summarizes what the properties are read from, to notice changes
// made by other processes cheaply.
func (s *Service) stampOf() string {
	var b strings.Builder
	for _, p := range []string{
		filepath.Join(s.engine.Root.StateDir(), "state.json"),
		filepath.Join(s.engine.Root.StateDir(), "plan.json"),
		s.engine.Root.Path("/etc/os-release"),
	} {
		if fi, err := os.Stat(p); err == nil {
			fmt.Fprintf(&b, "%d.%d;", fi.ModTime().UnixNano(), fi.Size())
		} else {
			b.WriteString("-;")
		}
	}
	l, _ := os.Readlink(s.engine.Root.SystemUpdateLink())
	b.WriteString(l)
	return b.String()
}

func (s *Service) poll(ctx context.Context) error {
	st := s.props.value("State")
	// An apply in another process ends with the lock released, which the
	// files do not show: while "applying", read everything every time.
	s.refreshMu.Lock()
	same := s.stampOf() == s.stamp
	s.refreshMu.Unlock()
	if st != string(upgrader.StatusApplying) && same {
		return nil
	}
	return s.refresh(ctx)
}

// refresh reads the state and updates the properties that changed.
func (s *Service) refresh(ctx context.Context) error {
	s.refreshMu.Lock()
	defer s.refreshMu.Unlock()
	stamp := s.stampOf()
	r, err := s.engine.Status(ctx)
	if err != nil {
		return err
	}
	s.stamp = stamp
	state, step, target := string(r.State.Status), r.State.Step, r.State.Target
	if r.Plan != nil {
		target = r.Plan.Target.VersionID
	}
	s.mu.Lock()
	pct := s.pct
	if j := s.job; j != nil {
		step = j.step
		if j.name == "prepare" {
			state, target = "preparing", j.target
		}
	}
	s.mu.Unlock()
	cur := ""
	if r.Current != nil {
		cur = r.Current.VersionID
	}
	var last *upgrader.Result
	if r.State.LastResult != nil {
		last = r.State.LastResult
	}
	// What upgrader.RollbackCheck checks without asking the snapshot
	// backend: a successful run with a rollback point, and no merge of an
	// in-place rollback point pending.
	rollback := r.State.Status == upgrader.StatusSucceeded && r.State.Previous != "" &&
		snapshot.Protects(r.State.Backend) && !r.State.RebootRequired
	s.props.update(map[string]any{
		"State":             state,
		"Step":              step,
		"Progress":          pct,
		"CurrentRelease":    cur,
		"TargetRelease":     target,
		"Armed":             r.Armed,
		"Plan":              planSummary(r.Plan),
		"LastResult":        resultDict(last, r.State),
		"RollbackAvailable": rollback,
	})
	return nil
}

// onEvent is the engine's sink: it feeds the running job's figure, the
// Step and Progress properties, the Progress signal and the job's sinks.
// The engine calls it from the job's goroutine only.
func (s *Service) onEvent(e progress.Event) {
	s.mu.Lock()
	j := s.job
	if j == nil {
		s.mu.Unlock()
		return
	}
	pct := uint32(j.overall.Update(e))
	changed := pct != s.pct || e.Step != j.step
	j.step, s.pct = e.Step, pct
	sinks := j.sinks
	s.mu.Unlock()
	if changed {
		s.props.update(map[string]any{"Step": e.Step, "Progress": pct})
	}
	if changed || e.Message != "" {
		// Signals reach every connection on the bus: no credentials.
		if err := s.conn.Emit(ObjectPath, Interface+".Progress", e.Step, pct, pkgmgr.RedactText(e.Message)); err != nil {
			s.log.Debug("cannot emit Progress", "err", err)
		}
	}
	sinks.Report(e)
}

// begin takes the job slot for name, or answers Busy naming the job that
// holds it.
func (s *Service) begin(name string, uid uint32, target string) (*job, *dbus.Error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if j := s.job; j != nil {
		return nil, dbus.NewError(ErrorBusy, []any{fmt.Sprintf(
			"cannot start %s: the daemon is running %s (started %s by uid %d, step %q, %d%%); "+
				"wait for it to finish (kos-upgrade status --follow)",
			name, j.name, j.started.Format(time.RFC3339), j.uid, j.step, s.pct)})
	}
	j := &job{name: name, uid: uid, started: time.Now(), target: target, overall: progress.NewOverall(progress.OpRanges(name))}
	if s.opts.Sinks != nil {
		j.sinks = s.opts.Sinks(name)
	}
	s.job, s.pct = j, 0
	return j, nil
}

// end releases the job slot, reads the state again and emits Finished.
func (s *Service) end(j *job, err error, okMsg string) {
	s.mu.Lock()
	s.job = nil
	if err == nil {
		j.overall.Done()
		s.pct = 100
	}
	s.mu.Unlock()
	if rerr := s.refresh(context.Background()); rerr != nil {
		s.log.Warn("cannot read the upgrade state", "err", rerr)
	}
	msg := okMsg
	if err != nil {
		msg = err.Error()
		s.log.Warn("job failed", "job", j.name, "err", err)
	} else {
		s.log.Info("job finished", "job", j.name)
	}
	if eerr := s.conn.Emit(ObjectPath, Interface+".Finished", err == nil, pkgmgr.RedactText(msg)); eerr != nil {
		s.log.Debug("cannot emit Finished", "err", eerr)
	}
	progress.SdNotify("STATUS=" + s.statusLine())
	s.touch()
}

// engineError turns an engine error into the D-Bus error a client sees:
// its name comes from upgrader.Classify, as the CLI's exit codes do, and
// the client maps the name back to the sentinel (RemoteError.Unwrap).
func engineError(err error) *dbus.Error {
	if err == nil {
		return nil
	}
	return dbus.NewError(ErrorName(upgrader.Classify(err)), []any{pkgmgr.RedactText(err.Error())})
}

// ErrorName is the D-Bus error name of an engine error class. An inhibited
// prepare is Error.Failed: its exit code is that of a failure.
func ErrorName(c upgrader.Class) string {
	switch c {
	case upgrader.ClassBusy:
		return ErrorBusy
	case upgrader.ClassStalePlan:
		return ErrorStalePlan
	}
	return ErrorFailed
}

func invalidArgs(format string, a ...any) *dbus.Error {
	return dbus.NewError(ErrorInvalidArgs, []any{fmt.Sprintf(format, a...)})
}

// options reads an a{sv} options argument: every key must be in want (name
// → pointer to string, bool, []string or uint32), plus "root", which must
// name the daemon's root.
func (s *Service) options(method string, in map[string]dbus.Variant, want map[string]any) *dbus.Error {
	for k, v := range in {
		if k == "root" {
			var root string
			if err := dbus.Store([]any{v.Value()}, &root); err != nil {
				return invalidArgs("%s: option root must be a string (s)", method)
			}
			if !sameDir(root, s.engine.Root.Dir) {
				return dbus.NewError(ErrorWrongRoot, []any{fmt.Sprintf(
					"this daemon serves the system at %s, not %s", s.engine.Root.Dir, root)})
			}
			continue
		}
		dst, ok := want[k]
		if !ok {
			known := []string{"root"}
			for w := range want {
				known = append(known, w)
			}
			return invalidArgs("%s: unknown option %q (known: %s)", method, k, strings.Join(known, ", "))
		}
		// The exact signature, no conversion: "u 5" is not the string
		// "\x05".
		d := reflect.ValueOf(dst).Elem()
		sig := dbus.SignatureOf(d.Interface())
		val := reflect.ValueOf(v.Value())
		if v.Signature() != sig || !val.IsValid() || !val.Type().AssignableTo(d.Type()) {
			return invalidArgs("%s: option %s has type %s, want %s", method, k, v.Signature(), sig)
		}
		d.Set(val)
	}
	return nil
}

func sameDir(a, b string) bool {
	if filepath.Clean(a) == filepath.Clean(b) {
		return true
	}
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}

func (s *Service) reboot(ctx context.Context) error {
	if s.opts.Reboot != nil {
		return s.opts.Reboot(ctx)
	}
	if s.engine.Root.Dir != "/" {
		return fmt.Errorf("cannot reboot: the daemon serves %s, not the running system; pass no_reboot", s.engine.Root.Dir)
	}
	_, err := execlog.Runner{Log: s.log}.Run(ctx, "reboot", "systemctl", "reboot")
	return err
}

// object is the exported org.kos.Upgrade1 interface: only its methods are
// visible on the bus.
type object struct{ s *Service }

// privileged authorizes the caller of msg for method and takes the job
// slot.
func (o object) privileged(msg dbus.Message, method, action, target string) (*job, *dbus.Error) {
	o.s.touch()
	sender, _ := msg.Headers[dbus.FieldSender].Value().(string)
	interactive := msg.Flags&dbus.FlagAllowInteractiveAuthorization != 0
	uid, derr := o.s.auth.authorize(o.s.ctx, sender, method, action, interactive)
	if derr != nil {
		o.s.log.Info("access denied", "method", method, "sender", sender, "uid", uid)
		return nil, derr
	}
	return o.s.begin(strings.ToLower(method), uid, target)
}

// Check runs the preflight checks.
func (o object) Check(msg dbus.Message, options map[string]dbus.Variant) (bool, string, *dbus.Error) {
	var to string
	var answers []string
	if derr := o.s.options("Check", options, map[string]any{"to": &to, "answers": &answers}); derr != nil {
		return false, "", derr
	}
	if to != "" && !upgrader.ValidVersion(to) {
		return false, "", invalidArgs("Check: to %q is not a release version (e.g. 5.9)", to)
	}
	if _, err := preflight.ParseAnswerFlags(answers); err != nil {
		return false, "", invalidArgs("Check: %v", err)
	}
	if o.s.opts.Check == nil {
		return false, "", dbus.NewError(ErrorNotSupported, []any{"Check is not available in this build of the daemon; run kos-upgrade check"})
	}
	j, derr := o.privileged(msg, "Check", ActionCheck, to)
	if derr != nil {
		return false, "", derr
	}
	inhibited, report, err := o.s.opts.Check(o.s.ctx, to, answers)
	o.s.mu.Lock()
	if err == nil {
		o.s.lastCheck = string(report)
	}
	o.s.mu.Unlock()
	o.s.end(j, err, "check finished")
	if err != nil {
		return false, "", engineError(err)
	}
	return inhibited, pkgmgr.RedactText(string(report)), nil
}

// Prepare starts a prepare job and returns at once.
func (o object) Prepare(msg dbus.Message, options map[string]dbus.Variant) *dbus.Error {
	var (
		to, snap  = "", snapshot.BackendAuto
		mode      = upgrader.ModeTarget
		repoSpecs []string
		images    []string
		answers   []string
		noGPG     bool
		downgrade bool
	)
	if derr := o.s.options("Prepare", options, map[string]any{
		"to": &to, "repos": &repoSpecs, "snapshot": &snap, "no_gpg_check": &noGPG, "answers": &answers,
		"mode": &mode, "allow_downgrade": &downgrade, "iso": &images,
	}); derr != nil {
		return derr
	}
	if to == "" && len(images) == 0 {
		return invalidArgs("Prepare needs the option to (s), the target release, e.g. 5.9")
	}
	for _, p := range images {
		if err := validImage(p); err != nil {
			return invalidArgs("Prepare: iso %q: %v", p, err)
		}
	}
	if to != "" && !upgrader.ValidVersion(to) {
		return invalidArgs("Prepare: to %q is not a release version (e.g. 5.9)", to)
	}
	if downgrade {
		answers = append(answers, preflight.AnswerAllowDowngrade+"=yes")
	}
	parsed, err := preflight.ParseAnswerFlags(answers)
	if err != nil {
		return invalidArgs("Prepare: %v", err)
	}
	if !upgrader.ValidMode(mode) {
		return invalidArgs("Prepare: mode %q: choose target or initramfs", mode)
	}
	if _, err := snapshot.ParseBackend(snap); err != nil {
		return invalidArgs("Prepare: %v", err)
	}
	var repos []pkgmgr.Repo
	for _, r := range repoSpecs {
		repo, err := pkgmgr.ParseRepo(r)
		if err != nil {
			return invalidArgs("Prepare: %v", err)
		}
		repos = append(repos, repo)
	}
	action := ActionPrepare
	unsafe := unsafePrepare(noGPG, repos, snap, parsed)
	if len(images) > 0 {
		// An image is a custom package source, like repos: the caller
		// names a file the daemon (root) reads.
		unsafe = append(unsafe, "iso")
	}
	if len(unsafe) > 0 {
		action = ActionPrepareUnsafe
		o.s.log.Info("prepare asks for more than a plain upgrade", "options", strings.Join(unsafe, ", "))
	}
	j, derr := o.privileged(msg, "Prepare", action, to)
	if derr != nil {
		return derr
	}
	from := ""
	if cur, ok := o.s.props.value("CurrentRelease").(string); ok {
		from = cur
	}
	if err := o.s.refresh(o.s.ctx); err != nil { // State: preparing
		o.s.log.Warn("cannot read the upgrade state", "err", err)
	}
	progress.Announce(j.sinks, progress.Milestone{Kind: progress.Started, Op: "prepare", From: from, To: to})
	o.s.jobs.Add(1)
	go func() {
		defer o.s.jobs.Done()
		p, err := o.s.engine.Prepare(o.s.ctx, upgrader.PrepareOptions{To: to, Repos: repos, Images: images, Snapshot: snap, Mode: mode, SkipSignatures: noGPG, Answers: answers})
		msg := ""
		if err == nil {
			c := p.Counts()
			msg = fmt.Sprintf("upgrade to %s prepared: %d packages (%d to upgrade, %d to install, %d to remove), %s to install",
				to, len(p.Transaction), c[pkgmgr.ActionUpgrade], c[pkgmgr.ActionInstall],
				c[pkgmgr.ActionRemove]+c[pkgmgr.ActionObsoleted], preflight.Size(p.InstallSize))
			progress.Announce(j.sinks, progress.Milestone{Kind: progress.Finished, Op: "prepare", From: from, To: to, Message: msg})
		} else {
			progress.Announce(j.sinks, progress.Milestone{Kind: progress.Failed, Op: "prepare", From: from, To: to, Error: err.Error()})
		}
		o.s.end(j, err, msg)
	}()
	return nil
}

// unsafePrepare names what a Prepare asks for beyond a plain upgrade from
// the system's own signed repositories with a snapshot: each needs
// ActionPrepareUnsafe.
func unsafePrepare(noGPG bool, repos []pkgmgr.Repo, snap string, answers preflight.Answers) []string {
	var u []string
	if noGPG {
		u = append(u, "no_gpg_check")
	}
	if len(repos) > 0 {
		u = append(u, "repos")
	}
	if snap == snapshot.BackendNone {
		u = append(u, "snapshot=none")
	}
	if a, ok := answers[preflight.AnswerAllowDowngrade]; ok && a.Value != "no" {
		u = append(u, "allow_downgrade")
	}
	return u
}

// Arm stages (btrfs, unless no_stage) and arms the prepared plan.
func (o object) Arm(msg dbus.Message, options map[string]dbus.Variant) (string, *dbus.Error) {
	var noStage bool
	if derr := o.s.options("Arm", options, map[string]any{"no_stage": &noStage}); derr != nil {
		return "", derr
	}
	j, derr := o.privileged(msg, "Arm", ActionArm, "")
	if derr != nil {
		return "", derr
	}
	p, why, err := o.s.stageAndArm(noStage)
	if err != nil {
		o.s.end(j, err, "")
		return "", engineError(err)
	}
	o.s.end(j, nil, "the upgrade to "+p.Target.VersionID+" is armed: it runs at the next boot"+why)
	return p.ID, nil
}

// Reboot stages (btrfs, unless no_stage), arms the prepared plan and
// reboots.
func (o object) Reboot(msg dbus.Message, options map[string]dbus.Variant) *dbus.Error {
	var noReboot, noStage bool
	if derr := o.s.options("Reboot", options, map[string]any{"no_reboot": &noReboot, "no_stage": &noStage}); derr != nil {
		return derr
	}
	j, derr := o.privileged(msg, "Reboot", ActionReboot, "")
	if derr != nil {
		return derr
	}
	p, why, err := o.s.stageAndArm(noStage)
	if err == nil && !noReboot {
		err = o.s.reboot(o.s.ctx)
	}
	if err != nil {
		o.s.end(j, err, "")
		return engineError(err)
	}
	okMsg := "the upgrade to " + p.Target.VersionID + " is armed; rebooting"
	if noReboot {
		okMsg = "the upgrade to " + p.Target.VersionID + " is armed: it runs at the next boot"
	}
	o.s.end(j, nil, okMsg+why)
	return nil
}

// stageAndArm is what Arm and Reboot do before rebooting, as the CLI's
// reboot: stage on btrfs unless noStage (upgrader.StageBeforeReboot),
// then arm. why says, for the job's message, why the upgrade is not
// staged ("" when it is, or cannot be).
func (s *Service) stageAndArm(noStage bool) (*upgrader.Plan, string, error) {
	_, why, err := s.engine.StageBeforeReboot(s.ctx, noStage)
	if err != nil {
		return nil, "", err
	}
	p, err := s.engine.Arm(s.ctx)
	if why != "" {
		why = " (" + why + ")"
	}
	return p, why, err
}

// Cancel disarms and drops the plan.
func (o object) Cancel(msg dbus.Message, options map[string]dbus.Variant) *dbus.Error {
	if derr := o.s.options("Cancel", options, nil); derr != nil {
		return derr
	}
	j, derr := o.privileged(msg, "Cancel", ActionCancel, "")
	if derr != nil {
		return derr
	}
	err := o.s.engine.Cancel(o.s.ctx)
	o.s.end(j, err, "cancelled: nothing is armed, the plan and staged packages are gone")
	return engineError(err)
}

// Rollback makes the pre-upgrade root boot again.
func (o object) Rollback(msg dbus.Message, options map[string]dbus.Variant) *dbus.Error {
	var noReboot bool
	if derr := o.s.options("Rollback", options, map[string]any{"no_reboot": &noReboot}); derr != nil {
		return derr
	}
	j, derr := o.privileged(msg, "Rollback", ActionRollback, "")
	if derr != nil {
		return derr
	}
	res, err := o.s.engine.Rollback(o.s.ctx)
	if err != nil {
		progress.Announce(j.sinks, progress.Milestone{Kind: progress.Failed, Op: "rollback", Error: err.Error()})
		o.s.end(j, err, "")
		return engineError(err)
	}
	progress.Announce(j.sinks, progress.Milestone{Kind: progress.RolledBack, Op: "rollback",
		From: res.From, To: res.To, RunID: res.RunID})
	if !noReboot {
		err = o.s.reboot(o.s.ctx)
	}
	o.s.end(j, err, "rolled back: the next boot starts "+res.Snapshot+" again")
	return engineError(err)
}

// GetReport returns the status document (or the last Check report).
func (o object) GetReport(options map[string]dbus.Variant) (string, *dbus.Error) {
	o.s.touch()
	what := "status"
	if derr := o.s.options("GetReport", options, map[string]any{"what": &what}); derr != nil {
		return "", derr
	}
	switch what {
	case "status":
	case "check":
		o.s.mu.Lock()
		defer o.s.mu.Unlock()
		if o.s.lastCheck == "" {
			return "{}", nil
		}
		return pkgmgr.RedactText(o.s.lastCheck), nil
	default:
		return "", invalidArgs("GetReport: what %q: choose status or check", what)
	}
	r, err := o.s.engine.Status(o.s.ctx)
	if err != nil {
		return "", engineError(err)
	}
	rep := Report{StatusReport: *r}
	if v := rep.Health; v != nil {
		// The site checks' output stays in health.json (root only): a
		// script may print what not everyone should read.
		c := *v
		c.Checks, c.Hooks = withoutOutput(v.Checks), withoutOutput(v.Hooks)
		rep.Health = &c
	}
	o.s.mu.Lock()
	if j := o.s.job; j != nil {
		rep.Job = &JobInfo{Name: j.name, Step: j.step, Percent: o.s.pct, Target: j.target, UID: j.uid, StartedAt: j.started}
	}
	o.s.mu.Unlock()
	b, err := json.Marshal(rep)
	if err != nil {
		return "", engineError(err)
	}
	// Everyone may read this: the whole status, but no credentials of a
	// repository URL anywhere in it (plan, findings, errors).
	return pkgmgr.RedactText(string(b)), nil
}

// GetHistory returns the recorded runs.
func (o object) GetHistory(options map[string]dbus.Variant) ([]map[string]dbus.Variant, *dbus.Error) {
	o.s.touch()
	var limit uint32
	if derr := o.s.options("GetHistory", options, map[string]any{"limit": &limit}); derr != nil {
		return nil, derr
	}
	h, err := o.s.engine.History(o.s.ctx)
	if err != nil {
		return nil, engineError(err)
	}
	if limit > 0 && int(limit) < len(h) {
		h = h[len(h)-int(limit):]
	}
	out := make([]map[string]dbus.Variant, 0, len(h))
	for i := range h {
		out = append(out, resultDict(&h[i], nil))
	}
	return out, nil
}

// validImage accepts an absolute path to a regular file (an ISO image for
// the iso option of Prepare).
func validImage(p string) error {
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return fmt.Errorf("not a clean absolute path")
	}
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("not a regular file")
	}
	return nil
}

// withoutOutput returns the check results without their output.
func withoutOutput(rs []health.CheckResult) []health.CheckResult {
	out := make([]health.CheckResult, len(rs))
	for i, r := range rs {
		r.Output = ""
		out[i] = r
	}
	return out
}
