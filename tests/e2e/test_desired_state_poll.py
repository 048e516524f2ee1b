"""The desired-state poll made cheap: a 304 signs nothing and reads the device row once, a signed document
is reused until the device's desired state changes, and ``last_seen_at`` is written at most once per
interval (the device still shows online)."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, update

from controller.db.models import Device as DeviceRow
from controller.db.models import utcnow
from controller.fleet.desired import DesiredDocument, DesiredDocuments
from controller.state import ControllerState
from edge_agent.link.signed import verify_desired_state
from tests.conftest import LiveServer
from tests.e2e.helpers import ADMIN, Device, add_model, deploy, enrolled_device, upload_onnx

Live = tuple[LiveServer, ControllerState]
BACKGROUND = "fedge-"  # the controller's own threads (MQTT publisher, job workers): not a request


def _path(dev: Device) -> str:
    return f"/v1/devices/{dev.id}/desired-state"


def _auth(dev: Device) -> dict[str, str]:
    return {"Authorization": f"Bearer {dev.identity.sign_jwt(300)}"}


@pytest.fixture
def signatures(controller: Live, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Device ids of the desired-state documents the CA signs while answering requests (the MQTT
    publisher's own signatures are left out: they run on their own thread, whenever it gets to them)."""
    ca = controller[1].fleet.ca
    real = ca.sign_document
    signed: list[str] = []

    def counting(payload: dict[str, Any], *args: Any, **kw: Any) -> dict[str, str]:
        if not threading.current_thread().name.startswith(BACKGROUND):
            signed.append(str(payload.get("device_id")))
        return real(payload, *args, **kw)

    monkeypatch.setattr(ca, "sign_document", counting)
    return signed


@pytest.fixture
def statements(controller: Live) -> Iterator[list[tuple[str, int]]]:
    """(SQL statement lower-cased, rows it changed) run while answering requests (background threads
    left out)."""
    engine = controller[1].engine
    seen: list[tuple[str, int]] = []

    def record(_conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if not threading.current_thread().name.startswith(BACKGROUND):
            seen.append((" ".join(statement.lower().split()), cursor.rowcount))

    event.listen(engine, "after_cursor_execute", record)
    yield seen
    event.remove(engine, "after_cursor_execute", record)


def _writes(statements: list[tuple[str, int]]) -> list[str]:
    """The statements that changed a device row."""
    return [q for q, rows in statements if q.startswith("update devices") and rows > 0]


@pytest.fixture
def deployed(controller: Live, http: httpx.Client, tmp_path: Path) -> tuple[Device, str, int]:
    """A device with model v1 deployed and applied; (device, model id, version)."""
    dev = enrolled_device(controller[0].url, http, tmp_path / "agent")
    model_id, version = upload_onnx(http, add_model(1.0))
    deploy(http, model_id, version, [dev.id])
    outcome = dev.agent.step()
    assert outcome is not None and outcome.state == "succeeded"
    return dev, model_id, version


def test_a_304_poll_signs_nothing_and_repeated_200s_reuse_one_signature(
    http: httpx.Client,
    deployed: tuple[Device, str, int],
    signatures: list[str],
    statements: list[tuple[str, int]],
) -> None:
    dev, _, _ = deployed
    first = http.get(_path(dev), headers=_auth(dev))
    assert first.status_code == 200, first.text
    etag = first.headers["etag"]
    signatures.clear()
    statements.clear()

    for _ in range(5):
        r = http.get(_path(dev), headers={**_auth(dev), "If-None-Match": etag})
        assert r.status_code == 304
        assert r.headers["etag"] == etag
    again = http.get(_path(dev), headers=_auth(dev))

    assert signatures == []  # neither the 304s nor the second 200 signed anything
    assert again.status_code == 200 and again.headers["etag"] == etag
    assert again.json() == first.json()  # the same signature (ECDSA signatures are randomised)
    device_reads = [q for q, _ in statements if q.startswith("select") and "from devices" in q]
    assert len(device_reads) == 6  # one per request: its authentication's (the handler reuses it)
    assert not [q for q, _ in statements if "model" in q]  # no model or version lookup on a warm poll
    assert not [q for q, _ in statements if q.startswith("update")]  # seen just now: not even a statement


def test_a_cold_304_builds_the_document_but_does_not_sign_it(
    controller: Live, http: httpx.Client, deployed: tuple[Device, str, int], signatures: list[str]
) -> None:
    dev, _, _ = deployed
    etag = http.get(_path(dev), headers=_auth(dev)).headers["etag"]
    controller[1].fleet.documents.forget(dev.id)  # as after a controller restart
    signatures.clear()

    r = http.get(_path(dev), headers={**_auth(dev), "If-None-Match": etag})

    assert r.status_code == 304 and r.headers["etag"] == etag
    assert signatures == []


def test_a_new_deployment_changes_the_etag_and_the_device_gets_the_new_document(
    controller: Live, http: httpx.Client, deployed: tuple[Device, str, int], signatures: list[str]
) -> None:
    dev, model_id, v1 = deployed
    old = http.get(_path(dev), headers=_auth(dev))
    old_etag = old.headers["etag"]
    assert dev.link.etag == old_etag
    assert dev.link.poll().status == 304
    _, v2 = upload_onnx(http, add_model(2.0), model_id)
    signatures.clear()

    deploy(http, model_id, v2, [dev.id])
    r = http.get(_path(dev), headers={**_auth(dev), "If-None-Match": old_etag})

    assert r.status_code == 200, r.text
    assert r.headers["etag"] != old_etag
    doc = verify_desired_state(r.json(), dev.identity.ca_certificate, dev.id)
    before = verify_desired_state(old.json(), dev.identity.ca_certificate, dev.id)
    assert doc["model"]["version"] == v2 != v1
    assert doc["revision"] > before["revision"]
    assert len(signatures) <= 1  # signed once for the new revision (or by the MQTT push already)
    outcome = dev.agent.step()  # the agent's own poll: its old ETag no longer matches
    assert outcome is not None and outcome.state == "succeeded"
    assert dev.agent.runtime.infer({"x": [[0, 0, 0, 0]]}) == {"y": [[2.0, 2.0, 2.0, 2.0]]}
    assert dev.link.etag == r.headers["etag"]
    assert dev.agent.step() is None  # and then 304 again


def _last_seen(state: ControllerState, device_id: str) -> dt.datetime | None:
    with state.sessions() as s:
        row = s.get(DeviceRow, device_id)
        assert row is not None
        return row.last_seen_at


def _online(http: httpx.Client, device_id: str) -> bool:
    rows = {d["id"]: d for d in http.get("/v1/devices", headers=ADMIN).json()}
    return bool(rows[device_id]["online"])


def test_last_seen_is_written_at_most_once_per_interval_and_the_device_stays_online(
    controller: Live,
    http: httpx.Client,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    statements: list[tuple[str, int]],
) -> None:
    state = controller[1]
    monkeypatch.setattr(state.fleet, "last_seen_write_seconds", 3600.0)  # no second write during the test
    dev = enrolled_device(controller[0].url, http, tmp_path / "agent")
    long_ago = utcnow() - dt.timedelta(hours=2)
    with state.sessions.begin() as s:  # as if the device had been away for two hours
        s.execute(update(DeviceRow).where(DeviceRow.id == dev.id).values(last_seen_at=long_ago))
    assert not _online(http, dev.id)
    statements.clear()

    for _ in range(5):
        dev.link.poll()
    written = _last_seen(state, dev.id)
    for _ in range(5):
        dev.link.poll()

    assert len(_writes(statements)) == 1  # ten polls, one write
    assert written is not None and written > long_ago + dt.timedelta(hours=1)
    assert _last_seen(state, dev.id) == written
    assert _online(http, dev.id)

    dev.link.report({"state": "succeeded"})  # a status report still writes it, interval or not
    reported = _last_seen(state, dev.id)
    assert reported is not None and reported > written


def test_telemetry_heartbeats_are_throttled_too(
    controller: Live, http: httpx.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = controller[1]
    monkeypatch.setattr(state.fleet, "last_seen_write_seconds", 3600.0)
    dev = enrolled_device(controller[0].url, http, tmp_path / "agent")
    enrolled_at = _last_seen(state, dev.id)

    dev.link.send_telemetry(1, {"type": "probe"})
    assert _last_seen(state, dev.id) == enrolled_at  # enrolled just now: within the interval

    monkeypatch.setattr(state.fleet, "last_seen_write_seconds", 0.0)
    dev.link.send_telemetry(2, {"type": "probe"})
    later = _last_seen(state, dev.id)
    assert later is not None and enrolled_at is not None and later > enrolled_at


def test_the_document_cache_is_bounded_and_keyed_by_what_the_row_says() -> None:
    docs = DesiredDocuments(size=2)
    for n in range(3):
        docs.put(f"d{n}", DesiredDocument((1, b"null"), {"revision": 1}, f'"{n}"'))

    assert len(docs) == 2
    assert docs.get("d0", (1, b"null")) is None  # least recently used: dropped
    assert docs.get("d2", (1, b"null")) is not None
    assert docs.get("d2", (2, b"null")) is None  # the row moved on: never the old document
    assert docs.get("d2", (1, b'{"model_id":"m"}')) is None
