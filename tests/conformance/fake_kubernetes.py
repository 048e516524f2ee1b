"""An in-memory Kubernetes API (the parts of ``BatchV1Api`` and ``CoreV1Api`` the Kubernetes job runner
calls) whose "kubelet" runs each Job's pod as a local process group, so that the runner conformance suite
can run ``KubernetesJobRunner`` end to end without a cluster.

What it does like a cluster: validates what it is sent (strict JSON schema of the newest Kubernetes, 422
otherwise), resolves ``secretKeyRef`` env from the Secrets it holds (a missing Secret leaves the container
waiting in ``CreateContainerConfigError``), runs the container's ``command`` with only the manifest's env
in ``workingDir``, enforces ``resources.limits.memory`` (as ``RLIMIT_AS``) and ``activeDeadlineSeconds``
(SIGTERM to the pod, SIGKILL after the grace period, condition ``Failed``/``DeadlineExceeded``), reports
the container's exit like a container runtime (128 + signal, ``StartError`` with code 128 when the command
cannot be started), kills everything left in the pod when its main process ends, serves the pod's log with
``follow``, and on Job deletion kills the pod and garbage-collects the Secrets the Job owns.

What it fakes: volumes are "mounted" by rewriting paths -- a ``command``, env value or ``workingDir`` that
starts with a ``mountPath`` is pointed at the volume's host directory (``hostPath``: its path;
``persistentVolumeClaim``: the directory given for the claim, plus ``subPath``; ``emptyDir``: a fresh
temporary directory). The "image" is this machine (``PATH`` from the constructor); a path below an
``emptyDir`` mount that exists on this machine is taken as part of the image and left alone (so a checkout
or venv under ``/tmp`` still runs while the pod's ``/tmp`` is an emptyDir). The security context is
accepted, not enforced, and there is no per-file size limit (there is none on a Kubernetes volume either).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Any

import kubernetes_validate
from kubernetes.client.exceptions import ApiException

_QUANTITY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_UNITS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_UNITS.update({"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4})


def _api_error(status: int, reason: str, message: str) -> ApiException:
    exc = ApiException(status=status, reason=reason)
    exc.body = json.dumps({"kind": "Status", "status": "Failure", "message": message, "code": status})
    return exc


def _bytes(quantity: str) -> int:
    m = _QUANTITY.match(quantity)
    if not m:
        raise _api_error(422, "Unprocessable Entity", f"quantities must match {_QUANTITY.pattern}")
    return int(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class _Pod:
    name: str
    container: str
    labels: dict[str, str]
    phase: str = "Pending"
    waiting: tuple[str, str] | None = None  # (reason, message)
    terminated: tuple[int, str] | None = None  # (exit code, reason)
    proc: subprocess.Popen[bytes] | None = None
    output: bytearray = field(default_factory=bytearray)
    output_done: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)
    scratch: list[Path] = field(default_factory=list)

    def kill(self, grace_s: float) -> None:
        """SIGTERM to the pod's process group, SIGKILL after ``grace_s`` (at once for 0)."""
        proc = self.proc
        if proc is None:
            return
        if grace_s > 0 and proc.poll() is None:
            _killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace_s)
        _killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class _Job:
    body: dict[str, Any]
    uid: str
    pod: _Pod
    conditions: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    deleted: threading.Event = field(default_factory=threading.Event)
    kubelet: threading.Thread | None = None


class FakeKubernetes:
    """Both APIs in one object: pass it as ``apis=(fake, fake)``. ``claims`` maps a PersistentVolumeClaim
    name to the host directory holding its files; ``kill_grace_s`` caps the pods' termination grace period
    (the suite's runners are built with a short one)."""

    def __init__(
        self,
        *,
        namespaces: tuple[str, ...] = ("fedge-jobs",),
        claims: dict[str, Path] | None = None,
        kill_grace_s: float = 1.0,
        path: str | None = None,
    ) -> None:
        self.namespaces = set(namespaces)
        self.claims = dict(claims or {})
        self.kill_grace_s = kill_grace_s
        self.path = path or os.pathsep.join(
            [str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]
        )
        self.jobs: dict[tuple[str, str], _Job] = {}
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[str] = []
        self._lock = threading.Lock()
        self._kubelets: list[threading.Thread] = []

    # ------------------------------------------------------------------------------------------ plumbing
    def _namespace(self, namespace: str, body: dict[str, Any] | None = None) -> None:
        if namespace not in self.namespaces:
            raise _api_error(404, "Not Found", f'namespaces "{namespace}" not found')
        if body is not None and body.get("metadata", {}).get("namespace", namespace) != namespace:
            raise _api_error(400, "Bad Request", "the namespace of the provided object does not match")

    @staticmethod
    def _validate(body: dict[str, Any]) -> None:
        try:
            kubernetes_validate.validate(body, kubernetes_validate.latest_version(), strict=True)
        except kubernetes_validate.ValidationError as exc:
            kind = body.get("kind", "object")
            name = body.get("metadata", {}).get("name", "")
            raise _api_error(422, "Unprocessable Entity", f'{kind} "{name}" is invalid: {exc}') from exc

    def leftovers(self) -> list[str]:
        """What is still in the cluster (the runner deletes its Job and Secret when a run ends)."""
        with self._lock:
            return [f"job/{n}" for _ns, n in self.jobs] + [f"secret/{n}" for _ns, n in self.secrets]

    def close(self) -> None:
        """Kill whatever still runs and wait for the kubelet threads."""
        with self._lock:
            jobs = list(self.jobs.values())
            kubelets = list(self._kubelets)
        for job in jobs:
            job.deleted.set()
            job.pod.kill(0)
        for t in kubelets:
            t.join(timeout=30)

    # ------------------------------------------------------------------------------------------ BatchV1Api
    def list_namespaced_job(self, namespace: str, limit: int | None = None) -> Any:
        self.calls.append("list_namespaced_job")
        self._namespace(namespace)
        with self._lock:
            names = [n for ns, n in self.jobs if ns == namespace][:limit]
        return NS(items=[NS(metadata=NS(name=n)) for n in names])

    def create_namespaced_job(self, namespace: str, body: dict[str, Any]) -> Any:
        self.calls.append("create_namespaced_job")
        self._namespace(namespace, body)
        self._validate(body)
        name = body["metadata"]["name"]
        template = body["spec"]["template"]
        pod = _Pod(
            f"{name}-{uuid.uuid4().hex[:5]}",
            template["spec"]["containers"][0]["name"],
            dict(template["metadata"]["labels"]),
        )
        job = _Job(json.loads(json.dumps(body)), str(uuid.uuid4()), pod)
        with self._lock:
            if (namespace, name) in self.jobs:
                raise _api_error(409, "Conflict", f'jobs.batch "{name}" already exists')
            self.jobs[(namespace, name)] = job
            job.kubelet = threading.Thread(target=self._kubelet, args=(namespace, job), daemon=True)
            self._kubelets.append(job.kubelet)
        job.kubelet.start()
        return NS(metadata=NS(name=name, namespace=namespace, uid=job.uid))

    def read_namespaced_job_status(self, name: str, namespace: str) -> Any:
        self.calls.append("read_namespaced_job_status")
        job = self._job(namespace, name)
        conditions = [NS(type=t, status="True", reason=r, message=m) for t, r, m in list(job.conditions)]
        return NS(metadata=NS(name=name, uid=job.uid), status=NS(conditions=conditions or None))

    def delete_namespaced_job(
        self,
        name: str,
        namespace: str,
        *,
        propagation_policy: str | None = None,
        grace_period_seconds: int | None = None,
    ) -> None:
        self.calls.append("delete_namespaced_job")
        with self._lock:
            job = self.jobs.pop((namespace, name), None)
            if job is None:
                raise _api_error(404, "Not Found", f'jobs.batch "{name}" not found')
            for key, secret in list(self.secrets.items()):  # the garbage collector: owned Secrets go too
                owners = secret.get("metadata", {}).get("ownerReferences", [])
                if key[0] == namespace and any(o.get("uid") == job.uid for o in owners):
                    del self.secrets[key]
        job.deleted.set()
        if propagation_policy in ("Background", "Foreground"):  # "Orphan" would leave the pod running
            pod_grace = job.body["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
            grace = pod_grace if grace_period_seconds is None else grace_period_seconds
            job.pod.kill(min(float(grace), self.kill_grace_s))

    def _job(self, namespace: str, name: str) -> _Job:
        with self._lock:
            job = self.jobs.get((namespace, name))
        if job is None:
            raise _api_error(404, "Not Found", f'jobs.batch "{name}" not found')
        return job

    # ------------------------------------------------------------------------------------------ CoreV1Api
    def create_namespaced_secret(self, namespace: str, body: dict[str, Any]) -> Any:
        self.calls.append("create_namespaced_secret")
        self._namespace(namespace, body)
        self._validate(body)
        name = body["metadata"]["name"]
        with self._lock:
            if (namespace, name) in self.secrets:
                raise _api_error(409, "Conflict", f'secrets "{name}" already exists')
            self.secrets[(namespace, name)] = json.loads(json.dumps(body))
        return NS(metadata=NS(name=name))

    def patch_namespaced_secret(self, name: str, namespace: str, body: dict[str, Any]) -> Any:
        self.calls.append("patch_namespaced_secret")
        with self._lock:
            secret = self.secrets.get((namespace, name))
            if secret is None:
                raise _api_error(404, "Not Found", f'secrets "{name}" not found')
            secret.setdefault("metadata", {}).update(body.get("metadata", {}))
        return NS(metadata=NS(name=name))

    def delete_namespaced_secret(self, name: str, namespace: str) -> None:
        self.calls.append("delete_namespaced_secret")
        with self._lock:
            if self.secrets.pop((namespace, name), None) is None:
                raise _api_error(404, "Not Found", f'secrets "{name}" not found')

    def list_namespaced_pod(self, namespace: str, label_selector: str = "") -> Any:
        self.calls.append("list_namespaced_pod")
        self._namespace(namespace)
        wanted = dict(part.split("=", 1) for part in label_selector.split(",") if part)
        with self._lock:
            pods = [j.pod for (ns, _n), j in self.jobs.items() if ns == namespace]
        items = []
        for pod in pods:
            if any(pod.labels.get(k) != v for k, v in wanted.items()):
                continue
            waiting = NS(reason=pod.waiting[0], message=pod.waiting[1]) if pod.waiting else None
            terminated = NS(exit_code=pod.terminated[0], reason=pod.terminated[1]) if pod.terminated else None
            statuses = [NS(name=pod.container, state=NS(waiting=waiting, terminated=terminated))]
            items.append(
                NS(metadata=NS(name=pod.name), status=NS(phase=pod.phase, container_statuses=statuses))
            )
        return NS(items=items)

    def read_namespaced_pod_log(
        self,
        name: str,
        namespace: str,
        *,
        container: str | None = None,
        follow: bool = False,
        _preload_content: bool = True,
    ) -> Any:
        self.calls.append("read_namespaced_pod_log")
        with self._lock:
            pod = next(
                (j.pod for (ns, _n), j in self.jobs.items() if ns == namespace and j.pod.name == name), None
            )
        if pod is None:
            raise _api_error(404, "Not Found", f'pods "{name}" not found')
        if container is not None and container != pod.container:
            raise _api_error(400, "Bad Request", f"container {container} is not valid for pod {name}")
        if pod.phase == "Pending":
            raise _api_error(400, "Bad Request", f'container in pod "{name}" is waiting to start')
        return _LogStream(pod, follow)

    # ------------------------------------------------------------------------------------------ kubelet
    def _kubelet(self, namespace: str, job: _Job) -> None:
        pod = job.pod
        started = time.monotonic()
        pod_spec = job.body["spec"]["template"]["spec"]
        container = pod_spec["containers"][0]
        deadline = started + float(job.body["spec"].get("activeDeadlineSeconds", 10**9))
        try:
            while not job.deleted.is_set():  # a missing Secret: the kubelet keeps retrying
                try:
                    env = self._env(namespace, container)
                    break
                except LookupError as exc:
                    pod.waiting = ("CreateContainerConfigError", str(exc))
                    job.deleted.wait(0.1)
            else:
                return
            pod.waiting = None
            mounts = self._mounts(pod, pod_spec, container)
            argv = [_rewrite(a, mounts) for a in container.get("command", [])]
            cwd = _rewrite(container.get("workingDir", "/"), mounts)
            memory = container.get("resources", {}).get("limits", {}).get("memory")
            try:
                if not argv:
                    raise OSError("the fake kubelet's image has no entrypoint: give a command")
                pod.proc = subprocess.Popen(
                    argv,
                    cwd=cwd,
                    env={"PATH": self.path, **{k: _rewrite(v, mounts) for k, v in env.items()}},
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                    preexec_fn=_limits(_bytes(memory) if memory else None),
                )
                if job.deleted.is_set():  # deleted while the container was being created
                    pod.kill(0)
            except OSError as exc:
                with pod.cond:
                    pod.output_done = True
                    pod.cond.notify_all()
                pod.terminated, pod.phase = (128, "StartError"), "Failed"
                job.conditions.append(
                    ("Failed", "BackoffLimitExceeded", f"cannot start the container: {exc}")
                )
                return
            pump = threading.Thread(target=self._pump, args=(pod,), daemon=True)
            pump.start()
            pod.phase = "Running"
            deadline_exceeded = False
            try:
                pod.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                deadline_exceeded = True
                pod_grace = float(pod_spec.get("terminationGracePeriodSeconds", 30))
                pod.kill(min(pod_grace, self.kill_grace_s))
            pod.kill(0)  # the main process ended: nothing else of the pod outlives it
            pump.join(timeout=10)
            code = pod.proc.returncode
            code = 128 - code if code < 0 else code  # a runtime reports a signal as 128 + its number
            pod.terminated = (code, "Completed" if code == 0 else "Error")
            pod.phase = "Succeeded" if code == 0 and not deadline_exceeded else "Failed"
            if deadline_exceeded:
                job.conditions.append(
                    ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
                )
            elif code == 0:
                job.conditions.append(("Complete", "", ""))
            else:
                job.conditions.append(
                    ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
                )
        finally:
            job.deleted.wait(30)  # the scratch dirs live as long as the pod object
            for d in pod.scratch:
                shutil.rmtree(d, ignore_errors=True)

    def _env(self, namespace: str, container: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
                continue
            ref = item["valueFrom"]["secretKeyRef"]
            with self._lock:
                secret = self.secrets.get((namespace, ref["name"]))
            if secret is None:
                raise LookupError(f'secret "{ref["name"]}" not found')
            data = secret.get("stringData", {})
            if ref["key"] not in data:
                raise LookupError(f"couldn't find key {ref['key']} in Secret {namespace}/{ref['name']}")
            env[item["name"]] = data[ref["key"]]
        return env

    def _mounts(
        self, pod: _Pod, pod_spec: dict[str, Any], container: dict[str, Any]
    ) -> list[tuple[str, str, bool]]:
        """(mountPath, host directory, is a scratch emptyDir), longest mount path first."""
        volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
        mounts: list[tuple[str, str, bool]] = []
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "hostPath" in volume:
                host = Path(volume["hostPath"]["path"])
            elif "persistentVolumeClaim" in volume:
                host = self.claims[volume["persistentVolumeClaim"]["claimName"]]
            elif "emptyDir" in volume:
                host = Path(tempfile.mkdtemp(prefix=f"{pod.name}-{mount['name']}-"))
                pod.scratch.append(host)
            else:
                raise AssertionError(f"the fake kubelet cannot mount {volume}")
            if mount.get("subPath"):
                host = host / mount["subPath"]
            mounts.append((mount["mountPath"].rstrip("/") or "/", str(host), "emptyDir" in volume))
        return sorted(mounts, key=lambda m: len(m[0]), reverse=True)

    @staticmethod
    def _pump(pod: _Pod) -> None:
        assert pod.proc is not None and pod.proc.stdout is not None
        stdout = pod.proc.stdout
        try:
            while chunk := os.read(stdout.fileno(), 65536):
                with pod.cond:
                    pod.output += chunk
                    pod.cond.notify_all()
        except OSError:
            pass
        finally:
            stdout.close()
            with pod.cond:
                pod.output_done = True
                pod.cond.notify_all()


class _LogStream:
    """What ``read_namespaced_pod_log(..., _preload_content=False)`` returns: ``stream(n)`` and ``close()``."""

    def __init__(self, pod: _Pod, follow: bool) -> None:
        self.pod = pod
        self.follow = follow
        self.closed = False

    def stream(self, amt: int = 65536) -> Iterator[bytes]:
        pos = 0
        while True:
            with self.pod.cond:
                while (
                    self.follow
                    and not self.closed
                    and not self.pod.output_done
                    and pos == len(self.pod.output)
                ):
                    self.pod.cond.wait(0.5)
                if self.closed or pos == len(self.pod.output):
                    return
                chunk = bytes(self.pod.output[pos : pos + amt])
            pos += len(chunk)
            yield chunk

    def close(self) -> None:
        self.closed = True
        with self.pod.cond:
            self.pod.cond.notify_all()


def _rewrite(value: str, mounts: list[tuple[str, str, bool]]) -> str:
    """A path inside the pod -> the host directory of the volume mounted there (below a scratch
    emptyDir, a path that exists on this machine belongs to the "image" and stays as it is)."""
    for mount_path, host, scratch in mounts:
        if value == mount_path or value.startswith(mount_path + "/"):
            if scratch and value != mount_path and os.path.exists(value):
                return value
            return host + value[len(mount_path) :]
    return value


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _limits(memory_bytes: int | None) -> Any:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if memory_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    return apply
