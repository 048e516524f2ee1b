"""KubernetesJobRunner: generated manifests checked against the official Kubernetes JSON schemas (shipped
offline by the ``kubernetes-validate`` package, strict mode: unknown fields are errors) for several API
versions, plus the runner's watch/cancel/timeout logic against an in-memory fake of the two APIs it uses.
The runner conformance suite (tests/conformance/test_runner_conformance.py) runs this runner end to end
against a fake API whose kubelet runs the program, and on a real cluster under the ``k8s`` marker; a real
cluster run is described in packaging/k8s/README.md."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from controller.training.base import JobSpec, JobState, RunnerUnavailable
from controller.training.kubernetes import (
    HostPathJobDir,
    KubernetesJobRunner,
    PvcJobDir,
    env_secret_manifest,
    job_manifest,
    job_name,
)

K8S_VERSIONS = ["1.29.0", "1.31.0", "1.33.0", kubernetes_validate.latest_version()]
IMAGE = "registry.example.org/fedge/train@sha256:" + "ab" * 32


def make_spec(tmp_path: Path, **kw: Any) -> JobSpec:
    workdir = tmp_path / "jobs" / "3f0c9a8e-1b2c-4d5e-8f90-0123456789ab"
    workdir.mkdir(parents=True, exist_ok=True)
    fields: dict[str, Any] = {
        "job_id": workdir.name,
        "workdir": workdir,
        "command": ["python", "{job_dir}/code/train.py", "--out", "{job_dir}/output"],
        "env": {
            "FEDGE_JOB_DIR": "{job_dir}",
            "FEDGE_OUTPUT_DIR": "{job_dir}/output",
            "FEDGE_HYPERPARAMETERS": '{"epochs": 3}',
            "FEDGE_JOB_TOKEN": "fedge_job-secret-value",
            "PYTHONPATH": "{job_dir}/code",
        },
        "timeout_s": 90.5,
        "memory_bytes": 2 * 1024**3,
        "cpu_count": 1.5,
    }
    fields.update(kw)
    return JobSpec(**fields)


def validate(manifest: dict[str, Any]) -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(manifest, version, strict=True)


# ---------------------------------------------------------------------------------------------- manifests
@pytest.mark.parametrize("volume", ["pvc", "hostpath"])
@pytest.mark.parametrize("with_command", [True, False])
def test_manifest_is_a_valid_batch_v1_job(tmp_path: Path, volume: str, with_command: bool) -> None:
    spec = make_spec(tmp_path) if with_command else make_spec(tmp_path, command=[])
    job_dir = PvcJobDir("fedge-jobs", tmp_path / "jobs") if volume == "pvc" else HostPathJobDir("node-1")
    manifest = job_manifest(spec, namespace="fedge-jobs", image=IMAGE, job_dir=job_dir)
    validate(manifest)
    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert ("command" in container) is with_command


def test_secret_manifest_is_valid_and_holds_only_secrets(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    secret = env_secret_manifest(spec, "fedge-jobs")
    assert secret is not None
    validate(secret)
    assert secret["stringData"] == {"FEDGE_JOB_TOKEN": "fedge_job-secret-value"}
    no_secrets = make_spec(tmp_path, env={"FEDGE_JOB_DIR": "{job_dir}"})
    assert env_secret_manifest(no_secrets, "fedge-jobs") is None


def test_the_validator_does_reject_bad_manifests(tmp_path: Path) -> None:
    manifest = job_manifest(make_spec(tmp_path), namespace="ns", image=IMAGE, job_dir=HostPathJobDir())
    bad_type = json.loads(json.dumps(manifest))
    bad_type["spec"]["backoffLimit"] = "zero"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad_type, kubernetes_validate.latest_version(), strict=True)
    unknown_field = json.loads(json.dumps(manifest))
    unknown_field["spec"]["template"]["spec"]["containers"][0]["memoryLimit"] = "1Gi"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown_field, kubernetes_validate.latest_version(), strict=True)


def test_manifest_limits_security_and_env(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    m = job_manifest(
        spec, namespace="fedge-jobs", image=IMAGE, job_dir=PvcJobDir("fedge-jobs", tmp_path / "jobs")
    )
    job = m["spec"]
    assert job["backoffLimit"] == 0
    assert job["activeDeadlineSeconds"] == 91  # ceil(90.5)
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    (c,) = pod["containers"]
    assert c["image"] == IMAGE
    assert c["resources"]["limits"] == {"memory": str(2 * 1024**3), "cpu": "1500m"}
    assert c["resources"]["requests"] == c["resources"]["limits"]
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["privileged"] is False
    assert c["workingDir"] == "/job"
    assert c["command"] == ["python", "/job/code/train.py", "--out", "/job/output"]
    env = {e["name"]: e for e in c["env"]}
    assert env["FEDGE_JOB_DIR"]["value"] == "/job"
    assert env["FEDGE_OUTPUT_DIR"]["value"] == "/job/output"
    assert env["PYTHONPATH"]["value"] == "/job/code"
    assert env["FEDGE_HYPERPARAMETERS"]["value"] == '{"epochs": 3}'
    assert env["HOME"]["value"] == "/job"
    # the job token is a secretKeyRef, its value is nowhere in the Job
    assert env["FEDGE_JOB_TOKEN"] == {
        "name": "FEDGE_JOB_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": f"{m['metadata']['name']}-env", "key": "FEDGE_JOB_TOKEN"}},
    }
    assert "fedge_job-secret-value" not in json.dumps(m)
    # the job dir: the claim's sub-path for this job, mounted at /job; /tmp is a bounded emptyDir
    mounts = {v["name"]: v for v in c["volumeMounts"]}
    assert mounts["job"] == {"name": "job", "mountPath": "/job", "subPath": spec.job_id}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["job"]["persistentVolumeClaim"] == {"claimName": "fedge-jobs"}
    assert volumes["tmp"]["emptyDir"]["sizeLimit"]
    # the pod template's labels select it (the runner finds the pod by fedge.io/job-name)
    assert job["template"]["metadata"]["labels"]["fedge.io/job-name"] == m["metadata"]["name"]


def test_hostpath_job_dir_and_no_limits(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, memory_bytes=None, cpu_count=None)
    m = job_manifest(spec, namespace="ns", image=IMAGE, job_dir=HostPathJobDir("kind-control-plane"))
    validate(m)
    pod = m["spec"]["template"]["spec"]
    assert pod["nodeName"] == "kind-control-plane"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["job"]["hostPath"] == {"path": str(spec.workdir.resolve()), "type": "Directory"}
    assert pod["containers"][0]["resources"] == {"limits": {}, "requests": {}}


def test_pvc_job_dir_must_be_under_the_mount_root(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    with pytest.raises(ValueError, match="not under the claim's mount root"):
        job_manifest(spec, namespace="ns", image=IMAGE, job_dir=PvcJobDir("c", tmp_path / "elsewhere"))


@pytest.mark.parametrize(
    "job_id",
    ["3f0c9a8e-1b2c-4d5e-8f90-0123456789ab", "Job_With.Odd Chars!", "x" * 200, "---", "UPPER-case-123"],
)
def test_job_names_are_dns_labels(tmp_path: Path, job_id: str) -> None:
    name = job_name(job_id)
    assert len(name) <= 63
    assert name[0].isalnum() and name[-1].isalnum()
    assert all(ch.islower() or ch.isdigit() or ch == "-" for ch in name)
    assert job_name(job_id) == name and job_name(job_id + "1") != name
    spec = make_spec(tmp_path, job_id=job_id)
    validate(job_manifest(spec, namespace="ns", image=IMAGE, job_dir=HostPathJobDir()))


@pytest.mark.parametrize("name", ["namespace.yaml", "rbac.yaml", "networkpolicy.yaml", "pvc.yaml"])
def test_packaged_manifests_are_valid(name: str) -> None:
    path = Path(__file__).resolve().parents[3] / "packaging" / "k8s" / name
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        validate(doc)


def test_rbac_role_covers_what_the_runner_calls() -> None:
    path = Path(__file__).resolve().parents[3] / "packaging" / "k8s" / "rbac.yaml"
    role = next(d for d in yaml.safe_load_all(path.read_text()) if d["kind"] == "Role")
    allowed = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    needed = {
        ("batch", "jobs", "create"),
        ("batch", "jobs", "delete"),
        ("batch", "jobs", "list"),
        ("batch", "jobs/status", "get"),
        ("", "pods", "list"),
        ("", "pods/log", "get"),
        ("", "secrets", "create"),
        ("", "secrets", "patch"),
        ("", "secrets", "delete"),
    }
    assert needed <= allowed


# ---------------------------------------------------------------------------------------------- run loop
class FakeCluster:
    """Just enough of BatchV1Api + CoreV1Api. ``plan``: succeed | fail | deadline | forever | imagepull."""

    def __init__(self, plan: str, run_s: float = 0.3, log: bytes = b"epoch 1\nepoch 2\n") -> None:
        self.plan = plan
        self.run_s = run_s
        self.log = log
        self.created: dict[str, Any] = {}
        self.secrets: dict[str, Any] = {}
        self.deleted: list[str] = []
        self.deleted_secrets: list[str] = []
        self.patched: list[Any] = []
        self.t0 = 0.0
        self.create_error: ApiException | None = None

    # BatchV1Api
    def create_namespaced_job(self, namespace: str, body: dict[str, Any]) -> Any:
        if self.create_error is not None:
            raise self.create_error
        self.created[body["metadata"]["name"]] = body
        self.t0 = time.monotonic()
        return NS(metadata=NS(name=body["metadata"]["name"], uid="uid-1"))

    def _elapsed(self) -> float:
        return time.monotonic() - self.t0

    def read_namespaced_job_status(self, name: str, namespace: str) -> Any:
        done = self._elapsed() >= self.run_s
        conditions = []
        if done and self.plan == "succeed":
            conditions = [NS(type="Complete", status="True", reason=None, message=None)]
        elif done and self.plan == "fail":
            conditions = [NS(type="Failed", status="True", reason="BackoffLimitExceeded", message="failed")]
        elif done and self.plan == "deadline":
            conditions = [NS(type="Failed", status="True", reason="DeadlineExceeded", message="deadline")]
        return NS(status=NS(conditions=conditions))

    def delete_namespaced_job(self, name: str, namespace: str, **kw: Any) -> None:
        assert kw["propagation_policy"] == "Background"
        self.deleted.append(name)

    def list_namespaced_job(self, namespace: str, limit: int) -> Any:
        return NS(items=[])

    # CoreV1Api
    def create_namespaced_secret(self, namespace: str, body: dict[str, Any]) -> None:
        self.secrets[body["metadata"]["name"]] = body

    def patch_namespaced_secret(self, name: str, namespace: str, body: Any) -> None:
        self.patched.append((name, body))

    def delete_namespaced_secret(self, name: str, namespace: str) -> None:
        self.deleted_secrets.append(name)

    def list_namespaced_pod(self, namespace: str, label_selector: str) -> Any:
        if not self.created:
            return NS(items=[])
        done = self._elapsed() >= self.run_s
        if self.plan == "imagepull":
            state = NS(
                waiting=NS(reason="ImagePullBackOff", message="Back-off pulling image"), terminated=None
            )
            phase = "Pending"
        elif done and self.plan in ("succeed", "fail"):
            code = 0 if self.plan == "succeed" else 3
            state = NS(
                waiting=None, terminated=NS(exit_code=code, reason="Completed" if code == 0 else "Error")
            )
            phase = "Succeeded" if code == 0 else "Failed"
        else:
            state = NS(waiting=None, terminated=None)
            phase = "Running"
        status = NS(phase=phase, container_statuses=[NS(name="train", state=state)])
        return NS(items=[NS(metadata=NS(name="pod-1"), status=status)])

    def read_namespaced_pod_log(self, name: str, namespace: str, **kw: Any) -> Any:
        assert kw["follow"] is True and kw["container"] == "train"
        data = self.log if self.plan != "fail" else self.log + b"ValueError: bad learning rate\n"
        return NS(stream=lambda n: iter([data]), close=lambda: None)


def runner_for(cluster: FakeCluster, **kw: Any) -> KubernetesJobRunner:
    return KubernetesJobRunner(
        namespace="fedge-jobs", image=IMAGE, apis=(cluster, cluster), poll_s=0.05, delete_grace_s=1.0, **kw
    )


def test_run_success_streams_log_and_cleans_up(tmp_path: Path) -> None:
    cluster = FakeCluster("succeed")
    spec = make_spec(tmp_path)
    outcome = runner_for(cluster).run(spec, threading.Event())
    assert outcome.state is JobState.SUCCEEDED and outcome.exit_code == 0
    name = job_name(spec.job_id)
    assert list(cluster.created) == [name]
    validate(cluster.created[name])
    assert cluster.deleted == [name]
    assert list(cluster.secrets) == [f"{name}-env"] and cluster.deleted_secrets == [f"{name}-env"]
    assert cluster.patched[0][1]["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    log = (spec.workdir / "job.log").read_text()
    assert "epoch 2" in log and f"submitted Job fedge-jobs/{name}" in log


def test_run_failure_has_exit_code_and_last_line(tmp_path: Path) -> None:
    outcome = runner_for(FakeCluster("fail")).run(make_spec(tmp_path), threading.Event())
    assert outcome.state is JobState.FAILED and outcome.exit_code == 3
    assert outcome.reason == "exited with code 3: ValueError: bad learning rate"


def test_run_deadline_exceeded_is_timed_out(tmp_path: Path) -> None:
    outcome = runner_for(FakeCluster("deadline")).run(make_spec(tmp_path, timeout_s=2), threading.Event())
    assert outcome.state is JobState.FAILED and outcome.reason == "timed out after 2 s"


def test_run_cluster_never_ends_runner_times_out_and_deletes(tmp_path: Path) -> None:
    cluster = FakeCluster("forever")
    t0 = time.monotonic()
    outcome = runner_for(cluster).run(make_spec(tmp_path, timeout_s=0.5), threading.Event())
    assert outcome.state is JobState.FAILED and outcome.reason == "timed out after 0.5 s"
    assert time.monotonic() - t0 < 5
    assert cluster.deleted == list(cluster.created)


def test_run_cancel_deletes_the_job(tmp_path: Path) -> None:
    cluster = FakeCluster("forever")
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    outcome = runner_for(cluster).run(make_spec(tmp_path), cancel)
    assert outcome.state is JobState.CANCELLED
    assert cluster.deleted == list(cluster.created)


def test_run_image_pull_failure_is_reported(tmp_path: Path) -> None:
    outcome = runner_for(FakeCluster("imagepull"), stuck_after_s=0.3).run(
        make_spec(tmp_path), threading.Event()
    )
    assert outcome.state is JobState.FAILED
    assert outcome.reason == f"image {IMAGE} cannot be pulled: Back-off pulling image"


def test_run_refused_job_is_failed_and_forbidden_is_unavailable(tmp_path: Path) -> None:
    cluster = FakeCluster("succeed")
    cluster.create_error = ApiException(status=422, reason="Unprocessable Entity")
    cluster.create_error.body = json.dumps({"message": 'Job.batch "x" is invalid: spec.template: bad'})
    outcome = runner_for(cluster).run(make_spec(tmp_path), threading.Event())
    assert outcome.state is JobState.FAILED
    assert outcome.reason == 'the cluster refused the Job: Job.batch "x" is invalid: spec.template: bad'
    cluster.create_error = ApiException(status=403, reason="Forbidden")
    with pytest.raises(RunnerUnavailable, match="Forbidden"):
        runner_for(cluster).run(make_spec(tmp_path), threading.Event())


def test_no_image_and_no_cluster(tmp_path: Path) -> None:
    outcome = KubernetesJobRunner(apis=(None, None)).run(make_spec(tmp_path), threading.Event())
    assert outcome.state is JobState.FAILED and outcome.reason == "no container image given for the job"
    missing = KubernetesJobRunner(kubeconfig=str(tmp_path / "no-kubeconfig"))
    with pytest.raises(RunnerUnavailable, match="no Kubernetes configuration"):
        missing.health()
