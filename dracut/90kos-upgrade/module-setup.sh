#!/bin/bash
# dracut module 90kos-upgrade: the initramfs mode of kos-upgrade.
#
# `kos-upgrade prepare --mode initramfs` builds an upgrade initramfs with
#   dracut --add kos-upgrade ...
# and boots it once through a one-time boot entry whose kernel command line
# carries kos-upgrade.apply=1 (and kos-upgrade.entry=<entry id>). In that
# initramfs, kos-upgrade-initrd runs `kos-upgrade apply --root /sysroot` after
# the root is mounted and before switch-root, then reboots. In any other boot
# the module does nothing. See docs/initramfs.md.
#
# Works with dracut 049 (KOS 5.x / EL8) and later. The one file the module
# needs from the system is the kos-upgrade binary; KOS_UPGRADE_BIN names
# another one (tests).
# shellcheck disable=SC2154 # moddir, initdir, systemdsystemunitdir come from dracut

# Only when asked for by name: dracut --add kos-upgrade.
check() {
    require_binaries "${KOS_UPGRADE_BIN:-/usr/bin/kos-upgrade}" || return 1
    return 255
}

# Nothing beyond what mounts the root: the rest (python3, rpm, dnf, btrfs,
# lvm) is borrowed from the root's own /usr at run time.
depends() {
    return 0
}

# The hook mounts /boot, /boot/efi and /efi itself (dracut mounts only the
# root): the drivers of their filesystems, which a host-only image lacks
# otherwise, and for vfat the codepages its mount needs.
installkernel() {
    local mp fs
    for mp in /boot /boot/efi /efi; do
        fs=$(findmnt -n -o FSTYPE --mountpoint "$mp" 2>/dev/null) || continue
        [ -n "$fs" ] || continue
        hostonly='' instmods "$fs"
        if [ "$fs" = vfat ]; then
            hostonly='' instmods nls_cp437 nls_iso8859-1 nls_ascii nls_utf8
        fi
    done
    return 0
}

install() {
    inst_simple "${KOS_UPGRADE_BIN:-/usr/bin/kos-upgrade}" /usr/bin/kos-upgrade
    inst_script "$moddir/kos-upgrade-initrd.sh" /usr/sbin/kos-upgrade-initrd
    inst_multiple unshare mount umount cat cp mkdir mv rm sync
    inst_multiple -o journalctl systemctl reboot
    if dracut_module_included "systemd"; then
        inst_simple "$moddir/kos-upgrade-initrd.service" \
            "$systemdsystemunitdir/kos-upgrade-initrd.service"
        mkdir -p "${initdir}${systemdsystemunitdir}/initrd.target.wants"
        ln_r "$systemdsystemunitdir/kos-upgrade-initrd.service" \
            "$systemdsystemunitdir/initrd.target.wants/kos-upgrade-initrd.service"
    else
        # An initramfs without systemd: dracut's own pre-pivot hook point.
        inst_hook pre-pivot 90 "$moddir/kos-upgrade-pre-pivot.sh"
    fi
}
