"""KubernetesJobRunner: one ``batch/v1`` Job per training run.

Two halves:

* :func:`job_manifest` (and :func:`env_secret_manifest`) -- pure functions from a :class:`JobSpec` to the
  manifests: a non-root, read-only, capability-less pod with no service-account token, ``backoffLimit: 0``
  (a failed program is not retried), ``activeDeadlineSeconds`` = the timeout, memory/CPU limits, the job
  directory mounted at ``/job`` from a shared PersistentVolumeClaim (sub-path) or a hostPath, ``/tmp`` as a
  size-limited emptyDir. Secret-looking variables (``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``, ``*KEY*``) go
  into a per-job Secret referenced with ``secretKeyRef`` rather than into the Job's spec.
* :class:`KubernetesJobRunner` -- submits with the ``kubernetes`` Python client (imported lazily: only a
  controller that uses a cluster needs it), follows the pod's log into ``job.log``, watches the Job's
  conditions, deletes the Job (and its pod and Secret) when it ends, is cancelled or times out.

The job directory must be the same files for the controller and the pod (see packaging/k8s/README.md).
Kubernetes cannot switch a pod's network off; apply packaging/k8s/networkpolicy.yaml for that.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import math
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

JOB_DIR = "/job"
CONTAINER = "train"
APP_LABEL = "fedge-training"
SECRET_NAME_PATTERN = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|(^|_)KEY($|_)", re.IGNORECASE)
# pod states that will not get better by waiting
_STUCK = {
    "ErrImagePull": "cannot be pulled",
    "ImagePullBackOff": "cannot be pulled",
    "InvalidImageName": "is not a valid image name",
    "ErrImageNeverPull": "is not present on the node (imagePullPolicy: Never)",
    "CreateContainerConfigError": "cannot be configured",
    "CreateContainerError": "cannot be created",
}


@dataclass(frozen=True)
class PvcJobDir:
    """The job directories live on a (ReadWriteMany) PersistentVolumeClaim that the controller mounts at
    ``mount_root``; a job's pod mounts the claim with ``subPath`` = its workdir relative to that root."""

    claim_name: str
    mount_root: Path


@dataclass(frozen=True)
class HostPathJobDir:
    """Single-node clusters (kind with extraMounts, minikube, k3s on the controller's machine): the pod
    mounts the job's workdir from the node at the same absolute path. ``node_name`` pins the pod there."""

    node_name: str | None = None


JobDirVolume = PvcJobDir | HostPathJobDir


def job_name(job_id: str) -> str:
    """A DNS-1123 label (<= 63 chars) unique per job id: ``fedge-<readable part>-<hash>``."""
    readable = re.sub(r"[^a-z0-9-]+", "-", job_id.lower()).strip("-")[:40].strip("-") or "job"
    digest = hashlib.sha256(job_id.encode()).hexdigest()[:8]
    return f"fedge-{readable}-{digest}"


def _label_value(value: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[:63].strip("-_.")
    return cleaned or "x"


def _is_secret(name: str) -> bool:
    return bool(SECRET_NAME_PATTERN.search(name))


def _memory(n: int) -> str:
    return str(int(n))


def _cpu(count: float) -> str:
    return f"{max(1, math.ceil(count * 1000))}m"


def env_secret_manifest(spec: JobSpec, namespace: str) -> dict[str, Any] | None:
    """A Secret holding the job's secret-looking variables (``None`` when there are none)."""
    env = job_env(spec, JOB_DIR)
    secret = {k: v for k, v in env.items() if _is_secret(k)}
    if not secret:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{job_name(spec.job_id)}-env", "namespace": namespace, "labels": _labels(spec)},
        "type": "Opaque",
        "stringData": secret,
    }


def _labels(spec: JobSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": APP_LABEL,
        "app.kubernetes.io/managed-by": "fedge-controller",
        "fedge.io/job-id": _label_value(spec.job_id),
        "fedge.io/job-name": job_name(spec.job_id),
    }


def job_manifest(
    spec: JobSpec,
    *,
    namespace: str,
    image: str,
    job_dir: JobDirVolume,
    run_as_user: int = 1000,
    run_as_group: int = 1000,
    image_pull_policy: str = "IfNotPresent",
    service_account: str | None = None,
    ttl_seconds_after_finished: int = 3600,
    tmp_size: str = "256Mi",
    priority_class: str | None = None,
) -> dict[str, Any]:
    """The ``batch/v1`` Job for ``spec`` (see the module docstring for what it enforces)."""
    name = job_name(spec.job_id)
    labels = _labels(spec)
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": JOB_DIR},
        {"name": "TMPDIR", "value": "/tmp"},  # noqa: S108 - the pod's own emptyDir
        {"name": "LANG", "value": "C.UTF-8"},
    ]
    for key, value in job_env(spec, JOB_DIR).items():
        if _is_secret(key):
            ref = {"name": f"{name}-env", "key": key}
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
        else:
            env.append({"name": key, "value": value})
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if spec.memory_bytes:
        limits["memory"] = requests["memory"] = _memory(spec.memory_bytes)
    if spec.cpu_count:
        limits["cpu"] = requests["cpu"] = _cpu(spec.cpu_count)
    mount: dict[str, Any] = {"name": "job", "mountPath": JOB_DIR}
    volume: dict[str, Any]
    if isinstance(job_dir, PvcJobDir):
        workdir = spec.workdir.resolve()
        try:
            sub_path = workdir.relative_to(job_dir.mount_root.resolve())
        except ValueError as exc:
            raise ValueError(
                f"job dir {workdir} is not under the claim's mount root {job_dir.mount_root}"
            ) from exc
        mount["subPath"] = str(sub_path)
        volume = {"name": "job", "persistentVolumeClaim": {"claimName": job_dir.claim_name}}
    else:
        volume = {"name": "job", "hostPath": {"path": str(spec.workdir.resolve()), "type": "Directory"}}
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "workingDir": JOB_DIR,
        "env": env,
        "resources": {"limits": limits, "requests": requests},
        "volumeMounts": [mount, {"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": run_as_user,
            "runAsGroup": run_as_group,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.command:  # else the image's own entrypoint/cmd
        container["command"] = [substitute(a, JOB_DIR) for a in spec.command]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": run_as_user,
            "runAsGroup": run_as_group,
            "fsGroup": run_as_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [volume, {"name": "tmp", "emptyDir": {"sizeLimit": tmp_size}}],
        "terminationGracePeriodSeconds": 5,
    }
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    if priority_class:
        pod_spec["priorityClassName"] = priority_class
    if isinstance(job_dir, HostPathJobDir) and job_dir.node_name:
        pod_spec["nodeName"] = job_dir.node_name
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {"fedge.io/job-id": spec.job_id},
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": max(1, math.ceil(spec.timeout_s)),
            "ttlSecondsAfterFinished": ttl_seconds_after_finished,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


class KubernetesJobRunner(JobRunner):
    """Runs each job as a Kubernetes Job (see the module docstring).

    ``kubeconfig``/``context``: where the cluster is (default: in-cluster config when running in a pod, else
    ``~/.kube/config``). ``apis``: ready ``(BatchV1Api, CoreV1Api)`` objects instead (tests, custom auth).
    ``delete_grace_s``: extra time after ``activeDeadlineSeconds`` before the runner gives up on the cluster
    and deletes the Job itself."""

    name = "kubernetes"

    def __init__(
        self,
        *,
        namespace: str = "fedge-jobs",
        image: str | None = None,
        job_dir: JobDirVolume | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        apis: tuple[Any, Any] | None = None,
        run_as_user: int = 1000,
        run_as_group: int = 1000,
        image_pull_policy: str = "IfNotPresent",
        service_account: str | None = None,
        poll_s: float = 1.0,
        delete_grace_s: float = 30.0,
        stuck_after_s: float = 120.0,
    ) -> None:
        self.namespace = namespace
        self.image = image
        self.job_dir: JobDirVolume = job_dir or HostPathJobDir()
        self.kubeconfig = kubeconfig
        self.context = context
        self._apis = apis
        self.run_as_user = run_as_user
        self.run_as_group = run_as_group
        self.image_pull_policy = image_pull_policy
        self.service_account = service_account
        self.poll_s = poll_s
        self.delete_grace_s = delete_grace_s
        self.stuck_after_s = stuck_after_s
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ cluster
    def apis(self) -> tuple[Any, Any]:
        """``(BatchV1Api, CoreV1Api)``; RunnerUnavailable without the client package or a configuration."""
        with self._lock:
            if self._apis is None:
                try:  # Any-typed on purpose: the client is an optional dependency
                    client: Any = importlib.import_module("kubernetes.client")
                    config: Any = importlib.import_module("kubernetes.config")
                except ImportError as exc:
                    raise RunnerUnavailable(
                        "the 'kubernetes' package is not installed (pip install kubernetes)"
                    ) from exc
                try:
                    if self.kubeconfig is None and _in_cluster():
                        config.load_incluster_config()
                    else:
                        config.load_kube_config(config_file=self.kubeconfig, context=self.context)
                except Exception as exc:
                    raise RunnerUnavailable(f"no Kubernetes configuration: {exc}") from exc
                self._apis = (client.BatchV1Api(), client.CoreV1Api())
            return self._apis

    def health(self) -> None:
        batch, _core = self.apis()
        try:
            batch.list_namespaced_job(self.namespace, limit=1)
        except Exception as exc:
            raise RunnerUnavailable(f"cannot list Jobs in namespace {self.namespace}: {exc}") from exc

    def job_manifest(self, spec: JobSpec, image: str) -> dict[str, Any]:
        return job_manifest(
            spec,
            namespace=self.namespace,
            image=image,
            job_dir=self.job_dir,
            run_as_user=self.run_as_user,
            run_as_group=self.run_as_group,
            image_pull_policy=self.image_pull_policy,
            service_account=self.service_account,
        )

    # ------------------------------------------------------------------------------------------ run
    def run(self, spec: JobSpec, cancel: threading.Event) -> JobOutcome:
        image = spec.image or self.image
        if not image:
            return JobOutcome(JobState.FAILED, reason="no container image given for the job")
        batch, core = self.apis()
        workdir = prepare_workdir(spec)
        manifest = self.job_manifest(spec, image)
        secret = env_secret_manifest(spec, self.namespace)
        name = manifest["metadata"]["name"]
        log = CappedLog(workdir / "job.log", spec.max_log_bytes)
        follower: _PodLogFollower | None = None
        try:
            try:
                if secret is not None:
                    core.create_namespaced_secret(self.namespace, secret)
                created = batch.create_namespaced_job(self.namespace, manifest)
                if secret is not None:
                    _own_secret(core, self.namespace, secret["metadata"]["name"], created)
            except Exception as exc:
                status = getattr(exc, "status", None)
                if status in (400, 409, 422):
                    reason = f"the cluster refused the Job: {_api_message(exc)}"
                    log.note(reason)
                    return JobOutcome(JobState.FAILED, reason=reason)
                raise RunnerUnavailable(f"cannot create Job {name}: {_api_message(exc)}") from exc
            log.note(f"submitted Job {self.namespace}/{name} (image {image})")
            follower = _PodLogFollower(core, self.namespace, name, log, cancel)
            follower.start()
            return self._supervise(spec, workdir, image, batch, core, name, log, cancel, follower)
        finally:
            if follower is not None:
                follower.stop()
            self._delete(batch, core, name, secret)
            log.close()

    def _supervise(
        self,
        spec: JobSpec,
        workdir: Path,
        image: str,
        batch: Any,
        core: Any,
        name: str,
        log: CappedLog,
        cancel: threading.Event,
        follower: _PodLogFollower,
    ) -> JobOutcome:
        started = time.monotonic()
        hard_deadline = started + spec.timeout_s + self.delete_grace_s
        timed_out = f"timed out after {format_seconds(spec.timeout_s)} s"
        stuck_since: float | None = None
        while True:
            if cancel.is_set():
                log.note("cancelled: deleting the Job")
                return JobOutcome(JobState.CANCELLED, reason="cancelled")
            if time.monotonic() >= hard_deadline:
                log.note(f"{timed_out}: deleting the Job")
                return JobOutcome(JobState.FAILED, reason=timed_out)
            job = batch.read_namespaced_job_status(name, self.namespace)
            conditions = {c.type: c for c in (job.status.conditions or []) if c.status == "True"}
            pod = _pod_of(core, self.namespace, name)
            if "Complete" in conditions or "Failed" in conditions:
                follower.finish(wait_s=10.0)
                terminated = _terminated(pod)
                code = terminated.exit_code if terminated is not None else None
                if "Failed" in conditions:
                    why = conditions["Failed"].reason or ""
                    if why == "DeadlineExceeded":
                        log.note(timed_out)
                        return JobOutcome(JobState.FAILED, exit_code=code, reason=timed_out)
                    if terminated is not None and terminated.reason == "OOMKilled":
                        reason = f"killed: out of memory (limit {spec.memory_bytes} bytes)"
                        return JobOutcome(JobState.FAILED, exit_code=code, reason=reason)
                    over = output_verdict(spec, workdir, failed=True)
                    if over:
                        return JobOutcome(JobState.FAILED, exit_code=code, reason=over)
                    if code is not None:
                        return JobOutcome(JobState.FAILED, exit_code=code, reason=exit_reason(code, log))
                    message = conditions["Failed"].message or why or "the Job failed"
                    return JobOutcome(JobState.FAILED, reason=f"the Job failed: {message}")
                over = output_verdict(spec, workdir, failed=False)
                if over:
                    log.note(over)
                    return JobOutcome(JobState.FAILED, exit_code=code, reason=over)
                return JobOutcome(JobState.SUCCEEDED, exit_code=0 if code is None else code)
            waiting = _waiting(pod)
            if waiting is not None and waiting.reason in _STUCK:
                stuck_since = stuck_since or time.monotonic()
                if time.monotonic() - stuck_since >= self.stuck_after_s:
                    subject = f"image {image}" if "Image" in waiting.reason else "the container"
                    reason = f"{subject} {_STUCK[waiting.reason]}: {waiting.message or waiting.reason}"
                    log.note(reason)
                    return JobOutcome(JobState.FAILED, reason=reason)
            else:
                stuck_since = None
            cancel.wait(self.poll_s)

    def _delete(self, batch: Any, core: Any, name: str, secret: dict[str, Any] | None) -> None:
        with contextlib.suppress(Exception):
            batch.delete_namespaced_job(
                name, self.namespace, propagation_policy="Background", grace_period_seconds=0
            )
        if secret is not None:
            with contextlib.suppress(Exception):
                core.delete_namespaced_secret(secret["metadata"]["name"], self.namespace)


class _PodLogFollower(threading.Thread):
    """Waits for the Job's pod to start, then follows its log into the job log."""

    def __init__(self, core: Any, namespace: str, name: str, log: CappedLog, cancel: threading.Event) -> None:
        super().__init__(name=f"job-log-{name}", daemon=True)
        self.core = core
        self.namespace = namespace
        self.job = name
        self.log = log
        self.cancel = cancel
        self._halt = threading.Event()
        self._done = threading.Event()
        self._response: Any = None

    def run(self) -> None:
        try:
            pod = None
            while not self._halt.is_set():
                pod = _pod_of(self.core, self.namespace, self.job)
                if pod is not None and pod.status.phase in ("Running", "Succeeded", "Failed"):
                    break
                self._halt.wait(0.5)
            if pod is None or self._halt.is_set():
                return
            self._response = self.core.read_namespaced_pod_log(
                pod.metadata.name, self.namespace, container=CONTAINER, follow=True, _preload_content=False
            )
            for chunk in self._response.stream(65536):
                if self._halt.is_set():
                    return
                self.log.write(bytes(chunk))
        except Exception:
            return
        finally:
            self._done.set()

    def finish(self, wait_s: float) -> None:
        """Give the stream a moment to deliver its last lines after the pod ended."""
        self._done.wait(wait_s)

    def stop(self) -> None:
        self._halt.set()
        if self._response is not None:
            with contextlib.suppress(Exception):
                self._response.close()
        self.join(timeout=5)


def _pod_of(core: Any, namespace: str, job: str) -> Any:
    pods = core.list_namespaced_pod(namespace, label_selector=f"fedge.io/job-name={job}").items
    return pods[0] if pods else None


def _container_state(pod: Any) -> Any:
    if pod is None or not pod.status.container_statuses:
        return None
    for status in pod.status.container_statuses:
        if status.name == CONTAINER:
            return status.state
    return None


def _terminated(pod: Any) -> Any:
    state = _container_state(pod)
    return state.terminated if state is not None else None


def _waiting(pod: Any) -> Any:
    state = _container_state(pod)
    return state.waiting if state is not None else None


def _own_secret(core: Any, namespace: str, secret: str, job: Any) -> None:
    """Make the Job the Secret's owner, so that the cluster deletes it with the Job in any case."""
    owner = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": job.metadata.name,
        "uid": job.metadata.uid,
        "blockOwnerDeletion": False,
    }
    with contextlib.suppress(Exception):
        core.patch_namespaced_secret(secret, namespace, {"metadata": {"ownerReferences": [owner]}})


def _api_message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    reason = getattr(exc, "reason", None)
    if body:
        import json

        with contextlib.suppress(ValueError, TypeError):
            return str(json.loads(body).get("message", body))
        return str(body)
    return str(reason or exc)


def _in_cluster() -> bool:
    return Path("/var/run/secrets/kubernetes.io/serviceaccount/token").exists()
