package progress

// Overall turns the per-step events of one operation into a single figure
// from 0 to 100 that never goes backwards: each step owns a range of the
// whole, and a step's N/Total moves the figure inside that range. It is
// what the D-Bus Progress property, plymouth and sd_notify show.
type Overall struct {
	ranges Ranges
	last   int
}

// Ranges maps the steps of one operation to the part of 0..100 each owns.
// Steps not listed leave the figure as it is.
type Ranges map[string][2]int

// StepWeight is a step and its share of an operation.
type StepWeight struct {
	Step   string
	Weight int
}

// Weighted returns the ranges of steps run in this order, each owning its
// weight's share of 0..100; a step of weight 0 at the end owns 100.
func Weighted(steps []StepWeight) Ranges {
	total := 0
	for _, s := range steps {
		total += s.Weight
	}
	r := Ranges{}
	sum := 0
	for _, s := range steps {
		lo := 100
		if total > 0 {
			lo = sum * 100 / total
		}
		sum += s.Weight
		hi := 100
		if total > 0 {
			hi = sum * 100 / total
		}
		r[s.Step] = [2]int{lo, hi}
	}
	return r
}

// OpRanges returns the ranges of the operations whose steps live here:
// prepare and rollback. Apply's come from its step table
// (upgrader.ApplyProgress); anything else tracks nothing.
func OpRanges(op string) Ranges {
	switch op {
	case "prepare":
		return Ranges{
			"check": {0, 2}, "fingerprint": {2, 5}, "resolve": {5, 15}, "download": {15, 60},
			"stage": {60, 65}, "verify": {65, 80}, "test": {80, 97}, "prepare": {100, 100},
		}
	case "rollback":
		return Ranges{"rollback": {50, 50}}
	}
	return nil
}

// NewOverall returns the tracker of an operation with these ranges (nil:
// it stays at 0 until Done).
func NewOverall(r Ranges) *Overall {
	return &Overall{ranges: r}
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
