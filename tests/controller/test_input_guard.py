"""Text no backend can store (NUL, other C0 controls, lone surrogates) and JSON bodies that are not UTF-8 are
refused at the boundary with a precise problem, on SQLite and on PostgreSQL, and leave nothing behind."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from controller.api.input_guard import forbidden_text
from controller.db.models import Dataset, Model
from tests.conftest import Api

META = {"organization_id": "org-1", "samples_dimension": "(1,8,8)"}


def _count(api: Api, table: type) -> int:
    with api.state.sessions() as s:
        return s.scalar(select(func.count()).select_from(table)) or 0


def _problem(resp, status: int, field: str) -> None:  # type: ignore[no-untyped-def]
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == status and body["field"] == field, body


def test_forbidden_text_finds_the_first_bad_string_or_key() -> None:
    assert forbidden_text({"a": ["ok", "tab\tnew\nline\r"]}, "body") is None
    assert forbidden_text({"a": ["ok", "x\x00y"]}, "body") == ("body.a.1", "a NUL character")
    assert forbidden_text({"k\x01": 1}, "m") == ("m.k\x01", "the control character U+0001 in a key")
    assert forbidden_text("\ud800", "f") == ("f", "a lone UTF-16 surrogate")
    assert forbidden_text({"n": 1, "b": True, "z": None}, "") is None


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"model_params": {"developer_id": "dev\\u0000-1"}}', "body.model_params.developer_id"),
        ('{"model_params": {"developer_id": "dev\\ud800"}}', "body.model_params.developer_id"),
        ('{"model_params": {"x\\u001b": 1}}', "body.model_params.x\x1b"),
    ],
)
def test_json_body_with_unstorable_text_is_422_and_nothing_written(
    any_api: Api, raw: str, field: str
) -> None:
    resp = any_api.client.post(
        "/v1/models", headers={**any_api.admin, "content-type": "application/json"}, content=raw.encode()
    )
    _problem(resp, 422, field)
    assert _count(any_api, Model) == 0


def test_json_body_that_is_not_utf8_is_a_400_naming_the_byte(api: Api) -> None:
    resp = api.client.post(
        "/v1/models", headers={**api.admin, "content-type": "application/json"}, content=b'{"a": "\xe9"}'
    )
    _problem(resp, 400, "body")
    assert "0xe9" in resp.json()["detail"]


def test_nul_in_multipart_metadata_is_422_and_stores_nothing(any_api: Api) -> None:
    resp = any_api.push_dataset(b"abc", {**META, "organization_id": "org\x00-1"})
    _problem(resp, 422, "metadata.organization_id")
    assert _count(any_api, Dataset) == 0
    assert list(any_api.state.store.list(any_api.state.registry.buckets.datasets)) == []


def test_control_characters_in_path_and_query_are_422(any_api: Api) -> None:
    _problem(any_api.client.get("/v1/models/abc%00def", headers=any_api.admin), 422, "path")
    _problem(
        any_api.client.get("/v1/models?dataset_id=a%00b", headers=any_api.admin), 422, "query.dataset_id"
    )
    _problem(any_api.client.get("/v1/datasets/%1b", headers=any_api.admin), 422, "path")


def test_clean_input_with_tabs_and_newlines_still_works(any_api: Api) -> None:
    resp = any_api.push_dataset(b"abc", {**META, "description": "line one\nline\ttwo"})
    assert resp.status_code == 201, resp.text
    dataset_id = resp.json()["dataset_id"]
    meta = any_api.client.get(f"/v1/datasets/{dataset_id}/metadata", headers=any_api.admin).json()
    assert json.dumps(meta).count("line one") == 1


def test_nul_in_a_plain_form_field_is_422_and_registers_nothing(any_api: Api) -> None:
    dataset_id = any_api.push_dataset(b"abc", META).json()["dataset_id"]
    meta = {
        "model_params": {"developer_id": "d", "organization_id": "o"},
        "data_params": {"dataset_id": dataset_id},
    }
    resp = any_api.client.post(
        "/v1/models",
        headers=any_api.admin,
        files=[("metadata", (None, json.dumps(meta).encode())), ("train_image", (None, b"img\x00:1"))],
    )
    _problem(resp, 422, "train_image")
    assert _count(any_api, Model) == 0
