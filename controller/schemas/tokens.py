"""API credentials: ``POST /v1/tokens``, ``GET /v1/tokens`` (a page of ``TokenOut``)."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, Field

from controller.security.principal import Role


class TokenRequest(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    role: Role
    subject: str | None = Field(default=None, max_length=200)
    ttl_seconds: int | None = Field(default=None, ge=1, le=10 * 365 * 86400)
    model_id: str | None = Field(
        default=None, description="required for role=job: the only model it may write"
    )


class TokenCreated(BaseModel):
    id: str
    token: str = Field(description="shown once; only its hash is stored")
    role: Role
    expires_at: dt.datetime | None


class TokenOut(BaseModel):
    id: str
    name: str
    role: Role
    subject: str
    model_id: str | None
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None
    active: bool = Field(description="neither revoked nor expired")


class TokenPage(BaseModel):
    items: list[TokenOut]
    total: int
    limit: int
    offset: int
