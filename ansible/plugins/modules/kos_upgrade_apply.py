#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kos-upgrade developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: kos_upgrade_apply
short_description: Arm a prepared KOS upgrade and reboot into it
version_added: 0.1.0
description:
  - Arms the prepared upgrade (C(kos-upgrade --json reboot --no-reboot), which checks the staged packages and the rpmdb
    fingerprint again), then reboots through C(kos-upgrade reboot) a few seconds later, from a
    transient systemd unit, so that the module returns before the connection goes away.
  - The offline upgrade runs in that reboot; the machine then boots the new system, whose first boot decides
    (blessed, or fell back to the old system). Wait for that verdict with M(kos.upgrade.kos_upgrade_wait), passing
    the returned C(boot_id).
  - An upgrade that is armed already is armed again (C(changed) only when it reboots).
options:
  reboot:
    description:
      - Reboot after arming. Without it the upgrade runs at the next boot, whenever that is.
    type: bool
    default: true
  reboot_delay:
    description:
      - Seconds between the module's return and the reboot.
    type: int
    default: 5
  kexec:
    description:
      - Reboot with kexec into the offline upgrade and out of it (C(kos-upgrade reboot --kexec)); needs
        kexec-tools on the host.
    type: bool
    default: false
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
- name: Arm and reboot
  kos.upgrade.kos_upgrade_apply:
  register: applied

- name: Wait for the first-boot verdict
  kos.upgrade.kos_upgrade_wait:
    boot_id: "{{ applied.boot_id }}"
'''

RETURN = r'''
armed:
  description: The upgrade is armed.
  returned: always
  type: bool
plan_id:
  description: The armed plan.
  returned: success
  type: str
rebooting:
  description: A reboot is scheduled.
  returned: always
  type: bool
boot_id:
  description: The boot the module ran in (a new one means the host rebooted).
  returned: always
  type: str
reboot_at:
  description: When the reboot starts, seconds since the epoch.
  returned: when rebooting
  type: float
unit:
  description: The transient systemd unit that reboots.
  returned: when rebooting
  type: str
schema_version:
  description: Version of this module's return format (docs/fleet.md).
  returned: always
  type: int
'''

import os
import time

from ansible_collections.kos.upgrade.plugins.module_utils.kos_upgrade import (
    Cli, KosModule, KosUpgradeError, common_argument_spec, reboot_options, require_running_root, schedule)


def main():
    spec = common_argument_spec()
    spec.update(reboot_options())
    spec.update(kexec=dict(type='bool', default=False))
    module = KosModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    require_running_root(module)
    if p['kexec'] and not p['reboot']:
        module.fail_json(msg='kexec needs reboot: it is how the host reboots')
    if p['kexec'] and not any(os.access(os.path.join(d, 'kexec'), os.X_OK) for d in ('/usr/sbin', '/sbin', '/usr/bin')):
        module.fail_json(msg='cannot reboot with kexec: kexec-tools is not installed')
    cli = Cli(module)
    try:
        facts = cli.facts()
    except KosUpgradeError as e:
        module.fail_json(msg=e.msg, rc=e.rc)
    res = dict(changed=False, armed=facts['armed'], rebooting=False,
               boot_id=facts['boot_id'])
    if facts['state'] not in ('prepared', 'armed', 'failed') or not facts['plan']:
        module.fail_json(msg='nothing to apply: the state is %s (prepare first)' % facts['state'], **res)
    was_armed = facts['armed'] and facts['state'] == 'armed'
    if module.check_mode:
        res.update(changed=p['reboot'] or not was_armed, plan_id=facts['plan']['id'])
        module.exit_json(msg='would arm plan %s%s' % (facts['plan']['id'], ' and reboot' if p['reboot'] else ''), **res)
    try:
        data = cli.run(['reboot', '--no-reboot'])[1] or {}
    except KosUpgradeError as e:
        module.fail_json(msg=e.msg, rc=e.rc, **res)
    res.update(armed=True, plan_id=data.get('plan_id', facts['plan']['id']), changed=not was_armed)
    if p['reboot']:
        argv = [cli.binary, 'reboot'] + (['--kexec'] if p['kexec'] else [])
        res['unit'] = schedule(module, argv, p['reboot_delay'], 'kos-upgrade-ansible-reboot')
        res.update(rebooting=True, changed=True, reboot_at=time.time() + max(1, p['reboot_delay']))
    module.exit_json(msg='armed plan %s%s' % (res['plan_id'], ', rebooting' if p['reboot'] else ''), **res)


if __name__ == '__main__':
    main()
