package preflight_test

import (
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/preflight"
)

// FuzzParseAnswers: any answers file parses or is refused without a panic.
func FuzzParseAnswers(f *testing.F) {
	f.Add([]byte("# answers\nallow-downgrade = yes\n\nthird-party-repos=keep\n"))
	f.Add([]byte("= x\nno value\nk = v = w\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = preflight.ParseAnswers(b, "answers.conf")
	})
}
