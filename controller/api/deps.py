"""Dependency aliases: each handler declares the services it needs (settings, store, chain, registry,
devices, rollouts, commands, jobs, federation) and the caller it accepts (a role, or a device acting on
itself).

A dependency that does no I/O is ``async``: FastAPI runs a plain ``def`` dependency in the thread pool, one
trip per dependency and request, which on a cheap route (a 304 desired-state poll) costs more than the
route itself. Only authentication (database, OIDC) runs in the pool.

Handlers never take the whole services container; they name what they use, so each signature says
which backends a route touches (and tests can override one dependency at a time).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from controller.api.openapi import BEARER
from controller.chain.base import ChainBackend
from controller.config import ControllerSettings
from controller.db.models import Device
from controller.errors import Forbidden, Unauthorized
from controller.federation.manager import FlJobManager
from controller.fleet.commands import Commands
from controller.fleet.deployments import Rollouts
from controller.fleet.devices import Fleet, looks_like_device_token
from controller.registry.service import Registry
from controller.security import tokens
from controller.security.principal import Principal, Role
from controller.state import ControllerState
from controller.storage.base import ArtifactStore
from controller.training.manager import JobManager


async def get_state(request: Request) -> ControllerState:
    state: ControllerState = request.app.state.fedge
    return state


StateDep = Annotated[ControllerState, Depends(get_state)]
"""The container itself: only for app assembly and health checks that look at every backend."""


async def get_settings(state: StateDep) -> ControllerSettings:
    return state.settings


async def get_engine(state: StateDep) -> Engine:
    return state.engine


async def get_sessions(state: StateDep) -> sessionmaker[Session]:
    return state.sessions


async def get_store(state: StateDep) -> ArtifactStore:
    return state.store


async def get_chain(state: StateDep) -> ChainBackend:
    return state.chain


async def get_registry(state: StateDep) -> Registry:
    return state.registry


async def get_devices(state: StateDep) -> Fleet:
    return state.fleet


async def get_rollouts(state: StateDep) -> Rollouts:
    return state.rollouts


async def get_commands(state: StateDep) -> Commands:
    return state.commands


async def get_jobs(state: StateDep) -> JobManager:
    return state.jobs


async def get_federation(state: StateDep) -> FlJobManager:
    return state.federation


async def get_broker_url(state: StateDep) -> str | None:
    return state.broker_url


SettingsDep = Annotated[ControllerSettings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
ChainDep = Annotated[ChainBackend, Depends(get_chain)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
DevicesDep = Annotated[Fleet, Depends(get_devices)]
RolloutsDep = Annotated[Rollouts, Depends(get_rollouts)]
CommandsDep = Annotated[Commands, Depends(get_commands)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
FederationDep = Annotated[FlJobManager, Depends(get_federation)]
BrokerUrlDep = Annotated[str | None, Depends(get_broker_url)]


def get_principal(
    request: Request,
    state: StateDep,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
) -> Principal:
    """Authenticate the ``Authorization: Bearer`` credential (API token, device-signed JWT or OIDC JWT).

    ``_declared`` only declares the bearer scheme in the OpenAPI document; the header is parsed here, so a
    missing or malformed one gets fedge's own 401 problem."""
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("missing credential: send 'Authorization: Bearer <token>'")
    scheme, _, credential = header.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise Unauthorized("malformed Authorization header: expected 'Bearer <token>'")
    if not credential.startswith(tokens.TOKEN_PREFIX) and (
        state.fleet.credentials.known(credential) or looks_like_device_token(credential)
    ):
        principal, device = state.fleet.authenticate_device(credential)
        request.state.calling_device = device  # the row authentication read (see CallingDevice)
    elif credential.startswith(tokens.TOKEN_PREFIX) or state.oidc is None:
        with state.sessions.begin() as s:
            principal = tokens.authenticate(s, credential)
    else:
        principal = state.oidc.verify(credential)
    request.state.principal = principal  # who, for the audit log (controller.api.audit)
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]

MAX_OFFSET = 2**63 - 1
"""The largest ``offset`` a list route accepts: SQL's signed 64-bit OFFSET (beyond it: a 422, not a 500)."""
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="items to skip")]


async def get_calling_device(request: Request, _caller: PrincipalDep) -> Device | None:
    """The calling device's row as its authentication just read it (detached; None for users), so that
    a device route reads it once. ``async``: no I/O, no trip through the thread pool."""
    device: Device | None = getattr(request.state, "calling_device", None)
    return device


CallingDevice = Annotated[Device | None, Depends(get_calling_device)]


def require(*roles: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """Dependency factory: the caller must hold one of ``roles``."""
    allowed = {r.value for r in roles}

    async def check(principal: PrincipalDep) -> Principal:
        if principal.role.value not in allowed:
            raise Forbidden(
                f"role '{principal.role.value}' may not do this; needs one of: {', '.join(sorted(allowed))}"
            )
        return principal

    check.roles = frozenset(allowed)  # type: ignore[attr-defined]  # read by controller.security.roles
    return check


Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
Developer = Annotated[Principal, Depends(require(Role.ADMIN, Role.DEVELOPER))]
"""Registry, training, translation."""
RegistryReader = Annotated[Principal, Depends(require(Role.ADMIN, Role.DEVELOPER, Role.OPERATOR))]
"""Reading the registry (operators pick the model versions and reference data sets they deploy)."""
Operator = Annotated[Principal, Depends(require(Role.ADMIN, Role.OPERATOR))]
"""The fleet: devices, enrollment, deployments, commands, telemetry, events."""
FlUser = Annotated[Principal, Depends(require(Role.ADMIN, Role.DEVELOPER, Role.OPERATOR))]
"""Federated learning jobs (training on the fleet)."""
FleetCaller = Annotated[Principal, Depends(require(Role.ADMIN, Role.OPERATOR, Role.DEVICE))]
"""Fleet users, or an enrolled device (on itself: see ``DevicePath``)."""
DeviceCaller = Annotated[Principal, Depends(require(Role.DEVICE))]
ArtifactWriter = Annotated[Principal, Depends(require(Role.ADMIN, Role.JOB))]
JobCaller = Annotated[Principal, Depends(require(Role.JOB))]
"""A job's own scoped credential (an FL job's ServerApp reporting its rounds)."""


def _self_device(device_id: str, caller: Principal) -> str:
    if caller.role is Role.DEVICE and caller.subject != device_id:
        raise Forbidden(f"device {caller.subject} may only act on itself, not on device {device_id}")
    return device_id


async def self_or_user(device_id: str, caller: FleetCaller) -> str:
    """The ``{device_id}`` path parameter: a device may name only itself; users pass (role checked)."""
    return _self_device(device_id, caller)


async def self_device(device_id: str, caller: DeviceCaller) -> str:
    """The ``{device_id}`` path parameter of a device-only route: the calling device itself."""
    return _self_device(device_id, caller)


DevicePath = Annotated[str, Depends(self_or_user)]
"""``{device_id}`` that a device may only use for itself (users: admin, operator)."""
OwnDevicePath = Annotated[str, Depends(self_device)]
"""``{device_id}`` of a device-only route: must be the calling device."""
