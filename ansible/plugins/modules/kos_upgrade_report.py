#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kos-upgrade developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: kos_upgrade_report
short_description: Write the fleet report of a KOS upgrade as HTML, JSON and CSV
version_added: 0.1.0
description:
  - Writes C(fleet.html) (one static page, no external assets, opens offline), C(fleet.json) and C(fleet.csv) into
    O(dest). For each host the release before and after, state, verdict and its reason, inhibitors and downtime (reboot
    to verdict), and how many hosts each inhibitor key blocks. Formats in C(docs/fleet.md) (schema version 1).
  - Meant to run on the controller, delegated to localhost and run once; the roles call it.
options:
  dest:
    description:
      - Directory of the report; made if missing.
    type: path
    required: true
  hosts:
    description:
      - Host name to what the roles recorded about it, a dict with C(before) and C(after) (kos_upgrade facts),
        C(inhibitors) (keys), C(downtime) (seconds), C(phase) and C(error).
    type: dict
    required: true
  target:
    description:
      - The target release.
    type: str
    default: ''
  title:
    description:
      - The page's title.
    type: str
    default: KOS fleet upgrade
author:
  - kos-upgrade developers (@keyarchos)
extends_documentation_fragment:
  - kos.upgrade.kos_upgrade.check_mode
'''

EXAMPLES = r'''
- name: Fleet report
  kos.upgrade.kos_upgrade_report:
    dest: "{{ playbook_dir }}/kos-upgrade-report"
    target: "5.9"
    hosts:
      web1:
        before: "{{ hostvars.web1.kos_upgrade }}"
  delegate_to: localhost
  run_once: true
'''

RETURN = r'''
schema_version:
  description: Version of this module's return format (docs/fleet.md).
  returned: always
  type: int
  sample: 1
files:
  description: The files written.
  returned: always
  type: list
  elements: str
report:
  description: The JSON report.
  returned: always
  type: dict
'''

import csv
import datetime
import io
import json
import os
import tempfile
from html import escape

from ansible_collections.kos.upgrade.plugins.module_utils.kos_upgrade import SCHEMA_VERSION, KosModule

REPORT_SCHEMA = 'kos.upgrade/fleet-report'
CSV_COLUMNS = ['host', 'release_before', 'release_after', 'target', 'state', 'verdict', 'reason', 'inhibitors',
               'downtime_seconds', 'phase', 'error']
# Verdicts in the order the page lists them, with their colours.
VERDICT_STYLE = [
    ('fell-back', '#b3261e'), ('failed', '#b3261e'), ('unreachable', '#b3261e'), ('pending', '#9a6700'),
    ('rolled-back', '#9a6700'), ('blessed', '#1a7f37'), ('no-trial', '#1a7f37'), ('none', '#57606a'),
]


def host_record(name, rec, target):
    rec = rec or {}
    before = rec.get('before') or {}
    after = rec.get('after') or before
    last = after.get('last_result') or {}
    release_before = before.get('release', '')
    if release_before == target and last.get('kind') == 'apply' and last.get('to') == target and last.get('from'):
        release_before = last['from']  # a resumed run: the host was upgraded before this run
    verdict = after.get('verdict', 'none') or 'none'
    if rec.get('error') and not after:
        verdict = 'unreachable'
    downtime = rec.get('downtime')
    return {
        'host': name,
        'release_before': release_before,
        'release_after': after.get('release', ''),
        'target': target,
        'state': after.get('state', ''),
        'verdict': verdict,
        'reason': after.get('reason', '') if verdict not in ('none', 'blessed', 'no-trial') else '',
        'inhibitors': sorted(set(rec.get('inhibitors') or [])),
        'downtime_seconds': float(downtime) if downtime not in (None, '') else None,
        'phase': rec.get('phase', '') or '',
        'error': rec.get('error', '') or '',
        'run_id': last.get('run_id', ''),
    }


def build(hosts, target, title, now):
    records = [host_record(n, hosts[n], target) for n in sorted(hosts)]
    verdicts, inhibitors = {}, {}
    for r in records:
        verdicts[r['verdict']] = verdicts.get(r['verdict'], 0) + 1
        for k in r['inhibitors']:
            inhibitors[k] = inhibitors.get(k, 0) + 1
    return {
        'schema': REPORT_SCHEMA,
        'schema_version': SCHEMA_VERSION,
        'generated_at': now,
        'title': title,
        'target': target,
        'counts': {'hosts': len(records), 'verdicts': verdicts, 'inhibitors': inhibitors,
                   'upgraded': sum(1 for r in records if target and r['release_after'] == target)},
        'hosts': records,
    }


def to_csv(report):
    out = io.StringIO()
    w = csv.writer(out, lineterminator='\n')
    w.writerow(CSV_COLUMNS)
    for r in report['hosts']:
        row = []
        for c in CSV_COLUMNS:
            v = r[c]
            if c == 'inhibitors':
                v = ';'.join(v)
            elif v is None:
                v = ''
            row.append(v)
        w.writerow(row)
    return out.getvalue()


def badge(verdict):
    colour = dict(VERDICT_STYLE).get(verdict, '#57606a')
    return '<span class="b" style="background:%s">%s</span>' % (colour, escape(verdict))


def to_html(report):
    e = escape
    c = report['counts']
    parts = ['<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             '<title>%s</title>' % e(report['title']),
             '<style>body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#1f2328}'
             'h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.5em 0 .5em}'
             '.sum{display:flex;gap:1em;flex-wrap:wrap}.card{border:1px solid #d0d7de;border-radius:6px;padding:.6em 1em;min-width:7em}'
             '.card b{display:block;font-size:1.6em}table{border-collapse:collapse;width:100%}'
             'th,td{border-bottom:1px solid #d0d7de;padding:.4em .6em;text-align:left;vertical-align:top}'
             'th{background:#f6f8fa}.b{color:#fff;border-radius:1em;padding:.1em .6em;font-size:.9em;white-space:nowrap}'
             '.muted{color:#57606a}.bar{background:#cf222e;height:.8em;border-radius:2px;display:inline-block}'
             'code{font-size:.95em}</style></head><body>',
             '<h1>%s</h1>' % e(report['title']),
             '<p class="muted">Target release <b>%s</b> &middot; generated %s &middot; schema %s v%d</p>'
             % (e(report['target'] or '-'), e(report['generated_at']), e(report['schema']), report['schema_version']),
             '<div class="sum"><div class="card"><b>%d</b>hosts</div><div class="card"><b>%d</b>on %s</div>'
             % (c['hosts'], c['upgraded'], e(report['target'] or 'target'))]
    for v, dummy in VERDICT_STYLE:
        if c['verdicts'].get(v):
            parts.append('<div class="card"><b>%d</b>%s</div>' % (c['verdicts'][v], badge(v)))
    parts.append('</div>')
    parts.append('<h2>Inhibitors across the fleet</h2>')
    if c['inhibitors']:
        parts.append('<table><tr><th>key</th><th>hosts blocked</th><th></th></tr>')
        most = max(c['inhibitors'].values())
        for k in sorted(c['inhibitors'], key=lambda k: (-c['inhibitors'][k], k)):
            n = c['inhibitors'][k]
            parts.append('<tr><td><code>%s</code></td><td>%d</td><td style="width:50%%"><span class="bar" style="width:%d%%">'
                         '</span></td></tr>' % (e(k), n, max(2, 100 * n // most)))
        parts.append('</table>')
    else:
        parts.append('<p class="muted">No host has an inhibitor.</p>')
    parts.append('<h2>Hosts</h2><table><tr><th>host</th><th>release</th><th>state</th><th>verdict</th><th>reason</th>'
                 '<th>inhibitors</th><th>downtime</th><th>phase</th></tr>')
    for r in report['hosts']:
        down = '' if r['downtime_seconds'] is None else '%d s' % round(r['downtime_seconds'])
        reason = r['reason']
        if r['error']:
            reason = (reason + ' ' if reason else '') + r['error']
        parts.append('<tr><td>%s</td><td>%s &rarr; %s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>'
                     % (e(r['host']), e(r['release_before'] or '?'), e(r['release_after'] or '?'), e(r['state']),
                        badge(r['verdict']), e(reason), e(', '.join(r['inhibitors'])), e(down), e(r['phase'])))
    parts.append('</table><p class="muted">fleet.json and fleet.csv beside this page hold the same data.</p></body></html>\n')
    return '\n'.join(parts)


def write(module, path, content):
    """Writes content to path atomically; returns whether it changed."""
    try:
        with open(path) as f:
            if f.read() == content:
                return False
    except (IOError, OSError):
        pass
    if module.check_mode:
        return True
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.' + os.path.basename(path))
    with os.fdopen(fd, 'w') as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    module.atomic_move(tmp, path)
    return True


def main():
    module = KosModule(argument_spec=dict(
        dest=dict(type='path', required=True),
        hosts=dict(type='dict', required=True),
        target=dict(type='str', default=''),
        title=dict(type='str', default='KOS fleet upgrade'),
    ), supports_check_mode=True)
    p = module.params
    now = datetime.datetime.utcnow().replace(microsecond=0).isoformat() + 'Z'
    report = build(p['hosts'], p['target'] or '', p['title'], now)
    if not module.check_mode and not os.path.isdir(p['dest']):
        os.makedirs(p['dest'])
    # generated_at changes every time: compare without it.
    files, changed = [], False
    stable = dict(report, generated_at='')
    old = None
    try:
        with open(os.path.join(p['dest'], 'fleet.json')) as f:
            old = json.load(f)
    except (IOError, OSError, ValueError):
        pass
    if old is not None and dict(old, generated_at='') == stable:
        report['generated_at'] = old.get('generated_at', now)
    for name, content in (('fleet.json', json.dumps(report, indent=2, sort_keys=True) + '\n'),
                          ('fleet.csv', to_csv(report)), ('fleet.html', to_html(report))):
        path = os.path.join(p['dest'], name)
        files.append(path)
        changed = write(module, path, content) or changed
    module.exit_json(changed=changed, files=files, report=report)


if __name__ == '__main__':
    main()
