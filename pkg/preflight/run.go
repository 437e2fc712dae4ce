package preflight

import (
	"context"
	"time"
)

// Run collects the facts and evaluates them with the answers. The caller
// saves the report (Report.Save) where it keeps its state.
func Run(ctx context.Context, opts Options, a Answers) (*Report, *Facts, error) {
	f, err := Collect(ctx, opts)
	if err != nil {
		return nil, nil, err
	}
	return Evaluate(f, a, time.Now()), f, nil
}
