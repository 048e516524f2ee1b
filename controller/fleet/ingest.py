"""The device-message ingest queue: MQTT ``state`` and ``telemetry`` messages are parsed on the broker
client's network thread and handed here; one worker thread writes them in bulk, one transaction per batch
for telemetry (a committed write per batch instead of three per message) and one for the status reports of
a batch. The network thread never touches the database. Telemetry goes in as one multi-row ``INSERT ... ON
CONFLICT DO NOTHING`` per batch (no ORM objects, no read first) except the few records that act once
(device events, command acknowledgements); ``last_seen_at`` is written at most once per
``fleet.last_seen_write_seconds`` per device.

Semantics (QoS 1): paho acknowledges a message (PUBACK) when the ``on_message`` callback returns, i.e. once
the message is *in this queue*, not yet in the database. The queue is bounded: when it is full,
:meth:`IngestQueue.submit` blocks the network thread (backpressure: the client stops reading, the broker
keeps the unacknowledged messages and TCP flow control slows the senders), so nothing is dropped. On
:meth:`IngestQueue.stop` the queue is drained before the worker ends. A controller process killed hard
(SIGKILL, power) loses what was acknowledged but not yet written: at most ``capacity`` messages, in
practice one batch; the agent's outbox ``seq`` deduplicates redeliveries either way.

Pruning of old telemetry runs on a schedule (every ``prune_seconds``, for the devices that sent telemetry
since), never per message.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select, tuple_, update
from sqlalchemy.orm import Session

from controller.db.models import Device, TelemetryRecord, new_id, utcnow
from controller.fleet.device_events import device_event, is_event
from fedge_protocol import Leaf, OutboxMessage, TelemetryType

if TYPE_CHECKING:
    from controller.fleet.commands import Commands
    from controller.fleet.deployments import Rollouts
    from controller.fleet.devices import Fleet

log = logging.getLogger("fedge.fleet.ingest")

DEFAULT_CAPACITY = 10_000
DEFAULT_BATCH = 500
DEFAULT_PRUNE_SECONDS = 30.0
DEFAULT_LINGER = 0.1
"""Seconds a batch waits for more messages after its first (unless full): fewer, larger transactions, so
that on SQLite the API's writes rarely find the write lock taken (a writer that does sleeps in SQLite's
busy handler, 1 ms .. 100 ms at a time)."""


@dataclass(frozen=True)
class Incoming:
    device_id: str
    message: OutboxMessage
    report: dict[str, Any] | None = None
    """A validated status report (``state`` leaf), else None (telemetry)."""


_STOP = object()
_UNSET = object()


class IngestQueue:
    """Bounded queue of device messages and the worker that applies them in batches."""

    def __init__(
        self,
        fleet: Fleet,
        rollouts: Rollouts,
        commands: Commands | None,
        *,
        accept: Callable[[str, int], bool],
        observers: list[Callable[[str, OutboxMessage], None]],
        capacity: int = DEFAULT_CAPACITY,
        batch: int = DEFAULT_BATCH,
        prune_seconds: float = DEFAULT_PRUNE_SECONDS,
        linger: float = DEFAULT_LINGER,
    ) -> None:
        self.fleet, self.rollouts, self.commands = fleet, rollouts, commands
        self.sessions = fleet.sessions
        self.accept = accept
        self.observers = observers
        self.batch = batch
        self.prune_seconds = prune_seconds
        self.linger = linger
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        self._worker: threading.Thread | None = None
        self._to_prune: set[str] = set()
        self._heartbeats: dict[str, float] = {}
        """device id -> monotonic time of the last ``last_seen_at`` this worker wrote."""
        self._insert_new_stmt: Any = _UNSET
        self._last_prune = time.monotonic()
        self.applied = 0
        """Messages applied so far (tests and benchmarks wait on it)."""

    def start(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="fedge-ingest", daemon=True)
            self._worker.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Apply everything queued so far, then end the worker."""
        if self._worker is None:
            return
        self._queue.put(_STOP)
        self._worker.join(timeout)
        self._worker = None
        self._prune()

    def submit(self, item: Incoming) -> None:
        """Queue one message; blocks while the queue is full (backpressure, never a silent drop)."""
        self._queue.put(item)

    def pending(self) -> int:
        return self._queue.qsize()

    # ------------------------------------------------------------ worker
    def _run(self) -> None:
        stopping = False
        while not stopping:
            try:
                first = self._queue.get(timeout=max(0.1, self.prune_seconds))
            except queue.Empty:
                self._maybe_prune()
                continue
            items: list[Incoming] = []
            if first is _STOP:
                stopping = True
            else:
                items.append(first)
            until = time.monotonic() + self.linger
            while len(items) < self.batch and not stopping:  # what arrives within linger, up to a batch
                left = until - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    continue
                items.append(nxt)
            if stopping:  # drain: everything queued before stop() is applied
                while True:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is not _STOP:
                        items.append(nxt)
            for start in range(0, len(items), self.batch):
                try:
                    self.apply(items[start : start + self.batch])
                except Exception:  # a database hiccup must not end the worker
                    log.exception(
                        "ingest batch of %d messages failed", len(items[start : start + self.batch])
                    )
            self._maybe_prune()

    def apply(self, items: list[Incoming]) -> None:
        """Apply one batch: active devices only, once per outbox sequence, status reports in one
        transaction, telemetry in one transaction (with the heartbeat of every sender). A write that
        fails (a lock timeout, a deadlock between replicas on PostgreSQL, the database away for a moment)
        is tried again after ``RETRY_PAUSE_S``, then message by message, so that only a message that
        fails on its own is lost (logged); the broker has acknowledged them all already."""
        fresh = self._fresh(items)
        try:
            self._write(fresh)
        except Exception:
            log.warning("ingest batch of %d messages failed; trying again", len(fresh), exc_info=True)
            time.sleep(self.RETRY_PAUSE_S)
            try:
                self._write(fresh)
            except Exception:
                for item in fresh:
                    try:
                        self._write([item])
                    except Exception:
                        log.exception("message %s of device %s lost", item.message.seq, item.device_id)
        self.applied += len(items)

    RETRY_PAUSE_S = 0.2

    def _fresh(self, items: list[Incoming]) -> list[Incoming]:
        """The messages of active devices not seen before (observers hear each once)."""
        if not items:
            return []
        ids = sorted({i.device_id for i in items})
        with self.sessions() as s:
            active = set(s.scalars(select(Device.id).where(Device.id.in_(ids), Device.status == "active")))
        fresh: list[Incoming] = []
        for item in items:
            if item.device_id in active and self.accept(item.device_id, item.message.seq):
                for observer in self.observers:
                    observer(item.device_id, item.message)
                fresh.append(item)
        return fresh

    def _write(self, fresh: list[Incoming]) -> None:
        reports = [(i.device_id, i.report) for i in fresh if i.report is not None]
        telemetry = [i for i in fresh if i.report is None]
        if reports:
            self.rollouts.report_many(reports)
        if telemetry:
            self._telemetry(telemetry)

    def _telemetry(self, items: list[Incoming]) -> None:
        """Store each (device, seq) once, in one transaction. Plain records (no device event, no command
        acknowledgement: nearly all) go in as one multi-row INSERT that skips pairs already stored (ON
        CONFLICT DO NOTHING on the unique key), without reading first; records that act once after the
        commit are checked against what is stored. Heartbeats: at most one per device per
        ``fleet.last_seen_write_seconds``, as for polls."""
        now = utcnow()
        unique: dict[tuple[str, int], Incoming] = {}
        for item in items:
            unique.setdefault((item.device_id, item.message.seq), item)
        insert_new = self._insert_new()
        plain: list[Incoming] = []
        acting: list[Incoming] = []
        for item in unique.values():
            (acting if insert_new is None or _acts(item.message.body) else plain).append(item)
        senders = sorted({i.device_id for i in items})
        beat = time.monotonic()
        due = [
            d
            for d in senders
            if beat - self._heartbeats.get(d, -math.inf) >= self.fleet.last_seen_write_seconds
        ]
        with self.sessions.begin() as s:
            if plain:
                assert insert_new is not None
                s.execute(insert_new, [_row(i, now) for i in plain])
            stored = self._insert_checked(s, acting, now) if acting else []
            if due:
                s.execute(update(Device).where(Device.id.in_(due)).values(last_seen_at=now))
        for device_id in due:
            self._heartbeats[device_id] = beat
        for item in stored:
            body = item.message.body
            if self.commands is not None and self.commands.on_event is not None and is_event(body):
                self.commands.on_event(item.device_id, item.message.seq, body)
            command_id = body.get("command_id")
            if (
                self.commands is not None
                and body.get("type") == TelemetryType.COMMAND
                and isinstance(command_id, str)
            ):
                self.commands._acknowledge(item.device_id, command_id, body)
        self._to_prune.update(senders)

    def _insert_checked(self, s: Session, items: list[Incoming], now: dt.datetime) -> list[Incoming]:
        """Insert the records whose (device, seq) is not stored yet; the ones inserted."""
        keys = [(i.device_id, i.message.seq) for i in items]
        seen = set(
            s.execute(
                select(TelemetryRecord.device_id, TelemetryRecord.seq).where(
                    tuple_(TelemetryRecord.device_id, TelemetryRecord.seq).in_(keys)
                )
            ).all()
        )
        fresh = [i for i in items if (i.device_id, i.message.seq) not in seen]
        if fresh:
            s.execute(insert(TelemetryRecord), [_row(i, now) for i in fresh])
            for item in fresh:
                if is_event(item.message.body):
                    s.add(device_event(item.device_id, item.message.seq, item.message.body))
        return fresh

    def _insert_new(self) -> Any:
        """``INSERT ... ON CONFLICT (device_id, seq) DO NOTHING`` for this database (SQLite, PostgreSQL);
        None for others (every record is then checked first)."""
        if self._insert_new_stmt is _UNSET:
            with self.sessions() as s:
                dialect = s.get_bind().dialect.name
            stmt: Any = None
            if dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert as sqlite_insert

                stmt = sqlite_insert(TelemetryRecord).on_conflict_do_nothing(
                    index_elements=["device_id", "seq"]
                )
            elif dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert as pg_insert

                stmt = pg_insert(TelemetryRecord).on_conflict_do_nothing(index_elements=["device_id", "seq"])
            self._insert_new_stmt = stmt
        return self._insert_new_stmt

    def _maybe_prune(self) -> None:
        if time.monotonic() - self._last_prune >= self.prune_seconds:
            self._prune()

    def _prune(self) -> None:
        self._last_prune = time.monotonic()
        if self.commands is None or self.commands.keep_per_device <= 0:
            self._to_prune.clear()
            return
        devices, self._to_prune = self._to_prune, set()
        for device_id in sorted(devices):
            try:
                self.commands._prune(device_id)
            except Exception:
                log.exception("pruning the telemetry of %s failed", device_id)


def _acts(body: dict[str, Any]) -> bool:
    """A record that acts once when first stored: a device event, a command acknowledgement."""
    return is_event(body) or body.get("type") == TelemetryType.COMMAND


def _row(item: Incoming, now: dt.datetime) -> dict[str, Any]:
    body = item.message.body
    kind, command_id = body.get("type"), body.get("command_id")
    return {
        "id": new_id(),
        "device_id": item.device_id,
        "seq": item.message.seq,
        "type": str(kind)[:64] if kind is not None else None,
        "command_id": str(command_id)[:36] if command_id is not None else None,
        "body": body,
        "received_at": now,
    }


def incoming(device_id: str, message: OutboxMessage, report: dict[str, Any] | None) -> Incoming:
    return Incoming(device_id, message, report if message.kind == Leaf.STATE else None)
