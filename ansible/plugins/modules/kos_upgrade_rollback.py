#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kos-upgrade developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: kos_upgrade_rollback
short_description: Boot the pre-upgrade system of a KOS host again
version_added: 0.1.0
description:
  - After a successful upgrade with a snapshot, runs C(kos-upgrade --json rollback --no-reboot) (the pre-upgrade
    root and boot entry become the defaults again, C(/boot) is restored) and then reboots a few seconds later
    from a transient systemd unit.
  - A host that is rolled back already (on request, or by its first-boot fallback) is C(ok).
  - Wait for the old system with M(kos.upgrade.kos_upgrade_wait), passing the returned C(boot_id).
options:
  reboot:
    description:
      - Reboot after switching. Without it the old system boots at the next boot.
    type: bool
    default: true
  reboot_delay:
    description:
      - Seconds between the module's return and the reboot.
    type: int
    default: 5
  root:
    description:
      - Act on the system mounted at this directory (C(kos-upgrade --root)); only with O(reboot=false).
author:
  - kos-upgrade developers (@keyarchos)
extends_documentation_fragment:
  - kos.upgrade.kos_upgrade
  - kos.upgrade.kos_upgrade.check_mode
'''

EXAMPLES = r'''
- name: Roll back and reboot
  kos.upgrade.kos_upgrade_rollback:
  register: rolled

- name: Wait for the old system
  kos.upgrade.kos_upgrade_wait:
    boot_id: "{{ rolled.boot_id }}"
  when: rolled.rebooting
'''

RETURN = r'''
result:
  description: The rollback's history record (docs/state.md).
  returned: when it rolled back
  type: dict
rebooting:
  description: A reboot is scheduled.
  returned: always
  type: bool
boot_id:
  description: The boot the module ran in.
  returned: always
  type: str
reboot_at:
  description: When the reboot starts, seconds since the epoch.
  returned: when rebooting
  type: float
schema_version:
  description: Version of this module's return format (docs/fleet.md).
  returned: always
  type: int
'''

import time

from ansible_collections.kos.upgrade.plugins.module_utils.kos_upgrade import (
    VERDICT_FELL_BACK, VERDICT_ROLLED_BACK, Cli, KosModule, KosUpgradeError, common_argument_spec,
    reboot_options, require_running_root, schedule)


def main():
    spec = common_argument_spec()
    spec.update(reboot_options())
    module = KosModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    require_running_root(module)
    cli = Cli(module)
    try:
        facts = cli.facts()
    except KosUpgradeError as e:
        module.fail_json(msg=e.msg, rc=e.rc)
    res = dict(changed=False, rebooting=False, boot_id=facts['boot_id'])
    if facts['verdict'] in (VERDICT_ROLLED_BACK, VERDICT_FELL_BACK) or facts['reboot_required']:
        module.exit_json(msg='rolled back already (%s)' % facts['verdict'], **res)
    if not facts['rollback_available']:
        module.fail_json(msg='no rollback is available: the state is %s' % facts['state'], **res)
    if module.check_mode:
        res['changed'] = True
        module.exit_json(msg='would roll back', **res)
    try:
        res['result'] = cli.run(['rollback', '--no-reboot'])[1]
    except KosUpgradeError as e:
        module.fail_json(msg=e.msg, rc=e.rc, **res)
    res['changed'] = True
    if p['reboot']:
        systemctl = module.get_bin_path('systemctl', required=True)
        res['unit'] = schedule(module, [systemctl, 'reboot'], p['reboot_delay'], 'kos-upgrade-ansible-rollback')
        res.update(rebooting=True, reboot_at=time.time() + max(1, p['reboot_delay']))
    module.exit_json(msg='rolled back%s' % (', rebooting' if p['reboot'] else ''), **res)


if __name__ == '__main__':
    main()
