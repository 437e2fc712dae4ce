package preflight

import (
	"context"

	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// CollectPlatform exposes collectPlatform to the tests.
func CollectPlatform(ctx context.Context, root sysroot.Root, f *Facts) { collectPlatform(ctx, root, f) }
