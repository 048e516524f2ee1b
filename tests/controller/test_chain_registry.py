"""The registry on chain: records written with every registration, integrity on read, atomicity when
the chain fails, the seed's contract routes, and restart of the in-process EVM."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from minio import Minio
from sqlalchemy import func, select

from controller.chain.factory import make_chain_backend
from controller.client import FedgeClient
from controller.db.models import Dataset, Model
from tests.conftest import ADMIN_TOKEN, Api, SettingsFactory, _open
from tests.controller.test_persistence import _serve
from tests.fixtures.services import AnvilNode, free_port


def _dataset_and_model(api: Api, data: bytes = b"digits") -> tuple[str, str]:
    dataset_id = api.push_dataset(data).json()["dataset_id"]
    model_id = api.register_model(dataset_id).json()["model_id"]
    return dataset_id, model_id


def test_dataset_registration_writes_the_chain_record(any_api: Api) -> None:
    data = os.urandom(5000)
    dataset_id = any_api.push_dataset(data).json()["dataset_id"]
    record = any_api.state.chain.get_dataset(dataset_id)
    assert record.sha256 == hashlib.sha256(data).digest()
    assert record.md5 == hashlib.md5(data).digest()
    assert record.size_bytes == 5000
    assert record.organization_id == "org-1"
    prov = any_api.client.get(f"/v1/datasets/{dataset_id}/provenance", headers=any_api.admin).json()
    assert prov["verified"] is True
    assert prov["sha256_chain"] == prov["sha256_recomputed"] == hashlib.sha256(data).hexdigest()


def test_training_result_is_verified_once_and_res_hash_matches_download(any_api: Api) -> None:
    _, model_id = _dataset_and_model(any_api)
    weights = os.urandom(4096)
    any_api.client.put(f"/v1/models/{model_id}/artifact", headers=any_api.admin, content=weights)
    meta = any_api.client.get(f"/v1/models/{model_id}/metadata", headers=any_api.admin).json()
    downloaded = any_api.client.get(f"/v1/models/{model_id}", headers=any_api.admin).content
    assert meta["chain"]["verified"] is True
    assert meta["chain"]["res_hash"] == hashlib.sha256(downloaded).hexdigest()
    assert meta["chain"]["train_image_hash"] == meta["training_digest"]
    # a retrained result does not overwrite the verified hash: it becomes an artifact record
    any_api.client.put(f"/v1/models/{model_id}/artifact", headers=any_api.admin, content=b"retrained")
    assert any_api.state.chain.get_model(model_id).result_hash == hashlib.sha256(weights).digest()
    assert any_api.state.chain.get_artifact(model_id, 2).sha256 == hashlib.sha256(b"retrained").digest()
    prov = any_api.client.get(f"/v1/models/{model_id}/provenance", headers=any_api.admin).json()
    assert prov["verified"] is True
    assert [v["record"] for v in prov["versions"]] == ["model.verify", "artifact"]


def test_translation_version_is_linked_to_its_source(api: Api) -> None:
    _, model_id = _dataset_and_model(api)
    api.client.put(f"/v1/models/{model_id}/artifact", headers=api.admin, content=b"trained")
    r = api.client.put(
        f"/v1/models/{model_id}/artifact?kind=onnx&source_version=1", headers=api.admin, content=b"onnx"
    )
    assert r.status_code == 201, r.text
    art = api.state.chain.get_artifact(model_id, 2)
    assert art.kind == "onnx"
    assert art.source_version == 0  # 0 = the verified training result
    assert art.sha256 == hashlib.sha256(b"onnx").digest()


def _tamper_local(api: Api, bucket: str, key: str) -> None:
    path = api.settings.data_dir / "objects" / bucket / key
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")


def _tamper_s3(api: Api, bucket: str, key: str) -> None:
    store = api.state.store
    data = store.read_all(bucket, key)
    s3 = store.client  # type: ignore[attr-defined]
    assert isinstance(s3, Minio)
    s3.put_object(bucket, key, io.BytesIO(data + b"!"), len(data) + 1)


def test_tampered_dataset_is_refused_on_download(any_api: Api) -> None:
    dataset_id = any_api.push_dataset(os.urandom(3000)).json()["dataset_id"]
    meta = any_api.client.get(f"/v1/datasets/{dataset_id}/metadata", headers=any_api.admin).json()
    tamper = _tamper_s3 if any_api.settings.storage_backend == "s3" else _tamper_local
    tamper(any_api, meta["bucket"], meta["object_key"])
    r = any_api.client.get(f"/v1/datasets/{dataset_id}", headers=any_api.admin)
    assert r.status_code == 409
    assert r.json()["title"] == "Integrity check failed"
    assert r.json()["sha256_chain"] == meta["sha256"]
    prov = any_api.client.get(f"/v1/datasets/{dataset_id}/provenance", headers=any_api.admin).json()
    assert prov["verified"] is False
    assert prov["sha256_recomputed"] != prov["sha256_chain"]


def test_tampered_model_is_refused_on_download(any_api: Api) -> None:
    _, model_id = _dataset_and_model(any_api)
    any_api.client.put(f"/v1/models/{model_id}/artifact", headers=any_api.admin, content=os.urandom(2000))
    version = any_api.client.get(f"/v1/models/{model_id}/versions", headers=any_api.admin).json()[0]
    bucket = any_api.state.registry.buckets.models
    tamper = _tamper_s3 if any_api.settings.storage_backend == "s3" else _tamper_local
    tamper(any_api, bucket, version["object_key"])
    r = any_api.client.get(f"/v1/models/{model_id}", headers=any_api.admin)
    assert r.status_code == 409
    assert "differs from the chain record" in r.json()["detail"]
    assert (
        any_api.client.get(f"/v1/models/{model_id}/provenance", headers=any_api.admin).json()["verified"]
        is False
    )


def test_chain_outage_fails_registration_cleanly(make_settings: SettingsFactory, tmp_path: Path) -> None:
    port = free_port()
    anvil = subprocess.Popen(
        [str(AnvilNode.locate().binary), "--host", "127.0.0.1", "--port", str(port), "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        chain = _wait_chain(url, tmp_path)
        for api in _open(make_settings(), chain):
            dataset_id, model_id = _dataset_and_model(api)
            anvil.kill()
            anvil.wait(10)
            r = api.push_dataset(b"while the chain is down")
            assert r.status_code == 503
            assert r.json()["backend"] == "chain"
            assert "could not register the dataset on chain" in r.json()["detail"]
            r2 = api.register_model(dataset_id)
            assert r2.status_code == 503
            r3 = api.client.put(f"/v1/models/{model_id}/artifact", headers=api.admin, content=b"w")
            assert r3.status_code == 503
            with api.state.sessions() as s:
                assert s.scalar(select(func.count()).select_from(Dataset)) == 1
                assert s.scalar(select(func.count()).select_from(Model)) == 1
            assert len(list(api.state.store.list(api.state.registry.buckets.datasets))) == 1
            assert list(api.state.store.list(api.state.registry.buckets.models)) == []
            assert api.client.get("/readyz").status_code == 503
        chain.close()
    finally:
        anvil.kill()
        anvil.wait(10)


def _wait_chain(url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 30
    while True:
        try:
            return make_chain_backend("jsonrpc", tmp_path / "chain", rpc_url=url)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_seed_contract_routes_deploy_describe_verify(any_api: Api) -> None:
    h = any_api.admin
    ds = any_api.client.post(
        "/v1/contracts",
        headers=h,
        json={
            "kind": "dataset",
            "args": {
                "dataset_id": "b2a30898-b72c-4b08-802b-7786425d01f9",
                "organization_id": "5d066d58",
                "samples_dimension": "(1,32,32)",
                "size_bytes": 55426379,
                "sha256": "ab" * 32,
                "hash": "adbc812a1f0ab4c881a41fc872cb643e",
            },
        },
    )
    assert ds.status_code == 201, ds.text
    described = any_api.client.get(f"/v1/contracts/{ds.json()['address']}", headers=h).json()
    assert described["organization_id"] == "5d066d58"
    assert described["size_bytes"] == 55426379
    assert described["samples_dimension"] == "(1,32,32)"
    model = any_api.client.post(
        "/v1/contracts",
        headers=h,
        json={
            "kind": "model",
            "args": {
                "model_id": str(uuid.uuid4()),
                "organization_id": "5d066d58",
                "developer_id": "dd8fca81",
                "dataset_id": "b2a30898-b72c-4b08-802b-7786425d01f9",
                "train_image_hash": "cd" * 32,
            },
        },
    )
    address = model.json()["address"]
    first = any_api.client.post(f"/v1/contracts/{address}/verify", headers=h, json={"result_hash": "ef" * 32})
    assert first.status_code == 200, first.text
    assert [e["name"] for e in first.json()["events"]] == ["Verified"]
    second = any_api.client.post(
        f"/v1/contracts/{address}/verify", headers=h, json={"result_hash": "ef" * 32}
    )
    assert second.status_code == 409
    described = any_api.client.get(f"/v1/contracts/{address}", headers=h).json()
    assert described["model_params"]["res_hash"].removeprefix("0x") == "ef" * 32
    assert described["data_params"]["dataset_id"] == "b2a30898-b72c-4b08-802b-7786425d01f9"


def test_contract_routes_are_admin_only_and_404_for_unknown(api: Api) -> None:
    dev = api.token("developer")
    assert api.client.get(f"/v1/contracts/{api.state.chain.registry_address}", headers=dev).status_code == 403
    unknown = "0x" + "12" * 20
    assert api.client.get(f"/v1/contracts/{unknown}", headers=api.admin).status_code == 404


def test_chain_records_survive_a_controller_process_restart(tmp_path: Path) -> None:
    src = tmp_path / "d.npz"
    src.write_bytes(os.urandom(1000))
    port = free_port()
    proc = _serve(tmp_path / "data", port)
    try:
        with FedgeClient(f"http://127.0.0.1:{port}", ADMIN_TOKEN) as fc:
            created = fc.push_dataset(src, {"organization_id": "o", "samples_dimension": "(1)"})
            before = fc.dataset_provenance(created.dataset_id)
    finally:
        proc.kill()
        proc.wait(10)
    proc = _serve(tmp_path / "data", port)
    try:
        with FedgeClient(f"http://127.0.0.1:{port}", ADMIN_TOKEN) as fc:
            after = fc.dataset_provenance(created.dataset_id)
    finally:
        proc.terminate()
        proc.wait(10)
    assert before.verified and after.verified
    assert after.chain == before.chain
    assert after.sha256_chain == created.sha256


@pytest.mark.parametrize("route", ["/v1/datasets/x/provenance", "/v1/models/x/provenance"])
def test_provenance_of_unknown_ids_is_404(api: Api, route: str) -> None:
    assert api.client.get(route, headers=api.admin).status_code == 404


def test_a_verified_object_is_read_once_until_it_changes(
    any_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(5000)
    dataset_id = any_api.push_dataset(data).json()["dataset_id"]
    meta = any_api.client.get(f"/v1/datasets/{dataset_id}/metadata", headers=any_api.admin).json()
    store = any_api.state.store
    opened: list[str] = []
    real_open = store.open

    def counting_open(bucket: str, key: str, chunk_size: int = 1 << 20) -> Any:
        opened.append(key)
        return real_open(bucket, key, chunk_size)

    monkeypatch.setattr(store, "open", counting_open)

    def download() -> Any:
        opened.clear()
        return any_api.client.get(f"/v1/datasets/{dataset_id}", headers=any_api.admin)

    first = download()
    assert first.status_code == 200 and first.content == data
    assert len(opened) == 2  # the SHA-256 pass against the chain, then the stream
    second = download()
    assert second.status_code == 200 and second.content == data
    assert len(opened) == 1  # unchanged since it was verified: streamed (and hashed) once

    tamper = _tamper_s3 if any_api.settings.storage_backend == "s3" else _tamper_local
    tamper(any_api, meta["bucket"], meta["object_key"])
    third = download()
    assert third.status_code == 409
    assert third.json()["sha256_chain"] == meta["sha256"]
