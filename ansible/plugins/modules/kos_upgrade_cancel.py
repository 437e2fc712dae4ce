#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kos-upgrade developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: kos_upgrade_cancel
short_description: Disarm a KOS upgrade and drop its plan and staged packages
version_added: 0.1.0
description:
  - Runs C(kos-upgrade --json cancel) when a plan is prepared, armed or failed; otherwise does nothing (C(ok)).
author:
  - kos-upgrade developers (@keyarchos)
extends_documentation_fragment:
  - kos.upgrade.kos_upgrade
  - kos.upgrade.kos_upgrade.check_mode
'''

EXAMPLES = r'''
- name: Drop a prepared upgrade
  kos.upgrade.kos_upgrade_cancel:
'''

RETURN = r'''
state:
  description: The state before the cancel.
  returned: always
  type: str
schema_version:
  description: Version of this module's return format (docs/fleet.md).
  returned: always
  type: int
'''

from ansible_collections.kos.upgrade.plugins.module_utils.kos_upgrade import (
    Cli, KosModule, KosUpgradeError, common_argument_spec)


def main():
    module = KosModule(argument_spec=common_argument_spec(), supports_check_mode=True)
    cli = Cli(module)
    try:
        facts = cli.facts()
    except KosUpgradeError as e:
        module.fail_json(msg=e.msg, rc=e.rc)
    res = dict(changed=False, state=facts['state'])
    if facts['state'] not in ('prepared', 'armed', 'failed') and not facts['armed']:
        module.exit_json(msg='nothing to cancel: the state is %s' % facts['state'], **res)
    res['changed'] = True
    if module.check_mode:
        module.exit_json(msg='would cancel', **res)
    try:
        cli.run(['cancel'])
    except KosUpgradeError as e:
        module.fail_json(msg=e.msg, rc=e.rc, **res)
    module.exit_json(msg='cancelled', **res)


if __name__ == '__main__':
    main()
