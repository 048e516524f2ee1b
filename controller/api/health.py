"""Liveness and readiness (no credential needed)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import text

from controller import __version__
from controller.api.deps import ChainDep, EngineDep, StoreDep
from controller.errors import ServiceUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok", "version": __version__}


@router.get("/readyz")
def readyz(engine: EngineDep, store: StoreDep, chain: ChainDep) -> dict[str, Any]:
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
    return {"status": "ready", "checks": checks}
