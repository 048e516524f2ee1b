"""Dependency aliases: handlers declare what they need (state, registry, caller, role)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from controller.errors import Forbidden, Unauthorized
from controller.registry.service import Registry
from controller.security import tokens
from controller.security.principal import Principal, Role
from controller.state import ControllerState


def get_state(request: Request) -> ControllerState:
    state: ControllerState = request.app.state.fedge
    return state


StateDep = Annotated[ControllerState, Depends(get_state)]


def get_registry(state: StateDep) -> Registry:
    return state.registry


RegistryDep = Annotated[Registry, Depends(get_registry)]


def get_principal(request: Request, state: StateDep) -> Principal:
    """Authenticate the ``Authorization: Bearer`` credential (API token, device-signed JWT or OIDC JWT)."""
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("missing credential: send 'Authorization: Bearer <token>'")
    scheme, _, credential = header.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise Unauthorized("malformed Authorization header: expected 'Bearer <token>'")
    if not credential.startswith(tokens.TOKEN_PREFIX) and state.fleet is not None:
        from controller.fleet.devices import looks_like_device_token

        if looks_like_device_token(credential):
            return state.fleet.authenticate(credential)
    if credential.startswith(tokens.TOKEN_PREFIX) or state.oidc is None:
        with state.sessions.begin() as s:
            return tokens.authenticate(s, credential)
    return state.oidc.verify(credential)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(*roles: Role) -> Callable[[Principal], Principal]:
    """Dependency factory: the caller must hold one of ``roles``."""
    allowed = {r.value for r in roles}

    def check(principal: PrincipalDep) -> Principal:
        if principal.role.value not in allowed:
            raise Forbidden(
                f"role '{principal.role.value}' may not do this; needs one of: {', '.join(sorted(allowed))}"
            )
        return principal

    return check


Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
Developer = Annotated[Principal, Depends(require(Role.ADMIN, Role.DEVELOPER))]
AnyCaller = Annotated[Principal, Depends(require(Role.ADMIN, Role.DEVELOPER, Role.DEVICE))]
DeviceCaller = Annotated[Principal, Depends(require(Role.DEVICE))]
ArtifactWriter = Annotated[Principal, Depends(require(Role.ADMIN, Role.JOB))]
