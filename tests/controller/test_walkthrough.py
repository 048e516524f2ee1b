"""The seed's section 4.3 walkthrough through fedge's API: register dataset -> register model (with the
example CNN's training code) -> train in a local job -> download -> translate to ONNX, with the on-chain
result hash matching the downloaded artifact and the ONNX version validated and recorded on chain."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import Api, SettingsFactory, _open

REPO = Path(__file__).resolve().parents[2]


def digits_npz() -> bytes:
    from sklearn.datasets import load_digits

    d = load_digits()
    buf = io.BytesIO()
    np.savez(buf, x=(d.images.astype(np.float32) / 16.0)[:, None], y=d.target.astype(np.int64))
    return buf.getvalue()


def example_package(name: str) -> bytes:
    """The example as a training package: examples/<name> inside an 'examples' namespace."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(REPO / "examples" / "__init__.py", arcname="examples/__init__.py")
        tf.add(
            REPO / "examples" / name,
            arcname=f"examples/{name}",
            filter=lambda i: None if "__pycache__" in i.name else i,
        )
    return buf.getvalue()


@pytest.fixture
def api_e2e(make_settings: SettingsFactory, shared_evm) -> Iterator[Api]:  # type: ignore[no-untyped-def]
    yield from _open(make_settings(job_timeout_seconds=300), shared_evm)


def _wait(api: Api, job_id: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = api.client.get(f"/v1/jobs/{job_id}", headers=api.admin).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError("job did not finish")


def _register(api: Api, example: str, entrypoint: str, hyper: dict[str, Any]) -> str:
    dataset = api.client.post(
        "/v1/datasets",
        headers=api.admin,
        files={"dataset": ("digits.npz", digits_npz())},
        data={"metadata": json.dumps({"organization_id": "org", "samples_dimension": "(1,8,8)"})},
    )
    assert dataset.status_code == 201, dataset.text
    meta = {
        "model_params": {"developer_id": "dev", "organization_id": "org"},
        "data_params": {"dataset_id": dataset.json()["dataset_id"]},
        "training": {"kind": "python", "entrypoint": entrypoint, "hyperparameters": hyper},
    }
    r = api.client.post(
        "/v1/models",
        headers=api.admin,
        files=[
            ("metadata", (None, json.dumps(meta).encode())),
            ("training_package", ("pkg.tar.gz", example_package(example))),
        ],
    )
    assert r.status_code == 201, r.text
    model_id: str = r.json()["model_id"]
    return model_id


def test_seed_walkthrough_cnn_train_download_translate(api_e2e: Api) -> None:
    api = api_e2e
    model_id = _register(api, "digits_cnn", "examples.digits_cnn.train", {"epochs": 3, "threads": 1})
    # before training: the seed's "has not been trained yet"
    assert api.client.get(f"/v1/models/{model_id}", headers=api.admin).status_code == 409
    job = _wait(api, api.client.post(f"/v1/models/{model_id}/train", headers=api.admin).json()["job_id"])
    assert job["status"] == "succeeded", job
    assert job["metrics"]["progress"] == 1.0
    artifact = api.client.get(f"/v1/models/{model_id}", headers=api.admin)
    assert artifact.status_code == 200
    meta = api.client.get(f"/v1/models/{model_id}/metadata", headers=api.admin).json()
    assert meta["chain"]["verified"] is True
    assert meta["chain"]["res_hash"] == hashlib.sha256(artifact.content).hexdigest()

    r = api.client.post(f"/v1/models/{model_id}/translate", headers=api.admin, json={"quantize": True})
    assert r.status_code == 201, r.text
    result = r.json()
    assert result["source_version"] == 1 and result["version"] == 2
    assert result["max_abs_diff"] <= 1e-5
    assert result["n_samples"] == 1000
    assert result["onnx_accuracy"] == result["source_accuracy"]
    assert result["quantized"]["reason"]
    onnx_bytes = api.client.get(f"/v1/models/{model_id}?kind=onnx", headers=api.admin).content
    assert hashlib.sha256(onnx_bytes).hexdigest() == result["sha256"]
    chain_art = api.state.chain.get_artifact(model_id, 2)
    assert chain_art.sha256.hex() == result["sha256"] and chain_art.kind == "onnx"

    import onnxruntime as ort
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None][-1000:]
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    probs = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    accuracy = float((probs.argmax(1) == d.target[-1000:]).mean())
    assert accuracy == pytest.approx(result["onnx_accuracy"])
    assert accuracy > 0.5  # far above chance (0.1) after a 3-epoch job
    prov = api.client.get(f"/v1/models/{model_id}/provenance", headers=api.admin).json()
    assert prov["verified"] is True


def test_sklearn_example_translates(api_e2e: Api) -> None:
    api = api_e2e
    model_id = _register(api, "digits_sklearn", "examples.digits_sklearn.train", {})
    job = _wait(api, api.client.post(f"/v1/models/{model_id}/train", headers=api.admin).json()["job_id"])
    assert job["status"] == "succeeded", job
    r = api.client.post(f"/v1/models/{model_id}/translate", headers=api.admin, json={})
    assert r.status_code == 201, r.text
    assert r.json()["framework"] == "sklearn"
    assert r.json()["max_abs_diff"] <= 1e-4


def test_translating_an_untrained_model_is_409(api_e2e: Api) -> None:
    model_id = _register(api_e2e, "digits_cnn", "examples.digits_cnn.train", {})
    r = api_e2e.client.post(f"/v1/models/{model_id}/translate", headers=api_e2e.admin, json={})
    assert r.status_code == 409
    assert "has not been trained yet" in r.json()["detail"]


def test_unsupported_framework_is_422_naming_the_supported_ones(api_e2e: Api) -> None:
    api = api_e2e
    model_id = _register(api, "digits_cnn", "examples.digits_cnn.train", {})
    r = api.client.put(
        f"/v1/models/{model_id}/artifact?format=tensorflow", headers=api.admin, content=b"saved_model"
    )
    assert r.status_code == 201
    r = api.client.post(f"/v1/models/{model_id}/translate", headers=api.admin, json={})
    assert r.status_code == 422
    assert "pytorch" in r.json()["detail"] and "sklearn" in r.json()["detail"]
    assert r.json()["field"] == "framework"
