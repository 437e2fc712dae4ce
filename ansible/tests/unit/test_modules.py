"""Unit tests of the kos.upgrade modules: argument handling, check mode and
idempotence, against a fake kos-upgrade (fake_kos_upgrade.py) that keeps
its state in the real files under a temporary root.

Run with /usr/bin/python3 (ansible-core importable) and the collection on
PYTHONPATH as ansible_collections/kos/upgrade; test/ansible does both
(go test ./test/ansible). Each module runs as Ansible runs it: a separate
Python process reading ANSIBLE_MODULE_ARGS from a file.
"""

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
COLLECTION = os.path.dirname(os.path.dirname(HERE))
FAKE = os.path.join(HERE, 'fake_kos_upgrade.sh')
PKG = 'ansible_collections.kos.upgrade.plugins'
# The managed host's Python, which runs the modules (KOS: platform-python
# 3.6), with KOS_MODULE_PYTHONPATH (the collection and ansible's
# module_utils) for the modules run directly; the controller's parts run
# under this Python.
MODULE_PYTHON = os.environ.get('KOS_MODULE_PYTHON') or sys.executable

from ansible_collections.kos.upgrade.plugins.module_utils import kos_upgrade as ku  # noqa: E402


class Host(object):
    """A temporary root with the fake kos-upgrade and fake tools."""

    def __init__(self, release='5.8', **fake):
        self.dir = tempfile.mkdtemp(prefix='kos-ansible-unit-')
        self.root = os.path.join(self.dir, 'root')
        self.bin = os.path.join(self.dir, 'bin')
        os.makedirs(self.root)
        os.makedirs(self.bin)
        for tool in ('systemd-run', 'systemctl', 'rpm'):
            os.symlink(os.path.join(HERE, 'fake_tool.sh'), os.path.join(self.bin, tool))
        os.symlink(FAKE, os.path.join(self.bin, 'kos-upgrade'))
        self.log = os.path.join(self.dir, 'tools.log')
        self.rpm_qa = os.path.join(self.dir, 'rpm-qa.txt')
        self.set_rpmdb(['bash-0:4.4-1.x86_64 aa', 'gpg-pubkey-0:1-2.noarch '])
        self.update_fake(release=release, fingerprint=self.fingerprint(), **fake)

    def set_rpmdb(self, lines):
        with open(self.rpm_qa, 'w') as f:
            f.write('\n'.join(lines) + '\n')

    def fingerprint(self):
        with open(self.rpm_qa) as f:
            lines = sorted(l for l in f.read().splitlines() if l.strip())
        return 'sha256:' + hashlib.sha256(''.join(l + '\n' for l in lines).encode()).hexdigest()

    def update_fake(self, **kw):
        path = os.path.join(self.root, 'fake.json')
        doc = {}
        if os.path.exists(path):
            with open(path) as f:
                doc = json.load(f)
        doc.update(kw)
        with open(path, 'w') as f:
            json.dump(doc, f)

    def set_state(self, **state):
        d = os.path.join(self.root, 'var/lib/kos-upgrade')
        if not os.path.isdir(d):
            os.makedirs(d)
        doc = {'version': 1, 'updated_at': '2026-12-07T00:00:00Z'}
        doc.update(state)
        with open(os.path.join(d, 'state.json'), 'w') as f:
            json.dump(doc, f)

    def state(self):
        with open(os.path.join(self.root, 'var/lib/kos-upgrade/state.json')) as f:
            return json.load(f)

    def calls(self):
        """The fake kos-upgrade's argv lists."""
        try:
            with open(os.path.join(self.root, 'calls.log')) as f:
                return [json.loads(l) for l in f]
        except IOError:
            return []

    def commands(self):
        """The kos-upgrade command of each call (the first word after the
        global flags)."""
        out = []
        for argv in self.calls():
            i = 0
            while argv[i].startswith('-'):
                i += 2 if argv[i] == '--root' else 1
            out.append(argv[i])
        return out

    def tools(self):
        try:
            with open(self.log) as f:
                return f.read().splitlines()
        except IOError:
            return []

    def run(self, module, check=False, diff=False, fake=True, **args):
        """Runs module with args (root: the host's, binary: the fake,
        unless given; None drops them); returns its result dict."""
        args.setdefault('root', self.root)
        if fake:
            args.setdefault('binary', FAKE)
        args = dict((k, v) for k, v in args.items() if v is not None)
        args['_ansible_check_mode'] = check
        args['_ansible_diff'] = diff
        path = os.path.join(self.dir, 'args.json')
        with open(path, 'w') as f:
            json.dump({'ANSIBLE_MODULE_ARGS': args}, f)
        env = dict(os.environ, PATH=self.bin + ':/usr/bin:/bin', KOS_FAKE_LOG=self.log, KOS_FAKE_RPM_QA=self.rpm_qa,
                   KOS_FAKE_ROOT=self.root)
        if os.environ.get('KOS_MODULE_PYTHONPATH'):
            env['PYTHONPATH'] = os.environ['KOS_MODULE_PYTHONPATH']
        p = subprocess.run([MODULE_PYTHON, '-m', '%s.modules.%s' % (PKG, module), path], env=env, check=False,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        try:
            r = json.loads(p.stdout)
        except ValueError:
            raise AssertionError('%s printed no JSON (exit %d):\n%s\n%s' % (module, p.returncode, p.stdout, p.stderr))
        # Every result, a failure's too, as fleet.schema.json says.
        validate(r, module[len('kos_upgrade_'):] + '_result')
        return r

    def cleanup(self):
        shutil.rmtree(self.dir)


INHIBITED = {
    'version': 1, 'inhibited': True, 'counts': {'inhibitors': 1, 'high': 2, 'medium': 0, 'low': 0, 'info': 0},
    'findings': [
        {'key': 'packages.third-party', 'severity': 'high', 'groups': ['packages', 'inhibitor'], 'title': '1 third-party package',
         'summary': 's', 'remediations': [{'type': 'command', 'text': 'kos-upgrade check --answer packages.third-party=keep'}]},
        {'key': 'boot.loader-unknown', 'severity': 'high', 'groups': ['boot'], 'title': 'no boot loader', 'summary': 's'},
        {'key': 'transaction.summary', 'severity': 'info', 'groups': ['packages'], 'title': 'What the upgrade changes: 3 upgrade', 'summary': 's'},
    ],
}
HIGH_ONLY = dict(INHIBITED, inhibited=False, findings=INHIBITED['findings'][1:])


def validate(doc, definition=None):
    """Validates doc against docs/fleet.schema.json (or one of its
    $defs)."""
    import jsonschema
    with open(os.path.join(COLLECTION, 'docs', 'fleet.schema.json')) as f:
        schema = json.load(f)
    if definition:
        schema = {'$schema': schema['$schema'], '$defs': schema['$defs'], '$ref': '#/$defs/' + definition}
    jsonschema.validators.validator_for(schema).check_schema(schema)
    jsonschema.validate(doc, schema, cls=jsonschema.validators.validator_for(schema))


class TestCase(unittest.TestCase):

    def host(self, **kw):
        h = Host(**kw)
        self.addCleanup(h.cleanup)
        return h


class TestVerdict(TestCase):
    """verdict() and phase(), the one reading of a host's state."""

    def test_verdicts(self):
        fallback = {'kind': 'fallback', 'status': 'rolled-back', 'success': False, 'from': '5.9', 'to': '5.8',
                    'error': 'the new system did not boot: the boot loader fell back'}
        cases = [
            ('fresh', {}, ku.VERDICT_NONE, ''),
            ('prepared', {'status': 'prepared'}, ku.VERDICT_NONE, ''),
            ('pending', {'status': 'succeeded', 'boot': {'trial': 'armed'}}, ku.VERDICT_PENDING, 'not passed'),
            ('blessed', {'status': 'succeeded', 'boot': {'trial': 'blessed'}}, ku.VERDICT_BLESSED, 'health'),
            ('no trial', {'status': 'succeeded', 'boot': {'trial': 'none', 'note': 'grubenv on btrfs'}}, ku.VERDICT_NO_TRIAL, 'grubenv'),
            ('no boot loader', {'status': 'succeeded'}, ku.VERDICT_NO_TRIAL, 'without a trial'),
            ('fell back', {'status': 'rolled-back', 'last_result': fallback}, ku.VERDICT_FELL_BACK, 'boot loader fell back'),
            ('prepared again after a fallback', {'status': 'prepared', 'last_result': fallback}, ku.VERDICT_NONE, ''),
            ('rolled back', {'status': 'rolled-back', 'last_result': {'kind': 'rollback', 'status': 'rolled-back'}},
             ku.VERDICT_ROLLED_BACK, 'request'),
            ('apply failed', {'status': 'failed', 'last_result': {'kind': 'apply', 'step': 'transaction', 'error': 'scriptlet failed'}},
             ku.VERDICT_FAILED, 'at step transaction: scriptlet failed'),
        ]
        for name, state, want, reason in cases:
            with self.subTest(name):
                v, r = ku.verdict(state)
                self.assertEqual(v, want)
                self.assertIn(reason, r)

    def test_phases(self):
        def facts(state, release='5.8', **kw):
            f = ku.host_facts({'state': dict({'status': 'idle'}, **state), 'current': {'version_id': release}})
            f.update(kw)
            return f
        # As the engine records a fallback (upgrader/rollback.go): from the
        # release it left, to the one that runs again.
        fb = {'status': 'rolled-back', 'last_result': {'kind': 'fallback', 'status': 'rolled-back', 'from': '5.9', 'to': '5.8'}}
        cases = [
            ('idle', facts({}), ku.PHASE_UPGRADE),
            ('prepared', facts({'status': 'prepared'}), ku.PHASE_UPGRADE),
            ('armed', facts({'status': 'armed'}), ku.PHASE_UPGRADE),
            ('applying', facts({'status': 'applying'}), ku.PHASE_VERDICT),
            ('new system, pending', facts({'status': 'succeeded', 'boot': {'trial': 'armed'}}, '5.9'), ku.PHASE_VERDICT),
            ('old system, pending', facts({'status': 'succeeded', 'boot': {'trial': 'armed'}}), ku.PHASE_VERDICT),
            ('blessed', facts({'status': 'succeeded', 'boot': {'trial': 'blessed'}}, '5.9'), ku.PHASE_DONE),
            ('runs the target', facts({}, '5.9'), ku.PHASE_DONE),
            ('fell back', facts(fb), ku.PHASE_FELL_BACK),
            ('fell back from another target', facts(dict(fb, last_result=dict(fb['last_result'], **{'from': '5.10'}))), ku.PHASE_UPGRADE),
            ('apply failed', facts({'status': 'failed', 'last_result': {'kind': 'apply', 'from': '5.8', 'to': '5.9'}}), ku.PHASE_FELL_BACK),
            ('apply to another target failed', facts({'status': 'failed', 'last_result': {'kind': 'apply', 'from': '5.8', 'to': '5.10'}}),
             ku.PHASE_UPGRADE),
        ]
        for name, f, want in cases:
            with self.subTest(name):
                self.assertEqual(ku.phase(f, '5.9'), want)

    def test_blocking(self):
        cases = [
            ('inhibitor', 'inhibitor', [], ['packages.third-party']),
            ('known inhibitor', 'inhibitor', ['packages.third-party'], []),
            ('high', 'high', [], ['packages.third-party', 'boot.loader-unknown']),
            ('high, one known', 'high', ['boot.loader-unknown'], ['packages.third-party']),
            ('never', 'never', [], []),
        ]
        for name, fail_on, known, want in cases:
            with self.subTest(name):
                self.assertEqual(ku.blocking(INHIBITED, fail_on, known), want)


class TestFacts(TestCase):

    def test_idle(self):
        h = self.host()
        r = h.run('kos_upgrade_facts', target='5.9')
        self.assertFalse(r.get('failed'), r)
        self.assertFalse(r['changed'])
        f = r['kos_upgrade']
        validate(f, 'facts')
        self.assertEqual((f['schema_version'], f['state'], f['release'], f['verdict'], f['phase']), (1, 'idle', '5.8', 'none', 'upgrade'))
        self.assertEqual(r['ansible_facts']['kos_upgrade'], f)
        # Global flags before the command, where every kos-upgrade accepts them.
        self.assertEqual(h.calls(), [['--root', h.root, '--json', 'status']])

    def test_rollback_available(self):
        h = self.host(release='5.9')
        h.set_state(status='succeeded', backend='btrfs', previous='@', boot={'trial': 'blessed'})
        f = h.run('kos_upgrade_facts', target='5.9')['kos_upgrade']
        self.assertTrue(f['rollback_available'])
        self.assertEqual((f['verdict'], f['phase']), ('blessed', 'done'))

    def test_binary_from_path(self):
        h = self.host()
        r = h.run('kos_upgrade_facts', fake=False)
        self.assertFalse(r.get('failed'), r)
        self.assertEqual(len(h.calls()), 1)

    def test_errors(self):
        cases = [
            ('binary not executable', dict(binary='/nonexistent/kos-upgrade'), 'not an executable file'),
            ('unknown option', dict(bogus=1), 'Unsupported parameters'),
            ('bad type', dict(history='perhaps'), 'history'),
        ]
        for name, args, msg in cases:
            with self.subTest(name):
                r = self.host().run('kos_upgrade_facts', **args)
                self.assertTrue(r.get('failed'), r)
                self.assertIn(msg, r['msg'])

    def test_busy(self):
        h = self.host()
        h.update_fake(fail={'status': [4, 'another kos-upgrade operation is running']})
        r = h.run('kos_upgrade_facts')
        self.assertTrue(r['failed'])
        self.assertIn('is busy', r['msg'])
        self.assertEqual(r['rc'], 4)


class TestCheck(TestCase):

    def test_fail_on(self):
        cases = [
            ('inhibitor fails', INHIBITED, dict(), True, ['packages.third-party']),
            ('known inhibitor passes', INHIBITED, dict(known_inhibitors=['packages.third-party']), False, []),
            ('never', INHIBITED, dict(fail_on='never'), False, []),
            ('high fails on a high finding', HIGH_ONLY, dict(fail_on='high'), True, ['boot.loader-unknown']),
            ('inhibitor passes a high finding', HIGH_ONLY, dict(), False, []),
        ]
        for name, report, args, failed, block in cases:
            with self.subTest(name):
                h = self.host()
                h.update_fake(report=report)
                r = h.run('kos_upgrade_check', to='5.9', **args)
                self.assertEqual(bool(r.get('failed')), failed, r.get('msg'))
                self.assertEqual(r['blocking'], block)
                self.assertEqual(r['report']['findings'], report['findings'])
                self.assertFalse(r['changed'])
                if failed:
                    self.assertIn(block[0], r['msg'])

    def test_arguments(self):
        h = self.host()
        r = h.run('kos_upgrade_check', to='5.9', repos=['kos=file:///srv/kos'], snapshot='btrfs', no_gpg_check=True,
                  answers={'packages.third-party': 'keep', 'modules.unshipped': 'accept'})
        self.assertFalse(r.get('failed'), r)
        self.assertEqual(h.calls()[0], ['--root', h.root, '--json', 'check', '--to', '5.9', '--repo', 'kos=file:///srv/kos',
                                        '--snapshot', 'btrfs', '--no-gpg-check', '--answer', 'modules.unshipped=accept',
                                        '--answer', 'packages.third-party=keep'])

    def test_bad_arguments(self):
        cases = [
            ('repo without url', dict(repos=['kos']), 'want ID=URL'),
            ('bad fail_on', dict(fail_on='sometimes'), 'fail_on'),
            ('bad snapshot', dict(snapshot='zfs'), 'snapshot'),
        ]
        for name, args, msg in cases:
            with self.subTest(name):
                h = self.host()
                r = h.run('kos_upgrade_check', to='5.9', **args)
                self.assertTrue(r.get('failed'), r)
                self.assertIn(msg, r['msg'])
                self.assertEqual(h.calls(), [], 'kos-upgrade ran with bad arguments')

    def test_usage_error(self):
        h = self.host()
        h.update_fake(fail={'check': [2, 'cannot use --to "5 9"']})
        r = h.run('kos_upgrade_check', to='5 9')
        self.assertTrue(r['failed'])
        self.assertIn('was refused (bad arguments): kos-upgrade: cannot use --to', r['msg'])


class TestPrepare(TestCase):

    def test_idempotent(self):
        h = self.host()
        r = h.run('kos_upgrade_prepare', to='5.9', repos=['kos=file:///srv/kos'])
        self.assertFalse(r.get('failed'), r)
        self.assertTrue(r['changed'])
        self.assertEqual(r['plan']['target'], '5.9')
        self.assertEqual(h.commands(), ['status', 'prepare'])
        self.assertIn(['--root', h.root, '--json', 'prepare', '--to', '5.9', '--repo', 'kos=file:///srv/kos', '--snapshot', 'auto'], h.calls())
        # The same plan, the same rpmdb: ok.
        r = h.run('kos_upgrade_prepare', to='5.9', repos=['kos=file:///srv/kos'])
        self.assertFalse(r['changed'], r)
        self.assertEqual(h.commands(), ['status', 'prepare', 'status'])
        self.assertTrue(any('--dbpath /var/lib/rpm -qa' in l for l in h.tools()), h.tools())

    def test_prepares_again(self):
        cases = [
            ('rpmdb changed', dict(to='5.9', repos=['kos=file:///srv/kos']), True),
            ('other target', dict(to='5.10', repos=['kos=file:///srv/kos']), False),
            ('other repos', dict(to='5.9', repos=['kos=file:///srv/other']), False),
            ('other snapshot', dict(to='5.9', repos=['kos=file:///srv/kos'], snapshot='none'), False),
            ('no gpg check now', dict(to='5.9', repos=['kos=file:///srv/kos'], no_gpg_check=True), False),
            ('forced', dict(to='5.9', repos=['kos=file:///srv/kos'], force=True), False),
        ]
        for name, args, change_rpmdb in cases:
            with self.subTest(name):
                h = self.host()
                h.run('kos_upgrade_prepare', to='5.9', repos=['kos=file:///srv/kos'])
                if change_rpmdb:
                    h.set_rpmdb(['bash-0:4.4-2.x86_64 bb'])
                r = h.run('kos_upgrade_prepare', **args)
                self.assertTrue(r['changed'], r)
                self.assertEqual(h.commands().count('prepare'), 2)

    def test_check_mode(self):
        h = self.host()
        h.update_fake(report=HIGH_ONLY)
        r = h.run('kos_upgrade_prepare', check=True, diff=True, to='5.9')
        self.assertFalse(r.get('failed'), r)
        self.assertTrue(r['changed'])
        self.assertNotIn('prepare', h.commands())
        self.assertIn(['--root', h.root, '--json', 'check', '--to', '5.9', '--snapshot', 'auto'], h.calls())
        self.assertFalse(os.path.exists(os.path.join(h.root, 'var/lib/kos-upgrade/plan.json')))
        # Package by package, from the report's transaction.
        self.assertEqual(r['diff']['before'], 'release 5.8\nbash-0:4.4-1.x86_64\nold-0:1-1.noarch\n')
        self.assertEqual(r['diff']['after'], 'release 5.9\nbash-0:5.1-1.x86_64\nkernel-core-0:5.9.0-1.x86_64\n')
        self.assertEqual(r['diff']['after_header'], 'after the upgrade (dry run)')
        self.assertEqual([it['nevra'] for it in r['report']['transaction']],
                         ['bash-0:5.1-1.x86_64', 'kernel-core-0:5.9.0-1.x86_64', 'old-0:1-1.noarch'])
        # Without --diff: no diff, the same dry run.
        r = h.run('kos_upgrade_prepare', check=True, to='5.9')
        self.assertTrue(r['changed'])
        self.assertNotIn('diff', r)
        # The dry run's diff is the one the plan then has.
        dry = h.run('kos_upgrade_prepare', check=True, diff=True, to='5.9')['diff']
        made = h.run('kos_upgrade_prepare', diff=True, to='5.9')['diff']
        self.assertEqual((dry['before'], dry['after']), (made['before'], made['after']))

    def test_check_mode_with_plan(self):
        h = self.host()
        h.run('kos_upgrade_prepare', to='5.9')
        r = h.run('kos_upgrade_prepare', check=True, diff=True, to='5.9')
        self.assertFalse(r['changed'])
        self.assertIn('bash-0:4.4-1.x86_64', r['diff']['before'])
        self.assertIn('old-0:1-1.noarch', r['diff']['before'])
        self.assertIn('bash-0:5.1-1.x86_64', r['diff']['after'])

    def test_check_mode_inhibited(self):
        h = self.host()
        h.update_fake(report=INHIBITED)
        r = h.run('kos_upgrade_prepare', check=True, to='5.9')
        self.assertTrue(r['failed'])
        self.assertIn('would be refused: packages.third-party', r['msg'])

    def test_inhibited(self):
        h = self.host()
        h.update_fake(report=INHIBITED)
        r = h.run('kos_upgrade_prepare', to='5.9')
        self.assertTrue(r['failed'])
        self.assertEqual(r['inhibitors'], ['packages.third-party'])
        self.assertIn('prepare was refused: packages.third-party (1 third-party package)', r['msg'])

    def test_already_there(self):
        h = self.host(release='5.9')
        r = h.run('kos_upgrade_prepare', to='5.9')
        self.assertFalse(r['changed'])
        self.assertIn('runs 5.9 already', r['msg'])
        self.assertEqual(h.commands(), ['status'])

    def test_armed(self):
        h = self.host()
        h.run('kos_upgrade_prepare', to='5.9')
        h.run('kos_upgrade_apply', reboot=False)
        r = h.run('kos_upgrade_prepare', to='5.9')
        self.assertFalse(r.get('failed'), r)
        self.assertFalse(r['changed'])
        r = h.run('kos_upgrade_prepare', to='5.10')
        self.assertTrue(r['failed'])
        self.assertIn('cancel it first', r['msg'])


class TestApply(TestCase):

    def test_arm(self):
        h = self.host()
        h.run('kos_upgrade_prepare', to='5.9')
        r = h.run('kos_upgrade_apply', check=True, reboot=False)
        self.assertTrue(r['changed'])
        self.assertEqual(h.state()['status'], 'prepared')
        r = h.run('kos_upgrade_apply', reboot=False)
        self.assertFalse(r.get('failed'), r)
        self.assertTrue(r['changed'] and r['armed'] and not r['rebooting'])
        self.assertEqual(r['plan_id'], 'plan-1')
        self.assertIn(['--root', h.root, '--json', 'reboot', '--no-reboot'], h.calls())
        self.assertEqual(h.state()['status'], 'armed')
        r = h.run('kos_upgrade_apply', reboot=False)
        self.assertFalse(r['changed'])
        self.assertEqual(h.tools(), [t for t in h.tools() if not t.startswith('systemd-run')])

    def test_reboot(self):
        h = self.host()
        h.run('kos_upgrade_prepare', to='5.9')
        r = h.run('kos_upgrade_apply', root='/', reboot_delay=7)
        self.assertFalse(r.get('failed'), r)
        self.assertTrue(r['changed'] and r['rebooting'])
        with open('/proc/sys/kernel/random/boot_id') as f:
            self.assertEqual(r['boot_id'], f.read().strip())
        runs = [t for t in h.tools() if t.startswith('systemd-run')]
        self.assertEqual(len(runs), 1, h.tools())
        self.assertIn('--on-active=7s', runs[0])
        self.assertTrue(runs[0].endswith(' %s reboot' % FAKE), runs[0])

    def test_refusals(self):
        cases = [
            ('nothing prepared', False, dict(reboot=False), 'nothing to apply: the state is idle'),
            ('reboot under a root', True, dict(), 'cannot reboot the system under root'),
            ('kexec without reboot', True, dict(reboot=False, kexec=True), 'kexec needs reboot'),
            ('stale plan', True, dict(reboot=False, stale=True), 'found the plan stale'),
        ]
        for name, prepare, args, msg in cases:
            with self.subTest(name):
                h = self.host()
                if prepare:
                    h.run('kos_upgrade_prepare', to='5.9')
                if args.pop('stale', False):
                    h.update_fake(stale=True)
                r = h.run('kos_upgrade_apply', **args)
                self.assertTrue(r.get('failed'), r)
                self.assertIn(msg, r['msg'])


class TestRollbackCancel(TestCase):

    def test_rollback(self):
        h = self.host(release='5.9')
        h.set_state(status='succeeded', backend='btrfs', previous='@', target='5.9', boot={'trial': 'blessed'})
        r = h.run('kos_upgrade_rollback', check=True, reboot=False)
        self.assertTrue(r['changed'])
        self.assertEqual(h.state()['status'], 'succeeded')
        r = h.run('kos_upgrade_rollback', reboot=False)
        self.assertTrue(r['changed'], r)
        self.assertEqual(r['result']['kind'], 'rollback')
        self.assertIn(['--root', h.root, '--json', 'rollback', '--no-reboot'], h.calls())
        r = h.run('kos_upgrade_rollback', reboot=False)
        self.assertFalse(r['changed'], r)
        self.assertFalse(r.get('failed'))

    def test_rollback_reboots(self):
        h = self.host(release='5.9')
        h.set_state(status='succeeded', backend='btrfs', previous='@', target='5.9', boot={'trial': 'blessed'})
        r = h.run('kos_upgrade_rollback', root='/')
        self.assertTrue(r['rebooting'], r)
        self.assertTrue([t for t in h.tools() if t.startswith('systemd-run') and t.endswith('systemctl reboot')], h.tools())

    def test_nothing_to_roll_back(self):
        r = self.host().run('kos_upgrade_rollback', reboot=False)
        self.assertTrue(r['failed'])
        self.assertIn('no rollback is available: the state is idle', r['msg'])

    def test_cancel(self):
        h = self.host()
        r = h.run('kos_upgrade_cancel')
        self.assertFalse(r['changed'])
        h.run('kos_upgrade_prepare', to='5.9')
        r = h.run('kos_upgrade_cancel', check=True)
        self.assertTrue(r['changed'])
        self.assertNotIn('cancel', h.commands())
        r = h.run('kos_upgrade_cancel')
        self.assertTrue(r['changed'])
        self.assertEqual(h.state()['status'], 'idle')
        r = h.run('kos_upgrade_cancel')
        self.assertFalse(r['changed'])


class TestReport(TestCase):

    def hosts(self):
        def facts(release, state, trial='', last=None):
            st = {'status': state, 'boot': {'trial': trial} if trial else None, 'last_result': last}
            return ku.host_facts({'state': st, 'current': {'version_id': release}})
        fb = {'kind': 'fallback', 'status': 'rolled-back', 'from': '5.9', 'to': '5.8', 'error': 'the new system <did not> boot'}
        return {
            'web1': {'before': facts('5.8', 'idle'), 'after': facts('5.9', 'succeeded', 'blessed'), 'downtime': 312.4},
            'web2': {'before': facts('5.8', 'idle'), 'after': facts('5.8', 'rolled-back', last=fb), 'downtime': 900,
                     'error': 'Stop the rollout'},
            'db1': {'before': facts('5.8', 'idle'), 'inhibitors': ['packages.third-party', 'modules.unshipped']},
            'db2': {'before': facts('5.8', 'idle'), 'inhibitors': ['packages.third-party']},
        }

    def test_report(self):
        h = self.host()
        dest = os.path.join(h.dir, 'report')
        r = h.run('kos_upgrade_report', fake=False, root=None, dest=dest, target='5.9', hosts=self.hosts())
        self.assertFalse(r.get('failed'), r)
        self.assertTrue(r['changed'])
        with open(os.path.join(dest, 'fleet.json')) as f:
            doc = json.load(f)
        self.assertEqual((doc['schema'], doc['schema_version']), ('kos.upgrade/fleet-report', 1))
        self.assertEqual(doc['counts']['inhibitors'], {'packages.third-party': 2, 'modules.unshipped': 1})
        self.assertEqual(doc['counts']['verdicts'], {'blessed': 1, 'fell-back': 1, 'none': 2})
        self.assertEqual(doc['counts']['upgraded'], 1)
        by = dict((x['host'], x) for x in doc['hosts'])
        self.assertEqual((by['web2']['verdict'], by['web2']['reason']), ('fell-back', 'the new system <did not> boot'))
        self.assertEqual((by['web1']['release_before'], by['web1']['release_after'], by['web1']['downtime_seconds']), ('5.8', '5.9', 312.4))
        validate(doc)
        with open(os.path.join(dest, 'fleet.csv')) as f:
            rows = list(csv.DictReader(f))
        self.assertEqual([x['host'] for x in rows], ['db1', 'db2', 'web1', 'web2'])
        self.assertEqual(rows[0]['inhibitors'], 'modules.unshipped;packages.third-party')
        with open(os.path.join(dest, 'fleet.html')) as f:
            page = f.read()
        self.assertIn('the new system &lt;did not&gt; boot', page)
        self.assertNotIn('<did not>', page)
        self.assertNotIn('http', page.replace('http-equiv', ''), 'the page refers to something outside itself')
        r = h.run('kos_upgrade_report', fake=False, root=None, dest=dest, target='5.9', hosts=self.hosts())
        self.assertFalse(r['changed'], 'the same report written twice is a change')

    def test_resumed_host(self):
        """A host upgraded by an earlier run shows the release it came from."""
        before = ku.host_facts({'state': {'status': 'succeeded', 'boot': {'trial': 'blessed'},
                                          'last_result': {'kind': 'apply', 'from': '5.8', 'to': '5.9'}},
                                'current': {'version_id': '5.9'}})
        h = self.host()
        dest = os.path.join(h.dir, 'report')
        r = h.run('kos_upgrade_report', fake=False, root=None, dest=dest, target='5.9', hosts={'a': {'before': before}})
        self.assertEqual(r['report']['hosts'][0]['release_before'], '5.8')


class TestRoles(TestCase):
    """The playbook kos.upgrade.upgrade (roles assess and upgrade) on hosts
    that are each a fake root, over the local connection: a host upgraded
    already is left alone, a host that fell back stops the rollout (retry
    off), a host with an inhibitor is stopped by the assessment; the fleet
    report says so."""

    def test_upgrade_playbook(self):
        coll = os.environ.get('KOS_ANSIBLE_COLLECTIONS', '')
        if not coll:
            self.skipTest('KOS_ANSIBLE_COLLECTIONS is not set')
        done = self.host(release='5.9')
        done.set_state(status='succeeded', backend='btrfs', previous='@', target='5.9', boot={'trial': 'blessed'},
                       last_result={'kind': 'apply', 'from': '5.8', 'to': '5.9', 'success': True, 'status': 'succeeded'})
        fell = self.host()
        fell.set_state(status='rolled-back', last_result={'kind': 'fallback', 'from': '5.9', 'to': '5.8', 'success': False,
                                                          'status': 'rolled-back', 'error': 'the new system did not boot'})
        blocked = self.host()
        blocked.update_fake(report=INHIBITED)
        hosts = {'done': done, 'fell': fell, 'blocked': blocked}
        inv = os.path.join(done.dir, 'inventory.json')
        with open(inv, 'w') as f:
            json.dump({'all': {'vars': {'ansible_connection': 'local', 'ansible_python_interpreter': MODULE_PYTHON,
                                        'kos_upgrade_binary': FAKE},
                               'hosts': dict((n, {'kos_upgrade_root': h.root}) for n, h in hosts.items())}}, f)
        report = os.path.join(done.dir, 'report')
        extra = {'kos_upgrade_target': '5.9', 'kos_upgrade_report_dir': report, 'kos_upgrade_retry_fallen_back': False,
                 'kos_upgrade_serial': [1, 2]}
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=coll, ANSIBLE_NOCOLOR='1', ANSIBLE_RETRY_FILES_ENABLED='0',
                   ANSIBLE_LOCAL_TEMP=os.path.join(done.dir, 'tmp'))
        p = subprocess.run(['ansible-playbook', '-i', inv, '-e', json.dumps(extra), 'kos.upgrade.upgrade'], env=env, check=False,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        self.assertNotEqual(p.returncode, 0, p.stdout)
        self.assertIn('fell: fell-back: the new system did not boot', p.stdout)
        self.assertIn('the upgrade is blocked by: packages.third-party', p.stdout)
        self.assertEqual(done.commands(), ['status'] * 3, 'a host on the target was touched')
        self.assertNotIn('prepare', fell.commands())
        self.assertEqual(blocked.commands(), ['status', 'check'], 'a blocked host went on after its assessment')
        self.assertTrue(os.path.exists(os.path.join(report, 'reports', 'blocked.json')))
        with open(os.path.join(report, 'fleet.json')) as f:
            doc = json.load(f)
        validate(doc)
        by = dict((x['host'], x) for x in doc['hosts'])
        self.assertEqual((by['done']['verdict'], by['done']['release_before'], by['done']['phase']), ('blessed', '5.8', 'done'))
        self.assertEqual((by['fell']['verdict'], by['fell']['reason'], by['fell']['phase']),
                         ('fell-back', 'the new system did not boot', 'fell-back'))
        self.assertEqual((by['blocked']['inhibitors'], by['blocked']['phase']), (['packages.third-party'], 'assess'))
        self.assertEqual(doc['counts']['inhibitors'], {'packages.third-party': 1})

    def test_unreachable_host(self):
        """A host that does not answer (rebooting into its upgrade when a rerun
        starts) is not assessed but waited for; the bounded wait fails naming
        the host, the phase and the last state seen; the report says so."""
        coll = os.environ.get('KOS_ANSIBLE_COLLECTIONS', '')
        if not coll:
            self.skipTest('KOS_ANSIBLE_COLLECTIONS is not set')
        import socket
        s = socket.socket()
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
        s.close()  # nothing listens there: ssh is refused at once
        h = self.host()
        inv = os.path.join(h.dir, 'inventory.json')
        with open(inv, 'w') as f:
            json.dump({'all': {'hosts': {'down': {
                'ansible_connection': 'ssh', 'ansible_host': '127.0.0.1', 'ansible_port': port, 'ansible_user': 'root',
                'ansible_ssh_common_args': '-o ConnectTimeout=2 -o BatchMode=yes -o StrictHostKeyChecking=no',
                'ansible_python_interpreter': MODULE_PYTHON, 'kos_upgrade_binary': FAKE}}}}, f)
        report = os.path.join(h.dir, 'report')
        extra = {'kos_upgrade_target': '5.9', 'kos_upgrade_report_dir': report, 'kos_upgrade_verdict_timeout': 3,
                 'kos_upgrade_poll_interval': 1}
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=coll, ANSIBLE_NOCOLOR='1', ANSIBLE_RETRY_FILES_ENABLED='0',
                   ANSIBLE_LOCAL_TEMP=os.path.join(h.dir, 'tmp'), ANSIBLE_SSH_CONTROL_PATH_DIR=os.path.join(h.dir, 'cp'))
        p = subprocess.run(['ansible-playbook', '-i', inv, '-e', json.dumps(extra), 'kos.upgrade.upgrade'], env=env, check=False,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        self.assertNotEqual(p.returncode, 0, p.stdout)
        self.assertIn('down: no first-boot verdict within 3 s: phase verdict, last state seen: unreachable', p.stdout)
        self.assertNotIn('Assess the upgrade] ***\nok', p.stdout)
        with open(os.path.join(report, 'fleet.json')) as f:
            doc = json.load(f)
        validate(doc)
        r = doc['hosts'][0]
        self.assertEqual((r['host'], r['verdict'], r['phase']), ('down', 'unreachable', 'verdict'), r)
        self.assertIn('no first-boot verdict within 3 s', r['error'])
        self.assertEqual(h.calls(), [], 'the fake ran, but the host is unreachable')


class TestWait(TestCase):
    """The controller's wait for the verdict (action plugin), run by
    ansible over the local connection."""

    def wait(self, h, **args):
        coll = os.environ.get('KOS_ANSIBLE_COLLECTIONS', '')
        if not coll:
            self.skipTest('KOS_ANSIBLE_COLLECTIONS is not set')
        args = dict(dict(root=h.root, binary=FAKE, poll_interval=1), **args)
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=coll, ANSIBLE_NOCOLOR='1', ANSIBLE_LOAD_CALLBACK_PLUGINS='1',
                   ANSIBLE_STDOUT_CALLBACK='json', ANSIBLE_LOCAL_TEMP=os.path.join(h.dir, 'tmp'))
        p = subprocess.run(['ansible', 'localhost', '-c', 'local', '-e', 'ansible_python_interpreter=' + MODULE_PYTHON,
                            '-m', 'kos.upgrade.kos_upgrade_wait', '-a', json.dumps(args)], env=env, check=False,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        out = json.loads(p.stdout[p.stdout.index('{'):])
        r = out['plays'][0]['tasks'][0]['hosts']['localhost']
        validate(r, 'wait_result')
        return r

    def test_verdict(self):
        h = self.host(release='5.9')
        h.set_state(status='rolled-back', last_result={'kind': 'fallback', 'status': 'rolled-back', 'error': 'boot loader gave up'})
        r = self.wait(h, boot_id='the-boot-before', timeout=60)
        self.assertFalse(r.get('failed'), r)
        self.assertEqual((r['verdict'], r['reason'], r['phase']), ('fell-back', 'boot loader gave up', 'verdict'))
        self.assertGreaterEqual(r['downtime'], 0)

    def test_timeout(self):
        h = self.host(release='5.9')
        h.set_state(status='succeeded', boot={'trial': 'armed'})
        r = self.wait(h, timeout=3)
        self.assertTrue(r.get('failed'), r)
        self.assertEqual(r['msg'], 'localhost: no first-boot verdict within 3 s: phase verdict, last state seen: '
                                   'state succeeded, verdict pending')


class TestSchema(TestCase):

    def test_rejects(self):
        """The module results' schema can fail: what it must refuse."""
        import jsonschema
        cases = [
            ('no schema_version', {'changed': False, 'state': 'idle'}, 'cancel_result'),
            ('other version', {'schema_version': 2, 'changed': False}, 'apply_result'),
            ('bad verdict', {'schema_version': 1, 'verdict': 'fine'}, 'wait_result'),
            ('bad facts', {'schema_version': 1, 'kos_upgrade': {'state': 'idle'}}, 'facts_result'),
            ('bad report', {'schema_version': 1, 'report': {'schema': 'x'}}, 'report_result'),
            ('bad diff', {'schema_version': 1, 'diff': {'before': 'a'}}, 'prepare_result'),
        ]
        for name, doc, definition in cases:
            with self.subTest(name):
                with self.assertRaises(jsonschema.ValidationError):
                    validate(doc, definition)


class TestModulePython(TestCase):

    def test_version(self):
        """The modules ran under the Python asked for (KOS_MODULE_PYTHON_VERSION)."""
        want = os.environ.get('KOS_MODULE_PYTHON_VERSION', '')
        if not want:
            self.skipTest('KOS_MODULE_PYTHON_VERSION is not set')
        p = subprocess.run([MODULE_PYTHON, '-c', 'import sys; print("%d.%d" % sys.version_info[:2])'], check=True,
                           stdout=subprocess.PIPE, universal_newlines=True)
        self.assertEqual(p.stdout.strip(), want)


class TestDocs(TestCase):

    def test_ansible_doc(self):
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.environ.get('KOS_ANSIBLE_COLLECTIONS', ''))
        if not env['ANSIBLE_COLLECTIONS_PATH']:
            self.skipTest('KOS_ANSIBLE_COLLECTIONS is not set')
        mods = sorted(f[:-3] for f in os.listdir(os.path.join(COLLECTION, 'plugins/modules')) if f.endswith('.py'))
        for m in mods:
            with self.subTest(m):
                p = subprocess.run(['ansible-doc', '-j', 'kos.upgrade.' + m], env=env, stdout=subprocess.PIPE, check=False,
                                   stderr=subprocess.PIPE, universal_newlines=True)
                self.assertEqual(p.returncode, 0, p.stderr)
                doc = json.loads(p.stdout)['kos.upgrade.' + m]['doc']
                self.assertTrue(doc['short_description'])
                # The shared options and attributes (plugins/doc_fragments).
                self.assertIn('support', doc['attributes']['check_mode'])
                if m != 'kos_upgrade_report':
                    self.assertEqual(doc['options']['root']['type'], 'path')
                    self.assertEqual(doc['options']['root']['default'], '/')
                    self.assertEqual(doc['options']['binary']['type'], 'path')
                    self.assertIn('--root', ' '.join(doc['options']['root']['description']))


if __name__ == '__main__':
    unittest.main()
