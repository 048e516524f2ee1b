"""Dataset registration, listing and download, on SQLite+local and PostgreSQL+S3."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from controller.client import FedgeClient
from controller.db.models import Dataset
from tests.conftest import Api

META = {"organization_id": "org-1", "samples_dimension": "(1,8,8)", "name": "digits", "license": "bsd"}


def _rows(api: Api) -> int:
    with api.state.sessions() as s:
        return s.scalar(select(func.count()).select_from(Dataset)) or 0


def _objects(api: Api) -> list[str]:
    return [o.key for o in api.state.store.list(api.state.registry.buckets.datasets)]


def test_register_returns_id_and_streamed_hashes(any_api: Api) -> None:
    data = os.urandom(200_000)
    r = any_api.push_dataset(data, META)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["md5"] == hashlib.md5(data).hexdigest()
    assert body["size_bytes"] == len(data)


def test_download_returns_same_bytes_with_integrity_headers(any_api: Api) -> None:
    data = os.urandom(150_000)
    dataset_id = any_api.push_dataset(data, META).json()["dataset_id"]
    r = any_api.client.get(f"/v1/datasets/{dataset_id}", headers=any_api.admin)
    assert r.status_code == 200
    assert r.content == data
    sha = hashlib.sha256(data)
    assert r.headers["etag"] == f'"{sha.hexdigest()}"'
    assert r.headers["digest"] == "sha-256=" + base64.b64encode(sha.digest()).decode()
    assert r.headers["content-disposition"].startswith('attachment; filename="d.npz"')


def test_conditional_get_returns_304(any_api: Api) -> None:
    dataset_id = any_api.push_dataset(b"abc").json()["dataset_id"]
    etag = any_api.client.get(f"/v1/datasets/{dataset_id}", headers=any_api.admin).headers["etag"]
    r = any_api.client.get(f"/v1/datasets/{dataset_id}", headers={**any_api.admin, "If-None-Match": etag})
    assert r.status_code == 304
    assert r.content == b""


def test_metadata_keeps_original_name_type_and_extra_fields(any_api: Api) -> None:
    dataset_id = any_api.push_dataset(b"abc", META, filename="mnist-original.mat").json()["dataset_id"]
    meta = any_api.client.get(f"/v1/datasets/{dataset_id}/metadata", headers=any_api.admin).json()
    assert meta["filename"] == "mnist-original.mat"
    assert meta["organization_id"] == "org-1"
    assert meta["samples_dimension"] == "(1,8,8)"
    assert meta["extra"] == {"license": "bsd"}
    assert meta["object_key"] != meta["filename"]
    assert meta["bucket"].endswith("datasets")


def test_list_is_paginated(any_api: Api) -> None:
    ids = [any_api.push_dataset(bytes([i]) * 10).json()["dataset_id"] for i in range(3)]
    first = any_api.client.get("/v1/datasets?limit=2", headers=any_api.admin).json()
    second = any_api.client.get("/v1/datasets?limit=2&offset=2", headers=any_api.admin).json()
    assert first["total"] == 3 and len(first["items"]) == 2 and len(second["items"]) == 1
    listed = {d["dataset_id"] for d in first["items"] + second["items"]}
    assert listed == set(ids)


def test_oversize_upload_is_413_and_stores_nothing(make_settings) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import _open

    for api in _open(make_settings(max_upload_bytes=10_000)):
        r = api.push_dataset(os.urandom(50_000))
        assert r.status_code == 413
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["limit"] == 10_000
        assert _rows(api) == 0
        assert _objects(api) == []


def test_oversize_without_content_length_is_caught_while_streaming(make_settings) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import _open

    boundary = "XyZ"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n'
        f"{json.dumps(META)}\r\n--{boundary}\r\n"
        'Content-Disposition: form-data; name="dataset"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body():  # type: ignore[no-untyped-def]
        yield head
        for _ in range(40):
            yield os.urandom(64 * 1024)
        yield tail

    for api in _open(make_settings(max_upload_bytes=1_000_000)):
        r = api.client.post(
            "/v1/datasets",
            headers={**api.admin, "Content-Type": f"multipart/form-data; boundary={boundary}"},
            content=body(),
        )
        assert r.status_code == 413
        assert _rows(api) == 0
        assert _objects(api) == []


def test_malformed_metadata_json_is_422_naming_the_field(any_api: Api) -> None:
    r = any_api.client.post(
        "/v1/datasets",
        headers=any_api.admin,
        files={"dataset": ("d.bin", b"abc")},
        data={"metadata": "{not json"},
    )
    assert r.status_code == 422
    assert r.json()["field"] == "metadata"
    assert _rows(any_api) == 0 and _objects(any_api) == []


def test_missing_required_metadata_field_is_422_naming_it(any_api: Api) -> None:
    r = any_api.push_dataset(b"abc", {"organization_id": "org-1"})
    assert r.status_code == 422
    assert r.json()["field"] == "metadata.samples_dimension"
    assert _rows(any_api) == 0 and _objects(any_api) == []


def test_missing_file_part_is_422(any_api: Api) -> None:
    r = any_api.client.post(
        "/v1/datasets",
        headers=any_api.admin,
        files={"other": ("x", b"1")},
        data={"metadata": json.dumps(META)},
    )
    assert r.status_code == 422
    assert _rows(any_api) == 0 and _objects(any_api) == []


def test_path_traversal_filename_is_only_metadata(api: Api) -> None:
    r = api.push_dataset(b"payload", filename="../../../etc/passwd")
    assert r.status_code == 201
    meta = api.client.get(f"/v1/datasets/{r.json()['dataset_id']}/metadata", headers=api.admin).json()
    assert meta["filename"] == "passwd"
    stored = api.settings.data_dir / "objects" / "datasets" / meta["object_key"]
    assert stored.read_bytes() == b"payload"
    assert not (api.settings.data_dir / "etc").exists()


def test_unknown_dataset_is_404_problem(any_api: Api) -> None:
    for path in ("/v1/datasets/00000000-0000-4000-8000-000000000000", "/v1/datasets/nope/metadata"):
        r = any_api.client.get(path, headers=any_api.admin)
        assert r.status_code == 404
        assert r.headers["content-type"] == "application/problem+json"
        assert "not found" in r.json()["detail"]


def test_wrong_content_type_is_415(api: Api) -> None:
    r = api.client.post("/v1/datasets", headers=api.admin, json={"x": 1})
    assert r.status_code == 415
    assert _rows(api) == 0


def _counting_puts(api: Api, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The buckets of every ``store.put`` the controller makes from now on."""
    store = api.state.store
    buckets: list[str] = []
    real_put = store.put

    def counting_put(
        bucket: str, key: str, source: Any, content_type: str = "application/octet-stream"
    ) -> int:
        buckets.append(bucket)
        return real_put(bucket, key, source, content_type)

    monkeypatch.setattr(store, "put", counting_put)
    return buckets


def test_bad_metadata_sent_first_is_422_before_the_file_is_stored(
    any_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    puts = _counting_puts(any_api, monkeypatch)
    boundary = "MetaFirst"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n'
        f"{json.dumps({'organization_id': 'org-1'})}\r\n--{boundary}\r\n"
        'Content-Disposition: form-data; name="dataset"; filename="d.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()

    def body():  # type: ignore[no-untyped-def]
        yield head
        for _ in range(16):
            yield os.urandom(64 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    r = any_api.client.post(
        "/v1/datasets",
        headers={**any_api.admin, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=body(),
    )
    assert r.status_code == 422
    assert r.json()["field"] == "metadata.samples_dimension"
    assert puts == []  # not one byte of the file went to the store
    assert _rows(any_api) == 0 and _objects(any_api) == []


def test_sdk_sends_the_metadata_before_the_file(tmp_path: Path) -> None:
    bodies: list[bytes] = []

    def controller(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        return httpx.Response(
            201, json={"dataset_id": "d", "sha256": "0" * 64, "md5": "0" * 32, "size_bytes": 3}
        )

    src = tmp_path / "d.npz"
    src.write_bytes(b"abc")
    with FedgeClient("http://controller", "t", transport=httpx.MockTransport(controller)) as fc:
        fc.push_dataset(src, META)
    assert bodies[0].index(b'name="metadata"') < bodies[0].index(b'name="dataset"')
