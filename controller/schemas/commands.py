"""Device commands and telemetry: ``/v1/devices/{id}/commands[/{cid}]``, ``/v1/devices/{id}/telemetry``.

The device's own telemetry post (``TelemetryPost``) and the signed command documents are
``fedge_protocol``'s."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import AliasChoices, BaseModel, Field, field_validator

from fedge_protocol import CommandKind, CommandState


class CommandIn(BaseModel):
    kind: CommandKind = Field(description="grid-run: the grid simulator with an RL policy on the device")
    model_id: str = Field(
        min_length=1,
        max_length=36,
        validation_alias=AliasChoices("model_id", "model"),
        description="a registered grid policy (ONNX with embedded policy.json)",
    )
    version: int | None = Field(default=None, ge=1, description="default: the model's newest ONNX version")
    days: str | list[int] = Field(
        default="test", description="test | train | all | 'D,D,a-b' | a list of day numbers (0..365)"
    )

    @field_validator("days", mode="after")
    @classmethod
    def _days_text(cls, value: str | list[int]) -> str | list[int]:
        if isinstance(value, list) and not value:
            raise ValueError("days must not be empty")
        return value


class CommandOut(BaseModel):
    id: str
    device_id: str
    kind: str
    model_id: str | None
    version: int | None
    params: dict[str, Any]
    state: CommandState = Field(description=" | ".join(s.value for s in CommandState))
    result: dict[str, Any] | None
    error: str | None
    created_by: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


class CommandPage(BaseModel):
    items: list[CommandOut]
    total: int
    limit: int
    offset: int


class TelemetryOut(BaseModel):
    seq: int
    type: str | None
    command_id: str | None
    body: dict[str, Any]
    received_at: dt.datetime


class TelemetryPage(BaseModel):
    items: list[TelemetryOut]
    total: int
    limit: int
    offset: int
