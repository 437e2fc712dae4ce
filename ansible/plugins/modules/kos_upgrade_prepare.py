#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kos-upgrade developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: kos_upgrade_prepare
short_description: Prepare a KOS upgrade (resolve, download, verify, test) without changing the system
version_added: 0.1.0
description:
  - Runs C(kos-upgrade --json prepare --to VERSION), which writes a plan and stages the packages in
    C(/var/lib/kos-upgrade) and changes nothing else.
  - Idempotent. A plan that exists for the same target, repositories and snapshot backend, made against the
    packages installed now (the same rpmdb fingerprint), is kept (C(ok), not C(changed)); so is an upgrade to the
    target that is already armed. A host that runs the target release already is C(ok).
  - In check mode it is a real dry run, C(kos-upgrade check --to VERSION) (dnf resolves the upgrade, nothing is
    downloaded), and with C(--diff) it shows the changes package by package (before, the release and every
    installed package the upgrade replaces or erases; after, the target release and every package it installs).
    The dry run reads them from the report's C(transaction); a kept or new plan's diff, from the plan's.
  - Refused while an inhibitor is left; the message names the inhibitors and the report is returned.
options:
  to:
    description:
      - The target release, for example C(5.9).
    type: str
    required: true
  repos:
    description:
      - Repositories C(ID=URL) to use instead of the host's configuration (C(--repo)).
    type: list
    elements: str
    default: []
  snapshot:
    description:
      - How to protect the root (C(none) means no rollback).
    type: str
    choices: [auto, btrfs, lvm, undo, none]
    default: auto
  no_gpg_check:
    description:
      - Accept packages whose signature cannot be verified (dangerous).
    type: bool
    default: false
  answers:
    description:
      - Answers to findings that are questions, key to value (C(--answer KEY=VALUE)).
    type: dict
    default: {}
  force:
    description:
      - Prepare again even when a matching plan exists.
    type: bool
    default: false
author:
  - kos-upgrade developers (@keyarchos)
attributes:
  diff_mode:
    description: Returns the package changes as a diff.
    support: full
extends_documentation_fragment:
  - kos.upgrade.kos_upgrade
  - kos.upgrade.kos_upgrade.check_mode
'''

EXAMPLES = r'''
- name: Prepare the upgrade to 5.9
  kos.upgrade.kos_upgrade_prepare:
    to: "5.9"
    repos:
      - kos-baseos=https://mirror.example/kos/5.9/BaseOS/
  register: prepared

- name: What would change (dry run)
  kos.upgrade.kos_upgrade_prepare:
    to: "5.9"
  check_mode: true
  diff: true
'''

RETURN = r'''
plan:
  description: Summary of the plan (id, target, created_at, snapshot, repos, rpmdb_fingerprint, counts, sizes).
  returned: when a plan exists or was made
  type: dict
report:
  description:
    - The assessment report, when prepare was refused or in check mode (C(docs/report.md)); in check mode its
      C(transaction) lists every package the upgrade would change (C(action), C(nevra), C(replaces)).
  returned: sometimes
  type: dict
inhibitors:
  description: Keys of the report's inhibitors.
  returned: when prepare was refused by an inhibitor
  type: list
  elements: str
msg:
  description: What was done, in words.
  returned: always
  type: str
schema_version:
  description: Version of this module's return format (docs/fleet.md).
  returned: always
  type: int
'''

from ansible_collections.kos.upgrade.plugins.module_utils.kos_upgrade import (
    EXIT_FAILED, EXIT_OK, Cli, KosModule, KosUpgradeError, answer_flags, check_repos, common_argument_spec,
    describe_findings, inhibitor_keys, last_lines, plan_summary, read_report, repo_flags, rpmdb_fingerprint)


def plan_matches(plan, p):
    """The plan is the one prepare would make now (but for the rpmdb)."""
    if plan['target'] != p['to']:
        return False
    if p['snapshot'] != 'auto' and plan['snapshot'] != p['snapshot']:
        return False
    if sorted(plan['repos']) != sorted(p['repos']):
        return False
    return (plan['signature_check'] == 'skipped') == p['no_gpg_check']


def transaction_diff(release, target, items, after_header):
    """Every package of a transaction (the plan's, or the dry run's from
    the report) as a before/after diff: the release, then the installed
    packages it replaces or erases, and the packages it installs."""
    before, after = ['release %s' % release], ['release %s' % target]
    for it in items or []:
        if it.get('action') in ('remove', 'obsoleted'):
            before.append(it.get('nevra', ''))
            continue
        before += it.get('replaces') or []
        after.append(it.get('nevra', ''))
    return {'before_header': 'installed now', 'after_header': after_header,
            'before': '\n'.join(before[:1] + sorted(before[1:])) + '\n',
            'after': '\n'.join(after[:1] + sorted(after[1:])) + '\n'}


def main():
    spec = common_argument_spec()
    spec.update(
        to=dict(type='str', required=True),
        repos=dict(type='list', elements='str', default=[]),
        snapshot=dict(type='str', choices=['auto', 'btrfs', 'lvm', 'undo', 'none'], default='auto'),
        no_gpg_check=dict(type='bool', default=False),
        answers=dict(type='dict', default={}),
        force=dict(type='bool', default=False),
    )
    module = KosModule(argument_spec=spec, supports_check_mode=True)
    check_repos(module)
    p = module.params
    cli = Cli(module)
    res = dict(changed=False)
    try:
        status = cli.status()
    except KosUpgradeError as e:
        module.fail_json(msg=e.msg, rc=e.rc)
    state = (status.get('state') or {}).get('status') or 'idle'
    release = (status.get('current') or {}).get('version_id', '')
    raw_plan = status.get('plan')
    plan = plan_summary(raw_plan)
    if plan:
        res['plan'] = plan
    if status.get('running') or state == 'applying':
        module.fail_json(msg='an upgrade is being applied on this host now (state %s)' % state, **res)
    if release == p['to'] and state not in ('prepared', 'armed'):
        module.exit_json(msg='the host runs %s already' % release, **res)
    if state == 'armed' or status.get('armed'):
        if plan and plan['target'] == p['to']:
            module.exit_json(msg='the upgrade to %s is armed already' % p['to'], **res)
        module.fail_json(msg='an upgrade to %s is armed: cancel it first (kos_upgrade_cancel)'
                         % (plan['target'] if plan else '?'), **res)
    if plan and state in ('prepared', 'failed') and not p['force'] and plan_matches(plan, p):
        fp = rpmdb_fingerprint(module, p['root'])
        if fp and fp == plan['rpmdb_fingerprint']:
            if module._diff:
                res['diff'] = transaction_diff(release, p['to'], raw_plan.get('transaction'), 'after the upgrade')
            module.exit_json(msg='plan %s for %s is up to date' % (plan['id'], p['to']), **res)

    common = repo_flags(p['repos']) + ['--snapshot', p['snapshot']]
    if p['no_gpg_check']:
        common.append('--no-gpg-check')
    common += answer_flags(p['answers'])
    if module.check_mode:
        try:
            rc, report, err = cli.run(['check', '--to', p['to']] + common, ok=(EXIT_OK, EXIT_FAILED))
        except KosUpgradeError as e:
            module.fail_json(msg=e.msg, rc=e.rc, **res)
        if not isinstance(report, dict):
            module.fail_json(msg='kos-upgrade check failed without a report: %s' % err.strip(), rc=rc, **res)
        res['report'] = report
        if report.get('inhibited'):
            keys = inhibitor_keys(report)
            module.fail_json(msg='prepare would be refused: %s' % describe_findings(report, keys), inhibitors=keys, **res)
        if module._diff:
            res['diff'] = transaction_diff(release, p['to'], report.get('transaction'), 'after the upgrade (dry run)')
        res['changed'] = True
        module.exit_json(msg='would prepare the upgrade to %s' % p['to'], **res)

    try:
        rc, new_plan, err = cli.run(['prepare', '--to', p['to']] + common, ok=(EXIT_OK, EXIT_FAILED))
    except KosUpgradeError as e:
        module.fail_json(msg=e.msg, rc=e.rc, **res)
    if rc == EXIT_FAILED or not isinstance(new_plan, dict):
        report = read_report(cli.state_path('report.json'))
        if report and report.get('inhibited'):
            keys = inhibitor_keys(report)
            module.fail_json(msg='prepare was refused: %s' % describe_findings(report, keys),
                             report=report, inhibitors=keys, rc=rc, **res)
        module.fail_json(msg='kos-upgrade prepare failed: %s' % last_lines(err), rc=rc, **res)
    res.update(changed=True, plan=plan_summary(new_plan))
    if module._diff:
        res['diff'] = transaction_diff(release, p['to'], new_plan.get('transaction'), 'after the upgrade')
    module.exit_json(msg='prepared plan %s for %s' % (new_plan.get('id', ''), p['to']), **res)


if __name__ == '__main__':
    main()
