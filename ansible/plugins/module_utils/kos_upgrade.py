# -*- coding: utf-8 -*-
# Copyright: kos-upgrade developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Shared code of the kos.upgrade modules.

Everything here runs on the managed host, under its
/usr/libexec/platform-python (3.6 on KOS): no f-strings, no newer stdlib.
The modules only ever run ``kos-upgrade --root ROOT --json COMMAND ...``
(global flags before the command) and read its JSON (docs/cli.md); nothing
parses human output.

The reading of a host's verdict (blessed, pending, fell back, ...) lives in
one place, ``verdict()``; ``phase()`` says where a host is on its way to a
target release, which is what makes the roles resumable.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib
import json
import os
import time

from ansible.module_utils.basic import AnsibleModule

# SCHEMA_VERSION is the version of the data the modules return
# (docs/fleet.md). A field is never removed or changes meaning within a
# version; new fields may appear.
SCHEMA_VERSION = 1

# Exit codes of kos-upgrade (cmd/kos-upgrade/main.go).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_STALE = 3
EXIT_BUSY = 4

# Verdicts of a host's last upgrade (see verdict()).
VERDICT_NONE = 'none'              # nothing ran yet
VERDICT_PENDING = 'pending'        # upgraded, its first boot not judged yet
VERDICT_BLESSED = 'blessed'        # the first boot of the new system was healthy
VERDICT_NO_TRIAL = 'no-trial'      # upgraded without a trial boot (nothing to judge)
VERDICT_FELL_BACK = 'fell-back'    # the new system failed its first boot: the old one runs
VERDICT_FAILED = 'failed'          # the offline apply failed: the old system runs, unchanged
VERDICT_ROLLED_BACK = 'rolled-back'  # rolled back on request

# FINAL_VERDICTS end a wait for the first-boot verdict.
FINAL_VERDICTS = (VERDICT_BLESSED, VERDICT_NO_TRIAL, VERDICT_FELL_BACK, VERDICT_FAILED, VERDICT_ROLLED_BACK)

# Phases of a host on its way to a target (see phase()).
PHASE_DONE = 'done'            # runs the target release; nothing to do
PHASE_VERDICT = 'verdict'      # upgraded or applying: wait for the verdict, no reboot
PHASE_UPGRADE = 'upgrade'      # prepare (idempotent), arm and reboot
PHASE_FELL_BACK = 'fell-back'  # the last try at this target fell back or failed

BOOT_ID = '/proc/sys/kernel/random/boot_id'


class KosModule(AnsibleModule):
    """The modules' AnsibleModule: every result, a failure's too, carries
    schema_version (docs/fleet.md, fleet.schema.json's $defs/result)."""

    def exit_json(self, **kwargs):
        kwargs.setdefault('schema_version', SCHEMA_VERSION)
        super(KosModule, self).exit_json(**kwargs)

    def fail_json(self, msg, **kwargs):
        kwargs.setdefault('schema_version', SCHEMA_VERSION)
        super(KosModule, self).fail_json(msg, **kwargs)


def common_argument_spec():
    """The options every module takes."""
    return dict(
        root=dict(type='path', default='/'),
        binary=dict(type='path'),
    )


class KosUpgradeError(Exception):
    """A kos-upgrade command failed; msg is one clear sentence."""

    def __init__(self, msg, rc=None, data=None, stderr=''):
        super(KosUpgradeError, self).__init__(msg)
        self.msg = msg
        self.rc = rc
        self.data = data
        self.stderr = stderr


class Cli(object):
    """Runs kos-upgrade for a module."""

    def __init__(self, module):
        self.module = module
        self.root = module.params['root']
        binary = module.params.get('binary')
        if binary:
            if not os.access(binary, os.X_OK):
                module.fail_json(msg='cannot run kos-upgrade: %s is not an executable file' % binary)
            self.binary = binary
        else:
            self.binary = module.get_bin_path('kos-upgrade', required=False, opt_dirs=['/usr/sbin', '/usr/local/bin'])
            if not self.binary:
                module.fail_json(msg='cannot find kos-upgrade on PATH: install the kos-upgrade package or set binary')

    def argv(self, args):
        return [self.binary, '--root', self.root, '--json'] + list(args)

    def run(self, args, ok=(EXIT_OK,)):
        """Runs a command; returns (rc, data, stderr), data being the
        parsed JSON document of stdout (None when stdout is empty). Raises
        KosUpgradeError when rc is not in ok or stdout is not JSON."""
        argv = self.argv(args)
        rc, out, err = self.module.run_command(argv, environ_update={'LC_ALL': 'C'})
        data = None
        if out.strip():
            try:
                data = json.loads(out)
            except ValueError:
                raise KosUpgradeError('cannot read the JSON of `%s`: %s' % (' '.join(argv), last_lines(out)), rc, None, err)
        if rc not in ok:
            raise KosUpgradeError(command_error(argv, rc, err), rc, data, err)
        return rc, data, err

    def status(self):
        return self.run(['status'])[1]

    def facts(self):
        return host_facts(self.status(), read_boot_id(self.root))

    def state_path(self, *parts):
        return os.path.join(self.root, 'var/lib/kos-upgrade', *parts)


def command_error(argv, rc, stderr):
    """One sentence for a failed command, from its exit code and stderr."""
    what = {
        EXIT_USAGE: 'was refused (bad arguments)',
        EXIT_STALE: 'found the plan stale: the installed packages changed since prepare (prepare again)',
        EXIT_BUSY: 'is busy: another kos-upgrade operation is running on this host',
    }.get(rc, 'failed (exit %s)' % rc)
    msg = '`%s` %s' % (' '.join(argv[:1] + [a for a in argv[1:] if a != '--json']), what)
    tail = last_lines(stderr)
    if tail:
        msg += ': ' + tail
    return msg


def last_lines(text, n=5):
    lines = [l.strip() for l in (text or '').strip().splitlines() if l.strip()]
    return ' / '.join(lines[-n:])


def read_boot_id(root):
    """The boot id of the running system; '' under another root (it is
    not the running system's)."""
    if root not in ('/', ''):
        return ''
    try:
        with open(BOOT_ID) as f:
            return f.read().strip()
    except (IOError, OSError):
        return ''


def plan_summary(plan):
    """The part of a plan (docs/plan.md) a playbook needs."""
    if not plan:
        return None
    counts = {}
    for it in plan.get('transaction') or []:
        a = it.get('action', '')
        counts[a] = counts.get(a, 0) + 1
    target = plan.get('target') or {}
    return {
        'id': plan.get('id', ''),
        'target': target.get('version_id', ''),
        'created_at': plan.get('created_at', ''),
        'snapshot': plan.get('snapshot', ''),
        'mode': plan.get('mode', ''),
        'repos': ['%s=%s' % (r.get('id', ''), (r.get('baseurl') or [''])[0]) for r in plan.get('repos') or []],
        'rpmdb_fingerprint': plan.get('rpmdb_fingerprint', ''),
        'signature_check': plan.get('signature_check', ''),
        'counts': counts,
        'download_size': plan.get('download_size', 0),
        'install_size': plan.get('install_size', 0),
    }


def verdict(state):
    """Reads a host's verdict from its state.json document (as `status
    --json` shows it): (verdict, reason). The only place that does.

    The first-boot health check records its outcome in the state: the
    boot entry's trial (state.boot.trial: armed, blessed, fell-back, none)
    and the last result (kind fallback, whose error carries the fatal
    findings of the verdict, health.json: "automatic fallback:
    acme-web.service was active before the upgrade and is inactive after").
    """
    state = state or {}
    status = state.get('status') or 'idle'
    last = state.get('last_result') or {}
    boot = state.get('boot') or {}
    trial = boot.get('trial', '')
    # The last result stays in the state after the next prepare: it is
    # the verdict only while the state is the one that result left.
    if status == 'rolled-back':
        if last.get('kind') == 'fallback':
            return VERDICT_FELL_BACK, last.get('error') or boot.get('note') or 'the new system failed its first boot'
        return VERDICT_ROLLED_BACK, 'rolled back on request'
    if status == 'failed' and last.get('kind', 'apply') == 'apply':
        reason = last.get('error') or 'the offline upgrade failed'
        if last.get('step'):
            reason = 'at step %s: %s' % (last['step'], reason)
        return VERDICT_FAILED, reason
    if status == 'succeeded':
        if trial == 'blessed':
            return VERDICT_BLESSED, boot.get('note') or 'the first boot of the new system passed its health check'
        if trial == 'armed':
            return VERDICT_PENDING, 'the new system has not passed its first boot yet'
        if trial == 'fell-back':
            return VERDICT_FELL_BACK, boot.get('note') or 'the new system failed its first boot'
        return VERDICT_NO_TRIAL, boot.get('note') or 'upgraded without a trial boot'
    return VERDICT_NONE, ''


def host_facts(status, boot_id=''):
    """The kos_upgrade facts of a host from `status --json` (docs/fleet.md)."""
    status = status or {}
    state = status.get('state') or {}
    current = status.get('current') or {}
    last = state.get('last_result')
    v, reason = verdict(state)
    st = state.get('status') or 'idle'
    rollback = bool(st == 'succeeded' and state.get('previous') and state.get('backend') not in (None, '', 'none')
                    and not state.get('reboot_required'))
    return {
        'schema_version': SCHEMA_VERSION,
        'state': st,
        'step': state.get('step', ''),
        'running': bool(status.get('running')),
        'armed': bool(status.get('armed')),
        'foreign_update': status.get('foreign_update', ''),
        'release': current.get('version_id', ''),
        'release_name': current.get('name', ''),
        'target': state.get('target', ''),
        'plan': plan_summary(status.get('plan')),
        'plan_error': status.get('plan_error', ''),
        'last_result': last,
        'verdict': v,
        'reason': reason,
        'trial': (state.get('boot') or {}).get('trial', ''),
        'rollback_available': rollback,
        'reboot_required': bool(state.get('reboot_required')),
        'boot_id': boot_id,
        'updated_at': state.get('updated_at', ''),
    }


def phase(facts, target):
    """Where a host stands on its way to target (see the PHASE_ values):
    read from its own state, so that a rerun continues where it is."""
    v = facts['verdict']
    st = facts['state']
    last = facts.get('last_result') or {}
    if st == 'applying' or (st == 'succeeded' and v == VERDICT_PENDING):
        return PHASE_VERDICT
    if facts['release'] == target and st not in ('prepared', 'armed'):
        return PHASE_DONE
    # The release the last run tried: an apply's record goes from the old
    # release to its target (to); a fallback's from the release it left
    # (from) back to the one that runs again (docs/state.md).
    tried = last.get('from') if last.get('kind') == 'fallback' else last.get('to')
    if v in (VERDICT_FELL_BACK, VERDICT_FAILED) and tried == target:
        return PHASE_FELL_BACK
    return PHASE_UPGRADE


def rpmdb_fingerprint(module, root):
    """The rpmdb fingerprint of root, computed as kos-upgrade's helper
    does (pkg/pkgmgr/helper: sha256 of the sorted "NEVRA SIGMD5" lines,
    epoch 0 and arch noarch when missing); None when rpm cannot say."""
    rpm = module.get_bin_path('rpm')
    if not rpm:
        return None
    qf = '%{NAME}-%|EPOCH?{%{EPOCH}}:{0}|:%{VERSION}-%{RELEASE}.%|ARCH?{%{ARCH}}:{noarch}| %|SIGMD5?{%{SIGMD5}}:{}|\\n'
    rc, out, err = module.run_command([rpm, '--root', root, '--dbpath', '/var/lib/rpm', '-qa', '--qf', qf],
                                      environ_update={'LC_ALL': 'C'})
    if rc != 0:
        return None
    lines = sorted(l for l in out.splitlines() if l.strip())
    h = hashlib.sha256()
    for l in lines:
        h.update((l + '\n').encode('utf-8'))
    return 'sha256:' + h.hexdigest()


def read_report(path):
    """The assessment report (docs/report.md) at path, None if missing or
    unreadable."""
    try:
        with open(path) as f:
            r = json.load(f)
    except (IOError, OSError, ValueError):
        return None
    return r if isinstance(r, dict) else None


def is_inhibitor(finding):
    return 'inhibitor' in (finding.get('groups') or [])


def blocking(report, fail_on, known_inhibitors):
    """The keys of the findings that fail the host under fail_on
    (inhibitor, high or never); known_inhibitors are accepted."""
    if fail_on == 'never' or not report:
        return []
    known = set(known_inhibitors or [])
    keys = []
    for f in report.get('findings') or []:
        if f.get('key') in known:
            continue
        if is_inhibitor(f) or (fail_on == 'high' and f.get('severity') == 'high'):
            if f.get('key') not in keys:
                keys.append(f.get('key'))
    return keys


def inhibitor_keys(report):
    """The keys of the report's inhibitors."""
    keys = []
    for f in (report or {}).get('findings') or []:
        if is_inhibitor(f) and f.get('key') not in keys:
            keys.append(f.get('key'))
    return keys


def describe_findings(report, keys):
    """"key (title)" for each finding of keys, for messages."""
    titles = {}
    for f in (report or {}).get('findings') or []:
        titles.setdefault(f.get('key'), f.get('title', ''))
    return '; '.join('%s (%s)' % (k, titles.get(k, '')) for k in keys)


def repo_flags(repos):
    out = []
    for r in repos or []:
        out += ['--repo', r]
    return out


def answer_flags(answers):
    out = []
    for k in sorted(answers or {}):
        out += ['--answer', '%s=%s' % (k, answers[k])]
    return out


def check_repos(module):
    for r in module.params.get('repos') or []:
        rid, sep, url = r.partition('=')
        if not sep or not rid or not url or ' ' in rid or '/' in rid:
            module.fail_json(msg='cannot use repos entry %r: want ID=URL, for example kos=file:///srv/kos/5.9' % r)


def schedule(module, argv, delay, name):
    """Runs argv delay seconds from now in a transient systemd unit, so
    that the module can return before the connection goes away with the
    reboot. Returns the unit's name; fails the module when systemd-run
    refuses."""
    systemd_run = module.get_bin_path('systemd-run', required=False)
    if not systemd_run:
        module.fail_json(msg='cannot reboot: systemd-run is not on PATH')
    unit = '%s-%d' % (name, int(time.time() * 1000))
    rc, out, err = module.run_command([systemd_run, '--unit', unit, '--on-active=%ds' % max(1, delay),
                                       '--description', 'kos.upgrade: ' + ' '.join(argv)] + argv)
    if rc != 0:
        module.fail_json(msg='cannot schedule the reboot (systemd-run exit %d): %s' % (rc, last_lines(err)))
    return unit


def reboot_options():
    """The options of the modules that reboot."""
    return dict(
        reboot=dict(type='bool', default=True),
        reboot_delay=dict(type='int', default=5),
    )


def require_running_root(module):
    if module.params['reboot'] and module.params['root'] not in ('/', ''):
        module.fail_json(msg='cannot reboot the system under root %s: set reboot to false' % module.params['root'])
