"""A model's drift policy (``PUT /v1/models/{id}/drift-policy``) and the actions it took
(``GET /v1/models/{id}/drift-actions``). The logic is :mod:`controller.fleet.drift_policy`."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

OnDrift = Literal["none", "notify", "retrain"]
RetrainWith = Literal["training", "fl"]


class RolloutIn(BaseModel):
    """How a retrained version is rolled out to the devices that run the model (a canary by default)."""

    model_config = ConfigDict(extra="forbid")

    waves: list[float] = Field(
        default_factory=lambda: [0.5, 1.0], description="cumulative fractions of the devices, ending at 1.0"
    )
    max_failure_ratio: float = Field(default=0.0, ge=0, le=1)
    auto_rollback: bool = True
    device_timeout_seconds: int | None = Field(default=600, ge=1, le=7 * 86_400)

    @field_validator("waves")
    @classmethod
    def _waves(cls, value: list[float]) -> list[float]:
        if not value or any(not 0 < f <= 1 for f in value) or value != sorted(value) or value[-1] != 1.0:
            raise ValueError("waves are increasing cumulative fractions in (0, 1] ending with 1.0")
        return value


class DriftPolicyIn(BaseModel):
    """What the controller does when a device reports drift on this model."""

    model_config = ConfigDict(extra="forbid")

    on_drift: OnDrift
    retrain_with: RetrainWith = Field(
        default="training", description="retrain: a training job (the model's training spec) or an FL job"
    )
    fl: dict[str, Any] | None = Field(
        default=None,
        description="retrain_with fl: a POST /v1/fl/jobs body without model and participants (the devices "
        "that run the model take part)",
    )
    debounce_seconds: int = Field(
        default=600, ge=0, le=7 * 86_400, description="at most one action per model in this interval"
    )
    webhook_url: str | None = Field(
        default=None, max_length=2000, description="notify: POST each action here (JSON)"
    )
    rollout: RolloutIn = Field(default_factory=RolloutIn)

    @field_validator("webhook_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("webhook_url must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _fl(self) -> DriftPolicyIn:
        if (self.retrain_with == "fl") != (self.fl is not None):
            raise ValueError("retrain_with fl and the fl job settings go together")
        if self.fl is not None and self.on_drift != "retrain":
            raise ValueError("fl settings only apply with on_drift retrain")
        return self


class DriftPolicyOut(DriftPolicyIn):
    model_id: str


class DriftActionOut(BaseModel):
    id: str
    model_id: str
    kind: str = Field(description="notify | retrain")
    state: str = Field(description="notified | training | translating | deployed | failed")
    device_id: str = Field(description="the device whose drift event started the action")
    event_seq: int
    detector: str | None
    version: int | None = Field(description="the version the device ran when it drifted")
    events: int = Field(description="drift events of the model folded into this action (debounce)")
    steps: dict[str, Any] = Field(
        description="job_id | fl_job_id, trained_version, translated_version, deployment_id, devices, webhook"
    )
    error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


class DriftActionPage(BaseModel):
    items: list[DriftActionOut]
    total: int
    limit: int
    offset: int
