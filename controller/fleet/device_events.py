"""Device events: the telemetry records of ``fedge_protocol.EVENT_TYPES`` (a drift alarm from an agent's
monitor), kept apart from the pruned telemetry so that an operator can list them
(``GET /v1/devices/{id}/events``, ``fedge devices events <id>``).

An event is written in the same transaction as its telemetry record (:func:`device_event` is added to the
session by ``Commands.record_telemetry``), so it is stored exactly once per (device, outbox sequence)
whether it came over MQTT or HTTP, and never without its record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from controller.db.models import DeviceEvent
from fedge_protocol import EVENT_TYPES

if TYPE_CHECKING:
    from controller.fleet.devices import Fleet


def is_event(body: dict[str, Any]) -> bool:
    return body.get("type") in EVENT_TYPES


def _text(value: Any, limit: int) -> str | None:
    return str(value)[:limit] if value is not None else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def device_event(device_id: str, seq: int, body: dict[str, Any]) -> DeviceEvent:
    """The event row of one telemetry record (its type is one of ``EVENT_TYPES``)."""
    return DeviceEvent(
        device_id=device_id,
        seq=seq,
        type=str(body.get("type"))[:64],
        detector=_text(body.get("detector"), 32),
        model_id=_text(body.get("model_id"), 36),
        version=_int(body.get("version")),
        body=body,
        occurred_at=_text(body.get("at"), 40),
    )


class DeviceEvents:
    """Reads of the stored device events."""

    def __init__(self, sessions: sessionmaker[Session], fleet: Fleet) -> None:
        self.sessions = sessions
        self.fleet = fleet

    def page(
        self,
        device_id: str,
        *,
        kind: str | None = None,
        model_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[DeviceEvent], int]:
        """A device's events, newest first (NotFound for an unknown device)."""
        self.fleet.get(device_id)
        with self.sessions() as s:
            q = select(DeviceEvent).where(DeviceEvent.device_id == device_id)
            if kind:
                q = q.where(DeviceEvent.type == kind)
            if model_id:
                q = q.where(DeviceEvent.model_id == model_id)
            total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
            rows = s.scalars(q.order_by(DeviceEvent.seq.desc()).limit(limit).offset(offset)).all()
            return list(rows), total
