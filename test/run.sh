#!/bin/bash
# One entry point for people and CI, on a fresh Debian 12 machine as root:
#   bash test/run.sh demo   install what is needed, then upgrade a sandbox system 5.8 -> 5.9
#   bash test/run.sh test   install what is needed, then lint and run the whole test suite
set -euo pipefail
cd "$(dirname "$0")/.."

# What `demo` needs, and nothing more: build and sign the fixture packages
# (rpm, gnupg, createrepo-c, busybox-static for their /bin/sh), resolve with
# dnf's Python API (python3-dnf; dnf), a btrfs sandbox on a loop device
# (btrfs-progs, util-linux), make. Every one is in need below too.
demo_need=(make rpm dnf python3-dnf createrepo-c gnupg btrfs-progs busybox-static util-linux)

# deps demo|test installs what that needs.
deps() {
	# Every package the test suite needs (the demo's included): add a
	# test's packages here.
	# build-essential … python3: EL8's grub2, built by test/el8 (grub2-build.sh)
	local need=(make gcc rpm dnf python3-dnf createrepo-c xorriso btrfs-progs gnupg busybox-static util-linux dbus grub-common libglib2.0-bin systemd passwd
		systemd-container debootstrap dracut shellcheck qemu-system-x86 qemu-utils ovmf systemd-boot-efi polkitd git
		cockpit-ws cockpit-bridge cockpit-system chromium systemd-journal-remote zsh
		build-essential autoconf automake autopoint libtool bison flex gettext pkg-config librpm-dev libfreetype-dev
		liblzma-dev xz-utils python3 xfsprogs
		# EL8's rpm 4.14.3 (test/el8/rpm.go)
		patch db5.3-util libdb5.3-dev libpopt-dev libmagic-dev liblua5.3-dev libarchive-dev zlib1g-dev libbz2-dev
		libzstd-dev libnss3-dev libnspr4-dev libcap-dev libacl1-dev libelf-dev libdw-dev
		# the Ansible collection (docs/fleet.md): build, sanity, lint, unit tests; ssh to the QEMU fleet
		ansible-core ansible-lint python3-jsonschema python3-pycodestyle pylint yamllint python3-voluptuous openssh-client)
	if [ "$1" = demo ]; then
		need=("${demo_need[@]}")
	fi
	local missing=()
	for p in "${need[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		echo "installing: ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -q
		apt-get -o DPkg::Lock::Timeout=600 install -y -q "${missing[@]}"
	fi
	# The Cockpit browser test needs node and npm (it runs npm ci itself);
	# a machine that has them from elsewhere keeps its own.
	if [ "$1" = test ] && { ! command -v node >/dev/null || ! command -v npm >/dev/null; }; then
		apt-get -o DPkg::Lock::Timeout=600 install -y -q nodejs npm
	fi
	if ! command -v go >/dev/null; then
		export PATH=$PATH:/usr/local/go/bin
	fi
	command -v go >/dev/null || { echo "Go is missing: install Go 1.24 or newer (/usr/local/go)"; exit 1; }
	go mod download
}

case "${1:-}" in
demo)
	deps demo
	make demo
	;;
test)
	deps test
	make check
	;;
*)
	echo "usage: bash test/run.sh demo|test" >&2
	exit 2
	;;
esac
