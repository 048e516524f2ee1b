#!/usr/bin/env bash
# Build an offline wheelhouse for one role: wheels of exactly the packages `fedge[EXTRA]` needs, at the
# versions of requirements/lock.txt (the closure is resolved by uv against the lock as constraints, so
# nothing outside the lock comes in), plus the fedge wheel itself. An install from it needs no network:
#   pip install --no-index --find-links DIR 'fedge[EXTRA]'
#
#   packaging/wheelhouse.sh [EXTRA] [DIR]     EXTRA: agent (default) or controller; DIR: dist/wheelhouse
#                                             (agent) or dist/wheelhouse-controller
# Environment: PYTHON (default .venv/bin/python), TORCH_FIND_LINKS (where torch==2.13.0+cpu is).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
EXTRA=${1:-agent}
case $EXTRA in
    agent) default_dir=dist/wheelhouse ;;
    *) default_dir=dist/wheelhouse-$EXTRA ;;
esac
DEST=${2:-$root/$default_dir}
PY=${PYTHON:-$root/.venv/bin/python}
FIND_LINKS=${TORCH_FIND_LINKS:-/opt/wheels}
[[ -d $FIND_LINKS || $FIND_LINKS == http* ]] || FIND_LINKS=https://download.pytorch.org/whl/cpu/torch/
cd "$root"
mkdir -p dist
req=$(mktemp "$root/dist/.req-$EXTRA.XXXXXX")
build=$(mktemp -d)
trap 'rm -rf "$req" "$build"' EXIT
"$PY" -m uv --version >/dev/null 2>&1 || { echo "[wheelhouse] uv missing: run make setup" >&2; exit 1; }
echo "[wheelhouse] resolving fedge[$EXTRA] against requirements/lock.txt"
"$PY" -m uv pip compile pyproject.toml --quiet --python-version 3.11 \
    --python-platform x86_64-unknown-linux-gnu --extra "$EXTRA" --override requirements/overrides.txt \
    --constraint requirements/lock.txt --find-links "$FIND_LINKS" --no-annotate --no-header -o "$req"
# every pin must be the lock's own line (same name, same version)
if grep -v '^#' "$req" | grep -v -x -F -f <(grep -v '^#' requirements/lock.txt | sed 's/ .*//') >&2; then
    echo "[wheelhouse] the pins above are not in requirements/lock.txt: run make lock" >&2
    exit 1
fi
rm -rf "$DEST"
mkdir -p "$DEST"
echo "[wheelhouse] $(grep -vc '^#' "$req") packages -> $DEST"
"$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps --find-links "$FIND_LINKS" \
    --wheel-dir "$DEST" -r "$req"
# the fedge wheel, built from a clean copy (no build/ or egg-info leftovers of the checkout)
git ls-files -z --cached --others --exclude-standard | grep -z -v '^tests/\|^node_modules/\|^bench/' \
    | xargs -0 cp --parents -t "$build" 2>/dev/null || true
"$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation \
    --wheel-dir "$DEST" "$build" 2>/dev/null
cp "$req" "$DEST/requirements.txt"
echo "[wheelhouse] $(find "$DEST" -name '*.whl' | wc -l) wheels, $(du -sm "$DEST" | cut -f1) MB in $DEST"
