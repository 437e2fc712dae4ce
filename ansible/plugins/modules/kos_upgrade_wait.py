#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kos-upgrade developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: kos_upgrade_wait
short_description: Wait for a KOS host's first-boot verdict after its upgrade reboot
version_added: 0.1.0
description:
  - Runs on the controller. Reads the host's upgrade facts (M(kos.upgrade.kos_upgrade_facts)) every
    O(poll_interval) seconds, reconnecting while the host reboots, until the host runs a boot other than
    O(boot_id) and its verdict is final, C(blessed), C(no-trial), C(fell-back), C(failed) or C(rolled-back). A
    C(pending) verdict (the new system has not passed its first boot yet) is waited for, not taken for success;
    ssh coming back is not enough.
  - Fails after O(timeout) seconds, naming the host, the phase (C(reboot) while the old boot still runs or the
    host is unreachable, C(verdict) once the new boot answers) and the last state seen.
  - Does not fail on a fallback. The verdict and its reason are returned, for the caller to record and decide.
options:
  boot_id:
    description:
      - The boot id before the reboot (M(kos.upgrade.kos_upgrade_apply) returns it). Empty to wait for a verdict
        without a reboot (a resumed run).
    type: str
    default: ''
  since:
    description:
      - When the reboot started (seconds since the epoch, the controller's clock), for C(downtime); default the
        start of the wait. The roles start the wait right after M(kos.upgrade.kos_upgrade_apply) returns, a few
        seconds (its C(reboot_delay)) before the reboot.
    type: float
  timeout:
    description:
      - Seconds to wait for the verdict, reboots included.
    type: int
    default: 3600
  poll_interval:
    description:
      - Seconds between two reads.
    type: int
    default: 10
author:
  - kos-upgrade developers (@keyarchos)
attributes:
  action:
    description: Runs on the controller, as an action plugin.
    support: full
  check_mode:
    description: Waits for a real reboot; check mode is not supported.
    support: none
extends_documentation_fragment:
  - kos.upgrade.kos_upgrade
'''

EXAMPLES = r'''
- name: Wait up to 40 minutes for the verdict
  kos.upgrade.kos_upgrade_wait:
    boot_id: "{{ applied.boot_id }}"
    timeout: 2400
  register: verdict
'''

RETURN = r'''
verdict:
  description: blessed, no-trial, fell-back, failed or rolled-back.
  returned: success
  type: str
reason:
  description: Why, in words.
  returned: success
  type: str
downtime:
  description: Seconds from O(since) to the verdict.
  returned: success
  type: float
kos_upgrade:
  description: The host's upgrade facts when the wait ended (see M(kos.upgrade.kos_upgrade_facts)).
  returned: always
  type: dict
phase:
  description: Where the wait ended, C(verdict), or when it timed out C(reboot) or C(verdict).
  returned: always
  type: str
last_seen:
  description: The last state seen before the timeout.
  returned: failure
  type: str
'''
