package progress

import (
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Writer shows events to a person: a redrawn progress bar on a terminal,
// plain lines elsewhere (logs, pipes, the journal).
type Writer struct {
	w       io.Writer
	tty     bool
	width   int
	barOpen bool
}

// NewWriter returns a sink writing to w; it draws a bar when w is a
// terminal that can redraw a line (not TERM=dumb).
func NewWriter(w io.Writer) *Writer {
	t := &Writer{w: w, width: 80}
	if os.Getenv("TERM") == "dumb" {
		return t
	}
	if f, ok := w.(*os.File); ok {
		if ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ); err == nil {
			t.tty = true
			if ws.Col > 20 {
				t.width = int(ws.Col)
			}
		}
	}
	return t
}

// NewPlainWriter returns a sink that always writes plain lines.
func NewPlainWriter(w io.Writer) *Writer { return &Writer{w: w, width: 80} }

// Report implements Sink.
func (t *Writer) Report(e Event) {
	if e.Total > 0 && e.Message == "" {
		if t.tty {
			t.drawBar(e)
			return
		}
		fmt.Fprintf(t.w, "%s: [%d/%d] %s %s\n", e.Step, e.N, e.Total, e.Action, e.Package)
		return
	}
	t.endBar()
	if e.Message != "" {
		fmt.Fprintf(t.w, "%s: %s\n", e.Step, e.Message)
	}
}

// Close ends a bar in progress with a newline.
func (t *Writer) Close() { t.endBar() }

func (t *Writer) endBar() {
	if t.barOpen {
		fmt.Fprint(t.w, "\n")
		t.barOpen = false
	}
}

func (t *Writer) drawBar(e Event) {
	label := fmt.Sprintf("%-11s", e.Step)
	count := fmt.Sprintf(" %3d%% %d/%d ", e.Percent(), e.N, e.Total)
	barW := 30
	filled := barW * e.N / e.Total
	bar := "[" + strings.Repeat("#", filled) + strings.Repeat(".", barW-filled) + "]"
	line := label + bar + count + strings.TrimSpace(e.Action+" "+e.Package)
	if len(line) > t.width-1 {
		line = line[:t.width-1]
	}
	fmt.Fprintf(t.w, "\r\033[K%s", line)
	t.barOpen = true
	if e.N >= e.Total {
		t.endBar()
	}
}
