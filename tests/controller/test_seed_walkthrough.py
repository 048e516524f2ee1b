"""The seed's walkthrough as written (D3.4 section 4.3, "Implementation for IoT-NGIN LLs", pp. 49-52): its
curl calls, with its paths, methods and bodies copied from the document, against fedge with only a bearer
token added; the seed's answer shapes, and fedge's native records behind them (dataset row + object +
chain record, model, job, trained and ONNX versions on chain)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from controller.api.seed_compat import JOB_HEADER, not_trained_text, strict_json
from tests.conftest import Api, SettingsFactory, _open
from tests.controller.test_walkthrough import digits_npz, example_package

# --- the seed's bodies, verbatim -------------------------------------------------------------------------
# Section 4.3 p. 50, dataset registration: curl --request POST --url http://localhost:9005/dataset
#   --form dataset=@mnist-original.mat --form 'metadata={...}'
SEED_DATASET_METADATA = """{
        "organization_id": "5d066d58-06de-47ab-a2f6-c8f413e21947",
        "samples_dimension": "(1,32,32)"
}"""
# Section 4.3 p. 51, model registration: curl --request POST --url http://localhost:9005/model/
#   --form 'metadata={...}' --form train_image=... (note the seed's trailing comma after organization_id)
SEED_MODEL_METADATA = """{ "model params": { "developer_id": "dd8fca81-a999-40f5-81f0-68627e303a27", "organization_id": "5d066d58-06de-47ab-a2f6-c8f413e21947", }, "data params": { "dataset_id": "b2a30898-b72c-4b08-802b-7786425d01f9" } }"""
SEED_TRAIN_IMAGE = (
    "registry.gitlab.com/h2020-iotngin/enhancing_iot_intelligence/t3_4/ml-model-sharing/demo_model_image"
)
SEED_DATASET_ID = "b2a30898-b72c-4b08-802b-7786425d01f9"
"""The seed's dataset UUID: "referring to our dataset with the UUID received in the previous step"."""


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


def _seed_dataset(api: Api, path: str = "/dataset") -> tuple[str, bytes]:
    """Section 4.3 step 1 (a digits .npz stands in for mnist-original.mat, which is not shipped)."""
    data = digits_npz()
    r = api.client.post(  # the parts in curl's order: the file first, then the metadata
        path,
        headers=api.admin,
        files=[
            ("dataset", ("mnist-original.mat", data)),
            ("metadata", (None, SEED_DATASET_METADATA.encode())),
        ],
        follow_redirects=False,
    )
    assert r.status_code == 201, r.text
    assert set(r.json()) == {"dataset_id"}  # the seed's answer
    dataset_id: str = r.json()["dataset_id"]
    return dataset_id, data


def _form(**fields: str) -> list[tuple[str, tuple[None, bytes]]]:
    """Text fields as multipart parts (curl --form), in order."""
    return [(name, (None, value.encode())) for name, value in fields.items()]


def _seed_model_metadata(dataset_id: str) -> str:
    assert SEED_MODEL_METADATA.count(SEED_DATASET_ID) == 1
    return SEED_MODEL_METADATA.replace(SEED_DATASET_ID, dataset_id)


def test_seed_calls_with_a_training_image(any_api: Api) -> None:
    """The seed's calls exactly (train_image, POST /model/ with its trailing slash): a training job starts;
    on the 'local' runner it fails saying why, and the seed's GET /model/{id} answers that failure."""
    api = any_api
    dataset_id, data = _seed_dataset(api)
    # the native records behind the seed's answer: row, object, chain record (SHA-256 + the seed's MD5)
    ds = api.client.get(f"/v1/datasets/{dataset_id}/metadata", headers=api.admin).json()
    assert ds["sha256"] == hashlib.sha256(data).hexdigest() and ds["filename"] == "mnist-original.mat"
    assert ds["organization_id"] == "5d066d58-06de-47ab-a2f6-c8f413e21947"
    assert api.state.store.exists(ds["bucket"], ds["object_key"])
    on_chain = api.state.chain.get_dataset(dataset_id)
    assert on_chain.sha256.hex() == ds["sha256"] and on_chain.size_bytes == len(data)

    # section 4.3 p. 50: GET /contract/<address> answers the dataset's metadata in the seed's shape
    contract = api.client.get(f"/contract/{dataset_id}", headers=api.admin)
    assert contract.status_code == 200, contract.text
    assert contract.json() == {
        "organization_id": "5d066d58-06de-47ab-a2f6-c8f413e21947",
        "samples_dimension": "(1,32,32)",
        "size_bytes": len(data),
        "hash": hashlib.md5(data).hexdigest(),
    }

    # section 4.3 p. 51: POST /model/ (trailing slash, no redirect) with the seed's metadata and image
    r = api.client.post(
        "/model/",
        headers=api.admin,
        files=[("metadata", (None, _seed_model_metadata(dataset_id).encode()))],
        data={"train_image": SEED_TRAIN_IMAGE},
        follow_redirects=False,
    )
    assert r.status_code == 201, r.text
    assert set(r.json()) == {"model_id"}
    model_id = r.json()["model_id"]
    model = api.client.get(f"/v1/models/{model_id}/metadata", headers=api.admin).json()
    assert model["training"]["kind"] == "container" and model["training"]["image"] == SEED_TRAIN_IMAGE
    assert model["model_params"] == {
        "developer_id": "dd8fca81-a999-40f5-81f0-68627e303a27",
        "organization_id": "5d066d58-06de-47ab-a2f6-c8f413e21947",
    }
    # registration started training: the job exists; this controller runs jobs with the 'local' runner
    job = api.client.get(f"/v1/jobs/{r.headers[JOB_HEADER]}", headers=api.admin).json()
    assert job["model_id"] == model_id and job["status"] == "failed"
    assert "container image" in job["error"] and "FEDGE_JOB_RUNNER=container" in job["error"]

    got = api.client.get(f"/model/{model_id}", headers=api.admin)
    assert got.status_code == 409 and got.headers["content-type"] == "application/problem+json"
    assert job["job_id"] in got.json()["detail"] and "FEDGE_JOB_RUNNER" in got.json()["detail"]

    # section 4.3 p. 52: the model's contract, in the seed's shape (not verified yet: no res_hash)
    contract = api.client.get(f"/contract/{model_id}", headers=api.admin).json()
    assert contract == {
        "model_params": {
            "developer_id": "dd8fca81-a999-40f5-81f0-68627e303a27",
            "organization_id": "5d066d58-06de-47ab-a2f6-c8f413e21947",
            "train_image_hash": model["training_digest"],
            "res_hash": None,
        },
        "data_params": {"dataset_id": dataset_id},
    }
    assert api.client.get(f"/model/{model_id}/metadata/", headers=api.admin).json() == contract


def test_the_seed_sentence_until_trained(api: Api) -> None:
    """Section 4.3 p. 51: GET /model/{id} of a model not trained yet answers the seed's sentence."""
    dataset_id, _ = _seed_dataset(api, "/dataset/")
    r = api.register_model(dataset_id)  # native registration: no job started
    model_id = r.json()["model_id"]
    got = api.client.get(f"/model/{model_id}", headers=api.admin)
    assert got.status_code == 200 and got.json() == not_trained_text(model_id)
    assert got.json() == f"Model {model_id} has not been trained yet. Please, try again later."
    # seed table 16 POST /train/{id}: the native job submission (this model has no training spec)
    r = api.client.post(f"/train/{model_id}", headers=api.admin)
    assert r.status_code == 422 and r.json()["field"] == "training"
    # seed table 10 PUT /model/{id}: a training result stored as a version, then served by GET /model/{id}
    stored = api.client.put(f"/model/{model_id}", headers=api.admin, content=b"weights")
    assert stored.status_code == 201 and stored.json()["sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert api.client.get(f"/model/{model_id}/", headers=api.admin).content == b"weights"
    developer = api.token("developer")
    assert api.client.put(f"/model/{model_id}", headers=developer, content=b"x").status_code == 403


def test_seed_walkthrough_trains_downloads_and_translates(api_e2e: Api) -> None:
    """The seed's order with fedge's python training package in place of the container image: it trains
    for real, GET /model/{id} returns the artifact whose SHA-256 is the contract's res_hash, and
    POST /translate/{id} answers the ONNX model (validated, recorded on chain)."""
    api = api_e2e
    dataset_id, _ = _seed_dataset(api)
    r = api.client.post(
        "/model",
        headers=api.admin,
        files=[
            ("metadata", (None, _seed_model_metadata(dataset_id).encode())),
            ("entrypoint", (None, b"examples.digits_cnn.train")),
            ("hyperparameters", (None, b'{"epochs": 2, "threads": 1}')),
            ("training_package", ("pkg.tar.gz", example_package("digits_cnn"))),
        ],
    )
    assert r.status_code == 201, r.text
    model_id = r.json()["model_id"]
    job = _wait(api, r.headers[JOB_HEADER])
    assert job["status"] == "succeeded", job
    assert job["model_id"] == model_id and job["hyperparameters"]["epochs"] == 2

    artifact = api.client.get(f"/model/{model_id}", headers=api.admin)
    assert artifact.status_code == 200 and artifact.headers["x-model-kind"] == "trained"
    contract = api.client.get(f"/contract/{model_id}", headers=api.admin).json()
    assert contract["model_params"]["res_hash"] == hashlib.sha256(artifact.content).hexdigest()
    assert contract["data_params"] == {"dataset_id": dataset_id}
    assert api.client.get(f"/model/{model_id}/metadata", headers=api.admin).json() == contract

    onnx = api.client.post(f"/translate/{model_id}", headers=api.admin)
    assert onnx.status_code == 200, onnx.text
    versions = api.client.get(f"/v1/models/{model_id}/versions", headers=api.admin).json()
    onnx_version = next(v for v in versions if v["kind"] == "onnx")
    assert hashlib.sha256(onnx.content).hexdigest() == onnx_version["sha256"]
    assert (
        api.state.chain.get_artifact(model_id, onnx_version["version"]).sha256.hex() == onnx_version["sha256"]
    )

    import onnxruntime as ort

    session = ort.InferenceSession(onnx.content, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [1, 8, 8]


def test_bad_seed_metadata_is_a_precise_422_and_leaves_nothing(any_api: Api) -> None:
    api = any_api
    dataset_id, _ = _seed_dataset(api)
    before = api.client.get("/v1/models", headers=api.admin).json()["total"]
    no_org = _seed_model_metadata(dataset_id).replace(
        '"organization_id": "5d066d58-06de-47ab-a2f6-c8f413e21947", ', ""
    )
    r = api.client.post(
        "/model", headers=api.admin, files=_form(metadata=no_org, train_image=SEED_TRAIN_IMAGE)
    )
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["field"] == "metadata.model params.organization_id"
    r = api.client.post("/model", headers=api.admin, files=_form(metadata="{not json", train_image="x"))
    assert r.status_code == 422 and r.json()["field"] == "metadata"
    r = api.client.post("/model", headers=api.admin, files=_form(metadata=_seed_model_metadata(dataset_id)))
    assert r.status_code == 422 and r.json()["field"] == "train_image"  # nothing to train with
    unknown = _seed_model_metadata(dataset_id).replace(dataset_id, "0" * 36)
    r = api.client.post("/model", headers=api.admin, files=_form(metadata=unknown, train_image="x"))
    assert r.status_code == 422 and r.json()["field"] == "data_params.dataset_id"
    nul = _seed_model_metadata(dataset_id).replace("dd8fca81", "dd8f\\u0000")
    r = api.client.post("/model", headers=api.admin, files=_form(metadata=nul, train_image="x"))
    assert r.status_code == 422 and r.json()["field"] == "metadata.model params.developer_id", r.text
    r = api.client.post(
        "/model",
        headers=api.admin,
        files=_form(metadata=_seed_model_metadata(dataset_id), train_image="a\x00b"),
    )
    assert r.status_code == 422 and r.json()["field"] == "train_image", r.text
    assert api.client.get("/v1/models", headers=api.admin).json()["total"] == before
    assert api.client.get("/v1/jobs", headers=api.admin).json() == []

    bad = '{"samples_dimension": "x",}'
    for parts in (
        [("dataset", ("d", b"1")), *_form(metadata=bad)],
        [*_form(metadata=bad), ("dataset", ("d", b"1"))],
    ):
        r = api.client.post("/dataset", headers=api.admin, files=parts)
        assert r.status_code == 422 and r.json()["field"] == "metadata.organization_id", r.text
    assert api.client.get("/v1/datasets", headers=api.admin).json()["total"] == 1


def test_seed_routes_keep_fedge_roles(api: Api) -> None:
    dataset_id, _ = _seed_dataset(api)
    operator, developer = api.token("operator"), api.token("developer")
    r = api.client.post(
        "/dataset", headers=operator, files={"dataset": ("d", b"1")}, data={"metadata": SEED_DATASET_METADATA}
    )
    assert r.status_code == 403
    assert api.client.get(f"/dataset/{dataset_id}", headers=developer).content == digits_npz()
    assert api.client.get(f"/contract/{dataset_id}", headers=developer).status_code == 403  # admin only
    assert api.client.get(f"/contract/{dataset_id}").status_code == 401


def test_contract_addresses(api: Api) -> None:
    registry = api.state.chain.registry_address
    r = api.client.get(f"/contract/{registry}", headers=api.admin)
    assert r.status_code == 422 and "/contract/{dataset_id}" in r.json()["detail"]
    assert api.client.get("/contract/unknown-id", headers=api.admin).status_code == 404
    deployed = api.client.post(
        "/v1/contracts",
        headers=api.admin,
        json={
            "kind": "dataset",
            "args": {
                "dataset_id": "d" * 36,
                "organization_id": "org",
                "samples_dimension": "(1,8,8)",
                "size_bytes": 3,
                "sha256": "ab" * 32,
                "md5": "cd" * 16,
            },
        },
    )
    assert deployed.status_code == 201, deployed.text
    got = api.client.get(f"/contract/{deployed.json()['address']}", headers=api.admin).json()
    assert got == {
        "organization_id": "org",
        "samples_dimension": "(1,8,8)",
        "size_bytes": 3,
        "hash": "cd" * 16,
    }


def test_strict_json_drops_only_trailing_commas_outside_strings() -> None:
    assert json.loads(strict_json('{"a": [1, 2,], "b": {"c": ",}",},}')) == {"a": [1, 2], "b": {"c": ",}"}}
    assert strict_json('{"a": "x\\",}"}') == '{"a": "x\\",}"}'
    assert strict_json("[1,, ]") == "[1, ]"  # only the last comma goes: still invalid, the parser says so
