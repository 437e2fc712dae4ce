#!/bin/bash
# make lint for the Ansible collection (ansible/): build it with
# ansible-galaxy, install the artifact into a temporary tree, then
# ansible-test sanity (offline: test/ansible/ansible_test_offline.py) and
# ansible-lint on the installed copy, and a Python 3.6 compile of what runs
# on the managed hosts. Needs Debian's ansible-core and ansible-lint.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
tmp=$(mktemp -d /tmp/kos-ansible-lint-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
ansible-galaxy collection build --force --output-path "$tmp" ansible >/dev/null
ansible-galaxy collection install -p "$tmp/coll" "$tmp"/kos-upgrade-*.tar.gz >/dev/null
cd "$tmp/coll/ansible_collections/kos/upgrade"
# ansible-test wants a git work tree for the files it tests.
git init -q . && git add -A
KOS_ANSIBLE_TEST_HOME="$tmp/home" /usr/bin/python3 "$repo/test/ansible/ansible_test_offline.py" sanity --python 3.11 --color no
ANSIBLE_COLLECTIONS_PATH="$tmp/coll" ansible-lint --offline -q --profile production roles playbooks meta
py36=$(compgen -G "$HOME/.pyenv/versions/3.6*/bin/python" | head -1 || true)
if [ -n "$py36" ]; then
	for f in plugins/modules/*.py plugins/module_utils/*.py; do "$py36" -c 'import ast,sys; ast.parse(open(sys.argv[1]).read())' "$f"; done
	echo "ansible modules parse with $py36"
fi
echo "ansible collection: sanity and lint clean"
