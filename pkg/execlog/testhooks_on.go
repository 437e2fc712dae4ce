//go:build kostesthooks

package execlog

// TestHooks is true in a binary built with the build tag kostesthooks:
// the tests' crash and hang points (KOS_UPGRADE_TEST_CRASH_AT,
// KOS_UPGRADE_TEST_HANG_AT) are honoured and passed on to commands. The
// tests build kos-upgrade with it (testenv.BuildFlags, make GOTAGS=...);
// the product is built without it and ignores those variables.
const TestHooks = true
