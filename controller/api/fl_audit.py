"""The audit trail of an FL job: every aggregated round as recorded on chain, with each participant's Merkle
leaf and inclusion proof (docs/fl-audit.md). ``fedge fl audit JOB`` verifies it."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from controller.api.deps import FederationDep, FlUser
from controller.schemas.fl_audit import FlAuditOut

router = APIRouter(tags=["federation"])


@router.get("/v1/fl/jobs/{job_id}/audit", response_model=FlAuditOut)
async def fl_job_audit(job_id: str, manager: FederationDep, _caller: FlUser) -> FlAuditOut:
    """Every round's Merkle root of the accepted updates, aggregate hash and transaction, the on-chain record
    read now, each participant's leaf and proof, and the final model's hash lineage (404: no such job)."""
    return await run_in_threadpool(manager.audit.audit, job_id)
