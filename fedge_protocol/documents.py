"""The documents controller and agent exchange, as pydantic models (one definition for both ends).

Signed documents (controller -> device, see :mod:`fedge_protocol.envelope`): :class:`DesiredState` and
:class:`Command`, each naming model versions by :class:`ModelReference` (the SHA-256 read from the chain).
Device -> controller: :class:`StatusReport` (the outcome of applying a desired state), telemetry records
(:class:`CommandAck` and free-form records with a ``type``), carried as :class:`OutboxMessage` over MQTT or
:class:`TelemetryPost` over HTTP. Enrollment: :class:`EnrollRequest` -> :class:`Enrollment`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from fedge_protocol.envelope import DocumentType
from fedge_protocol.status import CommandKind, CommandState, DeploymentStatus
from fedge_protocol.topics import Leaf

DEVICE_AUDIENCE = "fedge:device-api"
"""The ``aud`` claim of device-signed API tokens (ES256 JWTs, iss = sub = device id)."""
MAX_DEVICE_TOKEN_SECONDS = 300
"""A device-signed API token lives at most this long."""


class DatasetReference(BaseModel):
    """A registered data set as a signed desired state names it: the model's drift reference (fetched and
    SHA-256 checked like the model)."""

    dataset_id: str
    sha256: str = Field(description="hex SHA-256 read from the dataset's chain record")
    size_bytes: int | None = None
    filename: str | None = Field(default=None, description="the registered file name (.npz or .csv)")
    download: str = Field(description="device route that streams the data set")


class ModelReference(BaseModel):
    """A model version as a signed document names it for one device."""

    model_id: str
    version: int
    kind: str
    sha256: str = Field(description="hex SHA-256 read from the chain record, not from the database")
    chain_record: str
    chain_tx: str | None = None
    size_bytes: int | None = None
    download: str = Field(description="device route that streams the artifact")
    sample_input: Any = Field(default=None, description="health-check input (desired states only)")
    reference: DatasetReference | None = Field(
        default=None, description="drift reference data set of the model (desired states only; optional)"
    )

    @model_serializer(mode="wrap")
    def _omit_empty_reference(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without a reference the document is exactly what it was before the field existed (same
        canonical JSON, same ETag, same signature)."""
        data: dict[str, Any] = handler(self)
        if data.get("reference") is None:
            data.pop("reference", None)
        return data


class DesiredState(BaseModel):
    """What a device should run (signed; its canonical JSON's hash is the HTTP ETag)."""

    type: Literal[DocumentType.DESIRED_STATE] = DocumentType.DESIRED_STATE
    device_id: str
    revision: int
    deployment_id: str | None = None
    model: ModelReference | None = None


class Command(BaseModel):
    """A signed device command. ``grid-run`` names the model version it runs (``model``); ``fl-join``
    names none (its params, :class:`fedge_protocol.fl_commands.FlJoin`, say which job to join)."""

    type: Literal[DocumentType.COMMAND] = DocumentType.COMMAND
    device_id: str
    command_id: str
    kind: CommandKind
    params: dict[str, Any] = Field(default_factory=dict)
    created_at: str | None = None
    model: ModelReference | None = Field(default=None, description="required for grid-run")


class StatusReport(BaseModel):
    """A device's report on applying its desired state (HTTP ``status`` route or MQTT ``state`` leaf)."""

    state: DeploymentStatus = Field(description=" | ".join(s.value for s in DeploymentStatus))
    deployment_id: str | None = None
    revision: int | None = None
    model_id: str | None = None
    version: int | None = None
    sha256: str | None = None
    error: str | None = Field(default=None, max_length=4000)
    active_model_id: str | None = Field(default=None, description="the model the device serves now")
    active_version: int | None = None
    seq: int | None = Field(default=None, description="agent outbox sequence number (deduplicates)")


class TelemetryType(StrEnum):
    """The ``type`` of telemetry records the controller interprets (others are stored as they are)."""

    COMMAND = "command"
    GRID_DAY = "grid.day"
    MONITOR = "monitor"
    """A periodic monitoring summary of the active model (:class:`MonitorSummary`)."""
    DRIFT = "monitor.drift"
    """A drift alarm (:class:`DriftEvent`); the controller also stores it as a device event."""


EVENT_TYPES: frozenset[str] = frozenset({TelemetryType.DRIFT})
"""Telemetry types the controller stores as device events (``GET /v1/devices/{id}/events``)."""


class DriftDetector(StrEnum):
    """Which detector raised a drift alarm."""

    DATA = "evidently"
    """Evidently's DataDriftPreset over a window of inputs against the reference data set."""
    ADWIN = "adwin"
    """River's ADWIN on the prediction-error stream."""
    PAGE_HINKLEY = "page-hinkley"
    """River's Page-Hinkley test on the prediction-error stream."""


class DriftEvent(BaseModel):
    """A telemetry record: drift detected on the device for one model version."""

    model_config = ConfigDict(extra="allow")

    type: Literal[TelemetryType.DRIFT] = TelemetryType.DRIFT
    model_id: str | None = None
    version: int | None = None
    detector: DriftDetector
    window: int = Field(ge=0, description="the window (data) or observation (error stream) it fired in")
    drift_share: float | None = Field(default=None, description="share of drifted features (data drift)")
    drifted_features: list[str] = Field(default_factory=list)
    scores: dict[str, float] = Field(default_factory=dict, description="per-feature drift score")
    at: str = Field(description="ISO 8601 UTC time on the device")


class MonitorSummary(BaseModel):
    """A telemetry record: what the agent's monitor saw since the last summary."""

    model_config = ConfigDict(extra="allow")

    type: Literal[TelemetryType.MONITOR] = TelemetryType.MONITOR
    model_id: str | None = None
    version: int | None = None
    inferences: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    dropped: int = Field(default=0, description="observations dropped because the monitor queue was full")
    errors: dict[str, float] | None = Field(default=None, description="me, mae, mape, bias ... (with labels)")
    drift: bool | None = None
    drift_share: float | None = None
    at: str


class CommandAck(BaseModel):
    """A telemetry record acknowledging a command: ``running``, then ``succeeded`` (with a result) or
    ``failed`` (with an error)."""

    model_config = ConfigDict(extra="allow")

    type: Literal[TelemetryType.COMMAND] = TelemetryType.COMMAND
    command_id: str
    state: CommandState
    result: dict[str, Any] | None = None
    error: str | None = None


class OutboxMessage(BaseModel):
    """One outbox entry on the ``state`` or ``telemetry`` leaf (QoS 1); ``seq`` grows per device."""

    seq: int
    kind: Literal[Leaf.STATE, Leaf.TELEMETRY]
    body: dict[str, Any]


class TelemetryPost(BaseModel):
    """One outbox record over HTTP (when the broker is out of reach)."""

    seq: int = Field(ge=1, description="agent outbox sequence number (stored once per device and seq)")
    body: dict[str, Any]


class EnrollRequest(BaseModel):
    token: str = Field(min_length=1, max_length=200)
    csr: str = Field(min_length=1, max_length=16_384, description="PEM CSR of an EC P-256 key")
    labels: dict[str, str] = Field(default_factory=dict)
    facts: dict[str, Any] = Field(default_factory=dict, description="hardware facts (CPU, RAM, GPU, ORT)")


class Enrollment(BaseModel):
    device_id: str
    certificate: str = Field(description="PEM device certificate, CN = device id")
    ca_certificate: str = Field(description="PEM device CA: pin it; it signs desired-state documents")
    api_url: str
    broker_url: str | None
    audience: str = Field(description="aud claim of device-signed JWTs")
