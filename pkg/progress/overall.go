package progress

// Overall turns the per-step events of one operation into a single figure
// from 0 to 100 that never goes backwards: each step owns a range of the
// whole, and a step's N/Total moves the figure inside that range. It is
// what the D-Bus Progress property, plymouth and sd_notify show.
type Overall struct {
	ranges map[string][2]int
	last   int
}

// Step ranges per operation. Steps not listed leave the figure as it is.
var overallRanges = map[string]map[string][2]int{
	"prepare": {
		"check": {0, 2}, "fingerprint": {2, 5}, "resolve": {5, 15}, "download": {15, 60},
		"stage": {60, 65}, "verify": {65, 80}, "test": {80, 97}, "prepare": {100, 100},
	},
	"apply": {
		"recover": {0, 2}, "verify": {0, 5}, "snapshot": {5, 10}, "transaction": {10, 90},
		"finalize": {90, 93}, "switch": {93, 97}, "done": {100, 100},
	},
	"rollback": {"rollback": {50, 50}},
}

// NewOverall returns the tracker of operation op (prepare, apply,
// rollback; anything else tracks nothing and stays at 0 until Done).
func NewOverall(op string) *Overall {
	return &Overall{ranges: overallRanges[op]}
}

// Update accounts for e and returns the figure.
func (o *Overall) Update(e Event) int {
	r, ok := o.ranges[e.Step]
	if !ok {
		return o.last
	}
	p := r[0]
	if e.Total > 0 {
		n := min(max(e.N, 0), e.Total)
		p = r[0] + (r[1]-r[0])*n/e.Total
	}
	if p > o.last {
		o.last = p
	}
	return o.last
}

// Percent returns the figure without changing it.
func (o *Overall) Percent() int { return o.last }

// Done sets the figure to 100.
func (o *Overall) Done() { o.last = 100 }
