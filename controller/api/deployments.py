"""Deployments: roll a model version out to devices (ids or label selector), in waves with a gate."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from controller.api.deps import Developer, RolloutsDep
from controller.fleet.deployments import DeploymentRequest

router = APIRouter(prefix="/v1/deployments", tags=["fleet"])


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


@router.post("", status_code=201, response_model=DeploymentCreated)
def create_deployment(body: DeploymentIn, rollouts: RolloutsDep, caller: Developer) -> DeploymentCreated:
    """Set the desired model of the targets, wave by wave; the latest deployment of a device wins."""
    strategy: str | dict[str, Any] = (
        body.strategy if isinstance(body.strategy, str) else body.strategy.model_dump()
    )
    req = DeploymentRequest(
        body.model_id,
        body.version,
        body.device_ids,
        body.selector,
        strategy,
        body.max_failure_ratio,
        body.auto_rollback,
    )
    return DeploymentCreated(deployment_id=rollouts.create(req, caller.subject))


@router.get("/{deployment_id}", response_model=DeploymentOut)
def get_deployment(deployment_id: str, rollouts: RolloutsDep, _caller: Developer) -> DeploymentOut:
    """The rollout and each device's state (waiting, pending, applying, succeeded, failed-rolled-back...)."""
    dep, targets = rollouts.get(deployment_id)
    return DeploymentOut(
        id=dep.id,
        model_id=dep.model_id,
        version=dep.version,
        state=dep.state,
        strategy=dep.strategy,
        selector=dep.selector,
        max_failure_ratio=dep.max_failure_ratio,
        auto_rollback=dep.auto_rollback,
        current_wave=dep.current_wave,
        error=dep.error,
        created_at=dep.created_at,
        finished_at=dep.finished_at,
        devices=[
            TargetOut(
                device_id=t.device_id, wave=t.wave, state=t.state, error=t.error, updated_at=t.updated_at
            )
            for t in targets
        ],
    )
