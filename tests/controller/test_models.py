"""Model registration (seed form and JSON), training-result upload, versions and downloads."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from sqlalchemy import func, select

from controller.db.models import Model, ModelVersion
from tests.conftest import Api


def _dataset(api: Api) -> str:
    r = api.push_dataset(b"digits")
    assert r.status_code == 201, r.text
    dataset_id: str = r.json()["dataset_id"]
    return dataset_id


def test_register_with_json_body(any_api: Api) -> None:
    r = any_api.register_model(_dataset(any_api), name="cnn")
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "registered"
    assert len(r.json()["training_digest"]) == 64


def test_register_with_the_seed_multipart_form(any_api: Api) -> None:
    dataset_id = _dataset(any_api)
    seed_metadata = {  # the seed's curl example spells the keys with a space
        "model params": {"developer_id": "dd8f", "organization_id": "5d06"},
        "data params": {"dataset_id": dataset_id},
    }
    image = "registry.example/demo_model_image@sha256:" + "ab" * 32
    r = any_api.client.post(
        "/v1/models",
        headers=any_api.admin,
        files=[
            ("metadata", (None, json.dumps(seed_metadata).encode())),
            ("train_image", (None, image.encode())),
        ],
    )
    assert r.status_code == 201, r.text
    assert r.json()["training_digest"] == "ab" * 32
    meta = any_api.client.get(f"/v1/models/{r.json()['model_id']}/metadata", headers=any_api.admin).json()
    assert meta["training"]["kind"] == "container"
    assert meta["training"]["image"] == image
    assert meta["model_params"] == {"developer_id": "dd8f", "organization_id": "5d06"}


def test_unknown_dataset_is_422_and_nothing_stored(any_api: Api) -> None:
    r = any_api.register_model("00000000-0000-4000-8000-000000000000")
    assert r.status_code == 422
    assert r.json()["field"] == "data_params.dataset_id"
    with any_api.state.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Model)) == 0


def test_invalid_training_spec_names_the_field(api: Api) -> None:
    r = api.register_model(_dataset(api), training={"kind": "container"})
    assert r.status_code == 422
    assert r.json()["field"].startswith("body.training")


def test_untrained_model_download_is_409_problem(any_api: Api) -> None:
    model_id = any_api.register_model(_dataset(any_api)).json()["model_id"]
    r = any_api.client.get(f"/v1/models/{model_id}", headers=any_api.admin)
    assert r.status_code == 409
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == f"model {model_id} has not been trained yet"


def test_job_credential_stores_result_and_model_becomes_trained(any_api: Api) -> None:
    model_id = any_api.register_model(_dataset(any_api)).json()["model_id"]
    job = any_api.token("job", model_id=model_id)
    weights = os.urandom(70_000)
    r = any_api.client.put(
        f"/v1/models/{model_id}/artifact?format=pytorch&filename=model.pt", headers=job, content=weights
    )
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 1
    assert r.json()["sha256"] == hashlib.sha256(weights).hexdigest()
    meta = any_api.client.get(f"/v1/models/{model_id}/metadata", headers=any_api.admin).json()
    assert meta["status"] == "trained"
    assert [v["version"] for v in meta["versions"]] == [1]
    download = any_api.client.get(f"/v1/models/{model_id}", headers=any_api.admin)
    assert download.status_code == 200
    assert download.content == weights
    assert download.headers["x-model-version"] == "1"


def test_versions_are_numbered_and_each_has_its_own_hash(any_api: Api) -> None:
    model_id = any_api.register_model(_dataset(any_api)).json()["model_id"]
    first = any_api.client.put(f"/v1/models/{model_id}/artifact", headers=any_api.admin, content=b"v1").json()
    onnx = any_api.client.put(
        f"/v1/models/{model_id}/artifact?kind=onnx&source_version=1", headers=any_api.admin, content=b"onnx"
    ).json()
    second = any_api.client.put(
        f"/v1/models/{model_id}/artifact", headers=any_api.admin, content=b"v3"
    ).json()
    assert (first["version"], onnx["version"], second["version"]) == (1, 2, 3)
    assert len({first["sha256"], onnx["sha256"], second["sha256"]}) == 3
    latest = any_api.client.get(f"/v1/models/{model_id}", headers=any_api.admin)
    assert latest.content == b"v3"
    assert any_api.client.get(f"/v1/models/{model_id}?version=1", headers=any_api.admin).content == b"v1"
    assert any_api.client.get(f"/v1/models/{model_id}?kind=onnx", headers=any_api.admin).content == b"onnx"


def test_multipart_artifact_upload(api: Api) -> None:
    model_id = api.register_model(_dataset(api)).json()["model_id"]
    r = api.client.put(
        f"/v1/models/{model_id}/artifact", headers=api.admin, files={"artifact": ("model.onnx", b"bytes")}
    )
    assert r.status_code == 201, r.text
    meta = api.client.get(f"/v1/models/{model_id}/metadata", headers=api.admin).json()
    assert meta["versions"][0]["filename"] == "model.onnx"


def test_job_credential_cannot_write_another_model(api: Api) -> None:
    dataset_id = _dataset(api)
    mine = api.register_model(dataset_id).json()["model_id"]
    other = api.register_model(dataset_id).json()["model_id"]
    job = api.token("job", model_id=mine)
    r = api.client.put(f"/v1/models/{other}/artifact", headers=job, content=b"x")
    assert r.status_code == 403
    with api.state.sessions() as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion)) == 0


def test_developer_cannot_store_artifacts(api: Api) -> None:
    model_id = api.register_model(_dataset(api)).json()["model_id"]
    r = api.client.put(f"/v1/models/{model_id}/artifact", headers=api.token("developer"), content=b"x")
    assert r.status_code == 403
    assert "needs one of: admin, job" in r.json()["detail"]


def test_empty_artifact_is_refused_and_leaves_nothing(api: Api) -> None:
    model_id = api.register_model(_dataset(api)).json()["model_id"]
    r = api.client.put(f"/v1/models/{model_id}/artifact", headers=api.admin, content=b"")
    assert r.status_code == 422
    with api.state.sessions() as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion)) == 0
    assert list(api.state.store.list(api.state.registry.buckets.models)) == []


def test_oversize_artifact_is_413_and_leaves_nothing(make_settings) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import _open

    for api in _open(make_settings(max_upload_bytes=5_000)):
        model_id = api.register_model(_dataset(api)).json()["model_id"]
        r = api.client.put(f"/v1/models/{model_id}/artifact", headers=api.admin, content=os.urandom(20_000))
        assert r.status_code == 413
        with api.state.sessions() as s:
            assert s.scalar(select(func.count()).select_from(ModelVersion)) == 0
        assert list(api.state.store.list(api.state.registry.buckets.models)) == []
        assert (
            api.client.get(f"/v1/models/{model_id}/metadata", headers=api.admin).json()["status"]
            == "registered"
        )


def test_unknown_model_is_404(api: Api) -> None:
    for method, path in (
        ("GET", "/v1/models/00000000-0000-4000-8000-000000000000"),
        ("GET", "/v1/models/nope/metadata"),
        ("PUT", "/v1/models/nope/artifact"),
    ):
        r = api.client.request(method, path, headers=api.admin, content=b"x")
        assert r.status_code == 404, (method, path, r.text)


def test_list_models_filters_by_dataset(api: Api) -> None:
    a, b = _dataset(api), _dataset(api)
    api.register_model(a)
    api.register_model(b)
    page = api.client.get(f"/v1/models?dataset_id={a}", headers=api.admin).json()
    assert page["total"] == 1
    assert page["items"][0]["data_params"]["dataset_id"] == a


def test_bad_metadata_sent_first_is_422_before_the_training_package_is_stored(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.controller.test_datasets import _counting_puts

    puts = _counting_puts(api, monkeypatch)
    r = api.client.post(
        "/v1/models",
        headers=api.admin,
        files=[
            ("metadata", (None, b"{not json")),
            ("training_package", ("t.tar.gz", os.urandom(300_000))),
        ],
    )
    assert r.status_code == 422
    assert r.json()["field"] == "metadata"
    assert puts == []
    assert list(api.state.store.list(api.state.registry.buckets.packages)) == []
    with api.state.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Model)) == 0
