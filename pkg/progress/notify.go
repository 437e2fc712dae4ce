package progress

import (
	"fmt"
	"os"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notify sends sd_notify STATUS= lines (shown by systemctl status) when the
// process runs as a systemd service (NOTIFY_SOCKET is set); it does nothing
// otherwise. It sends a line only when the step, the message or the
// overall percentage changes.
type Notify struct {
	overall *Overall
	last    string
}

// NewNotify returns the sd_notify sink for an operation with ranges r (see
// NewOverall), or nil when NOTIFY_SOCKET is not set.
func NewNotify(r Ranges) *Notify {
	if os.Getenv("NOTIFY_SOCKET") == "" {
		return nil
	}
	return &Notify{overall: NewOverall(r)}
}

// Report implements Sink.
func (n *Notify) Report(e Event) {
	if n == nil {
		return
	}
	p := n.overall.Update(e)
	line := fmt.Sprintf("%s (%d%%)", e.Step, p)
	if e.Message != "" {
		line = fmt.Sprintf("%s: %s (%d%%)", e.Step, e.Message, p)
	}
	if line == n.last {
		return
	}
	n.last = line
	SdNotify("STATUS=" + line)
}

// Milestone implements MilestoneSink: the milestone becomes the status.
func (n *Notify) Milestone(m Milestone) {
	if n == nil {
		return
	}
	n.last = m.Text()
	SdNotify("STATUS=" + n.last)
}

// SdNotify sends state (READY=1, STATUS=..., STOPPING=1) to the service
// manager when NOTIFY_SOCKET is set; errors are ignored (a status line is
// never worth failing for).
func SdNotify(state string) {
	_, _ = daemon.SdNotify(false, state)
}
