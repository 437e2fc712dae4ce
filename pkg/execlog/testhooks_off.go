//go:build !kostesthooks

package execlog

// TestHooks is false: this binary was built without the build tag
// kostesthooks and has no test hooks (see testhooks_on.go).
const TestHooks = false
