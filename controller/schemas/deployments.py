"""Deployments: ``POST /v1/deployments``, ``GET /v1/deployments`` (a page), ``GET /v1/deployments/{id}``,
``POST /v1/deployments/{id}/cancel``."""

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
    reference_dataset_id: str | None = Field(
        default=None,
        max_length=36,
        description="a registered data set the devices' monitors check drift against (named in the "
        "desired state; fetched and SHA-256 checked like the model)",
    )
    device_timeout_seconds: int | None = Field(
        default=3600,
        ge=1,
        le=30 * 86400,
        description="a device asked to install that has not reported success or failure within this "
        "time becomes timed-out (counted as a failure of its wave); null: wait for ever",
    )
    continuous: bool = Field(
        default=False,
        description="needs a selector: devices that enrol later with matching labels get this deployment "
        "(until it is cancelled, failed or superseded by a newer continuous one)",
    )


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
    reference_dataset_id: str | None = None
    device_timeout_seconds: int | None = None
    continuous: bool = False
    error: str | None
    created_at: dt.datetime
    finished_at: dt.datetime | None
    devices: list[TargetOut]


class DeploymentSummary(BaseModel):
    id: str
    model_id: str
    version: int
    state: str = Field(description="rolling | succeeded | failed | superseded | cancelled")
    current_wave: int
    waves: int = Field(description="number of waves")
    devices: dict[str, int] = Field(description='targets by state, e.g. {"succeeded": 9, "pending": 1}')
    selector: dict[str, str] | None
    continuous: bool = False
    created_by: str | None
    error: str | None
    created_at: dt.datetime
    finished_at: dt.datetime | None


class DeploymentPage(BaseModel):
    items: list[DeploymentSummary]
    total: int
    limit: int
    offset: int


class CancelIn(BaseModel):
    rollback: bool = Field(
        default=False,
        description="also give devices that already installed it their previous model back",
    )
