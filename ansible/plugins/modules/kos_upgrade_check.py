#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kos-upgrade developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: kos_upgrade_check
short_description: Assess whether a KOS host can be upgraded, as data
version_added: 0.1.0
description:
  - Runs C(kos-upgrade --json check) and returns the assessment report (C(docs/report.md)) as data, the
    findings with their key, severity, groups and remediations.
  - Fails the host only when asked (O(fail_on)); O(known_inhibitors) accepts the listed keys, O(answers)
    answers the findings that are questions.
  - Changes nothing on the host but kos-upgrade's last report (C(/var/lib/kos-upgrade/report.json)).
options:
  to:
    description:
      - Target release. Without it only target-independent checks run.
    type: str
  repos:
    description:
      - Repositories C(ID=URL) to use instead of the host's configuration (C(--repo)).
    type: list
    elements: str
    default: []
  snapshot:
    description:
      - The snapshot backend the upgrade would use.
    type: str
    choices: [auto, btrfs, lvm, undo, none]
    default: auto
  no_gpg_check:
    description:
      - Assess as an upgrade without signature checks would run.
    type: bool
    default: false
  answers:
    description:
      - Answers to findings that are questions, key to value (C(--answer KEY=VALUE)).
    type: dict
    default: {}
  fail_on:
    description:
      - C(inhibitor) fails the host when a finding inhibits the upgrade, C(high) also on any high-severity
        finding, C(never) only reports.
    type: str
    choices: [inhibitor, high, never]
    default: inhibitor
  known_inhibitors:
    description:
      - Finding keys that do not fail the host (they are still reported).
    type: list
    elements: str
    default: []
author:
  - kos-upgrade developers (@keyarchos)
extends_documentation_fragment:
  - kos.upgrade.kos_upgrade
  - kos.upgrade.kos_upgrade.check_mode
'''

EXAMPLES = r'''
- name: Assess the upgrade to 5.9, failing on inhibitors except a known one
  kos.upgrade.kos_upgrade_check:
    to: "5.9"
    known_inhibitors: [modules.unshipped]
    answers:
      packages.third-party: keep
  register: assessment
'''

RETURN = r'''
report:
  description: The assessment report (docs/report.md, format version 1).
  returned: when kos-upgrade produced one
  type: dict
inhibited:
  description: The report has inhibitors (whatever O(known_inhibitors) says; prepare refuses while one is left).
  returned: always
  type: bool
inhibitors:
  description: Keys of the report's inhibitors.
  returned: always
  type: list
  elements: str
blocking:
  description: Keys of the findings that fail the host under O(fail_on) and O(known_inhibitors).
  returned: always
  type: list
  elements: str
findings:
  description: The report's findings (key, severity, groups, title, summary, details, remediations).
  returned: always
  type: list
  elements: dict
schema_version:
  description: Version of this module's return format (docs/fleet.md).
  returned: always
  type: int
'''

from ansible_collections.kos.upgrade.plugins.module_utils.kos_upgrade import (
    EXIT_FAILED, EXIT_OK, Cli, KosModule, KosUpgradeError, answer_flags, blocking, check_repos,
    common_argument_spec, describe_findings, inhibitor_keys, repo_flags)


def main():
    spec = common_argument_spec()
    spec.update(
        to=dict(type='str'),
        repos=dict(type='list', elements='str', default=[]),
        snapshot=dict(type='str', choices=['auto', 'btrfs', 'lvm', 'undo', 'none'], default='auto'),
        no_gpg_check=dict(type='bool', default=False),
        answers=dict(type='dict', default={}),
        fail_on=dict(type='str', choices=['inhibitor', 'high', 'never'], default='inhibitor'),
        known_inhibitors=dict(type='list', elements='str', default=[]),
    )
    module = KosModule(argument_spec=spec, supports_check_mode=True)
    check_repos(module)
    p = module.params
    args = ['check']
    if p['to']:
        args += ['--to', p['to']]
    args += repo_flags(p['repos']) + ['--snapshot', p['snapshot']]
    if p['no_gpg_check']:
        args.append('--no-gpg-check')
    args += answer_flags(p['answers'])
    cli = Cli(module)
    try:
        rc, report, err = cli.run(args, ok=(EXIT_OK, EXIT_FAILED))
    except KosUpgradeError as e:
        module.fail_json(msg=e.msg, rc=e.rc)
    if not isinstance(report, dict) or 'findings' not in report:
        # Exit 1 without a report: the check itself failed.
        module.fail_json(msg='kos-upgrade check failed without a report: %s' % err.strip(), rc=rc)
    block = blocking(report, p['fail_on'], p['known_inhibitors'])
    result = dict(
        changed=False, report=report, inhibited=bool(report.get('inhibited')),
        inhibitors=inhibitor_keys(report), blocking=block, findings=report.get('findings') or [],
    )
    if block:
        module.fail_json(msg='the upgrade is blocked by: %s' % describe_findings(report, block), **result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
