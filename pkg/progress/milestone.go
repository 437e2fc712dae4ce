package progress

// MilestoneKind is a point in the life of an operation that deserves a
// record of its own: the journal gives each kind a fixed MESSAGE_ID.
type MilestoneKind string

// The milestones. Their MESSAGE_IDs are in journal.go and documented in
// units/kos-upgrade.catalog.
const (
	Started    MilestoneKind = "started"
	Finished   MilestoneKind = "finished"
	Failed     MilestoneKind = "failed"
	RolledBack MilestoneKind = "rolled-back"
	// Healthy and Unhealthy are the first-boot verdicts (green, red).
	Healthy   MilestoneKind = "healthy"
	Unhealthy MilestoneKind = "unhealthy"
)

// Milestone is the start or the end of an operation (prepare, apply,
// rollback, ...).
type Milestone struct {
	Kind MilestoneKind
	// Op is the operation: prepare, arm, apply, cancel, rollback.
	Op string
	// From and To are the releases involved, when known.
	From, To string
	// RunID names the apply or rollback run (its history record).
	RunID string
	// Error is the failure, for Failed.
	Error string
	// Message is a human-readable line; a default is made from the
	// other fields when it is empty.
	Message string
}

// Text returns m.Message, or a sentence made from the other fields.
func (m Milestone) Text() string {
	if m.Message != "" {
		return m.Message
	}
	what := "kos-upgrade " + m.Op
	if m.To != "" {
		if m.From != "" {
			what += " " + m.From + " → " + m.To
		} else {
			what += " to " + m.To
		}
	}
	switch m.Kind {
	case Started:
		return what + " started"
	case Finished:
		return what + " finished successfully"
	case Failed:
		if m.Error != "" {
			return what + " failed: " + m.Error
		}
		return what + " failed"
	case RolledBack:
		return what + ": rolled back to the pre-upgrade root"
	}
	return what + " " + string(m.Kind)
}

// MilestoneSink is implemented by sinks that record milestones (the
// journal). Other sinks ignore them.
type MilestoneSink interface {
	Milestone(Milestone)
}

// Announce passes m to s when s records milestones; it does nothing
// otherwise.
func Announce(s Sink, m Milestone) {
	if ms, ok := s.(MilestoneSink); ok {
		ms.Milestone(m)
	}
}

// Milestone passes m to every sink of the list that records milestones.
func (m Multi) Milestone(ms Milestone) {
	for _, s := range m {
		Announce(s, ms)
	}
}

// SystemSinks returns the sinks of the running system for an operation
// with ranges r that are available here: the journal when journald runs,
// plymouth when it runs, sd_notify when NOTIFY_SOCKET is set. The list may
// be empty.
func SystemSinks(r Ranges) Multi {
	var m Multi
	if j := NewJournal(); j.Enabled() {
		m = append(m, j)
	}
	if p := NewPlymouth(r); p != nil {
		m = append(m, p)
	}
	if n := NewNotify(r); n != nil {
		m = append(m, n)
	}
	return m
}
