package mountinfo_test

import (
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/mountinfo"
)

// FuzzParse: any mount table parses or fails without a panic.
func FuzzParse(f *testing.F) {
	f.Add("22 1 0:21 / / rw,relatime shared:1 - btrfs /dev/vda2 rw,subvol=/@\n" +
		"36 22 0:33 / /boot rw - ext4 /dev/vda1 rw\n" +
		"40 22 0:40 /x /mnt/with\\040space rw master:2 unbindable - tmpfs tmpfs rw\n")
	f.Add("1 0 0:1 / / rw -\n\n2 1 bad\n")
	f.Fuzz(func(t *testing.T, s string) {
		ms, err := mountinfo.Parse(strings.NewReader(s))
		if err == nil && len(ms) > strings.Count(s, "\n")+1 {
			t.Fatalf("%d mounts from %d lines", len(ms), strings.Count(s, "\n")+1)
		}
	})
}
