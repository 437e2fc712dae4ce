package progress

import (
	"github.com/coreos/go-systemd/v22/journal"
)

// The MESSAGE_IDs of the milestones: fixed forever, documented in
// units/kos-upgrade.catalog (journalctl -x shows the explanation) and
// usable as filters: journalctl MESSAGE_ID=8847a9f7023146d69bf6d09d34bd0949.
const (
	MessageIDStarted    = "9660ba8c44554c62b2f31c59c5b5b257"
	MessageIDFinished   = "8847a9f7023146d69bf6d09d34bd0949"
	MessageIDFailed     = "df99400e99d349fda2702b750936e294"
	MessageIDRolledBack = "81ecb566ac3b484b97c884bfb58e1f78"
	MessageIDHealthy    = "b701b25b9b5d4017ac353cffd3a4e831"
	MessageIDUnhealthy  = "0c271b6d72564c59bebcdadba1751fca"
)

// MessageID returns the MESSAGE_ID of a milestone kind.
func MessageID(k MilestoneKind) string {
	switch k {
	case Started:
		return MessageIDStarted
	case Finished:
		return MessageIDFinished
	case Failed:
		return MessageIDFailed
	case RolledBack:
		return MessageIDRolledBack
	case Healthy:
		return MessageIDHealthy
	case Unhealthy:
		return MessageIDUnhealthy
	}
	return ""
}

// Journal records milestones in the systemd journal with their fixed
// MESSAGE_ID and structured fields (KOS_UPGRADE_OP, _FROM, _TO, _RUN_ID,
// _ERROR). Step events are not sent: under systemd the plain progress
// lines on stdout reach the journal already. Without journald (no socket
// at /run/systemd/journal/socket) it does nothing.
type Journal struct {
	enabled bool
	send    func(msg string, pri journal.Priority, vars map[string]string) error
}

// NewJournal returns the journal sink; it is inert when journald does not
// run.
func NewJournal() *Journal {
	return &Journal{enabled: journal.Enabled(), send: journal.Send}
}

// Enabled reports whether journald was found.
func (j *Journal) Enabled() bool { return j.enabled }

// Report implements Sink; step events are not journaled (see Journal).
func (j *Journal) Report(Event) {}

// Milestone implements MilestoneSink.
func (j *Journal) Milestone(m Milestone) {
	if !j.enabled {
		return
	}
	vars := map[string]string{
		"MESSAGE_ID":        MessageID(m.Kind),
		"SYSLOG_IDENTIFIER": "kos-upgrade",
		"KOS_UPGRADE_OP":    m.Op,
	}
	for k, v := range map[string]string{
		"KOS_UPGRADE_FROM": m.From, "KOS_UPGRADE_TO": m.To, "KOS_UPGRADE_RUN_ID": m.RunID, "KOS_UPGRADE_ERROR": m.Error,
	} {
		if v != "" {
			vars[k] = v
		}
	}
	pri := journal.PriNotice
	if m.Kind == Failed || m.Kind == Unhealthy {
		pri = journal.PriErr
	}
	// A journal that cannot take the entry must not stop an upgrade.
	_ = j.send(m.Text(), pri, vars)
}
