"""The desired-state poll made cheap: ``last_seen_at`` is written at most once per interval (the device
still shows online)."""

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
from controller.state import ControllerState
from tests.conftest import LiveServer
from tests.fleet.helpers import ADMIN, enrolled_device

Live = tuple[LiveServer, ControllerState]
BACKGROUND = "fedge-"  # the controller's own threads (MQTT publisher, job workers): not a request


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
