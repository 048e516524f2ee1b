"""The audit log: ``GET /v1/audit``."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, Field


class AuditOut(BaseModel):
    id: str
    at: dt.datetime
    actor: str = Field(description="the principal's subject, or 'anonymous' (no valid credential)")
    role: str | None
    via: str | None = Field(description="token | oidc | device")
    token_id: str | None = Field(description="the API token used, if one")
    method: str
    path: str
    status: int = Field(description="the HTTP status answered")
    request_id: str | None = Field(description="also the response's X-Request-ID header")
    client: str | None


class AuditPage(BaseModel):
    items: list[AuditOut]
    total: int
    limit: int
    offset: int
