package upgrader

import "os"

func mkdirAll(p string) error { return os.MkdirAll(p, 0o755) }

// CrashPoints are the apply table's crash points (steps.go).
var CrashPoints = crashPoints
