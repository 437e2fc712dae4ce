# -*- coding: utf-8 -*-
# Copyright: kos-upgrade developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    """What the modules of kos.upgrade share in their documentation.

    kos.upgrade.kos_upgrade: the options of every module that runs
    kos-upgrade (module_utils' common_argument_spec()).
    kos.upgrade.kos_upgrade.check_mode: full check mode support.
    """

    DOCUMENTATION = r'''
options:
  root:
    description:
      - Act on the system mounted at this directory (C(kos-upgrade --root)).
    type: path
    default: /
  binary:
    description:
      - The kos-upgrade program to run; by default the one found on E(PATH) (also C(/usr/sbin) and
        C(/usr/local/bin)).
    type: path
'''

    CHECK_MODE = r'''
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
'''
