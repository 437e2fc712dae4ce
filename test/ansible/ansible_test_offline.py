#!/usr/bin/python3
"""ansible-test without PyPI: `ansible_test_offline.py sanity ...`.

ansible-test sanity puts each test's requirements into a virtual
environment it fills with pip from PyPI, which the test machines cannot
reach. This runs Debian's ansible-test with those environments created
with the system's site packages (Debian's pylint, pycodestyle, yamllint,
voluptuous, ...) and nothing installed into them: a throwaway environment
per test, in a private cache (KOS_ANSIBLE_TEST_HOME, default a temporary
directory) so that no environment made here is reused by a normal run.
"""

import os
import sys
import tempfile

sys.path.insert(0, '/usr/lib/python3/dist-packages')

from ansible_test._internal import venv  # noqa: E402
from ansible_test._internal import python_requirements  # noqa: E402
import ansible_test._internal.commands.sanity as sanity  # noqa: E402

_create = venv.create_virtual_environment


def create_with_system_packages(args, python, path, system_site_packages=False, pip=False):
    return _create(args, python, path, system_site_packages=True, pip=pip)


def no_pip(*args, **kwargs):
    return None


for mod in (venv, sanity):
    mod.create_virtual_environment = create_with_system_packages
for mod in (python_requirements, sanity):
    mod.run_pip = no_pip
try:
    import ansible_test._internal.commands.sanity.import_ as import_test
    import_test.create_sanity_virtualenv = sanity.create_sanity_virtualenv
except ImportError:
    pass

home = os.environ.get('KOS_ANSIBLE_TEST_HOME') or tempfile.mkdtemp(prefix='kos-ansible-test-')
os.environ['HOME'] = home

from ansible_test._util.target.cli.ansible_test_cli_stub import main  # noqa: E402

main()
