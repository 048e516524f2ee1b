"""Deployments: ``POST /v1/deployments``, ``GET /v1/deployments/{id}``."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field


class Waves(BaseModel):
    waves: list[float] = Field(min_length=1, description="cumulative fractions, e.g. [0.1, 1.0]")


class DeploymentIn(BaseModel):
    model_id: str
    version: int | None = Field(default=None, ge=1, description="default: the newest ONNX version")
    device_ids: list[str] | None = None
    selector: dict[str, str] | None = Field(default=None, description="labels every target must carry")
    strategy: Literal["all-at-once"] | Waves = "all-at-once"
    max_failure_ratio: float = Field(default=0.0, ge=0, le=1)
    auto_rollback: bool = True


class DeploymentCreated(BaseModel):
    deployment_id: str


class TargetOut(BaseModel):
    device_id: str
    wave: int
    state: str
    error: str | None
    updated_at: dt.datetime


class DeploymentOut(BaseModel):
    id: str
    model_id: str
    version: int
    state: str
    strategy: dict[str, Any]
    selector: dict[str, str] | None
    max_failure_ratio: float
    auto_rollback: bool
    current_wave: int
    error: str | None
    created_at: dt.datetime
    finished_at: dt.datetime | None
    devices: list[TargetOut]
