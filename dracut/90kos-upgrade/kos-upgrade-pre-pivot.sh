#!/bin/sh
# pre-pivot hook of an initramfs without systemd (sourced by dracut): run the
# armed kos-upgrade before switch-root. With kos-upgrade.apply=1 on the
# kernel command line it does not come back (it reboots); otherwise it
# returns at once and the boot goes on.
NEWROOT="${NEWROOT:-/sysroot}" /usr/sbin/kos-upgrade-initrd
