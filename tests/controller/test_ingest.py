"""The MQTT ingest queue: device messages are applied off the network thread in batches (one committed
transaction per batch of telemetry), bounded with backpressure (a full queue blocks the submitter, it never
drops), and everything queued is written before ``stop`` returns."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, func, select

from controller.chain.base import ChainBackend
from controller.db.models import Device as DeviceRow
from controller.db.models import DeviceEvent, TelemetryRecord
from controller.fleet.ingest import IngestQueue, incoming
from controller.state import build_state
from edge_agent.identity import DeviceIdentity, enroll
from fedge_protocol import Leaf, OutboxMessage
from tests.conftest import LiveServer, SettingsFactory
from tests.e2e.helpers import enrollment_token


@pytest.fixture(params=["sqlite", "postgres"])
def live(
    request: pytest.FixtureRequest, make_settings: SettingsFactory, shared_evm: ChainBackend
) -> Iterator[LiveServer]:
    """A live controller on SQLite and on PostgreSQL: the bulk insert's ON CONFLICT, the row locks and
    the heartbeat writes are spelled per dialect."""
    overrides: dict[str, Any] = {}
    if request.param == "postgres":
        overrides["database_url"] = request.getfixturevalue("postgres_db_url")
    state = build_state(make_settings(**overrides), shared_evm)
    with LiveServer(state) as server:
        yield server
    state.close()


@pytest.fixture
def device(live: LiveServer, tmp_path: Path) -> DeviceIdentity:
    with httpx.Client(base_url=live.url, timeout=30) as http:
        return enroll(live.url, enrollment_token(http, {}), tmp_path / "d", facts={"cpu_count": 1})


def _queue(live: LiveServer, **kw: Any) -> IngestQueue:
    return IngestQueue(
        live.state.fleet,
        live.state.rollouts,
        live.state.commands,
        accept=lambda _d, _s: True,
        observers=[],
        **kw,
    )


def _telemetry(device_id: str, seq: int) -> Any:
    return incoming(device_id, OutboxMessage(kind=Leaf.TELEMETRY, seq=seq, body={"temp": seq}), None)


def _stored(live: LiveServer, device_id: str) -> int:
    with live.state.sessions() as s:
        return int(s.scalar(select(func.count()).where(TelemetryRecord.device_id == device_id)) or 0)


@pytest.fixture
def commits(live: LiveServer) -> Iterator[list[str]]:
    """Names of the threads that committed a transaction."""
    seen: list[str] = []

    def record(_conn: Any) -> None:
        seen.append(threading.current_thread().name)

    event.listen(live.state.engine, "commit", record)
    yield seen
    event.remove(live.state.engine, "commit", record)


def test_queued_messages_are_written_in_one_batch_and_drained_on_stop(
    live: LiveServer, device: DeviceIdentity, commits: list[str]
) -> None:
    q = _queue(live, batch=500)
    for seq in range(1, 201):
        q.submit(_telemetry(device.device_id, seq))
    assert _stored(live, device.device_id) == 0  # nothing written on the submitting thread
    q.start()
    q.stop()
    assert _stored(live, device.device_id) == 200
    assert q.applied == 200
    assert commits.count("fedge-ingest") <= 2  # one transaction for the batch (plus the prune on stop)
    with live.state.sessions() as s:
        assert s.get(DeviceRow, device.device_id).last_seen_at is not None  # type: ignore[union-attr]


def test_a_full_queue_blocks_the_submitter_and_loses_nothing(
    live: LiveServer, device: DeviceIdentity
) -> None:
    q = _queue(live, capacity=2, batch=1)
    q.submit(_telemetry(device.device_id, 1))
    q.submit(_telemetry(device.device_id, 2))
    third = threading.Thread(target=q.submit, args=(_telemetry(device.device_id, 3),))
    third.start()
    third.join(0.3)
    assert third.is_alive()  # backpressure: blocked, not dropped
    q.start()
    third.join(10)
    assert not third.is_alive()
    q.stop()
    assert _stored(live, device.device_id) == 3


def test_redelivered_and_revoked_messages_are_not_stored_twice(
    live: LiveServer, device: DeviceIdentity
) -> None:
    q = _queue(live)
    q.start()
    for seq in (1, 2, 2, 1):  # a redelivery in the same batch and across batches
        q.submit(_telemetry(device.device_id, seq))
    q.stop()
    q = _queue(live)
    q.start()
    q.submit(_telemetry(device.device_id, 1))
    live.state.fleet.revoke(device.device_id)
    q.submit(_telemetry(device.device_id, 3))
    deadline = time.monotonic() + 10
    while q.applied < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    q.stop()
    assert _stored(live, device.device_id) == 2


def test_status_reports_go_through_the_rollout_in_one_transaction(
    live: LiveServer, device: DeviceIdentity, commits: list[str]
) -> None:
    q = _queue(live)
    for seq in range(1, 51):
        report = {"state": "applying", "seq": seq}
        q.submit(incoming(device.device_id, OutboxMessage(kind=Leaf.STATE, seq=seq, body=report), report))
    q.start()
    q.stop()
    with live.state.sessions() as s:
        row = s.get(DeviceRow, device.device_id)
        assert row is not None and (row.reported or {}).get("seq") == 50
    assert commits.count("fedge-ingest") == 1


def test_a_redelivered_event_is_stored_and_acted_on_once(live: LiveServer, device: DeviceIdentity) -> None:
    """Records that act when first stored (a drift event) take the checked path beside the bulk insert of
    plain telemetry: a redelivery in the same batch or a later one neither stores nor acts again."""
    acted: list[int] = []
    commands = live.state.commands
    saved, commands.on_event = commands.on_event, lambda _d, seq, _body: acted.append(seq)
    drift = {"type": "monitor.drift", "detector": "adwin", "window": 3, "at": "2026-12-02T16:00:00Z"}

    def event(seq: int) -> Any:
        return incoming(device.device_id, OutboxMessage(kind=Leaf.TELEMETRY, seq=seq, body=drift), None)

    try:
        for batch in ([event(1), _telemetry(device.device_id, 2), event(1)], [event(1), event(3)]):
            q = _queue(live)
            for item in batch:
                q.submit(item)
            q.start()
            q.stop()
    finally:
        commands.on_event = saved
    assert acted == [1, 3]
    assert _stored(live, device.device_id) == 3
    with live.state.sessions() as s:
        events = s.scalar(select(func.count()).where(DeviceEvent.device_id == device.device_id))
    assert events == 2


def test_heartbeats_are_written_at_most_once_per_interval(live: LiveServer, device: DeviceIdentity) -> None:
    fleet = live.state.fleet
    saved, fleet.last_seen_write_seconds = fleet.last_seen_write_seconds, 3600.0
    writes: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE DEVICES"):
            writes.append(statement)

    event.listen(live.state.engine, "before_cursor_execute", record)
    try:
        q = _queue(live, linger=0.0)
        q.start()
        for seq in range(1, 4):
            q.submit(_telemetry(device.device_id, seq))
            deadline = time.monotonic() + 10
            while q.applied < seq and time.monotonic() < deadline:
                time.sleep(0.01)
        q.stop()
    finally:
        event.remove(live.state.engine, "before_cursor_execute", record)
        fleet.last_seen_write_seconds = saved
    assert _stored(live, device.device_id) == 3
    assert len(writes) == 1  # three batches, one heartbeat


def test_a_batch_whose_write_fails_is_tried_again_then_message_by_message(
    live: LiveServer, device: DeviceIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails (a deadlock, the database away for a moment) loses nothing it can write: the
    batch is tried again, then each message alone, so only a message that fails by itself is lost."""
    q = _queue(live)
    monkeypatch.setattr(q, "RETRY_PAUSE_S", 0.0)
    real = q._telemetry
    calls: list[int] = []

    def flaky(items: list[Any]) -> None:
        calls.append(len(items))
        if len(items) > 1 or items[0].message.seq == 3:  # every batch fails, and message 3 on its own
            raise RuntimeError("deadlock detected")
        real(items)

    monkeypatch.setattr(q, "_telemetry", flaky)
    q.apply([_telemetry(device.device_id, seq) for seq in range(1, 6)])
    assert calls == [5, 5, 1, 1, 1, 1, 1]  # the batch twice, then one by one
    assert _stored(live, device.device_id) == 4
    assert q.applied == 5
