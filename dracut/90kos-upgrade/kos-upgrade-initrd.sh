#!/bin/sh
# kos-upgrade-initrd: run the armed kos-upgrade from the initramfs, then reboot.
#
# Installed as /usr/sbin/kos-upgrade-initrd by the dracut module 90kos-upgrade;
# started by kos-upgrade-initrd.service (or dracut's pre-pivot hook without
# systemd) after the root is mounted at $NEWROOT and before switch-root.
# See docs/initramfs.md. Plain POSIX sh: the initramfs shell may be bash or dash.
#
# Kernel command line (set on the one-time boot entry by kos-upgrade):
#   kos-upgrade.apply=1          run; without it this script does nothing
#   kos-upgrade.entry=<id>       the one-time entry to remove (kos-upgrade-*)
#
# Steps:
#  1. remount $NEWROOT read-write; mount /boot and /boot/efi (or /efi) from the
#     root's fstab when they are separate filesystems;
#  2. remove the one-time entry and its kos-upgrade-* initramfs, before
#     anything else: whatever happens next, the next boot is a normal one;
#  3. run `kos-upgrade apply --root $NEWROOT` in a private mount namespace in
#     which the root's own /etc and /usr are bind-mounted over the initramfs'
#     /etc and /usr: the Python helper, librpm, dnf, btrfs, lvm, dracut are the
#     root's own, exactly those target mode uses; the initramfs carries only
#     the kos-upgrade binary and this script;
#  4. keep this boot's journal in $NEWROOT/var/lib/kos-upgrade/initramfs.log
#     (the initramfs journal does not survive the reboot);
#  5. unmount what we mounted, sync, reboot, whatever the result. The boot
#     never goes on to switch-root.

set -u
NEWROOT=${NEWROOT:-/sysroot}
# The KOS_UPGRADE_INITRD_* variables exist for test/packaging only.
BIN=${KOS_UPGRADE_INITRD_BIN:-/usr/bin/kos-upgrade}
CMDLINE=${KOS_UPGRADE_INITRD_CMDLINE:-/proc/cmdline}
RUNDIR=${KOS_UPGRADE_INITRD_RUNDIR:-/run/kos-upgrade/initrd}
REBOOT=${KOS_UPGRADE_INITRD_REBOOT:-yes}
STATEDIR=$NEWROOT/var/lib/kos-upgrade
MOUNTED=

say() {
	echo "kos-upgrade-initrd: $*"
}

# arg KEY prints the value of KEY=VALUE on the kernel command line (the last
# one wins, as in the kernel and dracut).
arg() {
	_v=
	_cmdline=
	read -r _cmdline <"$CMDLINE"
	set -f
	for _w in $_cmdline; do
		case $_w in
		"$1"=*) _v=${_w#"$1"=} ;;
		esac
	done
	set +f
	printf '%s' "$_v"
}

# (sh has no local variables: every function uses names of its own.)
is_mounted() {
	while read -r _im_src _im_mp _im_rest; do
		[ "$_im_mp" = "$1" ] && return 0
	done </proc/self/mounts
	return 1
}

# mount_fstab MP mounts MP of the root's fstab at $NEWROOT/MP unless it is
# mounted already or not a separate filesystem. Fails when it cannot.
mount_fstab() {
	[ -f "$NEWROOT/etc/fstab" ] || return 0
	while read -r _src _mp _type _opts _rest; do
		case $_src in
		'' | \#*) continue ;;
		esac
		[ "$_mp" = "$1" ] || continue
		is_mounted "$NEWROOT$1" && return 0
		mkdir -p "$NEWROOT$1" 2>/dev/null
		if mount -t "$_type" -o "${_opts:-defaults}" "$_src" "$NEWROOT$1"; then
			MOUNTED="$NEWROOT$1 $MOUNTED"
			return 0
		fi
		say "cannot mount $1 ($_src, $_type) from $NEWROOT/etc/fstab"
		return 1
	done <"$NEWROOT/etc/fstab"
	return 0
}

# remove_entry ID removes the one-time entry ID.conf and the kos-upgrade-*
# initramfs files it names, from every place BLS entries live. Only ids and
# files named kos-upgrade-* are ever removed.
remove_entry() {
	case $1 in
	kos-upgrade-*) ;;
	*)
		say "not removing boot entry '$1': not a kos-upgrade entry"
		return 0
		;;
	esac
	case $1 in
	*/* | *..*)
		say "not removing boot entry '$1': not an entry id"
		return 0
		;;
	esac
	for _base in "$NEWROOT/boot" "$NEWROOT/boot/efi" "$NEWROOT/efi"; do
		_conf=$_base/loader/entries/$1.conf
		[ -f "$_conf" ] || continue
		_images=
		while read -r _key _rest; do
			[ "$_key" = initrd ] || continue
			for _i in $_rest; do
				case ${_i##*/} in
				kos-upgrade-*) _images="$_images $_i" ;;
				esac
			done
		done <"$_conf"
		# The entry first: an entry without its initramfs would be worse
		# than an initramfs without its entry.
		rm -f "$_conf" && sync
		say "removed the one-time boot entry $_conf"
		for _i in $_images; do
			for _f in "$_base$_i" "$NEWROOT$_i"; do
				if [ -f "$_f" ]; then
					rm -f "$_f" && say "removed $_f"
				fi
			done
		done
	done
	sync
}

finish() {
	if [ -d "$STATEDIR" ] && command -v journalctl >/dev/null 2>&1; then
		if journalctl -b -o short-monotonic --no-pager >"$STATEDIR/initramfs.log.tmp" 2>/dev/null; then
			mv -f "$STATEDIR/initramfs.log.tmp" "$STATEDIR/initramfs.log"
		else
			rm -f "$STATEDIR/initramfs.log.tmp"
		fi
	fi
	for _m in $MOUNTED; do
		umount "$_m" || say "cannot unmount $_m"
	done
	sync
	if [ "$REBOOT" != yes ]; then
		exit "$1"
	fi
	say "rebooting"
	# --force: what had to be written is written and synced; stopping the
	# initramfs' units one by one hung in a QEMU run (nothing of ours was
	# left to stop), while systemd-shutdown still kills, unmounts and
	# detaches everything.
	if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
		systemctl --force reboot && exit "$1"
	fi
	reboot -f
	exit "$1"
}

if [ "$(arg kos-upgrade.apply)" != 1 ]; then
	# Not the one-time upgrade boot: let the boot go on.
	exit 0
fi

if ! is_mounted "$NEWROOT"; then
	say "the root is not mounted at $NEWROOT: nothing can be upgraded"
	finish 1
fi
if ! mount -o remount,rw "$NEWROOT"; then
	say "cannot remount $NEWROOT read-write: not upgrading"
	finish 1
fi
for mp in /boot /boot/efi /efi; do
	if ! mount_fstab "$mp"; then
		# Apply would write boot entries into the root's empty $mp.
		say "not upgrading: $mp is needed; the upgrade stays armed"
		finish 1
	fi
done

entry=$(arg kos-upgrade.entry)
[ -n "$entry" ] && remove_entry "$entry"

if ! mkdir -p "$RUNDIR" || ! cp "$BIN" "$RUNDIR/kos-upgrade"; then
	say "cannot copy $BIN to $RUNDIR"
	finish 1
fi
say "running kos-upgrade apply --root $NEWROOT with the root's own /usr and /etc"
# The binary runs from $RUNDIR: the initramfs' /usr is hidden in there.
# /etc first, so that the root's mount (after /usr) uses the root's ld.so.cache.
# shellcheck disable=SC2016 # expanded by the inner shell
unshare -m --propagation private /bin/sh -c '
	set -e
	mount --bind "$1/etc" /etc
	mount --bind "$1/usr" /usr
	mount -o remount,bind,ro /usr || true
	exec "$2" --root "$1" apply
' kos-upgrade-initrd "$NEWROOT" "$RUNDIR/kos-upgrade"
rc=$?
if [ "$rc" = 0 ]; then
	say "kos-upgrade apply finished"
else
	say "kos-upgrade apply failed (exit status $rc); the old system boots next"
fi
finish "$rc"
