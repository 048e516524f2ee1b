"""Device events: ``GET /v1/devices/{id}/events`` (drift alarms the agents' monitors raised).

The event body is the agent's telemetry record (``fedge_protocol.DriftEvent`` for ``monitor.drift``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field


class DeviceEventOut(BaseModel):
    id: str
    device_id: str
    seq: int = Field(description="the agent's outbox sequence number (one event per device and seq)")
    type: str = Field(description="e.g. monitor.drift")
    detector: str | None = Field(description="evidently | adwin | page-hinkley")
    model_id: str | None
    version: int | None
    occurred_at: str | None = Field(description="the device's clock (ISO 8601)")
    received_at: dt.datetime
    body: dict[str, Any]


class DeviceEventPage(BaseModel):
    items: list[DeviceEventOut]
    total: int
    limit: int
    offset: int
