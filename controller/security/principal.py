"""Who is calling, and what they may do."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """Roles of the API. ``job`` credentials are scoped to one model."""

    ADMIN = "admin"
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
