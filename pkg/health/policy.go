package health

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/safefile"
)

// Policy is /etc/kos-upgrade/health.conf (docs/health.md):
//
//	# kinds of regression that fail the upgrade
//	fatal = service-inactive socket-inactive mount-missing unit-failed
//	required = postgresql.service        # must be active (always fatal)
//	ignore = dnf-makecache.service       # never judged
//	activating_wait = 5m                 # how long to wait for units starting
//	check_timeout = 5m                   # per site check
//	hook_timeout = 1m                    # per green.d/red.d hook
//	confirm_after = 30m                  # confirmation window (off: 0)
//	confirm_on_timeout = fallback        # probes not passed in time: fallback or bless
type Policy struct {
	Fatal          map[string]bool
	Required       []string
	Ignore         map[string]bool
	ActivatingWait time.Duration
	CheckTimeout   time.Duration
	HookTimeout    time.Duration
	// ConfirmAfter is the confirmation window (zero: none): a green
	// trial stays on trial until the confirm.d probes pass or this
	// passes.
	ConfirmAfter time.Duration
	// ConfirmBless: when the window ends with probes that did not pass,
	// bless (confirm_on_timeout = bless) instead of falling back.
	ConfirmBless bool
}

// maxConfirmAfter bounds the confirmation window.
const maxConfirmAfter = 7 * 24 * time.Hour

// DefaultPolicy is the policy without health.conf: a service or socket
// that was active and is not, a missing fstab mount, and a unit failed
// that had not failed before are fatal.
func DefaultPolicy() Policy {
	return Policy{
		Fatal:          map[string]bool{KindServiceInactive: true, KindSocketInactive: true, KindMountMissing: true, KindUnitFailed: true, KindRequiredInactive: true},
		Ignore:         map[string]bool{},
		ActivatingWait: 5 * time.Minute,
		CheckTimeout:   5 * time.Minute,
		HookTimeout:    time.Minute,
	}
}

// maxPolicySize caps health.conf.
const maxPolicySize = 1 << 20

// LoadPolicy reads health.conf at path. A missing file is the default
// policy. A damaged one (unreadable, an unknown key or kind, a bad
// duration) returns the default policy and an error saying what is wrong:
// the caller judges with the defaults and reports the error.
func LoadPolicy(path string) (Policy, error) {
	b, err := safefile.Read(path, maxPolicySize)
	if errors.Is(err, os.ErrNotExist) {
		return DefaultPolicy(), nil
	}
	if err != nil {
		return DefaultPolicy(), fmt.Errorf("cannot read %s: %w", path, err)
	}
	p, err := ParsePolicy(b)
	if err != nil {
		return DefaultPolicy(), fmt.Errorf("cannot read %s: %w", path, err)
	}
	return p, nil
}

// ParsePolicy parses health.conf: "key = value" lines, "#" comments;
// lists are separated by spaces or commas; durations are Go's (5m, 90s).
// A key given twice: the last wins. Every error names its line.
func ParsePolicy(b []byte) (Policy, error) {
	p := DefaultPolicy()
	known := map[string]bool{}
	for _, k := range Kinds {
		known[k] = true
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return p, fmt.Errorf("line %d: %q is not key = value", n, line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		list := strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' })
		switch k {
		case "fatal":
			p.Fatal = map[string]bool{KindRequiredInactive: true}
			for _, x := range list {
				if !known[x] {
					return p, fmt.Errorf("line %d: unknown kind %q (known: %s)", n, x, strings.Join(Kinds, ", "))
				}
				p.Fatal[x] = true
			}
		case "required", "ignore":
			for _, x := range list {
				if !ValidUnitName(x) {
					return p, fmt.Errorf("line %d: %q is not a unit name (name.service, name.socket, ...)", n, x)
				}
				if k == "required" {
					p.Required = append(p.Required, x)
				} else {
					p.Ignore[x] = true
				}
			}
		case "activating_wait", "check_timeout", "hook_timeout", "confirm_after":
			max, maxs := 24*time.Hour, "24h"
			if k == "confirm_after" {
				max, maxs = maxConfirmAfter, "168h"
			}
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 || d > max {
				return p, fmt.Errorf("line %d: %s = %q is not a duration between 0 and %s (5m, 90s)", n, k, v, maxs)
			}
			switch k {
			case "activating_wait":
				p.ActivatingWait = d
			case "check_timeout":
				p.CheckTimeout = d
			case "confirm_after":
				p.ConfirmAfter = d
			default:
				p.HookTimeout = d
			}
		case "confirm_on_timeout":
			switch v {
			case "fallback", "bless":
				p.ConfirmBless = v == "bless"
			default:
				return p, fmt.Errorf("line %d: confirm_on_timeout = %q is not fallback or bless", n, v)
			}
		default:
			return p, fmt.Errorf("line %d: unknown key %q (fatal, required, ignore, activating_wait, check_timeout, hook_timeout, confirm_after, confirm_on_timeout)", n, k)
		}
	}
	if err := sc.Err(); err != nil {
		return p, err
	}
	return p, nil
}
