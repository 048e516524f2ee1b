#!/usr/bin/env bash
# Install the fedge edge agent on a device: a dedicated user, a virtual environment with `fedge[agent]`
# (no torch, FastAPI or web3), enrollment with the controller, and the hardened systemd unit.
#
#   sudo packaging/install-agent.sh --controller https://ctl.example --token fedge-enroll-... \
#       [--label site=north]... [--source PATH|WHEEL|INDEX_URL|REQUIREMENT] [--constraint FILE] [--gpu]
#   sudo packaging/install-agent.sh --wheelhouse DIR ...     fully offline, from `make wheelhouse`
#
# Idempotent: an existing user, venv or enrollment is kept (the package is re-installed/upgraded), the unit
# file is rewritten only when it changed. --dry-run prints every action instead of running it.
#
# Options:
#   --controller URL      controller API URL (with --token: enroll unless the state dir is enrolled already)
#   --token T             one-time enrollment token (`fedge devices token`)
#   --label k=v           device label (repeatable)
#   --source S            where `fedge[agent]` comes from (default: the configured package index):
#                           a source directory or a .whl file -> installed from it,
#                           an http(s)/file URL               -> used as the package index (--index-url),
#                           anything else                     -> a pip requirement, e.g. 'fedge[agent]==0.1.0'
#   --wheelhouse DIR      install offline from DIR only (pip --no-index --find-links DIR): a wheelhouse of
#                         `make wheelhouse` (dist/wheelhouse: the fedge wheel and every pinned dependency);
#                         with --gpu it must hold the onnxruntime_gpu wheel too
#   --constraint FILE     pip constraints for the install (pip -c), e.g. a checkout's requirements/lock.txt;
#                         default: the lock of a --source directory (so a device gets the versions CI tested),
#                         none for the other sources; 'none' turns it off
#   --prefix DIR          install root, venv in DIR/venv (default /opt/fedge-agent)
#   --state-dir DIR       agent state (default /var/lib/fedge-agent)
#   --user NAME           service user (default fedge-agent; created when running as root)
#   --python PY           interpreter for the venv, Python 3.11 (default python3.11, else python3)
#   --pip-arg ARG         extra argument for pip install (repeatable), e.g. --pip-arg=--no-index
#   --gpu                 ONNX Runtime with CUDA (onnxruntime-gpu) instead of the CPU build
#   --no-systemd          do not install the unit even when systemd is running
#   --systemd             install the unit even when systemd is not running (an image, a chroot);
#                         systemctl is called only when systemd is running
#   --unit-dir DIR        where the unit goes (default /etc/systemd/system)
#   --dry-run             print the actions, change nothing
set -euo pipefail

PREFIX=/opt/fedge-agent
STATE_DIR=/var/lib/fedge-agent
SERVICE_USER=fedge-agent
UNIT_DIR=/etc/systemd/system
SOURCE=""
WHEELHOUSE=""
CONSTRAINT=""
CONTROLLER=""
TOKEN=""
PYTHON=""
GPU=0
SYSTEMD=auto
DRY_RUN=0
LABELS=()
PIP_ARGS=()
ORT_VERSION=1.32.0
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { printf '[install-agent] %s\n' "$*"; }
die() { printf '[install-agent] ERROR: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

# Run a command, or print it (shell-quoted) under --dry-run.
run() {
    if ((DRY_RUN)); then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }

while (($#)); do
    case $1 in
        --controller) need_value "$@"; CONTROLLER=$2; shift 2 ;;
        --controller=*) CONTROLLER=${1#*=}; shift ;;
        --token) need_value "$@"; TOKEN=$2; shift 2 ;;
        --token=*) TOKEN=${1#*=}; shift ;;
        --label) need_value "$@"; LABELS+=("$2"); shift 2 ;;
        --label=*) LABELS+=("${1#*=}"); shift ;;
        --source) need_value "$@"; SOURCE=$2; shift 2 ;;
        --source=*) SOURCE=${1#*=}; shift ;;
        --wheelhouse) need_value "$@"; WHEELHOUSE=$2; shift 2 ;;
        --wheelhouse=*) WHEELHOUSE=${1#*=}; shift ;;
        --constraint) need_value "$@"; CONSTRAINT=$2; shift 2 ;;
        --constraint=*) CONSTRAINT=${1#*=}; shift ;;
        --prefix) need_value "$@"; PREFIX=$2; shift 2 ;;
        --prefix=*) PREFIX=${1#*=}; shift ;;
        --state-dir) need_value "$@"; STATE_DIR=$2; shift 2 ;;
        --state-dir=*) STATE_DIR=${1#*=}; shift ;;
        --user) need_value "$@"; SERVICE_USER=$2; shift 2 ;;
        --user=*) SERVICE_USER=${1#*=}; shift ;;
        --python) need_value "$@"; PYTHON=$2; shift 2 ;;
        --python=*) PYTHON=${1#*=}; shift ;;
        --pip-arg) need_value "$@"; PIP_ARGS+=("$2"); shift 2 ;;
        --pip-arg=*) PIP_ARGS+=("${1#*=}"); shift ;;
        --unit-dir) need_value "$@"; UNIT_DIR=$2; shift 2 ;;
        --unit-dir=*) UNIT_DIR=${1#*=}; shift ;;
        --gpu) GPU=1; shift ;;
        --no-systemd) SYSTEMD=no; shift ;;
        --systemd) SYSTEMD=yes; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done

for label in "${LABELS[@]}"; do
    [[ $label == ?*=* ]] || die "label '$label' is not k=v"
done
if [[ -n $TOKEN && -z $CONTROLLER ]] || [[ -z $TOKEN && -n $CONTROLLER ]]; then
    die "--controller and --token go together"
fi
if [[ -n $WHEELHOUSE ]]; then
    [[ -d $WHEELHOUSE ]] || die "--wheelhouse $WHEELHOUSE: no such directory"
    WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)
    compgen -G "$WHEELHOUSE/fedge-*.whl" >/dev/null || die "--wheelhouse $WHEELHOUSE: no fedge wheel there (make wheelhouse)"
    if ((GPU)) && ! compgen -G "$WHEELHOUSE/onnxruntime_gpu-*.whl" >/dev/null; then
        die "--gpu with --wheelhouse: no onnxruntime_gpu wheel in $WHEELHOUSE"
    fi
    [[ -z $SOURCE ]] || [[ $SOURCE != *://* ]] || die "--wheelhouse and an index --source exclude each other"
    # the wheelhouse holds the lock's versions only: no constraints needed, nothing from the network
    PIP_ARGS+=(--no-index --find-links "$WHEELHOUSE")
    [[ -n $SOURCE ]] || SOURCE="fedge[agent]"
    [[ -n $CONSTRAINT ]] || CONSTRAINT=none
fi
PREFIX=${PREFIX%/}
STATE_DIR=${STATE_DIR%/}
VENV=$PREFIX/venv
AGENT=$VENV/bin/fedge-agent
((DRY_RUN)) && log "dry run: nothing is changed"

# ----------------------------------------------------------------- service user
IS_ROOT=0
[[ $(id -u) -eq 0 ]] && IS_ROOT=1
AS_USER=()
if ((IS_ROOT)); then
    if id -u "$SERVICE_USER" >/dev/null 2>&1; then
        log "user $SERVICE_USER exists"
    else
        log "creating system user $SERVICE_USER"
        nologin=$(command -v nologin || echo /usr/sbin/nologin)
        run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
            --shell "$nologin" --comment "fedge edge agent" "$SERVICE_USER"
    fi
    # commands that touch the state dir run as the service user (files it owns, 0600)
    if have runuser; then
        AS_USER=(runuser -u "$SERVICE_USER" --)
    else
        # shellcheck disable=SC2016 # expanded by the user's shell, which gets the command as $0 "$@"
        AS_USER=(su -s /bin/sh "$SERVICE_USER" -c '"$0" "$@"')
    fi
else
    SERVICE_USER=$(id -un)
    log "not root: installing for the current user ($SERVICE_USER), no system user"
fi

# ------------------------------------------------------------------ directories
run mkdir -p "$PREFIX" "$STATE_DIR"
run chmod 0700 "$STATE_DIR"
((IS_ROOT)) && run chown "$SERVICE_USER:" "$STATE_DIR"

# ------------------------------------------------------------------------- venv
if [[ -z $PYTHON ]]; then
    PYTHON=$(command -v python3.11 || command -v python3 || true)
    [[ -n $PYTHON ]] || die "no python3 found (give --python)"
fi
if [[ -x $VENV/bin/python ]]; then
    log "venv $VENV exists"
else
    ((DRY_RUN)) || "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
        || die "$PYTHON is not Python 3.11 (fedge requires 3.11; give --python)"
    log "creating venv $VENV"
    run "$PYTHON" -m venv "$VENV"
fi

# ---------------------------------------------------------------------- package
# The lock pins every package of every extra (torch too); as constraints it only fixes the versions of
# what fedge[agent] pulls in, and installs nothing else. An offline install (--pip-arg=--no-index
# --pip-arg=--find-links=DIR) then needs those versions in DIR.
if [[ -z $CONSTRAINT && -d $SOURCE && -f $SOURCE/requirements/lock.txt ]]; then
    CONSTRAINT=$(cd "$SOURCE" && pwd)/requirements/lock.txt
fi
CONSTRAINT_ARGS=()
if [[ -n $CONSTRAINT && $CONSTRAINT != none ]]; then
    [[ -f $CONSTRAINT ]] || die "--constraint $CONSTRAINT: no such file"
    CONSTRAINT=$(cd "$(dirname "$CONSTRAINT")" && pwd)/$(basename "$CONSTRAINT")
    log "pinning versions with constraints $CONSTRAINT"
    CONSTRAINT_ARGS=(--constraint "$CONSTRAINT")
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${CONSTRAINT_ARGS[@]}" "${PIP_ARGS[@]}")
STAGE=""
cleanup() { [[ -n $STAGE ]] && rm -rf "$STAGE"; return 0; }
trap cleanup EXIT
if [[ -z $SOURCE ]]; then
    log "installing fedge[agent] from the configured package index"
    run "${PIP[@]}" --upgrade "fedge[agent]"
elif [[ -d $SOURCE ]]; then
    [[ -f $SOURCE/pyproject.toml ]] || die "--source $SOURCE: no pyproject.toml there"
    # Build from a clean copy: the source tree stays untouched (it may be read-only or shared).
    STAGE=$(mktemp -d)
    log "installing fedge[agent] from source $SOURCE"
    run "$PYTHON" - "$SOURCE" "$STAGE/src" <<'PY'
import shutil, sys
top = {".git", ".venv", "node_modules", "build", "dist"}
def ignore(directory, names):
    root = directory.rstrip("/") == sys.argv[1].rstrip("/")
    return {n for n in names if n == "__pycache__" or n.endswith(".egg-info")
            or (root and (n in top or n.startswith(".")))}
shutil.copytree(sys.argv[1], sys.argv[2], ignore=ignore)
PY
    run "${PIP[@]}" "$STAGE/src[agent]"
elif [[ -f $SOURCE && $SOURCE == *.whl ]]; then
    log "installing fedge[agent] from wheel $SOURCE"
    run "${PIP[@]}" "$(cd "$(dirname "$SOURCE")" && pwd)/$(basename "$SOURCE")[agent]"
elif [[ $SOURCE =~ ^(https?|file):// ]]; then
    log "installing fedge[agent] from index $SOURCE"
    run "${PIP[@]}" --upgrade --index-url "$SOURCE" "fedge[agent]"
else
    log "installing $SOURCE"
    run "${PIP[@]}" --upgrade "$SOURCE"
fi
if ((GPU)); then
    log "switching ONNX Runtime to the CUDA build (onnxruntime-gpu $ORT_VERSION)"
    run "$VENV/bin/python" -m pip uninstall --quiet --yes onnxruntime
    run "${PIP[@]}" "onnxruntime-gpu==$ORT_VERSION"
fi
((DRY_RUN)) || "$AGENT" version >/dev/null || die "$AGENT does not run"

# ------------------------------------------------------------------- enrollment
ENROLLED=0
if [[ -f $STATE_DIR/identity.json ]]; then
    ENROLLED=1
    log "already enrolled: $(sed -n 's/.*"device_id": *"\([^"]*\)".*/\1/p' "$STATE_DIR/identity.json")"
elif [[ -n $TOKEN ]]; then
    log "enrolling with $CONTROLLER"
    args=(enroll --controller "$CONTROLLER" --token "$TOKEN" --state-dir "$STATE_DIR")
    for label in "${LABELS[@]}"; do
        args+=(--label "$label")
    done
    run "${AS_USER[@]}" "$AGENT" "${args[@]}"
    ENROLLED=1
else
    log "not enrolled yet: run '$AGENT enroll --controller URL --token T --state-dir $STATE_DIR'"
fi

# ---------------------------------------------------------------------- systemd
if [[ $SYSTEMD == auto ]]; then
    if [[ -d /run/systemd/system ]] && have systemctl; then SYSTEMD=yes; else SYSTEMD=no; fi
fi
if [[ $SYSTEMD == no ]]; then
    log "systemd unit not installed; run the agent with: $AGENT run --state-dir $STATE_DIR"
    log "done"
    exit 0
fi
((IS_ROOT)) || die "installing the systemd unit needs root (or pass --no-systemd)"
UNIT=$UNIT_DIR/fedge-agent.service
# StateDirectory= only manages paths under /var/lib; elsewhere ReadWritePaths= alone keeps it writable.
state_expr="s|^StateDirectory=.*|StateDirectory=${STATE_DIR#/var/lib/}|"
[[ $STATE_DIR == /var/lib/* ]] || state_expr='/^StateDirectory/d'
rendered=$(sed -e "s|/opt/fedge-agent/venv|$VENV|g" -e "s|/var/lib/fedge-agent|$STATE_DIR|g" \
    -e "s|^User=fedge-agent|User=$SERVICE_USER|" -e "s|^Group=fedge-agent|Group=$SERVICE_USER|" \
    -e "$state_expr" "$HERE/systemd/fedge-agent.service")
if [[ -f $UNIT ]] && [[ $(cat "$UNIT") == "$rendered" ]]; then
    log "unit $UNIT is up to date"
else
    log "installing $UNIT"
    if ((DRY_RUN)); then
        run install -m 0644 /dev/stdin "$UNIT"
    else
        install -d -m 0755 "$UNIT_DIR"
        printf '%s\n' "$rendered" | install -m 0644 /dev/stdin "$UNIT"
    fi
fi
if ((GPU)); then
    DROPIN=$UNIT_DIR/fedge-agent.service.d
    run install -d -m 0755 "$DROPIN"
    run install -m 0644 "$HERE/systemd/gpu.conf" "$DROPIN/gpu.conf"
fi
if ! [[ -d /run/systemd/system ]] || ! have systemctl; then
    log "systemd is not running here: unit installed, not enabled"
elif ((ENROLLED)); then
    run systemctl daemon-reload
    run systemctl enable fedge-agent.service
    run systemctl restart fedge-agent.service
    log "fedge-agent.service enabled and (re)started"
else
    run systemctl daemon-reload
    run systemctl enable fedge-agent.service
    log "fedge-agent.service enabled; it starts once the device is enrolled (ConditionPathExists)"
fi
log "done"
