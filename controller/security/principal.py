"""Who is calling, and what they may do."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """Roles of the API: ``admin`` everything; ``operator`` the fleet (devices, enrollment, deployments,
    commands, telemetry); ``developer`` the registry, training and translation; both run FL jobs;
    ``device`` an enrolled device acting on itself; ``job`` a training job's credential, scoped to one model.
    The route-by-route table is docs/roles.md (generated from the routes, checked by a test)."""

    ADMIN = "admin"
    OPERATOR = "operator"
    DEVELOPER = "developer"
    DEVICE = "device"
    JOB = "job"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    subject: str
    role: Role
    token_id: str | None = None
    model_id: str | None = None  # scope of a job credential
    via: str = "token"  # token | oidc
