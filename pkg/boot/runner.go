package boot

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/keyarchos/kos-upgrade/pkg/execlog"
)

// Tools run by this package; the one place their names live.
const (
	bootctlTool = "bootctl"
)

// runner runs external commands through execlog: argv logged, stderr in
// the error.
type runner struct {
	log *slog.Logger // nil: slog.Default()
}

func (r runner) run(ctx context.Context, what string, argv ...string) (string, error) {
	return execlog.Runner{Log: r.log}.Run(ctx, what, argv...)
}

// resolveFile follows a symbolic link at p with host semantics.
func resolveFile(p string) (string, error) {
	fi, err := os.Lstat(p)
	if err != nil || fi.Mode()&os.ModeSymlink == 0 {
		return p, err
	}
	return filepath.EvalSymlinks(p)
}
