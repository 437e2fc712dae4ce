// Package progress carries progress events from the engine to whoever
// watches: a terminal bar, plain lines, later the journal, plymouth,
// sd_notify and D-Bus.
package progress

// Event is one progress report.
type Event struct {
	// Step is the engine step ("resolve", "download", "verify", "test",
	// "snapshot", "transaction", "switch", ...).
	Step string `json:"step"`
	// Action is what happens to Package ("install", "upgrade", "erase",
	// "download", "verify", ...), empty for step-level messages.
	Action string `json:"action,omitempty"`
	// Package is the package concerned, as NEVRA, when there is one.
	Package string `json:"package,omitempty"`
	// N of Total items done in this step; Total is 0 when unknown.
	N     int `json:"n,omitempty"`
	Total int `json:"total,omitempty"`
	// Message is a human-readable line.
	Message string `json:"message,omitempty"`
}

// Percent returns the step's completion in percent, or -1 if unknown.
func (e Event) Percent() int {
	if e.Total <= 0 {
		return -1
	}
	return e.N * 100 / e.Total
}

// Sink receives events. Implementations must be safe for use from one
// goroutine at a time; the engine never calls a sink concurrently.
type Sink interface {
	Report(Event)
}

// Func adapts a function to a Sink.
type Func func(Event)

// Report calls f(e).
func (f Func) Report(e Event) { f(e) }

// Discard drops every event.
var Discard Sink = Func(func(Event) {})

// Multi sends each event to every sink in turn.
type Multi []Sink

// Report sends e to each sink.
func (m Multi) Report(e Event) {
	for _, s := range m {
		s.Report(e)
	}
}
