"""The device-message ingest queue: MQTT ``state`` and ``telemetry`` messages are parsed on the broker
client's network thread and handed here; one worker thread writes them in bulk, one transaction per batch
for telemetry (a committed write per batch instead of three per message) and one for the status reports of
a batch. The network thread never touches the database.

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

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, tuple_, update

from controller.db.models import Device, TelemetryRecord, utcnow
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


@dataclass(frozen=True)
class Incoming:
    device_id: str
    message: OutboxMessage
    report: dict[str, Any] | None = None
    """A validated status report (``state`` leaf), else None (telemetry)."""


_STOP = object()


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
    ) -> None:
        self.fleet, self.rollouts, self.commands = fleet, rollouts, commands
        self.sessions = fleet.sessions
        self.accept = accept
        self.observers = observers
        self.batch = batch
        self.prune_seconds = prune_seconds
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        self._worker: threading.Thread | None = None
        self._to_prune: set[str] = set()
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
            while len(items) < self.batch:  # whatever else is queued now, up to a batch
                try:
                    nxt = self._queue.get_nowait()
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
        transaction, telemetry in one transaction (with the heartbeat of every sender)."""
        if not items:
            return
        ids = sorted({i.device_id for i in items})
        with self.sessions() as s:
            active = set(s.scalars(select(Device.id).where(Device.id.in_(ids), Device.status == "active")))
        fresh: list[Incoming] = []
        for item in items:
            if item.device_id in active and self.accept(item.device_id, item.message.seq):
                for observer in self.observers:
                    observer(item.device_id, item.message)
                fresh.append(item)
        reports = [(i.device_id, i.report) for i in fresh if i.report is not None]
        telemetry = [i for i in fresh if i.report is None]
        if reports:
            self.rollouts.report_many(reports)
        if telemetry:
            self._telemetry(telemetry)
        self.applied += len(items)

    def _telemetry(self, items: list[Incoming]) -> None:
        keys = [(i.device_id, i.message.seq) for i in items]
        now = utcnow()
        stored: list[Incoming] = []
        with self.sessions.begin() as s:
            seen = set(
                s.execute(
                    select(TelemetryRecord.device_id, TelemetryRecord.seq).where(
                        tuple_(TelemetryRecord.device_id, TelemetryRecord.seq).in_(keys)
                    )
                ).all()
            )
            done: set[tuple[str, int]] = set()
            for item in items:
                key = (item.device_id, item.message.seq)
                if key in seen or key in done:
                    continue
                done.add(key)
                body = item.message.body
                kind, command_id = body.get("type"), body.get("command_id")
                s.add(
                    TelemetryRecord(
                        device_id=item.device_id,
                        seq=item.message.seq,
                        type=str(kind)[:64] if kind is not None else None,
                        command_id=str(command_id)[:36] if command_id is not None else None,
                        body=body,
                    )
                )
                if is_event(body):
                    s.add(device_event(item.device_id, item.message.seq, body))
                stored.append(item)
            s.execute(  # one heartbeat for every sender of the batch
                update(Device)
                .where(Device.id.in_(sorted({i.device_id for i in items})))
                .values(last_seen_at=now)
            )
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
            self._to_prune.add(item.device_id)

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


def incoming(device_id: str, message: OutboxMessage, report: dict[str, Any] | None) -> Incoming:
    return Incoming(device_id, message, report if message.kind == Leaf.STATE else None)
