#!/bin/sh
# A fake systemd-run, systemctl or rpm for the module unit tests: logs its
# name and arguments to $KOS_FAKE_LOG; rpm prints $KOS_FAKE_RPM_QA.
name=$(basename "$0")
printf '%s' "$name" >>"$KOS_FAKE_LOG"
for a in "$@"; do printf ' %s' "$a" >>"$KOS_FAKE_LOG"; done
echo >>"$KOS_FAKE_LOG"
if [ "$name" = rpm ]; then
	[ -n "$KOS_FAKE_RPM_QA" ] && cat "$KOS_FAKE_RPM_QA"
fi
exit "${KOS_FAKE_EXIT:-0}"
