"""Deployments: roll a model version out to devices (ids or label selector), in waves with a gate."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query

from controller.api.deps import Offset, Operator, RolloutsDep
from controller.fleet.deployments import DeploymentRequest
from controller.schemas.deployments import (
    CancelIn,
    DeploymentCreated,
    DeploymentIn,
    DeploymentOut,
    DeploymentPage,
    DeploymentSummary,
    TargetOut,
)

DeploymentState = Literal["rolling", "succeeded", "failed", "superseded", "cancelled"]

router = APIRouter(prefix="/v1/deployments", tags=["fleet"])


@router.post("", status_code=201, response_model=DeploymentCreated)
def create_deployment(body: DeploymentIn, rollouts: RolloutsDep, caller: Operator) -> DeploymentCreated:
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
        body.reference_dataset_id,
        body.device_timeout_seconds,
        body.continuous,
    )
    return DeploymentCreated(deployment_id=rollouts.create(req, caller.subject))


@router.get("", response_model=DeploymentPage)
def list_deployments(
    rollouts: RolloutsDep,
    _caller: Operator,
    state: Annotated[DeploymentState | None, Query(description="only deployments in this state")] = None,
    model_id: Annotated[
        str | None, Query(max_length=36, description="only deployments of this model")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> DeploymentPage:
    """Deployments, newest first, each with its devices counted by state."""
    rows, total = rollouts.list(limit, offset, state, model_id)
    items = [
        DeploymentSummary(
            id=d.id,
            model_id=d.model_id,
            version=d.version,
            state=d.state,
            current_wave=d.current_wave,
            waves=len(d.strategy.get("waves", [1.0])),
            devices=counts,
            selector=d.selector,
            continuous=d.continuous,
            created_by=d.created_by,
            error=d.error,
            created_at=d.created_at,
            finished_at=d.finished_at,
        )
        for d, counts in rows
    ]
    return DeploymentPage(items=items, total=total, limit=limit, offset=offset)


@router.post("/{deployment_id}/cancel", response_model=DeploymentOut)
def cancel_deployment(
    deployment_id: str,
    rollouts: RolloutsDep,
    _caller: Operator,
    body: Annotated[CancelIn | None, Body()] = None,
) -> DeploymentOut:
    """Stop a rolling deployment (409 if it is not rolling): devices not reached are cancelled, devices
    still installing get their previous model back, installed ones keep it unless ``rollback``."""
    rollouts.cancel(deployment_id, (body or CancelIn()).rollback)
    return get_deployment(deployment_id, rollouts, _caller)


@router.get("/{deployment_id}", response_model=DeploymentOut)
def get_deployment(deployment_id: str, rollouts: RolloutsDep, _caller: Operator) -> DeploymentOut:
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
        reference_dataset_id=dep.reference_dataset_id,
        device_timeout_seconds=dep.device_timeout_s,
        continuous=dep.continuous,
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
