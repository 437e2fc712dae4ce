package progress

import (
	"context"
	"fmt"
	"os/exec"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/execlog"
)

// Plymouth shows messages and the overall progress on the boot splash when
// plymouthd runs (plymouth --ping succeeds): display-message for step
// messages, system-update --progress=N for the figure. Without plymouth
// (headless servers, containers) it does nothing; a failing plymouth call
// is ignored.
type Plymouth struct {
	bin     string
	overall *Overall
	lastPct int
	timeout time.Duration
}

// NewPlymouth returns the plymouth sink for an operation with ranges r (see
// NewOverall), or nil when plymouth is not installed or not running.
func NewPlymouth(r Ranges) *Plymouth {
	bin, err := exec.LookPath("plymouth")
	if err != nil {
		return nil
	}
	p := &Plymouth{bin: bin, overall: NewOverall(r), lastPct: -1, timeout: 2 * time.Second}
	if p.run("--ping") != nil {
		return nil
	}
	return p
}

func (p *Plymouth) run(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
	defer cancel()
	return execlog.Command(ctx, append([]string{p.bin}, args...)).Run()
}

// Report implements Sink.
func (p *Plymouth) Report(e Event) {
	if p == nil {
		return
	}
	if e.Message != "" {
		_ = p.run("display-message", "--text="+e.Message)
	}
	if pct := p.overall.Update(e); pct != p.lastPct {
		p.lastPct = pct
		_ = p.run("system-update", fmt.Sprintf("--progress=%d", pct))
	}
}

// Milestone implements MilestoneSink: the milestone is shown as a message.
func (p *Plymouth) Milestone(m Milestone) {
	if p == nil {
		return
	}
	_ = p.run("display-message", "--text="+m.Text())
}
