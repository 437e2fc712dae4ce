#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kos-upgrade developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: kos_upgrade_facts
short_description: Read a KOS host's upgrade state, release and first-boot verdict
version_added: 0.1.0
description:
  - Runs C(kos-upgrade --json status) on the managed host and returns its state (from the host's own
    C(/var/lib/kos-upgrade/state.json)), the running release, whether an upgrade is armed, the plan, the last
    result, the verdict of the last upgrade's first boot and whether a rollback is available.
  - The result is also set as the fact C(kos_upgrade). Its format is versioned (C(schema_version)); see
    C(docs/fleet.md).
  - With O(target), also says where the host stands on its way to that release (C(phase)), which is how the
    C(upgrade) role resumes.
options:
  target:
    description:
      - The release the host is being upgraded to, for C(phase).
    type: str
  history:
    description:
      - Also return every recorded run (C(kos-upgrade --json history)).
    type: bool
    default: false
author:
  - kos-upgrade developers (@keyarchos)
notes:
  - Changes nothing; supports check mode.
extends_documentation_fragment:
  - kos.upgrade.kos_upgrade
  - kos.upgrade.kos_upgrade.check_mode
'''

EXAMPLES = r'''
- name: Where does each host stand
  kos.upgrade.kos_upgrade_facts:
    target: "5.9"
  register: kos

- name: Show the verdict
  ansible.builtin.debug:
    msg: "{{ kos.kos_upgrade.verdict }}: {{ kos.kos_upgrade.reason }}"
'''

RETURN = r'''
schema_version:
  description: Version of this module's return format (docs/fleet.md).
  returned: always
  type: int
  sample: 1
kos_upgrade:
  description: The host's upgrade facts (schema in docs/fleet.md).
  returned: always
  type: dict
  contains:
    schema_version:
      description: Version of this format.
      type: int
      sample: 1
    state:
      description: idle, prepared, armed, applying, succeeded, failed or rolled-back.
      type: str
      sample: succeeded
    release:
      description: The running release (VERSION_ID).
      type: str
      sample: "5.9"
    armed:
      description: An upgrade runs at the next boot.
      type: bool
    plan:
      description: Summary of the prepared plan, null without one.
      type: dict
    last_result:
      description: The last apply, rollback or fallback record (docs/state.md), null before any run.
      type: dict
    verdict:
      description: none, pending, blessed, no-trial, fell-back, failed or rolled-back.
      type: str
      sample: blessed
    reason:
      description: Why, in words (the fallback's or failure's error).
      type: str
    rollback_available:
      description: kos_upgrade_rollback can boot the pre-upgrade system again.
      type: bool
    boot_id:
      description: The running boot's id (empty under another root).
      type: str
    phase:
      description: With target, done, verdict, upgrade or fell-back.
      type: str
      returned: when target is set
    history:
      description: Every recorded run, oldest first.
      type: list
      elements: dict
      returned: when history is true
'''

from ansible_collections.kos.upgrade.plugins.module_utils.kos_upgrade import (
    Cli, KosModule, KosUpgradeError, common_argument_spec, phase)


def main():
    spec = common_argument_spec()
    spec.update(target=dict(type='str'), history=dict(type='bool', default=False))
    module = KosModule(argument_spec=spec, supports_check_mode=True)
    cli = Cli(module)
    try:
        facts = cli.facts()
        if module.params['target']:
            facts['phase'] = phase(facts, module.params['target'])
        if module.params['history']:
            facts['history'] = cli.run(['history'])[1] or []
    except KosUpgradeError as e:
        module.fail_json(msg=e.msg, rc=e.rc)
    module.exit_json(changed=False, kos_upgrade=facts, ansible_facts={'kos_upgrade': facts})


if __name__ == '__main__':
    main()
