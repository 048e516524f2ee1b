"""Deployments: roll a model version out to devices (ids or label selector), in waves with a gate."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from controller.api.deps import Developer, RolloutsDep
from controller.fleet.deployments import DeploymentRequest
from controller.schemas.deployments import DeploymentCreated, DeploymentIn, DeploymentOut, TargetOut

router = APIRouter(prefix="/v1/deployments", tags=["fleet"])


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
