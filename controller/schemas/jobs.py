"""Training jobs: ``POST /v1/models/{id}/train``, ``GET /v1/jobs``, ``GET /v1/jobs/{id}``, cancel."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field

# statuses a job never leaves (controller.training.base.JobState; the SDK cannot import the runners)
TERMINAL_JOB_STATES = ("succeeded", "failed", "cancelled")


class TrainRequest(BaseModel):
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="merged over the training spec's hyperparameters"
    )


class JobCreated(BaseModel):
    job_id: str
    status: str


class JobOut(BaseModel):
    job_id: str
    model_id: str
    status: str = Field(description="queued | running | succeeded | failed | cancelled")
    runner: str
    hyperparameters: dict[str, Any]
    metrics: dict[str, Any]
    progress: float | None
    error: str | None
    model_version: int | None
    created_by: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    log_tail: list[str]
