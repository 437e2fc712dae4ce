"""A fake kos-upgrade for the module unit tests: the command line of
cmd/kos-upgrade (global flags, then the command and its flags), the JSON it
prints (docs/cli.md) and its exit codes, over a state kept in the real
files (ROOT/var/lib/kos-upgrade/state.json, plan.json, report.json,
ROOT/system-update). ROOT/fake.json steers it: the release, the report,
failures. Every call is appended to ROOT/calls.log as a JSON list."""

import json
import os
import sys

GLOBAL = {'--root': True, '--json': False, '--verbose': False}
FLAGS = {
    'status': {}, 'history': {}, 'cancel': {},
    'check': {'--to': True, '--repo': True, '--snapshot': True, '--no-gpg-check': False, '--answer': True},
    'prepare': {'--to': True, '--repo': True, '--snapshot': True, '--no-gpg-check': False, '--answer': True},
    'reboot': {'--no-reboot': False, '--kexec': False},
    'rollback': {'--no-reboot': False},
}


# dnf's resolution the fake reports (check --to) and plans (prepare), unless
# fake.json sets its own.
TRANSACTION = [
    {'action': 'upgrade', 'nevra': 'bash-0:5.1-1.x86_64', 'name': 'bash', 'replaces': ['bash-0:4.4-1.x86_64']},
    {'action': 'install', 'nevra': 'kernel-core-0:5.9.0-1.x86_64', 'name': 'kernel-core'},
    {'action': 'remove', 'nevra': 'old-0:1-1.noarch', 'name': 'old', 'reason': 'conflicts'}]


def die(code, msg):
    sys.stderr.write('kos-upgrade: %s\n' % msg)
    sys.exit(code)


def parse(argv):
    g, i = {'--root': '/'}, 0
    while i < len(argv) and argv[i].startswith('-'):
        if argv[i] not in GLOBAL:
            die(2, 'flag provided but not defined: %s' % argv[i])
        if GLOBAL[argv[i]]:
            g[argv[i]] = argv[i + 1]
            i += 2
        else:
            g[argv[i]] = True
            i += 1
    if i >= len(argv) or argv[i] not in FLAGS:
        die(2, 'unknown command %r' % (argv[i:i + 1],))
    cmd, flags, i = argv[i], {}, i + 1
    while i < len(argv):
        f = argv[i]
        if f not in FLAGS[cmd]:
            die(2, 'flag provided but not defined: %s (see kos-upgrade %s --help)' % (f, cmd))
        if FLAGS[cmd][f]:
            flags.setdefault(f, []).append(argv[i + 1])
            i += 2
        else:
            flags[f] = True
            i += 1
    return g, cmd, flags


def read(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (IOError, ValueError):
        return default


def write(path, doc):
    d = os.path.dirname(path)
    if not os.path.isdir(d):
        os.makedirs(d)
    with open(path, 'w') as f:
        json.dump(doc, f)


def main():
    g, cmd, flags = parse(sys.argv[1:])
    root = g['--root']
    if root == '/' and os.environ.get('KOS_FAKE_ROOT'):
        root = os.environ['KOS_FAKE_ROOT']  # tests of the modules that act on the running system
    with open(os.path.join(root, 'calls.log'), 'a') as f:
        f.write(json.dumps(sys.argv[1:]) + '\n')
    if not g.get('--json'):
        die(2, 'the fake speaks JSON only')
    fake = read(os.path.join(root, 'fake.json'), {})
    sd = os.path.join(root, 'var/lib/kos-upgrade')
    state = read(os.path.join(sd, 'state.json'), {'version': 1, 'status': 'idle', 'updated_at': '0001-01-01T00:00:00Z'})
    link = os.path.join(root, 'system-update')
    out = None
    if fake.get('fail', {}).get(cmd):
        code, msg = fake['fail'][cmd]
        die(code, msg)
    if cmd == 'status':
        out = {'state': state, 'running': False, 'armed': os.path.islink(link),
               'current': {'id': 'kos', 'version_id': fake.get('release', '5.8'), 'name': 'KeyarchOS'}}
        if state.get('plan_id'):
            out['plan'] = read(os.path.join(sd, 'plan.json'))
    elif cmd == 'history':
        out = fake.get('history', [])
    elif cmd in ('check', 'prepare'):
        report = dict(fake.get('report', {'version': 1, 'inhibited': False, 'findings': []}))
        if flags.get('--to') and 'transaction' not in report:
            report['transaction'] = fake.get('transaction', TRANSACTION)
        write(os.path.join(sd, 'report.json'), report)
        if cmd == 'check':
            print(json.dumps(report))
            sys.exit(1 if report.get('inhibited') else 0)
        if state['status'] == 'armed':
            die(1, 'an upgrade is armed: cancel it first')
        if report.get('inhibited'):
            die(1, 'the upgrade is inhibited')
        to = flags['--to'][0]
        repos = [{'id': r.split('=', 1)[0], 'gpgcheck': True, 'baseurl': [r.split('=', 1)[1]]} for r in flags.get('--repo', [])]
        n = len(fake.get('plans', [])) + 1
        plan = {'version': 1, 'id': 'plan-%d' % n, 'target': {'id': 'kos', 'version_id': to},
                'source': {'id': 'kos', 'version_id': fake.get('release', '5.8')}, 'repos': repos,
                'snapshot': fake.get('backend', 'btrfs') if flags.get('--snapshot', ['auto'])[0] == 'auto' else flags['--snapshot'][0],
                'mode': 'target', 'rpmdb_fingerprint': fake.get('fingerprint', 'sha256:0'),
                'signature_check': 'skipped' if flags.get('--no-gpg-check') else 'enforced',
                'transaction': fake.get('transaction', TRANSACTION)}
        fake.setdefault('plans', []).append(plan['id'])
        write(os.path.join(root, 'fake.json'), fake)
        write(os.path.join(sd, 'plan.json'), plan)
        state.update(status='prepared', plan_id=plan['id'], target=to)
        write(os.path.join(sd, 'state.json'), state)
        out = plan
    elif cmd == 'reboot':
        if state['status'] not in ('prepared', 'armed', 'failed'):
            die(1, 'cannot arm: the state is %s' % state['status'])
        if fake.get('stale'):
            die(3, 'the plan is stale: the installed packages changed since prepare')
        state['status'] = 'armed'
        write(os.path.join(sd, 'state.json'), state)
        if not os.path.islink(link):
            os.symlink('/var/lib/kos-upgrade', link)
        if not flags.get('--no-reboot'):
            die(1, 'cannot reboot with --root %s' % root)
        out = {'armed': True, 'plan_id': state['plan_id']}
    elif cmd == 'cancel':
        if os.path.islink(link):
            os.remove(link)
        for f in ('plan.json',):
            if os.path.exists(os.path.join(sd, f)):
                os.remove(os.path.join(sd, f))
        if state['status'] in ('prepared', 'armed', 'failed'):
            state = {'version': 1, 'status': 'idle', 'updated_at': '2026-12-07T00:00:00Z', 'last_result': state.get('last_result')}
            write(os.path.join(sd, 'state.json'), state)
        out = {'cancelled': True}
    elif cmd == 'rollback':
        if state['status'] != 'succeeded':
            die(1, 'cannot roll back: the state is %s' % state['status'])
        if not flags.get('--no-reboot'):
            die(1, 'cannot reboot with --root %s' % root)
        rec = {'run_id': 'r-rollback', 'kind': 'rollback', 'success': True, 'status': 'rolled-back',
               'from': state.get('target'), 'to': fake.get('release'), 'snapshot': state.get('previous')}
        state.update(status='rolled-back', last_result=rec)
        write(os.path.join(sd, 'state.json'), state)
        out = rec
    print(json.dumps(out, indent=2))


if __name__ == '__main__':
    main()
