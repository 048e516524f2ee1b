"""Liveness and readiness: ``GET /healthz``, ``GET /readyz`` (a 503 problem when a backend is down)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class HealthOut(BaseModel):
    status: str = Field(description="ok")
    version: str = Field(description="the controller's version")


class ReadinessOut(BaseModel):
    status: str = Field(description="ready")
    checks: dict[str, str] = Field(description="backend (database, storage, chain) -> ok")
