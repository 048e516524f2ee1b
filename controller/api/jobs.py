"""Training jobs: start one for a model, watch it (status, metrics, logs), cancel it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from controller.api.deps import Developer, JobsDep, Offset
from controller.db.models import Job
from controller.schemas.jobs import JobCreated, JobOut, TrainRequest
from controller.training.base import TERMINAL
from controller.training.manager import JobManager

router = APIRouter(tags=["jobs"])


def job_out(manager: JobManager, job: Job, tail: int = 20) -> JobOut:
    return JobOut(
        job_id=job.id,
        model_id=job.model_id,
        status=job.state,
        runner=job.runner,
        hyperparameters=job.hyperparameters or {},
        metrics=job.metrics or {},
        progress=job.progress,
        error=job.error,
        model_version=job.model_version,
        created_by=job.created_by,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        log_tail=manager.log_tail(job.id, tail) if tail else [],
    )


@router.post("/v1/models/{model_id}/train", status_code=202, response_model=JobCreated)
def train_model(
    model_id: str, manager: JobsDep, caller: Developer, body: TrainRequest | None = None
) -> JobCreated:
    """Queue a training job. The dataset is checked against its chain record before the program runs;
    the result becomes a new model version verified on chain."""
    job = manager.submit(model_id, (body or TrainRequest()).hyperparameters, caller.subject)
    return JobCreated(job_id=job.id, status=job.state)


@router.get("/v1/jobs", response_model=list[JobOut])
def list_jobs(
    manager: JobsDep,
    _caller: Developer,
    model_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> list[JobOut]:
    """Jobs, newest first."""
    return [job_out(manager, j, tail=0) for j in manager.list_jobs(model_id, limit, offset)]


@router.get("/v1/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: str, manager: JobsDep, _caller: Developer) -> JobOut:
    """Status, timestamps, newest metrics, error and the log's last lines."""
    return job_out(manager, manager.get(job_id))


@router.post("/v1/jobs/{job_id}/cancel", status_code=202, response_model=JobOut)
def cancel_job(job_id: str, manager: JobsDep, _caller: Developer) -> JobOut:
    """Cancel a queued or running job (a running one is killed within a second or two)."""
    return job_out(manager, manager.cancel(job_id))


@router.get("/v1/jobs/{job_id}/logs", response_class=StreamingResponse)
def job_logs(job_id: str, manager: JobsDep, _caller: Developer, follow: bool = False) -> StreamingResponse:
    """The job's log as text; with ``follow=true`` the stream stays open until the job ends."""
    manager.get(job_id)  # 404 for unknown jobs
    path = manager.workdir(job_id) / "job.log"

    def stream() -> Iterator[bytes]:
        pos = 0
        while True:
            if path.exists():
                with open(path, "rb") as fh:
                    fh.seek(pos)
                    while chunk := fh.read(64 * 1024):
                        pos += len(chunk)
                        yield chunk
            if not follow or manager.get(job_id).state in TERMINAL:
                if follow and path.exists() and path.stat().st_size > pos:
                    continue  # drain what was written while the job ended
                return
            time.sleep(0.5)

    return StreamingResponse(stream(), media_type="text/plain; charset=utf-8")
