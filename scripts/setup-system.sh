#!/usr/bin/env bash
# Install the system tools that fedge's tests and demo need, on Debian 12 (bookworm):
#   - PostgreSQL 15 server binaries   (/usr/lib/postgresql/15/bin: initdb, pg_ctl, postgres)
#   - mosquitto + mosquitto-clients  (MQTT broker and mosquitto_pub/sub)
#   - node + npm                      (only if missing), then the npm tools pinned in package.json /
#                                     package-lock.json: solc 0.8.37 and anvil 1.7.1 (into ./node_modules)
#   - python3 venv support            (only if there is no .venv yet and `python3 -m venv` cannot work)
#
# Idempotent and fast when everything is present: apt-get (update included) runs only when something is
# missing, and npm runs only when package.json / package-lock.json changed since the last install.
# Runs as root without prompts (uses sudo for apt when not root). The test fixtures start their own
# servers on free ports, so the Debian packages' own daemons are not started by this script.
#
# Environment: PYTHON (default python3) is the interpreter whose venv support is checked;
#              FEDGE_SKIP_APT=1 skips the apt step; FEDGE_SKIP_NPM=1 skips the npm step.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
PG_BIN=/usr/lib/postgresql/15/bin
PYTHON=${PYTHON:-python3}
export DEBIAN_FRONTEND=noninteractive

log() { printf '[setup-system] %s\n' "$*"; }
die() { printf '[setup-system] ERROR: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
have() { command -v "$1" >/dev/null 2>&1; }

T_START=$(now)

# ---------------------------------------------------------------- apt packages
# Each entry: "<debian package>|<check command that succeeds when it is already usable>".
APT_CHECKS=(
    "postgresql|test -x $PG_BIN/initdb -a -x $PG_BIN/pg_ctl -a -x $PG_BIN/postgres"
    "mosquitto|test -x /usr/sbin/mosquitto || have mosquitto"
    "mosquitto-clients|have mosquitto_pub && have mosquitto_sub"
    "nodejs|have node"
    "npm|have npm"
    "python3-venv|test -x .venv/bin/python || ! have $PYTHON || $PYTHON -c 'import ensurepip, venv' 2>/dev/null"
    # packaging tests: lint packaging/install-agent.sh, verify packaging/systemd/fedge-agent.service
    "shellcheck|have shellcheck"
    "systemd|have systemd-analyze"
    # images and the compose stack (make images / make stack / make test-stack): podman with runc, and
    # debootstrap for the registry-free base image (packaging/images/build-base.sh)
    "podman|have podman"
    "runc|have runc"
    "debootstrap|have debootstrap"
)

apt_missing=()
for entry in "${APT_CHECKS[@]}"; do
    pkg=${entry%%|*}
    check=${entry#*|}
    if ! eval "$check"; then
        apt_missing+=("$pkg")
    fi
done

if [[ ${FEDGE_SKIP_APT:-0} == 1 ]]; then
    log "apt: skipped (FEDGE_SKIP_APT=1); missing: ${apt_missing[*]:-none}"
elif ((${#apt_missing[@]} == 0)); then
    log "apt: all system packages present (postgresql 15, mosquitto, mosquitto-clients, node, npm, shellcheck, systemd)"
else
    SUDO=()
    if [[ $(id -u) -ne 0 ]]; then
        have sudo || die "need root (or sudo) to install: ${apt_missing[*]}"
        SUDO=(sudo -E)
    fi
    have apt-get || die "apt-get not found; install manually: ${apt_missing[*]}"
    # Keep package postinst scripts from starting the system-wide daemons (a 'main' PostgreSQL cluster on
    # 5432, mosquitto on 1883): tests start their own servers on free ports. Only when no policy exists.
    policy_added=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
        policy_added=1
        trap '[[ $policy_added == 1 ]] && "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    t=$(now)
    log "apt: installing ${apt_missing[*]}"
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${apt_missing[@]}" >/dev/null
    if [[ $policy_added == 1 ]]; then
        "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
        policy_added=0
    fi
    log "apt: installed in $(elapsed "$t")"
fi

if [[ ${FEDGE_SKIP_APT:-0} != 1 ]]; then
    for entry in "${APT_CHECKS[@]}"; do
        eval "${entry#*|}" || die "still missing after apt: ${entry%%|*}"
    done
    id postgres >/dev/null 2>&1 || die "the 'postgres' system user is missing (the postgresql package creates it)"
fi

# ---------------------------------------------------------------- npm tools (solc, anvil)
node_arch() {
    case "$(uname -m)" in
        x86_64 | amd64) echo amd64 ;;
        aarch64 | arm64) echo arm64 ;;
        *) die "unsupported CPU architecture for anvil: $(uname -m)" ;;
    esac
}
ANVIL_PKG="@foundry-rs/anvil-linux-$(node_arch)"
ANVIL_BIN="node_modules/$ANVIL_PKG/bin/anvil"
STAMP=node_modules/.fedge-npm-stamp

npm_inputs_hash() { cat package.json package-lock.json 2>/dev/null | sha256sum | cut -d' ' -f1; }

# The platform binary package is an optional dependency with "engines": {"node": ">=20"}; npm silently
# skips it on older node (Debian 12 ships node 18). Fetch exactly the locked version with `npm pack`
# (integrity-checked by npm) and unpack it where the optional dependency would have gone.
ensure_anvil_binary() {
    [[ -x $ANVIL_BIN ]] && return 0
    local version tmp
    version=$(node -p "require('./package-lock.json').packages['node_modules/@foundry-rs/anvil'].version")
    log "npm: $ANVIL_PKG was skipped by npm (node $(node --version)); fetching $ANVIL_PKG@$version with npm pack"
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "$ANVIL_PKG@$version" >/dev/null)
    mkdir -p "node_modules/$ANVIL_PKG"
    tar -xzf "$tmp"/*.tgz -C "node_modules/$ANVIL_PKG" --strip-components=1
    rm -rf "$tmp"
    chmod 755 "$ANVIL_BIN"
}

if [[ ${FEDGE_SKIP_NPM:-0} == 1 ]]; then
    log "npm: skipped (FEDGE_SKIP_NPM=1)"
elif [[ -f $STAMP && $(cat "$STAMP") == "$(npm_inputs_hash)" && -x $ANVIL_BIN && -f node_modules/solc/package.json ]]; then
    log "npm: node_modules up to date (solc, anvil)"
else
    have npm || die "npm not found (install nodejs and npm)"
    t=$(now)
    export npm_config_cache=${npm_config_cache:-$ROOT/.npm-cache}
    # --ignore-scripts: anvil's postinstall only downloads the binary when the optional platform package
    # is missing; ensure_anvil_binary does that instead, with npm's own integrity check.
    if [[ -f package-lock.json ]]; then
        npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null
    else
        npm install --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null
    fi
    ensure_anvil_binary
    npm_inputs_hash >"$STAMP"
    log "npm: installed solc + anvil in $(elapsed "$t")"
fi

if [[ ${FEDGE_SKIP_NPM:-0} != 1 ]]; then
    "$ANVIL_BIN" --version >/dev/null || die "$ANVIL_BIN does not run"
    node -e "require.resolve('solc')" || die "solc is not resolvable from node_modules"
fi

log "done in $(elapsed "$T_START")"
