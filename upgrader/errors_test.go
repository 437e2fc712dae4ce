package upgrader_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/preflight"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want upgrader.Class
	}{
		{name: "plain failure", err: errors.New("cannot do it"), want: upgrader.ClassFailed},
		{name: "no plan", err: fmt.Errorf("cannot arm: %w", upgrader.ErrNoPlan), want: upgrader.ClassFailed},
		{name: "busy", err: fmt.Errorf("cannot lock: %w", upgrader.ErrBusy), want: upgrader.ClassBusy},
		{name: "stale plan", err: fmt.Errorf("cannot arm: %w", upgrader.ErrStalePlan), want: upgrader.ClassStalePlan},
		{name: "bad plan", err: fmt.Errorf("cannot load: %w", upgrader.ErrBadPlan), want: upgrader.ClassStalePlan},
		{name: "staged changed", err: &upgrader.StepError{Step: "verify", Err: upgrader.ErrStagedChanged}, want: upgrader.ClassStalePlan},
		{name: "inhibited", err: fmt.Errorf("cannot prepare: %w", preflight.ErrInhibited), want: upgrader.ClassInhibited},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := upgrader.Classify(tc.err); got != tc.want {
				t.Errorf("Classify(%v) = %d, want %d", tc.err, got, tc.want)
			}
		})
	}
}
