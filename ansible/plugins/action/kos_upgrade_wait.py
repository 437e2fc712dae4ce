# -*- coding: utf-8 -*-
# Copyright: kos-upgrade developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""kos_upgrade_wait: wait on the controller for a host's first-boot verdict.

It runs kos_upgrade_facts on the host again and again (reconnecting when
the host is down) until the host runs a new boot and its verdict is final
(kos_upgrade's FINAL_VERDICTS), or until the timeout, when it fails naming
the host, the phase and the last state seen.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import time

from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase
from ansible_collections.kos.upgrade.plugins.module_utils.kos_upgrade import FINAL_VERDICTS, SCHEMA_VERSION, common_argument_spec

ARGS = common_argument_spec()
ARGS.update(
    boot_id=dict(type='str', default=''),
    since=dict(type='float'),
    timeout=dict(type='int', default=3600),
    poll_interval=dict(type='int', default=10),
)


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(ARGS)

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        result['schema_version'] = SCHEMA_VERSION  # a failure's too
        args = self.validate_argument_spec(argument_spec=ARGS)[1]
        if args['timeout'] <= 0 or args['poll_interval'] <= 0:
            raise AnsibleError('timeout and poll_interval must be positive')
        host = (task_vars or {}).get('inventory_hostname', '?')
        start = time.time()
        since = args['since'] if args['since'] is not None else start
        deadline = start + args['timeout']
        module_args = {'root': args['root']}
        if args['binary']:
            module_args['binary'] = args['binary']
        phase = 'reboot' if args['boot_id'] else 'verdict'
        last = 'nothing yet'
        polls = 0
        while True:
            polls += 1
            facts = None
            try:
                r = self._execute_module(module_name='kos.upgrade.kos_upgrade_facts', module_args=module_args,
                                         task_vars=task_vars)
                if r.get('failed') or r.get('unreachable'):
                    last = 'kos_upgrade_facts failed: %s' % to_text(r.get('msg', ''))
                else:
                    facts = r['kos_upgrade']
            except AnsibleError as e:
                last = 'unreachable: %s' % ' '.join(to_text(e).strip().splitlines()[-1:])
                try:
                    self._connection.reset()
                except Exception:  # pylint: disable=broad-except
                    pass
            if facts is not None:
                if args['boot_id'] and facts['boot_id'] == args['boot_id']:
                    phase = 'reboot'
                    last = 'the boot before the reboot is still running (state %s)' % facts['state']
                else:
                    phase = 'verdict'
                    last = 'state %s, verdict %s' % (facts['state'], facts['verdict'])
                    if facts['verdict'] in FINAL_VERDICTS:
                        now = time.time()
                        result.update(
                            changed=False, kos_upgrade=facts, verdict=facts['verdict'], phase=phase,
                            reason=facts['reason'], downtime=round(now - since, 1), elapsed=round(now - start, 1),
                            polls=polls)
                        result['ansible_facts'] = {'kos_upgrade': facts}
                        return result
            if time.time() + args['poll_interval'] > deadline:
                result.update(failed=True, phase=phase, last_seen=last, elapsed=round(time.time() - start, 1),
                              kos_upgrade=facts,
                              msg='%s: no first-boot verdict within %d s: phase %s, last state seen: %s'
                              % (host, args['timeout'], phase, last))
                return result
            time.sleep(args['poll_interval'])
