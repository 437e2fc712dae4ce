package snapshot

import (
	"context"
	"log/slog"

	"github.com/keyarchos/kos-upgrade/pkg/execlog"
)

// Tools the backends run; the one place their names live.
const (
	btrfsTool  = "btrfs"
	lvmTool    = "lvm" // lvm2's multi-call binary: "lvm lvs", "lvm lvcreate", ...
	mountTool  = "mount"
	umountTool = "umount"
)

// runner runs external commands through execlog: argv logged, stderr in
// the error.
type runner struct {
	log *slog.Logger // nil: slog.Default()
	env []string     // added to the environment (LANG=C for tools whose output is parsed)
}

func (r runner) logger() *slog.Logger { return execlog.Runner{Log: r.log}.Logger() }

// run runs argv and returns its standard output.
func (r runner) run(ctx context.Context, what string, argv ...string) (string, error) {
	return execlog.Runner{Log: r.log, Env: r.env}.Run(ctx, what, argv...)
}
