"""SQLAlchemy models. Every schema change goes through an Alembic migration in ``migrations/versions``."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> dt.datetime:
    """Timezone-aware now in UTC."""
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    """A new UUID4 as text (ids are UUIDs everywhere)."""
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Stores aware datetimes as UTC and always returns aware UTC datetimes (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    """Declarative base of every table."""


class Dataset(Base):
    """A registered dataset: the object lives in the artifact store under ``object_key``."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending | ready
    name: Mapped[str | None] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    organization_id: Mapped[str | None] = mapped_column(String(200), index=True)
    samples_dimension: Mapped[str | None] = mapped_column(String(200))
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    filename: Mapped[str | None] = mapped_column(String(255))
    content_type: Mapped[str | None] = mapped_column(String(255))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    md5: Mapped[str | None] = mapped_column(String(32))
    bucket: Mapped[str] = mapped_column(String(63))
    object_key: Mapped[str] = mapped_column(String(36), unique=True)
    chain_address: Mapped[str | None] = mapped_column(String(42))
    chain_tx: Mapped[str | None] = mapped_column(String(66))
    created_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class Model(Base):
    """A registered model: how to train it, and the versions (artifacts) it has so far."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending | registered | training | trained
    name: Mapped[str | None] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    organization_id: Mapped[str] = mapped_column(String(200), index=True)
    developer_id: Mapped[str] = mapped_column(String(200))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    training: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    training_digest: Mapped[str] = mapped_column(String(64))
    chain_address: Mapped[str | None] = mapped_column(String(42))
    chain_tx: Mapped[str | None] = mapped_column(String(66))
    created_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    drift_policy: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # controller/fleet/drift_policy.py

    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="model", order_by="ModelVersion.version", cascade="all, delete-orphan"
    )


class ModelVersion(Base):
    """One artifact of a model (trained result, ONNX translation, quantized variant) with its own hash."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version", name="uq_model_versions_model_version"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # trained | onnx | quantized
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending | ready
    format: Mapped[str | None] = mapped_column(String(32))
    filename: Mapped[str | None] = mapped_column(String(255))
    content_type: Mapped[str | None] = mapped_column(String(255))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    md5: Mapped[str | None] = mapped_column(String(32))
    bucket: Mapped[str] = mapped_column(String(63))
    object_key: Mapped[str] = mapped_column(String(36), unique=True)
    source_version: Mapped[int | None] = mapped_column(Integer)
    descriptor: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # model.json: framework, input...
    chain_tx: Mapped[str | None] = mapped_column(String(66))
    created_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    model: Mapped[Model] = relationship(back_populates="versions")


class Job(Base):
    """A training job: queued -> running -> succeeded | failed | cancelled."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    runner: Mapped[str] = mapped_column(String(32))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # newest metrics line
    progress: Mapped[float | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(Text)
    model_version: Mapped[int | None] = mapped_column(Integer)
    token_id: Mapped[str | None] = mapped_column(String(36))
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    created_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # the replica running it and its last sign of life: recovery fails only jobs whose replica went quiet
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class ApiToken(Base):
    """An API credential. Only the SHA-256 of the token is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))  # admin | developer | device | job
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    subject: Mapped[str] = mapped_column(String(200))
    model_id: Mapped[str | None] = mapped_column(String(36))  # scope of a job token
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class Device(Base):
    """An enrolled edge device: identity (certificate), labels, hardware facts, desired and reported state."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    status: Mapped[str] = mapped_column(String(16), index=True)  # active | revoked
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    facts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    certificate: Mapped[str] = mapped_column(Text)  # PEM, CN = id
    cert_serial: Mapped[str] = mapped_column(String(64))
    desired: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # model_id, version, deployment_id
    desired_revision: Mapped[int] = mapped_column(Integer, default=0)
    reported: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # newest status report
    last_error: Mapped[str | None] = mapped_column(Text)
    enrolled_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class EnrollmentToken(Base):
    """A one-time, expiring enrollment secret. Only its SHA-256 is stored."""

    __tablename__ = "enrollment_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    device_id: Mapped[str | None] = mapped_column(String(36))


class Deployment(Base):
    """A rollout of one model version to a set of devices, in waves."""

    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(24), index=True)  # rolling, succeeded, failed, superseded...
    strategy: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # {"waves": [...]}
    selector: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    max_failure_ratio: Mapped[float] = mapped_column(default=0.0)
    auto_rollback: Mapped[bool] = mapped_column(default=True)
    current_wave: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    reference_dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"))  # drift reference
    device_timeout_s: Mapped[int | None] = mapped_column(Integer)  # pending/applying longer: timed-out
    continuous: Mapped[bool] = mapped_column(default=False)  # devices enrolling later with the labels join


class DeploymentTarget(Base):
    """One device of a deployment: its wave, state and the desired state it had before (for rollback)."""

    __tablename__ = "deployment_targets"
    __table_args__ = (UniqueConstraint("deployment_id", "device_id", name="uq_deployment_targets_device"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"), index=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    wave: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(32))
    previous: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DeviceCommand(Base):
    """A command for one device (``grid-run``): what to do, its state and its result."""

    __tablename__ = "device_commands"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # kind-specific, e.g. days
    model_id: Mapped[str | None] = mapped_column(ForeignKey("models.id"))
    version: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), index=True)  # queued | running | succeeded | failed
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class TelemetryRecord(Base):
    """One telemetry record from a device's outbox, stored once per (device, outbox sequence)."""

    __tablename__ = "device_telemetry"
    __table_args__ = (UniqueConstraint("device_id", "seq", name="uq_device_telemetry_seq"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str | None] = mapped_column(String(64))
    command_id: Mapped[str | None] = mapped_column(String(36), index=True)
    body: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class DeviceEvent(Base):
    """A device event (a drift alarm): a telemetry record of one of ``fedge_protocol.EVENT_TYPES``, stored
    with it (same transaction, same (device, outbox sequence)) and kept when telemetry is pruned."""

    __tablename__ = "device_events"
    __table_args__ = (UniqueConstraint("device_id", "seq", name="uq_device_events_seq"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(64), index=True)
    detector: Mapped[str | None] = mapped_column(String(32))
    model_id: Mapped[str | None] = mapped_column(String(36))
    version: Mapped[int | None] = mapped_column(Integer)
    body: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    occurred_at: Mapped[str | None] = mapped_column(String(40))  # the device's clock (ISO 8601)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class DriftAction(Base):
    """What a model's drift policy did about a drift event: ``notify`` (recorded, webhook) or ``retrain``
    (a training or FL job -> translated version -> canary deployment, each step recorded in ``steps``).
    One action per model per debounce interval; later events in it only count (``events``)."""

    __tablename__ = "drift_actions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # notify | retrain
    state: Mapped[str] = mapped_column(String(16), index=True)  # notified, training, ..., deployed, failed
    device_id: Mapped[str] = mapped_column(String(36))  # the device whose event started it
    event_seq: Mapped[int] = mapped_column(BigInteger)
    detector: Mapped[str | None] = mapped_column(String(32))
    version: Mapped[int | None] = mapped_column(Integer)  # the drifting version the device ran
    events: Mapped[int] = mapped_column(Integer, default=1)  # drift events folded into this action
    steps: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class FlJob(Base):
    """A federated-learning job: queued -> running -> succeeded | failed | cancelled.

    ``spec`` is the request as accepted (normalised); the result is a new version of ``model_id``."""

    __tablename__ = "fl_jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    state: Mapped[str] = mapped_column(String(16), index=True)
    engine: Mapped[str] = mapped_column(String(32))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    start_version: Mapped[int | None] = mapped_column(Integer)
    network: Mapped[str] = mapped_column(String(300))
    rounds: Mapped[int] = mapped_column(Integer)
    min_clients: Mapped[int] = mapped_column(Integer)
    strategy: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # strategies.py spec
    privacy: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the accepted request
    run_id: Mapped[str | None] = mapped_column(String(32))  # the engine's run id (Flower: uint64)
    rounds_completed: Mapped[int] = mapped_column(Integer, default=0)
    token_id: Mapped[str | None] = mapped_column(String(36))
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    error: Mapped[str | None] = mapped_column(Text)
    result_version: Mapped[int | None] = mapped_column(Integer)
    result_sha256: Mapped[str | None] = mapped_column(String(64))
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # final metrics, epsilon, timings
    chain: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the record_fl_run record and its tx
    created_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # the replica running it (its SuperLink lives there) and its last sign of life (training/claims.py)
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class FlParticipant(Base):
    """One device of an FL job: its fl-join command, its node and what it did (from round reports)."""

    __tablename__ = "fl_participants"
    __table_args__ = (UniqueConstraint("job_id", "device_id", name="uq_fl_participants_device"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("fl_jobs.id"), index=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    state: Mapped[str] = mapped_column(String(16))  # selected | invited | trained | excluded | revoked
    node_id: Mapped[str | None] = mapped_column(String(20))
    command_id: Mapped[str | None] = mapped_column(String(36))
    rounds_trained: Mapped[int] = mapped_column(Integer, default=0)
    budget_refusals: Mapped[int] = mapped_column(Integer, default=0)
    rejections: Mapped[int] = mapped_column(Integer, default=0)
    epsilon: Mapped[float | None] = mapped_column()  # device-reported, after its last round
    epsilon_before: Mapped[float | None] = mapped_column()  # the controller's mirror when the job started
    budget_remaining: Mapped[float | None] = mapped_column()
    delta: Mapped[float | None] = mapped_column()
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class FlRound(Base):
    """One phase (train or evaluate) of one round of an FL job, as the ServerApp reported it."""

    __tablename__ = "fl_rounds"
    __table_args__ = (UniqueConstraint("job_id", "round", "kind", name="uq_fl_rounds_phase"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("fl_jobs.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # train | evaluate
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    participants: Mapped[list[str]] = mapped_column(JSON, default=list)  # device ids with a valid reply
    stragglers: Mapped[list[str]] = mapped_column(JSON, default=list)  # asked, no valid reply in time
    budget_refused: Mapped[list[str]] = mapped_column(JSON, default=list)
    rejected: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    bytes_sent: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_received: Mapped[int] = mapped_column(BigInteger, default=0)
    seconds: Mapped[float] = mapped_column(default=0.0)
    clients: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # per-device metrics
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class FlAuditRound(Base):
    """One aggregated round of an FL job on chain (docs/fl-audit.md): the accepted updates' digests
    (the Merkle leaves, with who sent each), the root and aggregate recorded, and the transaction."""

    __tablename__ = "fl_audit_rounds"
    __table_args__ = (UniqueConstraint("job_id", "round", name="uq_fl_audit_rounds_round"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("fl_jobs.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    updates_root: Mapped[str] = mapped_column(String(64))
    aggregate_hash: Mapped[str] = mapped_column(String(64))
    update_count: Mapped[int] = mapped_column(Integer)
    leaves: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # index, digest, node, device
    disputes: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # failed device checks
    tx_hash: Mapped[str] = mapped_column(String(66))
    block_number: Mapped[int] = mapped_column(BigInteger)
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class FlNode(Base):
    """A device's node on the SuperLink: its enrolled public key registered for SuperNode authentication."""

    __tablename__ = "fl_nodes"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    superlink: Mapped[str] = mapped_column(String(300))  # which SuperLink holds the registration
    node_id: Mapped[str] = mapped_column(String(20))  # Flower node ids are uint64
    public_key_sha256: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), index=True)  # registered | unregistered
    registered_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    unregistered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class DevicePrivacy(Base):
    """The controller's mirror of one device's privacy spend on one dataset (from round reports). The device
    keeps the authoritative ledger; the mirror lets the controller refuse a job that cannot fit."""

    __tablename__ = "device_privacy"
    __table_args__ = (UniqueConstraint("device_id", "dataset", name="uq_device_privacy_dataset"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    dataset: Mapped[str] = mapped_column(String(200))
    epsilon_spent: Mapped[float] = mapped_column(default=0.0)
    budget_remaining: Mapped[float | None] = mapped_column()
    delta: Mapped[float | None] = mapped_column()
    rounds: Mapped[int] = mapped_column(Integer, default=0)
    refusals: Mapped[int] = mapped_column(Integer, default=0)
    last_job_id: Mapped[str | None] = mapped_column(String(36))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AuditRecord(Base):
    """One state-changing API call: who (subject, role, credential), what (method, path), the outcome."""

    __tablename__ = "audit_log"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200), index=True)  # the principal's subject, or "anonymous"
    role: Mapped[str | None] = mapped_column(String(16))
    via: Mapped[str | None] = mapped_column(String(16))  # token | oidc | device
    token_id: Mapped[str | None] = mapped_column(String(36))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(1000))
    status: Mapped[int] = mapped_column(Integer)
    request_id: Mapped[str | None] = mapped_column(String(64))
    client: Mapped[str | None] = mapped_column(String(100))
