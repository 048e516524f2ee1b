#!/usr/bin/env bash
# Build fedge's base image without any registry: debootstrap a minimal Debian 12 (bookworm) root from
# Debian's package mirror and `podman import` it as localhost/fedge-base:bookworm. Every fedge image
# starts FROM it (build argument BASE_IMAGE), and apt inside those builds reaches the same mirror.
#
#   packaging/images/build-base.sh            build once (kept if the image exists)
#   FORCE=1 packaging/images/build-base.sh    rebuild
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), BASE_IMAGE (the tag),
#              FEDGE_IMAGE_CACHE (where the root is unpacked; default .fedge/images under the repo).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
PODMAN="$here/podman.sh"
BASE_IMAGE=${BASE_IMAGE:-localhost/fedge-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${FEDGE_IMAGE_CACHE:-$root/.fedge/images}

if [[ ${FORCE:-0} != 1 ]] && "$PODMAN" image exists "$BASE_IMAGE"; then
    echo "[build-base] $BASE_IMAGE present (FORCE=1 rebuilds)"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "[build-base] debootstrap missing: run make system" >&2; exit 1; }
mkdir -p "$CACHE"
rootfs="$CACHE/rootfs-bookworm"
rm -rf "$rootfs" "$rootfs.tmp"
echo "[build-base] debootstrap bookworm from $MIRROR"
debootstrap --variant=minbase bookworm "$rootfs.tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
# no apt caches or logs in the image
rm -rf "$rootfs.tmp"/var/cache/apt/archives/*.deb "$rootfs.tmp"/var/lib/apt/lists/* "$rootfs.tmp"/var/log/*.log
mv "$rootfs.tmp" "$rootfs"
tar -C "$rootfs" --numeric-owner -c . | "$PODMAN" import \
    --change 'ENV LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive' --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE"
rm -rf "$rootfs"
echo "[build-base] built $BASE_IMAGE"
