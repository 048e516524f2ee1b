"""A model's drift policy (none / notify / retrain) and the actions it took (fleet/drift_policy.py)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from controller.api.deps import Offset, StateDep, require
from controller.fleet.drift_policy import DriftLoop, action_out
from controller.schemas.drift import DriftActionPage, DriftPolicyIn, DriftPolicyOut
from controller.security.principal import Principal, Role

router = APIRouter(prefix="/v1/models", tags=["monitoring"])

ActionState = Literal["notified", "training", "translating", "deployed", "failed"]

PolicyUser = Annotated[Principal, Depends(require(Role.ADMIN, Role.DEVELOPER, Role.OPERATOR))]
"""A retrain both trains (developer) and deploys (operator): either sets and reads the policy."""


async def _drift(state: StateDep) -> DriftLoop:
    return state.drift


DriftDep = Annotated[DriftLoop, Depends(_drift)]


@router.put("/{model_id}/drift-policy", response_model=DriftPolicyOut)
def put_drift_policy(
    model_id: str, body: DriftPolicyIn, drift: DriftDep, _caller: PolicyUser
) -> DriftPolicyOut:
    """Set what a drift event on this model does: ``none``, ``notify`` (record, log, webhook) or
    ``retrain`` (training or FL job -> ONNX translation -> canary deployment to the devices running it)."""
    policy = drift.set_policy(model_id, body)
    return DriftPolicyOut(model_id=model_id, **policy.model_dump())


@router.get("/{model_id}/drift-policy", response_model=DriftPolicyOut)
def get_drift_policy(model_id: str, drift: DriftDep, _caller: PolicyUser) -> DriftPolicyOut:
    """The model's drift policy (``on_drift: none`` when never set)."""
    return DriftPolicyOut(model_id=model_id, **drift.policy(model_id).model_dump())


@router.get("/{model_id}/drift-actions", response_model=DriftActionPage)
def list_drift_actions(
    model_id: str,
    drift: DriftDep,
    _caller: PolicyUser,
    state: Annotated[ActionState | None, Query(description="only actions in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> DriftActionPage:
    """What the drift policy did, newest first: one action per debounce interval, with its steps."""
    rows, total = drift.actions(model_id, state=state, limit=limit, offset=offset)
    return DriftActionPage(items=[action_out(a) for a in rows], total=total, limit=limit, offset=offset)
