"""Fleet devices: ``POST /v1/enrollment-tokens``, ``GET /v1/devices``, ``GET /v1/devices/{id}``.

Enrollment itself (``EnrollRequest`` -> ``Enrollment``) and status reports are device-facing documents of
``fedge_protocol``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field


class EnrollmentTokenRequest(BaseModel):
    labels: dict[str, str] = Field(default_factory=dict, description="labels the enrolled device gets")
    ttl_seconds: int = Field(default=3600, ge=1, le=30 * 86400)


class EnrollmentTokenOut(BaseModel):
    token: str = Field(description="one-time secret, shown once")
    expires_at: dt.datetime


class DeviceOut(BaseModel):
    id: str
    status: str
    online: bool
    labels: dict[str, Any]
    facts: dict[str, Any]
    desired: dict[str, Any] | None
    reported: dict[str, Any] | None
    model_id: str | None
    model_version: int | None
    last_error: str | None
    enrolled_at: dt.datetime
    revoked_at: dt.datetime | None
    last_seen_at: dt.datetime | None
