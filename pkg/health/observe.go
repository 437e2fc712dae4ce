package health

import (
	"context"
	"os"
	"strings"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"

	"github.com/keyarchos/kos-upgrade/pkg/execlog"
)

// systemdTimeout bounds the D-Bus calls of one observation.
const systemdTimeout = time.Minute

// Observe measures the system at root: live when root is "/" and systemd
// answers (directly at /run/systemd/private as root, else on the system
// bus), otherwise offline (CollectOffline), with why in NotMeasured, and
// the preset of every enabled unit. It never fails: what cannot be
// measured is marked so.
func Observe(ctx context.Context, root string, now time.Time) *Baseline {
	b := observe(ctx, root, now)
	presets := LoadPresets(root)
	for i := range b.Units {
		if b.Units[i].Enabled {
			b.Units[i].Preset = presets.Of(b.Units[i].Name).String()
		}
	}
	return b
}

func observe(ctx context.Context, root string, now time.Time) *Baseline {
	if root != "/" {
		return CollectOffline(root, now)
	}
	ctx, cancel := context.WithTimeout(ctx, systemdTimeout)
	defer cancel()
	conn, err := ConnectSystemd(ctx)
	if err == nil {
		defer conn.Close()
		var b *Baseline
		if b, err = CollectLive(ctx, Live{Root: "/", Proc: "/proc", Sys: "/sys", Systemd: conn, PackageOf: RPMOwners}, now); err == nil {
			return b
		}
	}
	b := CollectOffline(root, now)
	for i := range b.NotMeasured {
		b.NotMeasured[i] = strings.SplitN(b.NotMeasured[i], ":", 2)[0] + ": systemd did not answer: " + err.Error()
	}
	return b
}

// ConnectSystemd talks to systemd directly as root (no dbus-daemon
// needed), else over the system bus.
func ConnectSystemd(ctx context.Context) (*sddbus.Conn, error) {
	if os.Geteuid() == 0 {
		if conn, err := sddbus.NewSystemdConnectionContext(ctx); err == nil {
			return conn, nil
		}
	}
	return sddbus.NewSystemConnectionContext(ctx)
}

// RPMOwners names the packages owning files of the running system, one
// per path ("" when none owns it or rpm cannot tell).
func RPMOwners(ctx context.Context, paths []string) []string {
	out := make([]string, len(paths))
	argv := append([]string{"rpm", "-qf", "--qf", "%{NAME}\n"}, paths...)
	text, _ := execlog.Runner{}.Run(ctx, "find the packages of kernel modules", argv...)
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if len(lines) != len(paths) {
		return out // rpm missing or an answer not one line per file
	}
	for i, l := range lines {
		if !strings.Contains(l, " ") {
			out[i] = l
		}
	}
	return out
}
