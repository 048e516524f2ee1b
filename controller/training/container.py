"""ContainerJobRunner: one container per job through a Docker-API endpoint (Docker Engine or podman's
``podman system service``), with the ``docker`` Python SDK.

The job directory is bind-mounted read-write at ``/job`` (the container's working directory; ``{job_dir}``
becomes ``/job``). Each container gets: no network (``network_mode="none"``), all capabilities dropped,
``no-new-privileges``, a read-only root file system with a private ``/tmp`` tmpfs, a non-root user, a memory
limit without swap (``memory_bytes``), a CPU quota (``cpu_count``), a pid limit, ``ulimit fsize`` from
``max_output_bytes`` and no core dumps. Images are never pulled: the image must already be in the engine's
local store (``scripts/setup-podman.sh`` builds ``localhost/fedge-python:3.11`` without any registry).

When the controller runs as root and the container as a non-root user, the job directory is handed to that
user for the run (chown) and given back afterwards, so the program can write ``output/`` and the metrics.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from controller.training.base import JobOutcome, JobRunner, JobSpec, JobState, RunnerUnavailable
from controller.training.local import (
    CappedLog,
    exit_reason,
    format_seconds,
    job_env,
    output_verdict,
    prepare_workdir,
    substitute,
)

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

JOB_DIR = "/job"
POLL_S = 0.15
DEFAULT_USER = "1000:1000"


def _not_present(image: str) -> str:
    return f"image {image} not present locally; build or import it"


class ContainerJobRunner(JobRunner):
    """Runs each job in a fresh container; see the module docstring for the isolation it sets up.

    ``base_url``: the Docker-API endpoint (``unix:///run/podman/podman.sock``, ``unix:///var/run/docker.sock``,
    ``tcp://...``); ``None`` = ``DOCKER_HOST`` / the default socket. ``image``: used when ``spec.image`` is
    unset. ``user``: ``uid:gid`` inside the container (default: the controller's own ids, or 1000:1000 when
    the controller is root). ``ulimits``: extra ``{name: value}`` limits (soft = hard), e.g. ``nofile`` and
    ``nproc`` on hosts where the engine may not raise them (see docs/training-runners.md).
    ``read_only_mounts``: host path -> container path, mounted read-only (e.g. a shared library tree).
    ``network``: the network mode (``none``: no network at all).
    """

    name = "container"

    def __init__(
        self,
        base_url: str | None = None,
        *,
        image: str | None = None,
        user: str | None = None,
        network: str = "none",
        read_only_rootfs: bool = True,
        tmp_size: str = "256m",
        pids_limit: int = 1024,
        ulimits: Mapping[str, int] | None = None,
        read_only_mounts: Mapping[str, str] | None = None,
        init: bool = True,
        kill_grace_s: float = 5.0,
        api_version: str = "auto",
        api_timeout_s: float = 60.0,
    ) -> None:
        self.base_url = base_url
        self.image = image
        self.user = user or (f"{os.getuid()}:{os.getgid()}" if os.geteuid() != 0 else DEFAULT_USER)
        self.network = network
        self.read_only_rootfs = read_only_rootfs
        self.tmp_size = tmp_size
        self.pids_limit = pids_limit
        self.ulimits = dict(ulimits or {})
        self.read_only_mounts = dict(read_only_mounts or {})
        self.init = init
        self.kill_grace_s = kill_grace_s
        self.api_version = api_version
        self.api_timeout_s = api_timeout_s
        self._client: DockerClient | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ engine
    def client(self) -> DockerClient:
        """The SDK client (created on first use); RunnerUnavailable when the SDK or the engine is missing."""
        with self._lock:
            if self._client is None:
                try:
                    import docker
                except ImportError as exc:  # pragma: no cover - depends on the installed extras
                    raise RunnerUnavailable(
                        "the 'docker' package is not installed (pip install docker)"
                    ) from exc
                try:
                    self._client = docker.DockerClient(
                        **self.connection(), version=self.api_version, timeout=int(self.api_timeout_s)
                    )
                except docker.errors.DockerException as exc:
                    raise RunnerUnavailable(f"no Docker API at {self._where()}: {exc}") from exc
            return self._client

    def connection(self) -> dict[str, Any]:
        """``base_url`` (and TLS settings) for an SDK client: ours, else from ``DOCKER_HOST`` & co."""
        if self.base_url:
            return {"base_url": self.base_url}
        from docker.utils import kwargs_from_env

        return dict(kwargs_from_env())

    def _where(self) -> str:
        return self.base_url or os.environ.get("DOCKER_HOST", "the default Docker socket")

    def health(self) -> None:
        import docker

        try:
            self.client().ping()
        except (docker.errors.DockerException, OSError) as exc:
            raise RunnerUnavailable(f"no Docker API at {self._where()}: {exc}") from exc

    def image_digest(self, image: str) -> str:
        """``sha256:...`` of the local image (its content-addressed image id, i.e. the digest of its config,
        which covers every layer's digest). Raises LookupError when the image is not present locally."""
        import docker

        try:
            return str(self.client().images.get(image).id)
        except docker.errors.ImageNotFound as exc:
            raise LookupError(_not_present(image)) from exc
        except (docker.errors.APIError, OSError) as exc:
            raise RunnerUnavailable(f"Docker API at {self._where()} failed: {exc}") from exc

    # ------------------------------------------------------------------------------------------ run
    def run(self, spec: JobSpec, cancel: threading.Event) -> JobOutcome:
        import docker

        image = spec.image or self.image
        if not image:
            return JobOutcome(JobState.FAILED, reason="no container image given for the job")
        client = self.client()
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            return JobOutcome(JobState.FAILED, reason=_not_present(image))
        except (docker.errors.APIError, OSError) as exc:
            raise RunnerUnavailable(f"Docker API at {self._where()} failed: {exc}") from exc
        workdir = prepare_workdir(spec)
        log = CappedLog(workdir / "job.log", spec.max_log_bytes)
        owner = _handover(workdir, self.user)
        container: Container | None = None
        try:
            try:
                container = client.containers.create(image, **self.create_options(spec, workdir))
            except docker.errors.ImageNotFound:
                return JobOutcome(JobState.FAILED, reason=_not_present(image))
            except docker.errors.APIError as exc:
                reason = f"cannot create the container: {_explain(exc)}"
                log.note(reason)
                return JobOutcome(JobState.FAILED, reason=reason)
            try:
                container.start()
            except docker.errors.APIError as exc:
                reason = f"the container did not start: {_explain(exc)}"
                log.note(reason)
                return JobOutcome(JobState.FAILED, reason=reason)
            return self._supervise(spec, workdir, container, log, cancel)
        except (docker.errors.DockerException, OSError) as exc:
            raise RunnerUnavailable(
                f"Docker API at {self._where()} failed during job {spec.job_id}: {exc}"
            ) from exc
        finally:
            if container is not None:
                with contextlib.suppress(docker.errors.DockerException):
                    container.remove(force=True, v=True)
            log.close()
            if owner is not None:
                _chown_tree(workdir, *owner)

    def create_options(self, spec: JobSpec, workdir: Path) -> dict[str, Any]:
        """The ``containers.create`` keyword arguments for a job (public so that tests can inspect them)."""
        from docker.types import Mount, Ulimit

        env = {"HOME": JOB_DIR, "LANG": "C.UTF-8", "TMPDIR": "/tmp"}  # noqa: S108 - the container's private tmpfs
        env.update(job_env(spec, JOB_DIR))
        limits = {"core": 0, "fsize": spec.max_output_bytes, **self.ulimits}
        mounts = [Mount(target=JOB_DIR, source=str(workdir), type="bind", read_only=False)]
        mounts += [
            Mount(target=dst, source=src, type="bind", read_only=True)
            for src, dst in self.read_only_mounts.items()
        ]
        opts: dict[str, Any] = {
            "command": [substitute(a, JOB_DIR) for a in spec.command] or None,
            "name": f"fedge-job-{_slug(spec.job_id)}-{uuid.uuid4().hex[:8]}",
            "labels": {"fedge.job-id": spec.job_id, "fedge.runner": self.name},
            "environment": env,
            "working_dir": JOB_DIR,
            "user": self.user,
            "mounts": mounts,
            "network_mode": self.network,
            "read_only": self.read_only_rootfs,
            "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={self.tmp_size},mode=1777"},  # noqa: S108
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "privileged": False,
            "pids_limit": self.pids_limit,
            "ulimits": [Ulimit(name=k, soft=v, hard=v) for k, v in limits.items()],
            "init": self.init,  # a tiny init as pid 1: signals and zombies behave as on a normal host
            "stdin_open": False,
            "tty": False,
            "detach": True,
        }
        if spec.memory_bytes:
            opts["mem_limit"] = spec.memory_bytes
            opts["memswap_limit"] = spec.memory_bytes  # no swap on top
        if spec.cpu_count:
            opts["nano_cpus"] = int(spec.cpu_count * 1e9)
        return opts

    def _supervise(
        self, spec: JobSpec, workdir: Path, container: Container, log: CappedLog, cancel: threading.Event
    ) -> JobOutcome:
        follower = _LogFollower(self, str(container.id), log, name=f"job-log-{spec.job_id}")
        follower.start()
        deadline = time.monotonic() + spec.timeout_s
        ended: JobState | None = None
        reason: str | None = None
        while True:
            container.reload()
            if container.status in ("exited", "dead", "stopped"):
                break
            if cancel.is_set():
                ended, reason = JobState.CANCELLED, "cancelled"
            elif time.monotonic() >= deadline:
                ended, reason = JobState.FAILED, f"timed out after {format_seconds(spec.timeout_s)} s"
            if ended is not None:
                log.note(f"{reason}: stopping the container")
                container.stop(timeout=max(1, math.ceil(self.kill_grace_s)))
                break
            cancel.wait(POLL_S)
        follower.finish(self.kill_grace_s)
        container.reload()
        state = container.attrs.get("State", {})
        raw_code = state.get("ExitCode")
        code = int(raw_code) if raw_code is not None else -1
        if ended is not None:
            return JobOutcome(ended, exit_code=code, reason=reason)
        if state.get("OOMKilled"):
            reason = f"killed: out of memory (limit {spec.memory_bytes} bytes)"
            log.note(reason)
            return JobOutcome(JobState.FAILED, exit_code=code, reason=reason)
        over = output_verdict(spec, workdir, failed=code != 0)
        if over:
            log.note(over)
            return JobOutcome(JobState.FAILED, exit_code=code, reason=over)
        if code != 0:
            reason = exit_reason(code, log)
            if code == 137 and spec.memory_bytes:  # SIGKILL: the engine does not always flag OOMKilled
                reason += f" (killed by SIGKILL; out of memory? the limit is {spec.memory_bytes} bytes)"
            return JobOutcome(JobState.FAILED, exit_code=code, reason=reason)
        return JobOutcome(JobState.SUCCEEDED, exit_code=0)


class _LogFollower(threading.Thread):
    """Follows the container's stdout+stderr into the job log on a connection of its own without a read
    timeout (a job may be silent for longer than any API timeout; podman also sends no response headers
    before the first log line). If the stream does not end in time, the rest is fetched once, without
    following, and the bytes already copied are skipped."""

    def __init__(self, runner: ContainerJobRunner, container_id: str, log: CappedLog, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.runner = runner
        self.client = runner.client()
        self.container_id = container_id
        self.log = log
        self.received = 0
        self.complete = False
        self._stop_copying = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        import docker

        api: docker.APIClient | None = None
        try:
            api = docker.APIClient(  # timeout=None: no read timeout (the stubs say int; the SDK takes None)
                **self.runner.connection(),
                version=self.client.api.api_version,
                timeout=None,  # type: ignore[arg-type]
            )
            stream = cast(
                Iterator[bytes],
                api.logs(self.container_id, stream=True, follow=True, stdout=True, stderr=True),
            )
            for chunk in stream:
                with self._lock:
                    if self._stop_copying.is_set():
                        return
                    self.received += len(chunk)
                    self.log.write(chunk)
            self.complete = True
        except Exception:  # the one-shot read in finish() covers whatever was missed
            return
        finally:
            if api is not None:
                api.close()

    def finish(self, wait_s: float) -> None:
        """Wait for the stream's end; else copy what it missed from a one-shot read of the logs."""
        self.join(timeout=wait_s)
        with self._lock:
            self._stop_copying.set()
            if self.complete:
                return
            try:
                full = self.client.api.logs(
                    self.container_id, stream=False, follow=False, stdout=True, stderr=True
                )
            except Exception:
                return
            if isinstance(full, bytes | bytearray):
                self.log.write(bytes(full[self.received :]))


def _slug(job_id: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", job_id)[:40] or "job"


def _explain(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc)


def _handover(workdir: Path, user: str) -> tuple[int, int] | None:
    """As root, give the job dir to the container's numeric user; returns the owner to restore."""
    if os.geteuid() != 0:
        return None
    ids = user.split(":")
    if not all(part.isdigit() for part in ids):
        return None
    uid = int(ids[0])
    gid = int(ids[1]) if len(ids) > 1 else uid
    st = workdir.stat()
    if uid == 0:
        return None
    _chown_tree(workdir, uid, gid)
    return st.st_uid, st.st_gid


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.lchown(root, uid, gid)
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                os.lchown(os.path.join(dirpath, name), uid, gid)
