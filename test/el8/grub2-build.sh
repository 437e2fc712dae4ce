#!/bin/bash
# Builds EL8's grub2 (rhel-8-main) for x86_64 EFI, as grub2.spec does, into
# $OUT (an install tree: $OUT/usr/..., $OUT/etc/grub.d) with prefix /usr.
# Run by grub2.go (Grub2) with SRC (the source tarball), DIST (the RHEL 8.8
# dist-git tarball), OUT and WORK (an empty scratch directory).
# What it takes on Debian 12: /work/shared/el8/README.md.
set -euo pipefail
cd "$WORK"
tar -xf "$SRC"
tar -xf "$DIST"
cd grub2-rhel8
# grub-rpm-sort.c uses strchrnul without <string.h>: an implicit int
# declaration truncates the pointer ("out of memory").
sed -i 's|^#include <stdio.h>$|#include <stdio.h>\n#include <string.h>|' util/grub-rpm-sort.c
grep -q '^#include <string.h>$' util/grub-rpm-sort.c
PYTHON=python3 ./autogen.sh >autogen.log 2>&1 || { tail -50 autogen.log; exit 1; }
autoreconf -vif >autoreconf.log 2>&1 || { tail -50 autoreconf.log; exit 1; }
# Debian's rpm 4.18 has rpmvercmp in librpmio: configure's -lrpm check
# fails, so it is preset and the program linked with both. Debian has no
# freetype-config.
ac_cv_lib_rpm_rpmvercmp=yes ./configure \
	--prefix=/usr --sysconfdir=/etc --localstatedir=/var --libdir=/usr/lib \
	--with-platform=efi --target=x86_64 --with-utils=host --with-grubdir=grub2 \
	--program-transform-name=s,grub,grub2, --disable-grub-mount --disable-werror \
	FREETYPE="pkg-config freetype2" BUILD_FREETYPE="pkg-config freetype2" \
	>configure.log 2>&1 || { tail -80 configure.log; exit 1; }
make -j"$(nproc)" LIBRPM="-lrpm -lrpmio" >make.log 2>&1 || { grep -B5 -A5 -m20 -i 'error' make.log | tail -80; exit 1; }
make install DESTDIR="$OUT" >install.log 2>&1 || { tail -50 install.log; exit 1; }
# As grub2.spec does on x86_64: BLS entries come from blscfg in 10_linux's
# output, 10_linux_bls would list them a second time.
rm -f "$OUT/etc/grub.d/10_linux_bls"
# The image the firmware loads, with grub2.spec's x86_64 EFI module list
# (grub_modules, efi_modules, platform_modules of grub.macros); its prefix
# is set when it is made (Grub2.MkImage), so only the module list is kept.
echo "all_video boot blscfg cat configfile cryptodisk echo ext2 fat font gcry_rijndael gcry_rsa gcry_serpent
gcry_sha256 gcry_twofish gcry_whirlpool gfxmenu gfxterm gzio halt http increment iso9660 jpeg loadenv loopback
linux lvm luks mdraid09 mdraid1x minicmd net normal part_apple part_msdos part_gpt password_pbkdf2 png reboot
regexp search search_fs_uuid search_fs_file search_label serial sleep syslinuxcfg test tftp video xfs
efi_netfs efifwsetup efinet lsefi lsefimmap connectefi
backtrace chain usb usbserial_common usbserial_pl2303 usbserial_ftdi usbserial_usbdebug keylayouts at_keyboard" \
	| tr ' ' '\n' | grep . >"$OUT/efi-modules.txt"
# EL8's packaging files: kernel-install's grub plugin and the macros.
cp ../grub2-dist-git-rhel-8.8.0/20-grub.install ../grub2-dist-git-rhel-8.8.0/grub.macros "$OUT/"
test -x "$OUT/usr/bin/grub2-editenv"
test -x "$OUT/usr/sbin/grub2-mkconfig"
