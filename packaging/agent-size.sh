#!/usr/bin/env bash
# Size of an agent install: a fresh venv with `fedge[agent]` from a wheelhouse (offline), then the number
# of installed distributions and the venv's size in MB. Prints one JSON line.
#   packaging/agent-size.sh [WHEELHOUSE]     default dist/wheelhouse (make wheelhouse)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WHEELHOUSE=${1:-$here/../dist/wheelhouse}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
[[ -f $(echo "$WHEELHOUSE"/fedge-*.whl) ]] || { echo "no fedge wheel in $WHEELHOUSE: make wheelhouse" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m venv --without-pip "$tmp/base"
base_mb=$(du -sm "$tmp/base" | cut -f1)
"$PYTHON" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-index \
    --find-links "$WHEELHOUSE" 'fedge[agent]'
"$tmp/venv/bin/fedge-agent" version >/dev/null
# pip and setuptools come with every venv: not counted
packages=$("$tmp/venv/bin/python" -m pip list --disable-pip-version-check --format freeze --exclude pip --exclude setuptools | wc -l)
"$tmp/venv/bin/python" -m pip uninstall --quiet --yes pip
venv_mb=$(du -sm "$tmp/venv" | cut -f1)
printf '{"agent_packages": %d, "agent_venv_mb": %d, "packages_mb": %d}\n' \
    "$packages" "$venv_mb" "$((venv_mb - base_mb))"
