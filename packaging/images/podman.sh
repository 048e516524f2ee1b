#!/usr/bin/env bash
# podman with fedge's settings (containers.conf beside this file: runc, cgroupfs, host network, ulimits a
# VM's root may set). Every image build, `make stack` and the image/stack tests call podman through this.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
exec podman "$@"
