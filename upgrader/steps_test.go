package upgrader_test

import (
	"os"
	"reflect"
	"regexp"
	"testing"

	"github.com/keyarchos/kos-upgrade/upgrader"
)

// TestStateDocListsTheStepTable: docs/state.md's apply table names the
// steps of upgrader/steps.go, in the table's order.
func TestStateDocListsTheStepTable(t *testing.T) {
	b, err := os.ReadFile("../docs/state.md")
	if err != nil {
		t.Fatal(err)
	}
	var doc []string
	for _, m := range regexp.MustCompile("(?m)^\\| [0-9]+ \\| `([a-z]+)`[ :(]").FindAllSubmatch(b, -1) {
		doc = append(doc, string(m[1]))
	}
	if want := upgrader.ApplySteps(); !reflect.DeepEqual(doc, want) {
		t.Errorf("docs/state.md lists the apply steps %v, the table in steps.go %v", doc, want)
	}
}

// TestApplyProgressCoversEveryStep: each step owns a range of the overall
// progress, in order, ending at 100.
func TestApplyProgressCoversEveryStep(t *testing.T) {
	r := upgrader.ApplyProgress()
	last := 0
	for _, s := range upgrader.ApplySteps() {
		rg, ok := r[s]
		if !ok {
			t.Errorf("step %s has no progress range", s)
			continue
		}
		if rg[0] < last || rg[1] < rg[0] {
			t.Errorf("step %s: range %v after %d", s, rg, last)
		}
		last = rg[1]
	}
	if last != 100 {
		t.Errorf("the last step ends at %d, want 100", last)
	}
}
