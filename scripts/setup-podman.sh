#!/usr/bin/env bash
# Set up a rootful podman with a Docker-compatible API socket of our own, and build the local images
# that the container job runner uses -- without pulling anything from a container registry.
#
#   scripts/setup-podman.sh [--dir DIR] [--no-install] [--no-service] [--no-images] [--ml]
#                           [--ml-packages "numpy scikit-learn skops"] [--venv PATH] [--stop]
#
# What it does (each step is skipped when already done):
#   1. apt-get install podman runc conmon catatonit uidmap slirp4netns fuse-overlayfs python3.11 (Debian 12).
#   2. writes DIR/containers.conf (cgroupfs, runc, file events, k8s-file logs) and DIR/storage.conf
#      (overlay driver, graph root DIR/storage) -- the system's /etc/containers is left alone; DIR/env
#      exports CONTAINERS_CONF / CONTAINERS_STORAGE_CONF and DIR/podman is a wrapper using them.
#   3. starts `podman system service --time=0 unix://DIR/podman.sock` (pid in DIR/service.pid, log in
#      DIR/service.log) and waits for GET /_ping.
#   4. images, made from the host's own files (nothing downloaded):
#        localhost/fedge-python:3.11  Debian's python3.11 + stdlib + the shared libraries they need, /bin/sh,
#                                     user fedge (1000:1000), WORKDIR /job  (~45 MB, `podman import`)
#        localhost/fedge-train:3.11   (--ml) the above + numpy, scikit-learn, skops (and what they require)
#                                     copied from the venv into /usr/local/lib/python3.11/dist-packages
#                                     (`podman build --pull=never` FROM the base image)
#
# Afterwards: ContainerJobRunner(base_url="unix://DIR/podman.sock"). `--stop` stops the service.
# DIR defaults to $FEDGE_PODMAN_DIR or /var/tmp/fedge-podman.
set -euo pipefail

DIR="${FEDGE_PODMAN_DIR:-/var/tmp/fedge-podman}"
INSTALL=1 SERVICE=1 IMAGES=1 ML=0 STOP=0
ML_PACKAGES="numpy scikit-learn skops"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.venv"
BASE_IMAGE="localhost/fedge-python:3.11"
TRAIN_IMAGE="localhost/fedge-train:3.11"
PY=/usr/bin/python3.11

while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    --no-service) SERVICE=0; shift ;;
    --no-images) IMAGES=0; shift ;;
    --ml) ML=1; shift ;;
    --ml-packages) ML=1; ML_PACKAGES="$2"; shift 2 ;;
    --venv) VENV="$2"; shift 2 ;;
    --stop) STOP=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//;/^set -euo/d'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
SOCK="$DIR/podman.sock"
log() { echo "setup-podman: $*" >&2; }

stop_service() {
  if [ -f "$DIR/service.pid" ]; then
    local pid; pid="$(cat "$DIR/service.pid")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/service.pid" "$SOCK"
  fi
}
if [ "$STOP" = 1 ]; then stop_service; log "stopped"; exit 0; fi

# ---------------------------------------------------------------------------------------------- 1. packages
PKGS=(podman runc conmon catatonit uidmap slirp4netns fuse-overlayfs python3.11)
if [ "$INSTALL" = 1 ]; then
  missing=()
  for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >"$DIR/apt.log" 2>&1 || {
      apt-get update -qq >>"$DIR/apt.log" 2>&1
      apt-get install -y --no-install-recommends "${missing[@]}" >>"$DIR/apt.log" 2>&1
    }
  fi
fi
command -v podman >/dev/null || { echo "podman is not installed (run without --no-install)" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------- 2. config
# overlay needs the kernel's overlayfs; otherwise fall back to vfs (slow: copies the image per container).
DRIVER=vfs
grep -qw overlay /proc/filesystems && DRIVER=overlay
CGROUP_MANAGER=cgroupfs
# podman's default container ulimits (nofile 1048576, nproc = podman's own) are *raised* inside the
# container, which needs CAP_SYS_RESOURCE; a sandbox/VM without it fails every start with "error setting
# rlimit type 7: operation not permitted". Use the limits this shell already has (podman caps its own
# nproc at 32768).
NOFILE="$(ulimit -Hn)"; [ "$NOFILE" = unlimited ] && NOFILE=1048576
NPROC="$(ulimit -Hu)"; { [ "$NPROC" = unlimited ] || [ "$NPROC" -gt 32768 ]; } && NPROC=32768
mkdir -p "$DIR/storage" "$DIR/run" "$DIR/tmp"
cat >"$DIR/containers.conf" <<EOF
[containers]
log_driver = "k8s-file"
default_ulimits = ["nofile=$NOFILE:$NOFILE", "nproc=$NPROC:$NPROC"]
[engine]
cgroup_manager = "$CGROUP_MANAGER"
runtime = "runc"
events_logger = "file"
events_logfile_path = "$DIR/events.log"
image_copy_tmp_dir = "$DIR/tmp"
tmp_dir = "$DIR/run/libpod"
[network]
network_config_dir = "$DIR/net"
EOF
cat >"$DIR/storage.conf" <<EOF
[storage]
driver = "$DRIVER"
graphroot = "$DIR/storage"
runroot = "$DIR/run"
EOF
cat >"$DIR/env" <<EOF
export CONTAINERS_CONF="$DIR/containers.conf"
export CONTAINERS_STORAGE_CONF="$DIR/storage.conf"
export TMPDIR="$DIR/tmp"
export FEDGE_CONTAINER_BASE_URL="unix://$SOCK"
# pass these as ContainerJobRunner(ulimits=...): once a client sends any ulimit, podman's compat API
# replaces default_ulimits and would raise nofile/nproc again
export FEDGE_CONTAINER_ULIMITS="nofile=$NOFILE,nproc=$NPROC"
EOF
cat >"$DIR/podman" <<EOF
#!/bin/sh
. "$DIR/env"
exec podman "\$@"
EOF
chmod +x "$DIR/podman"
# shellcheck disable=SC1091
. "$DIR/env"

# ---------------------------------------------------------------------------------------------- 3. service
if [ "$SERVICE" = 1 ]; then
  if ! curl -fsS --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; then
    stop_service
    log "starting podman system service on unix://$SOCK"
    setsid podman system service --time=0 "unix://$SOCK" >"$DIR/service.log" 2>&1 </dev/null &
    echo $! >"$DIR/service.pid"
    for _ in $(seq 300); do
      curl -fsS --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1 && break
      kill -0 "$(cat "$DIR/service.pid")" 2>/dev/null || { cat "$DIR/service.log" >&2; exit 1; }
      sleep 0.1
    done
    curl -fsS --unix-socket "$SOCK" http://d/_ping >/dev/null || { echo "service did not answer" >&2; exit 1; }
  fi
fi

# ---------------------------------------------------------------------------------------------- 4. images
# Copy FILE (and, for a symlink, what it points to) into ROOT at the same path; /lib, /lib64 and /bin are
# links into /usr (merged /usr) in the image as on Debian 12.
copy_in() {
  local root="$1" f="$2" real
  real="$(readlink -f "$f")"
  case "$real" in /usr/*) ;; *) real="/usr$real" ;; esac
  [ -e "$root$real" ] || { mkdir -p "$root$(dirname "$real")"; cp -a --dereference "$(readlink -f "$f")" "$root$real"; }
  local logical="$f"
  case "$logical" in /lib/*|/lib64/*|/bin/*|/sbin/*) logical="/usr$logical" ;; esac
  if [ "$logical" != "$real" ] && [ ! -e "$root$logical" ] && [ ! -L "$root$logical" ]; then
    mkdir -p "$root$(dirname "$logical")"
    ln -s "$real" "$root$logical"
  fi
}
# Every shared library (transitively, via ldd) that the ELF files under the given paths need.
copy_libs() {
  local root="$1"; shift
  # (ldd fails on non-ELF files: that is fine, hence the `|| true`s)
  { find "$@" -type f \( -name '*.so*' -o -perm -u+x \) -print0 2>/dev/null | xargs -0 -r ldd 2>/dev/null || true; } \
    | { grep -o '/[^ ]*\.so[^ ]*' || true; } | sort -u \
    | while read -r lib; do
        case "$lib" in "$DIR"/*) continue ;; esac   # bundled with the copied files already
        [ -e "$lib" ] && copy_in "$root" "$lib"
      done
}

build_base() {
  local work="$DIR/tmp/rootfs-base"
  rm -rf "$work"; mkdir -p "$work"
  local r="$work/rootfs"
  mkdir -p "$r"/{usr/bin,usr/lib,usr/lib64,usr/local/bin,usr/local/lib/python3.11/dist-packages,etc,job,tmp,proc,sys,dev,run}
  ln -s usr/bin "$r/bin"; ln -s usr/lib "$r/lib"; ln -s usr/lib64 "$r/lib64"; ln -s usr/bin "$r/sbin"
  chmod 1777 "$r/tmp"
  cp -a "$PY" "$r/usr/bin/python3.11"
  ln -s python3.11 "$r/usr/bin/python3"; ln -s python3.11 "$r/usr/bin/python"
  cp -a /bin/dash "$r/usr/bin/dash"; ln -s dash "$r/usr/bin/sh"
  for tool in env cat ls sleep true false id; do cp -a "/usr/bin/$tool" "$r/usr/bin/$tool"; done
  # stdlib without what a headless training job never uses
  tar -C / -cf - --exclude='usr/lib/python3.11/test' \
      --exclude='usr/lib/python3.11/config-3.11-*' --exclude='usr/lib/python3.11/idlelib' \
      --exclude='usr/lib/python3.11/tkinter' --exclude='usr/lib/python3.11/lib2to3' \
      --exclude='usr/lib/python3.11/ensurepip' --exclude='usr/lib/python3.11/pydoc_data' \
      --exclude='usr/lib/python3.11/lib-dynload/_test*' usr/lib/python3.11 | tar -C "$r" -xf -
  [ -d /etc/python3.11 ] && cp -a /etc/python3.11 "$r/etc/"
  copy_libs "$r" "$PY" /bin/dash "$r/usr/bin" "$r/usr/lib/python3.11/lib-dynload"
  copy_in "$r" /lib64/ld-linux-x86-64.so.2
  printf 'root:x:0:0:root:/root:/bin/sh\nfedge:x:1000:1000:fedge:/job:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$r/etc/passwd"
  printf 'root:x:0:\nfedge:x:1000:\nnogroup:x:65534:\n' >"$r/etc/group"
  : >"$r/etc/hosts"; : >"$r/etc/resolv.conf"
  chown 1000:1000 "$r/job"
  tar --numeric-owner -C "$r" -cf "$work/rootfs.tar" .
  podman import \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PYTHONDONTWRITEBYTECODE=1' --change 'USER 1000:1000' --change 'WORKDIR /job' \
    --change 'CMD ["/usr/bin/python3"]' \
    --message "fedge base: Debian python3.11 from the host, no registry" \
    "$work/rootfs.tar" "$BASE_IMAGE" >/dev/null
  rm -rf "$work"
}

build_train() {
  local work="$DIR/tmp/rootfs-train"
  rm -rf "$work"; mkdir -p "$work/site" "$work/libs"
  # the installed files of the named distributions and everything they require (not their extras)
  "$VENV/bin/python" - "$work/site" $ML_PACKAGES <<'PYEOF'
import importlib.metadata as md, re, shutil, sys
from pathlib import Path
dest = Path(sys.argv[1]); todo = list(sys.argv[2:]); seen = set()
def norm(n): return re.sub(r"[-_.]+", "-", n).lower()
while todo:
    name = norm(todo.pop())
    if name in seen: continue
    seen.add(name)
    dist = md.distribution(name)
    for req in dist.requires or []:
        if "extra ==" in req: continue
        if ";" in req and "python_version" not in req: continue
        todo.append(re.split(r"[ ;<>=!~\[(]", req.strip(), maxsplit=1)[0])
    for f in dist.files or []:
        src = Path(dist.locate_file(f))
        if f.parts[0] == ".." or not src.is_file(): continue
        out = dest / f; out.parent.mkdir(parents=True, exist_ok=True); shutil.copy2(src, out)
print(" ".join(sorted(seen)), file=sys.stderr)
PYEOF
  mkdir -p "$work/sys/usr"
  copy_libs "$work/sys" "$work/site"
  cat >"$work/Containerfile" <<EOF
FROM $BASE_IMAGE
USER 0:0
COPY site/ /usr/local/lib/python3.11/dist-packages/
COPY sys/ /
USER 1000:1000
EOF
  podman build --pull=never --network=none -q -t "$TRAIN_IMAGE" -f "$work/Containerfile" "$work" >/dev/null
  rm -rf "$work"
}

if [ "$IMAGES" = 1 ]; then
  podman image exists "$BASE_IMAGE" || { log "building $BASE_IMAGE"; build_base; }
  if [ "$ML" = 1 ]; then podman image exists "$TRAIN_IMAGE" || { log "building $TRAIN_IMAGE"; build_train; }; fi
fi
log "ready: FEDGE_CONTAINER_BASE_URL=unix://$SOCK (source $DIR/env for the podman CLI)"
