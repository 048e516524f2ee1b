"""A version number already on chain without a row (an upload whose SQL commit failed after its chain
record: chain records are written once) no longer blocks the model: the next upload takes the next number
and is recorded there; the failed upload itself answers 503 and leaves no row and no object. A database
outage is a 503 problem with Retry-After, never a 500."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from controller.db.models import ModelVersion
from controller.registry.catalog import READY
from tests.conftest import Api


def _model(api: Api) -> str:
    dataset_id = api.push_dataset().json()["dataset_id"]
    return str(api.register_model(dataset_id).json()["model_id"])


def _put(api: Api, model_id: str, body: bytes) -> Any:
    return api.client.put(f"/v1/models/{model_id}/artifact", headers=api.admin, content=body)


def _rows(api: Api, model_id: str) -> list[tuple[int, str]]:
    with api.state.sessions() as s:
        rows = s.execute(
            select(ModelVersion.version, ModelVersion.status)
            .where(ModelVersion.model_id == model_id)
            .order_by(ModelVersion.version)
        )
        return [(v, st) for v, st in rows]


def _objects(api: Api) -> int:
    bucket = api.state.registry.buckets.models
    return sum(1 for _ in api.state.store.list(bucket))


def test_a_number_spent_on_chain_is_skipped(any_api: Api) -> None:
    model_id = _model(any_api)
    assert _put(any_api, model_id, b"first").json()["version"] == 1
    # what a failed upload leaves: version 2 recorded on chain, no row for it
    orphan = hashlib.sha256(b"lost").digest()
    any_api.state.chain.record_artifact(model_id, 2, "trained", orphan)

    second = _put(any_api, model_id, b"second")
    assert second.status_code == 201, second.text
    assert second.json()["version"] == 3
    assert _put(any_api, model_id, b"third").json()["version"] == 4
    assert _rows(any_api, model_id) == [(1, READY), (3, READY), (4, READY)]

    # every stored version matches its own chain record; the spent number keeps the orphan's hash
    prov = any_api.client.get(f"/v1/models/{model_id}/provenance", headers=any_api.admin).json()
    assert prov["verified"] is True
    assert [v["subject"].split()[2] for v in prov["versions"]] == ["v1", "v3", "v4"]
    assert all(v["sha256_chain"] == v["sha256_recomputed"] for v in prov["versions"])
    assert any_api.state.chain.get_artifact(model_id, 2).sha256 == orphan
    assert any_api.state.chain.get_artifact(model_id, 3).sha256 == hashlib.sha256(b"second").digest()
    got = any_api.client.get(f"/v1/models/{model_id}?version=3", headers=any_api.admin)
    assert got.content == b"second"


def test_commit_failure_after_the_chain_record_is_503_then_the_next_upload_succeeds(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_id = _model(api)
    assert _put(api, model_id, b"first").json()["version"] == 1
    objects = _objects(api)
    failures: list[int] = []

    def fail_once(session: Session) -> None:
        ready = [o for o in session.dirty if isinstance(o, ModelVersion) and o.status == READY]
        if ready and not failures:
            failures.append(ready[0].version)
            raise OperationalError("COMMIT", None, Exception("server closed the connection unexpectedly"))

    sessions = api.state.registry.intake.sessions
    event.listen(sessions, "before_commit", fail_once)
    try:
        lost = _put(api, model_id, b"second")
    finally:
        event.remove(sessions, "before_commit", fail_once)
    assert lost.status_code == 503, lost.text
    assert lost.headers["content-type"].startswith("application/problem+json")
    assert lost.headers["retry-after"] == "5"
    assert lost.json()["backend"] == "database"
    assert failures == [2]
    # nothing of the failed upload stays in SQL or the store; its chain record does (written once)
    assert _rows(api, model_id) == [(1, READY)]
    assert _objects(api) == objects
    assert api.state.chain.get_artifact(model_id, 2).sha256 == hashlib.sha256(b"second").digest()

    retry = _put(api, model_id, b"second")
    assert retry.status_code == 201, retry.text
    assert retry.json()["version"] == 3
    with api.state.sessions() as s:
        ready = s.scalar(
            select(func.count()).where(ModelVersion.model_id == model_id, ModelVersion.status == READY)
        )
    assert ready == 2
