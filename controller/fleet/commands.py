"""Device commands and stored device telemetry.

A command (kind ``grid-run``: run the grid simulator with a registered RL policy on the device; kinds
``fl-join`` / ``fl-leave``: take part in / leave a federated-learning job, sent only by FL jobs) is stored
``queued``, pushed over MQTT (``fedge/devices/{id}/cmd``, QoS 1) and listed for HTTP polls; both carry the
same document, signed by the device CA in the command context (so it can never pass as a desired state),
naming the device, the command and the model version with the **SHA-256 read from the chain**. The agent
acknowledges with telemetry records ``{"type": "command", "command_id", "state", ...}`` (running, then
succeeded or failed with a result) and sends one record per simulated day; every record is stored once per
(device, outbox sequence), whichever link delivered it.

A grid policy is recognised by its artifact, not by a label: an ONNX version whose ``metadata_props`` hold
``fedge.grid.policy`` (the policy description the export embeds; :mod:`simulator.grid.onnx_policy`). The
bytes are read through the chain-verified path, so a tampered object is refused here already.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.orm import Session, sessionmaker

from controller.db.models import Device, DeviceCommand, ModelVersion, TelemetryRecord, utcnow
from controller.errors import Conflict, NotFound, Unprocessable
from controller.fleet.device_events import device_event, is_event
from controller.fleet.devices import ACTIVE, Fleet
from fedge_protocol import Command, CommandKind, CommandState, DocumentType, TelemetryType
from fedge_protocol.fl_commands import FlJoin, FlLeave

log = logging.getLogger("fedge.fleet.commands")

KINDS = tuple(k.value for k in CommandKind)
FL_KINDS = (CommandKind.FL_JOIN, CommandKind.FL_LEAVE)
FINAL = (CommandState.SUCCEEDED, CommandState.FAILED)
GRID_POLICY_KEY = "fedge.grid.policy"
MAX_POLICY_BYTES = 256 * 1024 * 1024
DAYS_IN_YEAR = 366
DAY_SETS = ("test", "train", "all")
ONNX_KINDS = ("onnx", "quantized")


def parse_days(spec: str) -> str:
    """Check a day selection: ``test``, ``train``, ``all`` or ``D,D,a-b`` with days in 0..365.
    Returns it normalised (no spaces). Whether each day has data is checked on the device."""
    text = spec.strip()
    if text in DAY_SETS:
        return text
    if not text:
        raise Unprocessable(
            "days must not be empty: give test, train, all or a list like 152,160-165", field="days"
        )
    picked: list[str] = []
    count = 0
    for raw in text.split(","):
        part = raw.strip()
        try:
            if "-" in part[1:]:
                first, last = (int(x) for x in part.split("-", 1))
                if first > last:
                    raise Unprocessable(f"day range {part!r} runs backwards", field="days")
                bounds = (first, last)
                count += last - first + 1
            else:
                first = last = int(part)
                bounds = (first, first)
                count += 1
        except ValueError:
            raise Unprocessable(
                f"days: {part!r} is not a day number or a range a-b (or one of {', '.join(DAY_SETS)})",
                field="days",
            ) from None
        for day in bounds:
            if not 0 <= day < DAYS_IN_YEAR:
                raise Unprocessable(f"day {day} is outside 0..{DAYS_IN_YEAR - 1}", field="days")
        picked.append(part)
    if count > DAYS_IN_YEAR:
        raise Unprocessable(f"{count} days selected; at most {DAYS_IN_YEAR}", field="days")
    return ",".join(picked)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class Commands:
    """Commands for devices over SQL, the fleet (devices, CA, chain hashes) and the registry."""

    def __init__(
        self, sessions: sessionmaker[Session], fleet: Fleet, *, keep_per_device: int = 10_000
    ) -> None:
        self.sessions = sessions
        self.fleet = fleet
        self.keep_per_device = keep_per_device
        self.registry = fleet.registry
        self._policies: dict[tuple[str, int], dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.on_event: Callable[[str, int, dict[str, Any]], object] | None = None
        """Called after commit with each newly stored device event (the drift loop's non-blocking submit)."""

    # ----------------------------------------------------------------- policies
    def grid_policy(self, mv: ModelVersion) -> dict[str, Any]:
        """The policy description embedded in a version's ONNX; 422 when it is not a grid policy."""
        key = (mv.model_id, mv.version)
        with self._lock:
            cached = self._policies.get(key)
        if cached is not None:
            return cached
        what = f"model {mv.model_id} v{mv.version}"
        if mv.kind not in ONNX_KINDS and (mv.format or "").lower() != "onnx":
            raise Unprocessable(f"{what} is a {mv.kind} artifact, not an ONNX grid policy", field="version")
        if (mv.size_bytes or 0) > MAX_POLICY_BYTES:
            raise Unprocessable(
                f"{what} is larger than a grid policy can be ({MAX_POLICY_BYTES} bytes)", field="version"
            )
        chain_sha, _ = self.fleet.chain_hash(mv)
        if chain_sha is None:
            raise Conflict(f"{what} has no chain record; cannot run it on a device")
        data = b"".join(self.registry.verified_chunks(mv.bucket, mv.object_key, chain_sha, what))
        import onnx

        try:
            model = onnx.load_model_from_string(data)
        except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX model
            raise Unprocessable(f"{what} is not a readable ONNX model: {exc}", field="version") from exc
        props = {p.key: p.value for p in model.metadata_props}
        if GRID_POLICY_KEY not in props:
            raise Unprocessable(
                f"{what} is not a grid policy: its ONNX metadata has no '{GRID_POLICY_KEY}' entry "
                "(register policies with 'fedge grid register')",
                field="model_id",
            )
        try:
            info = json.loads(props[GRID_POLICY_KEY])
            if not isinstance(info, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            raise Unprocessable(
                f"{what}: '{GRID_POLICY_KEY}' is not valid JSON: {exc}", field="model_id"
            ) from exc
        with self._lock:
            self._policies[key] = info
        return info

    # ----------------------------------------------------------------- commands
    def create(
        self,
        device_id: str,
        kind: str,
        model_id: str,
        version: int | None,
        days: str,
        created_by: str,
        *,
        start_now: bool = False,
    ) -> DeviceCommand:
        """Validate and store a command. ``start_now``: the device itself asked and runs it at once
        (stored ``running``; the agent loop does not pick it up again)."""
        if kind not in KINDS:
            raise Unprocessable(f"unknown command kind {kind!r}; known: {', '.join(KINDS)}", field="kind")
        if kind in FL_KINDS:
            raise Unprocessable(
                f"{kind} commands are sent by federated-learning jobs (POST /v1/fl/jobs)", field="kind"
            )
        device = self.fleet.get(device_id)
        if device.status != ACTIVE:
            raise Conflict(f"device {device_id} is revoked")
        normalized = parse_days(days)
        mv = self.registry.resolve_version(model_id, version, None if version else "onnx")
        policy = self.grid_policy(mv)
        now = utcnow()
        command = DeviceCommand(
            device_id=device_id,
            kind=kind,
            params={
                "days": normalized,
                "policy": {
                    k: policy.get(k) for k in ("backend", "algorithm", "actions_per_day", "action_kind")
                },
            },
            model_id=mv.model_id,
            version=mv.version,
            state=CommandState.RUNNING if start_now else CommandState.QUEUED,
            created_by=created_by,
            created_at=now,
            started_at=now if start_now else None,
        )
        with self.sessions.begin() as s:
            s.add(command)
        if not start_now:
            self.fleet.events.command_created(command)
        return command

    def create_fl_join(self, device_id: str, params: FlJoin, created_by: str) -> DeviceCommand:
        """Queue an ``fl-join`` command (an FL job inviting a device; it names no model version)."""
        return self._create_fl(device_id, CommandKind.FL_JOIN, params, created_by)

    def create_fl_leave(self, device_id: str, params: FlLeave, created_by: str) -> DeviceCommand:
        """Queue an ``fl-leave`` command (the FL job ended; the device stops its part)."""
        return self._create_fl(device_id, CommandKind.FL_LEAVE, params, created_by)

    def _create_fl(
        self, device_id: str, kind: CommandKind, params: FlJoin | FlLeave, created_by: str
    ) -> DeviceCommand:
        device = self.fleet.get(device_id)
        if device.status != ACTIVE:
            raise Conflict(f"device {device_id} is revoked")
        command = DeviceCommand(
            device_id=device_id,
            kind=kind.value,
            params=params.model_dump(mode="json"),
            state=CommandState.QUEUED,
            created_by=created_by,
            created_at=utcnow(),
        )
        with self.sessions.begin() as s:
            s.add(command)
        self.fleet.events.command_created(command)
        return command

    def get(self, device_id: str, command_id: str) -> DeviceCommand:
        with self.sessions() as s:
            command = s.get(DeviceCommand, command_id)
            if command is None or command.device_id != device_id:
                raise NotFound(f"command {command_id} of device {device_id} not found")
            return command

    def for_device(self, device_id: str, limit: int, offset: int) -> tuple[list[DeviceCommand], int]:
        self.fleet.get(device_id)
        with self.sessions() as s:
            q = select(DeviceCommand).where(DeviceCommand.device_id == device_id)
            total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
            rows = s.scalars(
                q.order_by(DeviceCommand.created_at.desc(), DeviceCommand.id).limit(limit).offset(offset)
            ).all()
            return list(rows), total

    def pending(self, device_id: str) -> list[DeviceCommand]:
        """Commands the device has not acknowledged yet, oldest first."""
        with self.sessions() as s:
            rows = s.scalars(
                select(DeviceCommand)
                .where(DeviceCommand.device_id == device_id, DeviceCommand.state == CommandState.QUEUED)
                .order_by(DeviceCommand.created_at, DeviceCommand.id)
            ).all()
            return list(rows)

    def names_version(self, device_id: str, model_id: str, version: int) -> bool:
        """True when a command for the device names this model version (it may then download it)."""
        with self.sessions() as s:
            found = s.scalar(
                select(func.count()).where(
                    DeviceCommand.device_id == device_id,
                    DeviceCommand.model_id == model_id,
                    DeviceCommand.version == version,
                )
            )
        return bool(found)

    def document(self, command: DeviceCommand) -> dict[str, Any]:
        """What the device gets (signed): the command and the model version it names, with its chain
        SHA-256 (``fl-join`` names none: its params say which job to join)."""
        model = None
        if command.model_id is not None and command.version is not None:
            mv = self.registry.resolve_version(command.model_id, command.version)
            model = self.fleet.model_reference(command.device_id, mv, "cannot run it")
        document = Command(
            device_id=command.device_id,
            command_id=command.id,
            kind=CommandKind(command.kind),
            params=command.params,
            created_at=_iso(command.created_at),
            model=model,
        )
        if model is None:
            return document.model_dump(mode="json")
        return document.model_dump(mode="json", exclude={"model": {"sample_input"}})

    def signed(self, command: DeviceCommand) -> dict[str, str]:
        return self.fleet.ca.sign_document(self.document(command), DocumentType.COMMAND)

    # ---------------------------------------------------------------- telemetry
    def record_telemetry(self, device_id: str, seq: int, body: dict[str, Any]) -> bool:
        """Store one outbox record (False when this sequence number was stored before) and apply a
        command acknowledgement it carries."""
        kind = body.get("type")
        command_id = body.get("command_id")
        record = TelemetryRecord(
            device_id=device_id,
            seq=seq,
            type=str(kind)[:64] if kind is not None else None,
            command_id=str(command_id)[:36] if command_id is not None else None,
            body=body,
        )
        try:
            with self.sessions.begin() as s:
                if s.get(Device, device_id) is None:
                    raise NotFound(f"device {device_id} not found")
                s.add(record)
                if is_event(body):  # a drift alarm: also a device event, in this transaction
                    s.add(device_event(device_id, seq, body))
        except SqlIntegrityError:
            return False
        if self.on_event is not None and is_event(body):
            self.on_event(device_id, seq, body)
        if kind == TelemetryType.COMMAND and isinstance(command_id, str):
            self._acknowledge(device_id, command_id, body)
        if self.keep_per_device > 0:
            self._prune(device_id)
        return True

    def _prune(self, device_id: str) -> None:
        """Keep the newest ``keep_per_device`` records of a device (by outbox sequence). Command states live
        on the command rows, so pruning never loses a result; a redelivered record older than what is kept
        is pruned again at once."""
        with self.sessions.begin() as s:
            floor = s.scalar(
                select(TelemetryRecord.seq)
                .where(TelemetryRecord.device_id == device_id)
                .order_by(TelemetryRecord.seq.desc())
                .offset(self.keep_per_device - 1)
                .limit(1)
            )
            if floor is not None:
                s.execute(
                    delete(TelemetryRecord).where(
                        TelemetryRecord.device_id == device_id, TelemetryRecord.seq < floor
                    )
                )

    def _acknowledge(self, device_id: str, command_id: str, body: dict[str, Any]) -> None:
        state = body.get("state")
        if state not in (CommandState.RUNNING, *FINAL):
            log.warning("device %s sent command state %r for %s; ignored", device_id, state, command_id)
            return
        with self.sessions.begin() as s:
            command = s.get(DeviceCommand, command_id)
            if command is None or command.device_id != device_id or command.state in FINAL:
                return
            now = utcnow()
            command.state = str(state)
            if command.started_at is None:
                command.started_at = now
            if state in FINAL:
                command.finished_at = now
                result = body.get("result")
                command.result = result if isinstance(result, dict) else None
                error = body.get("error")
                command.error = str(error)[:4000] if error else None

    def telemetry(
        self,
        device_id: str,
        *,
        command_id: str | None = None,
        kind: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[TelemetryRecord], int]:
        self.fleet.get(device_id)
        with self.sessions() as s:
            q = select(TelemetryRecord).where(TelemetryRecord.device_id == device_id)
            if command_id:
                q = q.where(TelemetryRecord.command_id == command_id)
            if kind:
                q = q.where(TelemetryRecord.type == kind)
            total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
            rows = s.scalars(q.order_by(TelemetryRecord.seq).limit(limit).offset(offset)).all()
            return list(rows), total
