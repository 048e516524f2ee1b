"""Federated-learning jobs: create (checked in full: 422 names the field), watch (status, per-round metrics,
participants, privacy spent, result and its chain record), list, cancel; the ServerApp's round reports;
the controller's mirror of a device's privacy spends."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from controller.api.deps import DevicePath, FederationDep, FlUser, JobCaller, Offset
from controller.db.models import FlJob, FlParticipant, FlRound
from controller.federation.base import EngineUnavailable
from controller.federation.manager import FlJobManager, engine_unavailable
from controller.schemas.fl import (
    DevicePrivacyOut,
    FlChainOut,
    FlJobCreated,
    FlJobIn,
    FlJobOut,
    FlJobPage,
    FlParticipantOut,
    FlRejection,
    FlReportIn,
    FlResultOut,
    FlRoundOut,
    PrivacyJobOut,
    PrivacyLedgerOut,
)
from fedge_protocol.federation import ReplyKey

router = APIRouter(tags=["federation"])


def participant_out(p: FlParticipant) -> FlParticipantOut:
    return FlParticipantOut(
        device_id=p.device_id,
        state=p.state,
        node_id=p.node_id,
        command_id=p.command_id,
        rounds_trained=p.rounds_trained,
        budget_refusals=p.budget_refusals,
        rejections=p.rejections,
        epsilon=p.epsilon,
        epsilon_before=p.epsilon_before,
        budget_remaining=p.budget_remaining,
        delta=p.delta,
    )


def rounds_out(rows: list[FlRound]) -> list[FlRoundOut]:
    """Train and evaluate reports merged per round."""
    by_round: dict[int, dict[str, FlRound]] = {}
    for row in rows:
        by_round.setdefault(row.round, {})[row.kind] = row
    out = []
    for number in sorted(by_round):
        train, evaluate = by_round[number].get("train"), by_round[number].get("evaluate")
        tm = train.metrics if train else {}
        em = evaluate.metrics if evaluate else {}
        epsilon = {}
        for client in train.clients if train else []:
            metrics = client.get("metrics") or {}
            if client.get("device_id") and float(metrics.get(ReplyKey.DP_DELTA, 0.0)) > 0:
                epsilon[str(client["device_id"])] = float(metrics.get(ReplyKey.DP_EPSILON, 0.0))
        phases = [r for r in (train, evaluate) if r is not None]
        out.append(
            FlRoundOut(
                round=number,
                train_loss=tm.get(ReplyKey.TRAIN_LOSS),
                train_accuracy=tm.get(ReplyKey.TRAIN_ACCURACY),
                eval_loss=em.get(ReplyKey.EVAL_LOSS),
                eval_accuracy=em.get(ReplyKey.EVAL_ACCURACY),
                participants=list(train.participants) if train else [],
                evaluated=list(evaluate.participants) if evaluate else [],
                stragglers=list(train.stragglers) if train else [],
                budget_refused=list(train.budget_refused) if train else [],
                rejected=[FlRejection.model_validate(r) for p in phases for r in p.rejected],
                failures=sum(p.failures for p in phases),
                bytes_out=sum(p.bytes_sent for p in phases),
                bytes_in=sum(p.bytes_received for p in phases),
                seconds=sum(p.seconds for p in phases),
                epsilon=epsilon,
                metrics={p.kind: dict(p.metrics) for p in phases},
            )
        )
    return out


def fl_job_out(job: FlJob, participants: list[FlParticipant], rounds: list[FlRound]) -> FlJobOut:
    summary = dict(job.summary or {})
    result = (
        FlResultOut(model_id=job.model_id, version=job.result_version, sha256=job.result_sha256)
        if job.result_version is not None and job.result_sha256
        else None
    )
    epsilons = [p.epsilon for p in participants if p.rounds_trained > 0 and p.epsilon is not None]
    dp = (job.privacy or {}).get("dp")
    pate = (job.spec or {}).get("algorithm") == "fedpate"  # the labels' epsilon (federation/pate.py)
    return FlJobOut(
        job_id=job.id,
        status=job.state,
        engine=job.engine,
        model_id=job.model_id,
        start_version=job.start_version,
        network=job.network,
        rounds=job.rounds,
        rounds_completed=job.rounds_completed,
        min_clients=job.min_clients,
        strategy=dict(job.strategy or {}),
        privacy=dict(job.privacy or {}),
        spec=dict(job.spec or {}),
        run_id=job.run_id,
        participants=[participant_out(p) for p in participants],
        metrics=rounds_out(rounds),
        epsilon_spent=summary.get("epsilon_spent") if pate else max(epsilons) if dp and epsilons else None,
        delta=summary.get("delta") if pate else float(dp["delta"]) if dp else None,
        result=result,
        chain=FlChainOut.model_validate(job.chain) if job.chain else None,
        summary=summary,
        error=job.error,
        created_by=job.created_by,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


def _outs(manager: FlJobManager, jobs: list[FlJob]) -> list[FlJobOut]:
    ids = [j.id for j in jobs]
    parts, rounds = manager.participants(ids), manager.rounds(ids)
    return [fl_job_out(j, parts[j.id], rounds[j.id]) for j in jobs]


@router.post("/v1/fl/jobs", status_code=202, response_model=FlJobCreated)
def create_fl_job(body: FlJobIn, manager: FederationDep, caller: FlUser) -> FlJobCreated:
    """Queue a federated-learning job over enrolled devices. Everything is checked first (422 with the
    field): engine, model and start version, network, strategy parameters, min_clients against the
    eligible devices, local DP (epsilon > 0) and each participant's mirrored remaining budget."""
    try:
        job, devices = manager.submit(body, caller.subject)
    except EngineUnavailable as exc:
        raise engine_unavailable(exc) from exc
    return FlJobCreated(job_id=job.id, status=job.state, participants=devices, min_clients=job.min_clients)


@router.get("/v1/fl/jobs", response_model=FlJobPage)
def list_fl_jobs(
    manager: FederationDep,
    _caller: FlUser,
    model_id: str | None = None,
    status: Annotated[
        str | None, Query(description="queued | running | succeeded | failed | cancelled")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> FlJobPage:
    """FL jobs, newest first."""
    rows, total = manager.list_jobs(limit, offset, model_id=model_id, state=status)
    return FlJobPage(items=_outs(manager, rows), total=total, limit=limit, offset=offset)


@router.get("/v1/fl/jobs/{job_id}", response_model=FlJobOut)
def get_fl_job(job_id: str, manager: FederationDep, _caller: FlUser) -> FlJobOut:
    """Status, per-round metrics (losses, accuracy, participants, stragglers, bytes, epsilon per device),
    participants, the result version and the run's chain record."""
    return _outs(manager, [manager.get(job_id)])[0]


@router.post("/v1/fl/jobs/{job_id}/cancel", status_code=202, response_model=FlJobOut)
def cancel_fl_job(job_id: str, manager: FederationDep, _caller: FlUser) -> FlJobOut:
    """Cancel a queued job, or stop a running one (its Flower run is stopped within a few seconds)."""
    return _outs(manager, [manager.cancel(job_id)])[0]


@router.post(
    "/v1/fl/jobs/{job_id}/reports", status_code=204, response_class=Response, include_in_schema=False
)
async def report_fl_round(
    job_id: str, body: FlReportIn, manager: FederationDep, caller: JobCaller
) -> Response:
    """The job's ServerApp reports a round, its summary or its failure (the job's own token only). A train
    round's audit is answered (200) with its record as read back from the chain (docs/fl-audit.md)."""
    confirmation = await run_in_threadpool(manager.receive_report, job_id, caller, body.model_dump())
    if confirmation is not None:
        return JSONResponse(confirmation)
    return Response(status_code=204)


@router.get("/v1/devices/{device_id}/privacy", response_model=DevicePrivacyOut)
def device_privacy(device_id: DevicePath, manager: FederationDep) -> DevicePrivacyOut:
    """The controller's mirror of a device's privacy spends, per dataset, from its round reports, and the
    FL jobs it took part in. The device's own ledger stays the authority."""
    ledgers, jobs = manager.device_privacy(device_id)
    return DevicePrivacyOut(
        device_id=device_id,
        datasets=[
            PrivacyLedgerOut(
                dataset=r.dataset,
                epsilon_spent=r.epsilon_spent,
                budget_remaining=r.budget_remaining,
                delta=r.delta,
                rounds=r.rounds,
                refusals=r.refusals,
                last_job_id=r.last_job_id,
                updated_at=r.updated_at,
            )
            for r in ledgers
        ],
        jobs=[
            PrivacyJobOut(
                job_id=job.id,
                status=job.state,
                dataset=str((job.spec.get("data") or {}).get("dataset") or ""),
                rounds_trained=part.rounds_trained,
                budget_refusals=part.budget_refusals,
                epsilon=part.epsilon,
                epsilon_before=part.epsilon_before,
            )
            for job, part in jobs
        ],
    )
