"""Liveness and readiness (no credential needed)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from controller import __version__
from controller.api.deps import ChainDep, EngineDep, StoreDep
from controller.errors import ServiceUnavailable
from controller.schemas.health import HealthOut, ReadinessOut

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut)
def healthz() -> HealthOut:
    """The process is up."""
    return HealthOut(status="ok", version=__version__)


@router.get("/readyz", response_model=ReadinessOut)
def readyz(engine: EngineDep, store: StoreDep, chain: ChainDep) -> ReadinessOut:
    """Every backend answers: database, artifact store, chain."""
    checks: dict[str, str] = {}
    failed: list[str] = []
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {exc}"
        failed.append("database")
    try:
        store.health()
        checks["storage"] = "ok"
    except Exception as exc:
        checks["storage"] = f"error: {exc}"
        failed.append("storage")
    try:
        chain.health()
        checks["chain"] = "ok"
    except Exception as exc:
        checks["chain"] = f"error: {exc}"
        failed.append("chain")
    if failed:
        raise ServiceUnavailable(f"not ready: {', '.join(failed)}", checks=checks)
    return ReadinessOut(status="ready", checks=checks)
