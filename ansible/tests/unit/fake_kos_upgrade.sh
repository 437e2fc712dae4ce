#!/bin/sh
# The fake kos-upgrade of the module unit tests (fake_kos_upgrade.py).
exec /usr/bin/python3 "$(dirname "$(readlink -f "$0")")/fake_kos_upgrade.py" "$@"
