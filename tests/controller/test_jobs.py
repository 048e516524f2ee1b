"""Training jobs end to end on the local runner: lifecycle, pre-/post-steps, bad programs, restarts."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from controller.db.models import ApiToken, Job, ModelVersion
from controller.state import build_state
from tests.conftest import Api, SettingsFactory, _open

TRAINER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path

    def main():
        hp = json.loads(os.environ["FEDGE_HYPERPARAMETERS"])
        mode = hp.get("mode", "ok")
        data = Path(os.environ["FEDGE_DATASET_PATH"]).read_bytes()
        out = Path(os.environ["FEDGE_OUTPUT_DIR"])
        metrics = open(os.environ["FEDGE_METRICS_FILE"], "a")
        print("training on", len(data), "bytes with token", os.environ["FEDGE_JOB_TOKEN"][:6], flush=True)
        for step in range(3):
            metrics.write(json.dumps({"step": step, "progress": (step + 1) / 3, "loss": 1.0 / (step + 1)}) + "\\n")
            metrics.flush()
        if mode == "crash":
            raise RuntimeError("boom: the model diverged")
        if mode == "hang":
            time.sleep(600)
        if mode == "huge":
            with open(out / "model.onnx", "wb") as fh:
                fh.write(b"x" * (hp["size"]))
            return 0
        if mode == "nooutput":
            return 0
        (out / "model.onnx").write_bytes(b"weights:" + data[:16] + str(hp.get("lr")).encode())
        (out / "model.json").write_text(json.dumps({"framework": "onnx", "input_name": "x"}))
        return 0
    """
)


def _package(tmp: Path) -> Path:
    pkg = tmp / "trainer"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "main.py").write_text(TRAINER)
    archive = tmp / "trainer.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(pkg, arcname="trainer")
    return archive


def _register(api: Api, tmp: Path, hyper: dict[str, Any] | None = None) -> str:
    dataset_id = api.push_dataset(b"0123456789abcdefXYZ").json()["dataset_id"]
    meta = {
        "model_params": {"developer_id": "dev", "organization_id": "org"},
        "data_params": {"dataset_id": dataset_id},
        "training": {
            "kind": "python",
            "entrypoint": "trainer.main:main",
            "hyperparameters": hyper or {"lr": 0.1},
        },
    }
    archive = _package(tmp)
    r = api.client.post(
        "/v1/models",
        headers=api.admin,
        files=[
            ("metadata", (None, json.dumps(meta).encode())),
            ("training_package", ("t.tar.gz", archive.read_bytes())),
        ],
    )
    assert r.status_code == 201, r.text
    assert r.json()["training_digest"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    model_id: str = r.json()["model_id"]
    return model_id


def _train(api: Api, model_id: str, **hyper: Any) -> str:
    r = api.client.post(f"/v1/models/{model_id}/train", headers=api.admin, json={"hyperparameters": hyper})
    assert r.status_code == 202, r.text
    job_id: str = r.json()["job_id"]
    return job_id


def _wait(api: Api, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = api.client.get(f"/v1/jobs/{job_id}", headers=api.admin).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end")


@pytest.fixture
def jobs_api(make_settings: SettingsFactory, shared_evm) -> Iterator[Api]:  # type: ignore[no-untyped-def]
    yield from _open(make_settings(job_timeout_seconds=4, job_max_output_bytes=200_000), shared_evm)


def _versions(api: Api) -> int:
    with api.state.sessions() as s:
        return s.scalar(select(func.count()).select_from(ModelVersion)) or 0


def test_job_trains_stores_a_version_and_verifies_it_on_chain(jobs_api: Api, tmp_path: Path) -> None:
    model_id = _register(jobs_api, tmp_path)
    job = _wait(jobs_api, _train(jobs_api, model_id, lr=0.5))
    assert job["status"] == "succeeded", job
    assert job["model_version"] == 1
    assert job["progress"] == 1.0
    assert job["metrics"]["loss"] == pytest.approx(1 / 3)
    assert job["hyperparameters"] == {"lr": 0.5}
    assert any("verified against chain" in line for line in job["log_tail"])
    artifact = jobs_api.client.get(f"/v1/models/{model_id}", headers=jobs_api.admin)
    assert artifact.status_code == 200
    assert artifact.content == b"weights:0123456789abcdef0.5"
    chain = jobs_api.state.chain.get_model(model_id)
    assert chain.verified and chain.result_hash == hashlib.sha256(artifact.content).digest()
    meta = jobs_api.client.get(f"/v1/models/{model_id}/metadata", headers=jobs_api.admin).json()
    assert meta["versions"][0]["created_by"] == f"job:{job['job_id']}"
    logs = jobs_api.client.get(f"/v1/jobs/{job['job_id']}/logs", headers=jobs_api.admin).text
    assert "training on 19 bytes" in logs


def test_job_credential_is_scoped_and_revoked_afterwards(jobs_api: Api, tmp_path: Path) -> None:
    model_id = _register(jobs_api, tmp_path)
    job = _wait(jobs_api, _train(jobs_api, model_id))
    with jobs_api.state.sessions() as s:
        token = s.scalar(select(ApiToken).where(ApiToken.name == f"job-{job['job_id']}"))
    assert token is not None
    assert token.role == "job" and token.model_id == model_id
    assert token.revoked_at is not None


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("crash", "exited with code 1"),
        ("hang", "timed out after 4"),
        ("nooutput", "wrote no artifact"),
        ("huge", "limit"),
    ],
)
def test_bad_programs_fail_with_a_reason_and_leave_nothing(
    jobs_api: Api, tmp_path: Path, mode: str, expected: str
) -> None:
    model_id = _register(jobs_api, tmp_path)
    job = _wait(jobs_api, _train(jobs_api, model_id, mode=mode, size=1_000_000))
    assert job["status"] == "failed"
    assert expected in job["error"]
    assert _versions(jobs_api) == 0
    assert jobs_api.state.chain.get_model(model_id).verified is False
    assert list(jobs_api.state.store.list(jobs_api.state.registry.buckets.models)) == []
    r = jobs_api.client.get(f"/v1/models/{model_id}", headers=jobs_api.admin)
    assert r.status_code == 409


def test_crash_reason_includes_the_programs_last_words(jobs_api: Api, tmp_path: Path) -> None:
    model_id = _register(jobs_api, tmp_path)
    job = _wait(jobs_api, _train(jobs_api, model_id, mode="crash"))
    assert "boom: the model diverged" in job["error"]


def test_cancel_a_running_job(jobs_api: Api, tmp_path: Path) -> None:
    model_id = _register(jobs_api, tmp_path)
    job_id = _train(jobs_api, model_id, mode="hang")
    deadline = time.monotonic() + 20
    while jobs_api.client.get(f"/v1/jobs/{job_id}", headers=jobs_api.admin).json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    r = jobs_api.client.post(f"/v1/jobs/{job_id}/cancel", headers=jobs_api.admin)
    assert r.status_code == 202
    job = _wait(jobs_api, job_id)
    assert job["status"] == "cancelled"
    assert _versions(jobs_api) == 0
    again = jobs_api.client.post(f"/v1/jobs/{job_id}/cancel", headers=jobs_api.admin)
    assert again.status_code == 409


def test_tampered_dataset_refuses_the_job(jobs_api: Api, tmp_path: Path) -> None:
    model_id = _register(jobs_api, tmp_path)
    ds = jobs_api.client.get(
        f"/v1/datasets/{jobs_api.client.get(f'/v1/models/{model_id}/metadata', headers=jobs_api.admin).json()['data_params']['dataset_id']}/metadata",
        headers=jobs_api.admin,
    ).json()
    path = jobs_api.settings.data_dir / "objects" / ds["bucket"] / ds["object_key"]
    path.write_bytes(b"poisoned training data")
    job = _wait(jobs_api, _train(jobs_api, model_id))
    assert job["status"] == "failed"
    assert "dataset check refused the job" in job["error"]
    assert "differs from the chain record" in job["error"]
    assert _versions(jobs_api) == 0


def test_tampered_training_package_refuses_the_job(jobs_api: Api, tmp_path: Path) -> None:
    model_id = _register(jobs_api, tmp_path)
    key = jobs_api.state.registry.get_model(model_id).training["package_key"]
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tf:
        info = tarfile.TarInfo("trainer/main.py")
        body = b"def main():\n    return 0\n"
        info.size = len(body)
        tf.addfile(info, io.BytesIO(body))
    (jobs_api.settings.data_dir / "objects" / "packages" / key).write_bytes(evil.getvalue())
    job = _wait(jobs_api, _train(jobs_api, model_id))
    assert job["status"] == "failed"
    assert "training package check refused the job" in job["error"]


def test_model_without_training_spec_cannot_train(jobs_api: Api) -> None:
    dataset_id = jobs_api.push_dataset(b"x").json()["dataset_id"]
    model_id = jobs_api.register_model(dataset_id).json()["model_id"]
    r = jobs_api.client.post(f"/v1/models/{model_id}/train", headers=jobs_api.admin)
    assert r.status_code == 422


def test_unknown_job_is_404(jobs_api: Api) -> None:
    for path in ("/v1/jobs/nope", "/v1/jobs/nope/logs"):
        assert jobs_api.client.get(path, headers=jobs_api.admin).status_code == 404


def test_restart_fails_running_jobs_and_resumes_queued_ones(
    make_settings: SettingsFactory,
    shared_evm,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    settings = make_settings(job_timeout_seconds=30)
    state = build_state(settings, shared_evm, start_jobs=False)  # no workers: jobs stay where we put them
    for api in _open_state(state):
        model_id = _register(api, tmp_path)
        running = _train(api, model_id)
        queued = _train(api, model_id)
        with state.sessions.begin() as s:
            s.execute(update(Job).where(Job.id == running).values(state="running"))
    state.close()
    for api in _open(settings, shared_evm):  # a new controller process on the same data
        assert _wait(api, queued)["status"] == "succeeded"
        interrupted = api.client.get(f"/v1/jobs/{running}", headers=api.admin).json()
        assert interrupted["status"] == "failed"
        assert "controller stopped while the job was running" in interrupted["error"]


def _open_state(state):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from controller.app import create_app

    with TestClient(create_app(state)) as client:
        yield Api(state, client, state.settings)
