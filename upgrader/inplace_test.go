package upgrader_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot"
	"github.com/keyarchos/kos-upgrade/pkg/snapshot/snapshottest"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

// fakeThick is a Snapshotter with snapshot.InPlace that behaves as the LVM
// backend on a thick LV (docs/lvm.md): Create makes a rollback point (a
// copy of the root in a directory standing for the snapshot LV, where Path
// lets the engine write) and returns the live root; Activate is a no-op; Rollback marks the point
// as merging (Delete then refuses it, as lvm does). It logs every call that
// changes something.
type fakeThick struct {
	root string // the live root, the LV "root"
	dir  string // where rollback points live

	mu      sync.Mutex
	points  map[string]bool // name -> merging
	calls   []string
	created []string
}

var (
	_ snapshot.Snapshotter = (*fakeThick)(nil)
	_ snapshot.InPlace     = (*fakeThick)(nil)
)

// TestFakeThickConformance holds the stand-in for a thick LV to the
// Snapshotter contract the real LVM backend passes in the guest
// (pkg/snapshot/snapshottest), so that the engine tests built on it test
// what LVM does.
func TestFakeThickConformance(t *testing.T) {
	root := t.TempDir()
	f := newFakeThick(t, root)
	snapshottest.Run(t, func(t *testing.T) (snapshot.Snapshotter, string) { return f, root }, nil)
}

func newFakeThick(t *testing.T, root string) *fakeThick {
	return &fakeThick{root: root, dir: t.TempDir(), points: map[string]bool{}}
}

func (f *fakeThick) factory(_ context.Context, backend string, _ sysroot.Root) (snapshot.Snapshotter, error) {
	if backend != "lvm" && backend != "auto" {
		return nil, fmt.Errorf("fake: backend %q", backend)
	}
	return f, nil
}

func (f *fakeThick) log(format string, a ...any) {
	f.calls = append(f.calls, fmt.Sprintf(format, a...))
}

func (f *fakeThick) pointDir(name string) string {
	return filepath.Join(f.dir, strings.ReplaceAll(name, "/", "-"))
}

func (f *fakeThick) Backend() string       { return "lvm" }
func (f *fakeThick) UpgradesInPlace() bool { return true }
func (f *fakeThick) Close() error          { return nil }

func (f *fakeThick) Current(context.Context) (snapshot.Snapshot, error) {
	return snapshot.Snapshot{Name: "root", Path: f.root, Default: true}, nil
}

func (f *fakeThick) Default(ctx context.Context) (snapshot.Snapshot, error) { return f.Current(ctx) }

func (f *fakeThick) Create(_ context.Context, name string) (snapshot.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log("create %s", name)
	if _, ok := f.points[name]; ok {
		return snapshot.Snapshot{}, snapshot.ErrExists
	}
	if err := os.MkdirAll(f.pointDir(name), 0o755); err != nil {
		return snapshot.Snapshot{}, err
	}
	// The rollback point holds the root as it is now (the conformance
	// suite checks it), as a copy-on-write snapshot would.
	if out, err := exec.Command("cp", "-a", "--reflink=auto", f.root+"/.", f.pointDir(name)).CombinedOutput(); err != nil {
		return snapshot.Snapshot{}, fmt.Errorf("fake: cannot copy the root: %v: %s", err, out)
	}
	f.points[name] = false
	f.created = append(f.created, name)
	return snapshot.Snapshot{Name: name, Path: f.root}, nil
}

func (f *fakeThick) Delete(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log("delete %s", name)
	merging, ok := f.points[name]
	switch {
	case name == "root":
		return fmt.Errorf("fake: cannot delete the current root")
	case !ok:
		return snapshot.ErrNotFound
	case merging:
		return fmt.Errorf("fake: %s is being merged", name)
	}
	delete(f.points, name)
	return os.RemoveAll(f.pointDir(name))
}

func (f *fakeThick) Activate(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log("activate %s", name)
	return nil
}

func (f *fakeThick) Path(_ context.Context, name string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if name == "root" {
		return f.root, nil
	}
	if merging, ok := f.points[name]; !ok || merging {
		return "", fmt.Errorf("fake: %s: %w", name, snapshot.ErrNotFound)
	}
	return f.pointDir(name), nil
}

func (f *fakeThick) List(ctx context.Context) ([]snapshot.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := []snapshot.Snapshot{{Name: "root", Path: f.root, Default: true}}
	for n := range f.points {
		out = append(out, snapshot.Snapshot{Name: n})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (f *fakeThick) Rollback(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log("rollback %s", name)
	if _, ok := f.points[name]; !ok {
		return snapshot.ErrNotFound
	}
	f.points[name] = true
	return nil
}

func (f *fakeThick) callsOf(verb string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		if strings.HasPrefix(c, verb+" ") {
			out = append(out, strings.TrimPrefix(c, verb+" "))
		}
	}
	return out
}

// thickSystem is the fixture 5.8 system on a plain directory, whose engine
// uses fakeThick as its "lvm" backend.
type thickSystem struct {
	Set  *fixture.Set
	Root string
	Fake *fakeThick
	Eng  *upgrader.Engine
	Sink *recordingSink
}

func newThickSystem(t *testing.T) *thickSystem {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping real-component test in -short mode")
	}
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "rpm", "rpmkeys", "/usr/bin/python3")
	set := fixture.MustBuild(t)
	root := t.TempDir()
	if err := fixture.InstallBase(context.Background(), set, root); err != nil {
		t.Fatal(err)
	}
	s := &thickSystem{Set: set, Root: root, Fake: newFakeThick(t, root), Sink: &recordingSink{}}
	s.Eng = s.engine(t)
	return s
}

func (s *thickSystem) engine(t *testing.T) *upgrader.Engine {
	r, err := sysroot.New(s.Root)
	if err != nil {
		t.Fatal(err)
	}
	e := upgrader.New(r, s.Sink, nil)
	e.Snapshotters = s.Fake.factory
	return e
}

func (s *thickSystem) prepareAndArm(t *testing.T, repos ...string) {
	t.Helper()
	ctx := context.Background()
	opts := upgrader.PrepareOptions{To: "5.9", Snapshot: "lvm"}
	for _, n := range repos {
		opts.Repos = append(opts.Repos, pkgmgr.Repo{ID: "fixture-" + n, BaseURL: "file://" + s.Set.Repos[n]})
	}
	p, err := s.Eng.Prepare(ctx, opts)
	if err != nil {
		t.Fatalf("prepare: %v", err)
	}
	if p.Snapshot != "lvm" {
		t.Fatalf("plan snapshot %q, want lvm", p.Snapshot)
	}
	if _, err := s.Eng.Arm(ctx); err != nil {
		t.Fatalf("arm: %v", err)
	}
}

// pointState reads the state kept inside rollback point name.
func (s *thickSystem) pointState(t *testing.T, name string) *upgrader.State {
	t.Helper()
	r, _ := sysroot.New(s.Fake.pointDir(name))
	st, err := upgrader.New(r, nil, nil).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st.State
}

func TestInPlaceSuccessKeepsRollbackPoint(t *testing.T) {
	s := newThickSystem(t)
	ctx := context.Background()
	s.prepareAndArm(t)
	res, err := s.Eng.Apply(ctx)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if !res.Ran || !res.Result.Success || !res.Result.InPlace {
		t.Fatalf("apply result: %+v", res.Result)
	}
	if len(s.Fake.created) != 1 {
		t.Fatalf("created %v, want one rollback point", s.Fake.created)
	}
	name := s.Fake.created[0]
	// The live root is the upgraded one.
	if got := rpmQA(t, s.Root); !strings.Contains(strings.Join(got, " "), "kos-release-5.9") {
		t.Errorf("the root was not upgraded in place: %v", got)
	}
	for _, verb := range []string{"delete", "activate", "rollback"} {
		if c := s.Fake.callsOf(verb); len(c) > 0 {
			t.Errorf("%s called on success: %v", verb, c)
		}
	}
	st, err := s.Eng.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.State.Status != upgrader.StatusSucceeded || !st.State.InPlace || st.State.Previous != name || st.State.RebootRequired {
		t.Errorf("state after an in-place success: %+v", st.State)
	}
	if st.State.Boot != nil {
		t.Errorf("boot state without a boot loader: %+v", st.State.Boot)
	}

	// Clean keeps the rollback point: it is the only copy of the old root.
	removed, err := s.Eng.Clean(ctx)
	if err != nil {
		t.Fatalf("clean: %v", err)
	}
	if c := s.Fake.callsOf("delete"); len(c) > 0 {
		t.Errorf("clean deleted %v (removed %v)", c, removed)
	}

	// rollback merges it back, records it in the rollback point (the
	// root after the reboot) and says a reboot completes it.
	rb, err := s.Eng.Rollback(ctx)
	if err != nil {
		t.Fatalf("rollback: %v", err)
	}
	if !rb.InPlace || rb.Status != upgrader.StatusRolledBack || rb.Snapshot != name {
		t.Errorf("rollback result: %+v", rb)
	}
	if got := s.Fake.callsOf("rollback"); !reflect.DeepEqual(got, []string{name}) {
		t.Errorf("Rollback calls %v, want [%s]", got, name)
	}
	if c := s.Fake.callsOf("activate"); len(c) > 0 {
		t.Errorf("activate called by an in-place rollback: %v", c)
	}
	st, _ = s.Eng.Status(ctx)
	if st.State.Status != upgrader.StatusRolledBack || !st.State.RebootRequired || st.State.Previous != name {
		t.Errorf("state after rollback: %+v", st.State)
	}
	if ps := s.pointState(t, name); ps.Status != upgrader.StatusRolledBack || ps.RebootRequired || ps.Previous != "" {
		t.Errorf("state in the rollback point: %+v", ps)
	}
	out, _ := s.statusText(t)
	if !strings.Contains(out, "Reboot:   required") {
		t.Errorf("status does not say a reboot completes the rollback:\n%s", out)
	}
	// Nothing else until the reboot; clean leaves the merging point.
	if _, err := s.Eng.Rollback(ctx); err == nil || !strings.Contains(err.Error(), "reboot") {
		t.Errorf("second rollback: %v", err)
	}
	if _, err := s.Eng.Clean(ctx); err != nil {
		t.Errorf("clean while the merge is pending: %v", err)
	}
	if c := s.Fake.callsOf("delete"); len(c) > 0 {
		t.Errorf("clean deleted %v", c)
	}
}

// statusText runs the CLI's status on the root.
func (s *thickSystem) statusText(t *testing.T) (string, error) {
	t.Helper()
	sys := &system{Root: s.Root}
	return sys.kosUpgrade(t, nil, "status")
}

func TestInPlaceFailingPreRollsBack(t *testing.T) {
	s := newThickSystem(t)
	ctx := context.Background()
	s.prepareAndArm(t, fixture.Repo59, fixture.Repo59FailPre)
	_, err := s.Eng.Apply(ctx)
	if err == nil {
		t.Fatal("apply succeeded with a failing pre-install scriptlet")
	}
	if !strings.Contains(err.Error(), "failpre") || !strings.Contains(err.Error(), "reboot to complete the rollback") {
		t.Errorf("error: %v", err)
	}
	if len(s.Fake.created) != 1 {
		t.Fatalf("created %v", s.Fake.created)
	}
	name := s.Fake.created[0]
	if got := s.Fake.callsOf("rollback"); !reflect.DeepEqual(got, []string{name}) {
		t.Errorf("Rollback calls %v, want [%s]", got, name)
	}
	if c := s.Fake.callsOf("delete"); len(c) > 0 {
		t.Errorf("the only copy of the old root was deleted: %v", c)
	}
	st, err := s.Eng.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lr := st.State.LastResult
	if st.State.Status != upgrader.StatusFailed || !st.State.RebootRequired || lr == nil || lr.Step != upgrader.StepTransaction ||
		!strings.Contains(lr.Error, "failpre") || !strings.Contains(lr.Error, "reboot to complete the rollback") {
		t.Errorf("state: %+v, last result %+v", st.State, lr)
	}
	// What the root says after the merge.
	ps := s.pointState(t, name)
	if ps.Status != upgrader.StatusFailed || ps.RebootRequired || ps.LastResult == nil || !strings.Contains(ps.LastResult.Error, "rolled back") {
		t.Errorf("state in the rollback point: %+v %+v", ps, ps.LastResult)
	}
	// No new run on a root that is replaced at the next boot.
	if _, err := s.Eng.Arm(ctx); err == nil || !strings.Contains(err.Error(), "reboot") {
		t.Errorf("arm with a rollback pending: %v", err)
	}
}

// TestInPlaceSettle recovers in-place runs a crash left in each step, from
// a state file written as the crashed run leaves it.
func TestInPlaceSettle(t *testing.T) {
	const name = "kos-upgrade/20261126T000000.000Z-5.9"
	for _, tc := range []struct {
		step       string
		wantStatus upgrader.Status
		rollback   bool
		deleted    bool
	}{
		{step: upgrader.StepSnapshot, wantStatus: upgrader.StatusFailed, deleted: true},
		{step: upgrader.StepTransaction, wantStatus: upgrader.StatusFailed, rollback: true},
		{step: upgrader.StepFinalize, wantStatus: upgrader.StatusSucceeded},
		{step: upgrader.StepSwitch, wantStatus: upgrader.StatusSucceeded},
	} {
		t.Run(tc.step, func(t *testing.T) {
			root := t.TempDir()
			fake := newFakeThick(t, root)
			if _, err := fake.Create(context.Background(), name); err != nil {
				t.Fatal(err)
			}
			state := fmt.Sprintf(`{"version": 1, "status": "applying", "step": %q, "run_id": "20261126T000000.000Z-5.9", "target": "5.9",
"backend": "lvm", "snapshot": %q, "previous": %q, "in_place": true, "updated_at": "2026-11-26T00:00:00Z"}`, tc.step, name, name)
			writeFile(t, filepath.Join(root, sysroot.StateDirRel, "state.json"), state, 0o644)
			r, _ := sysroot.New(root)
			e := upgrader.New(r, nil, nil)
			e.Snapshotters = fake.factory
			// status (which changes nothing) says what settling gives.
			if st, err := e.Status(context.Background()); err != nil || st.State.Status != tc.wantStatus {
				t.Errorf("status before settling: %+v, %v; want %s", st, err, tc.wantStatus)
			}
			if _, err := e.Clean(context.Background()); err != nil { // settles first
				t.Fatalf("clean: %v", err)
			}
			st, err := e.Status(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if st.State.Status != tc.wantStatus || st.State.LastResult == nil {
				t.Fatalf("state %+v, want %s", st.State, tc.wantStatus)
			}
			if got := len(fake.callsOf("rollback")) > 0; got != tc.rollback {
				t.Errorf("rollback called: %v, want %v (calls %v)", got, tc.rollback, fake.calls)
			}
			if got := len(fake.callsOf("delete")) > 0; got != tc.deleted {
				t.Errorf("delete called: %v, want %v (calls %v)", got, tc.deleted, fake.calls)
			}
			if tc.rollback {
				if !st.State.RebootRequired || !strings.Contains(st.State.LastResult.Error, "reboot to complete the rollback") {
					t.Errorf("state after the merge: %+v %+v", st.State, st.State.LastResult)
				}
				r2, _ := sysroot.New(fake.pointDir(name))
				ps, err := upgrader.New(r2, nil, nil).Status(context.Background())
				if err != nil || ps.State.Status != upgrader.StatusFailed || !strings.Contains(ps.State.LastResult.Error, "rolled back") {
					t.Errorf("state in the rollback point: %+v, %v", ps, err)
				}
			}
			if tc.wantStatus == upgrader.StatusSucceeded && (st.State.Previous != name || !st.State.InPlace) {
				t.Errorf("rollback point not kept: %+v", st.State)
			}
		})
	}
}
