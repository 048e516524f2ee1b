"""Federated-learning jobs: ``POST /v1/fl/jobs``, ``GET /v1/fl/jobs[/{id}]``, ``POST /v1/fl/jobs/{id}/cancel``
and the controller's privacy mirror ``GET /v1/devices/{id}/privacy``.

Pure pydantic (the SDK imports these). Field names follow the job spec: ``privacy.dp`` is local DP-SGD on
each device (the device's ledger is the authority), ``privacy.central_dp`` the server-side DP wrapper.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# statuses an FL job never leaves (the SDK cannot import the manager)
TERMINAL_FL_STATES = ("succeeded", "failed", "cancelled")
ENGINES = ("flower", "nvflare")


class FlModelIn(BaseModel):
    """The registered model the job trains; its result becomes the model's next version."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(min_length=1, max_length=36)
    version: int | None = Field(
        default=None, ge=1, description="start from this version (the result of an earlier FL job)"
    )
    network: str | None = Field(
        default=None,
        max_length=300,
        description="network the devices train: a built-in name (digits-linear, digits-mlp, digits-cnn) or "
        "module:function; default: the start version's, else the training spec's hyperparameters.network",
    )


class FlParticipantsIn(BaseModel):
    """Which enrolled devices take part: ids and/or a label selector (every label must match)."""

    model_config = ConfigDict(extra="forbid")

    device_ids: list[str] | None = Field(default=None, max_length=10_000)
    selector: dict[str, str] | None = None

    @model_validator(mode="after")
    def _some(self) -> FlParticipantsIn:
        if not self.device_ids and not self.selector:
            raise ValueError("give device_ids or a selector")
        return self


class FlStrategyIn(BaseModel):
    """An aggregation strategy of ``controller.federation.strategies`` and its own parameters."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="fedavg", description="fedavg, fedavgm, fedprox, fedtrimmedavg, fedmedian, "
                      "krum, multikrum")  # fmt: skip
    params: dict[str, float | int] = Field(
        default_factory=dict,
        description="e.g. fedprox {proximal_mu} (or mu), fedtrimmedavg {beta}, krum {num_malicious_nodes}",
    )


class FlLocalDpIn(BaseModel):
    """DP-SGD on every device, planned per device over the whole job."""

    model_config = ConfigDict(extra="forbid")

    epsilon: float = Field(description="target epsilon per device over the whole job (> 0)")
    delta: float = Field(default=1e-5, description="in (0, 1); devices account at their own delta")
    max_grad_norm: float = Field(default=1.0, description="per-example clipping norm (> 0)")
    accountant: Literal["prv", "rdp"] = "prv"

    @field_validator("epsilon")
    @classmethod
    def _epsilon(cls, value: float) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"epsilon must be a finite number > 0, got {value}")
        return value

    @field_validator("delta")
    @classmethod
    def _delta(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError(f"delta must be in (0, 1), got {value}")
        return value

    @field_validator("max_grad_norm")
    @classmethod
    def _norm(cls, value: float) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"max_grad_norm must be > 0, got {value}")
        return value


class FlCentralDpIn(BaseModel):
    """Server-side DP (Flower's DifferentialPrivacyServerSide{Fixed,Adaptive}Clipping)."""

    model_config = ConfigDict(extra="forbid")

    clipping: Literal["fixed", "adaptive"] = "fixed"
    noise_multiplier: float = Field(ge=0)
    clipping_norm: float | None = Field(default=None, gt=0, description="fixed clipping")
    num_sampled_clients: int | None = Field(default=None, ge=1, description="default: min_clients")
    initial_clipping_norm: float | None = Field(default=None, gt=0)
    target_clipped_quantile: float | None = Field(default=None, ge=0, le=1)
    clip_norm_lr: float | None = Field(default=None, gt=0)
    clipped_count_stddev: float | None = Field(default=None, ge=0)


class FlSecureAggregationIn(BaseModel):
    """Flower's SecAgg+: devices send masked, quantised updates; the controller learns only their weighted
    average (docs/fl-secagg.md). Checked against the job's devices and strategy when it is submitted."""

    model_config = ConfigDict(extra="forbid")

    num_shares: int | None = Field(
        default=None,
        ge=3,
        le=10_000,
        description="Shamir shares of each device's secrets (3..min_clients, "
        "odd unless it equals the eligible devices; default min_clients, made odd)",
    )
    reconstruction_threshold: int | None = Field(
        default=None,
        ge=2,
        le=10_000,
        description="shares that rebuild a dropped device's secret (more than "
        "half of num_shares, fewer than all; default num_shares // 2 + 1)",
    )
    clipping_range: float = Field(default=8.0, gt=0, le=1e6, description="weighted parameters are clipped "
                                  "to [-clipping_range, clipping_range] before quantisation")  # fmt: skip
    quantization_range: int = Field(default=2**22, ge=2, lt=2**32, description="quantisation levels")
    max_weight: float = Field(default=1000.0, gt=0, le=1e12, description="largest num-examples of a device "
                              "(its weight is num_examples / max_weight)")  # fmt: skip

    @model_validator(mode="after")
    def _threshold(self) -> FlSecureAggregationIn:
        shares, threshold = self.num_shares, self.reconstruction_threshold
        if shares is not None and threshold is not None and not shares // 2 < threshold < shares:
            raise ValueError(
                f"reconstruction_threshold must be more than half of num_shares and less than num_shares "
                f"({shares // 2 + 1}..{shares - 1} for {shares}), got {threshold}"
            )
        return self


class FlHeIn(BaseModel):
    """CKKS aggregation (TenSEAL): a participating device makes the key set and seals its secret to the
    others' device keys; the controller adds ciphertexts with the public context only (docs/fl-he.md)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    poly_modulus_degree: Literal[4096, 8192, 16384] = Field(
        default=4096, description="CKKS ring degree: slots per ciphertext = degree / 2"
    )
    scale_bits: int = Field(
        default=34, ge=20, le=50, description="CKKS scale 2^scale_bits (values stay below 2^(59-scale_bits))"
    )
    masking: bool = Field(
        default=False,
        description="pairwise masks (ECDH of the device keys) on top: a participant colluding with the "
        "controller sees only masked updates; a round with a dropout keeps the previous model",
    )


class FlPrivacyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dp: FlLocalDpIn | None = None
    central_dp: FlCentralDpIn | None = None
    secure_aggregation: FlSecureAggregationIn | None = Field(
        default=None, description="SecAgg+ (composes with dp; not with central_dp or robust strategies)"
    )
    he: FlHeIn | None = Field(
        default=None,
        description="HE aggregation (composes with dp; FedAvg only; not with central_dp or SecAgg+)",
    )

    @model_validator(mode="after")
    def _he_alone(self) -> FlPrivacyIn:
        if self.he is not None and self.he.enabled:
            if self.central_dp is not None:
                raise ValueError("he and central_dp exclude each other: server-side clipping needs plaintext")
            if self.secure_aggregation is not None:
                raise ValueError("he and secure_aggregation exclude each other (he.masking adds masks to HE)")
        return self


class FlDataIn(BaseModel):
    """What the job expects of each device's local data."""

    model_config = ConfigDict(extra="forbid")

    dataset: str | None = Field(
        default=None,
        max_length=200,
        description="the device-side dataset name (its privacy ledger's key); default: the registered "
        "dataset's name, else its id",
    )
    input_shape: list[int | None] | None = Field(
        default=None, description="batch-first example shape; default from the dataset's samples_dimension"
    )
    num_classes: int | None = Field(default=None, ge=2)


class FlPateIn(BaseModel):
    """FedPATE (seed 5.3.3): teachers on every device's private data vote on the controller's public set with
    distributed noise; Confident-GNMax labels it; a student learns the labels (docs/fl-pate.md)."""

    model_config = ConfigDict(extra="forbid")

    num_teachers: int = Field(ge=1, le=100_000, description="teachers per device (disjoint data shards)")
    noise: Literal["gaussian", "laplace"] = "gaussian"
    sigma: float = Field(default=10.0, description="the aggregate's noise: Gaussian std or Laplace scale")
    sigma1: float = Field(default=0.0, description="the confidence check's noise std; 0: answer every query")
    threshold: float | None = Field(default=None, description="votes the check needs (required with sigma1)")
    epsilon: float | None = Field(default=None, description="target epsilon: stop answering before it")
    delta: float = Field(default=1e-5, description="in (0, 1)")
    num_queries: int = Field(default=300, ge=1, le=300, description="public examples to label")
    public: Literal["digits"] = Field(default="digits", description="the controller's public set")
    batch_queries: int = Field(default=0, ge=0, le=300, description="queries per message (0: all in one)")
    teacher_epochs: int = Field(default=100, ge=1, le=10_000, description="full-batch steps per teacher")
    teacher_lr: float = Field(default=0.5, gt=0, le=100)
    student_epochs: int = Field(default=300, ge=1, le=100_000, description="full-batch steps of the student")
    student_lr: float = Field(default=0.5, gt=0, le=100)
    self_training: int = Field(
        default=2, ge=0, le=10, description="rounds of pseudo-labelling the whole public set with the student"
    )

    @field_validator("sigma", "sigma1", "epsilon", "threshold")
    @classmethod
    def _finite(cls, value: float | None, info: Any) -> float | None:
        if value is None:
            return value
        if not math.isfinite(value) or value < 0 or (info.field_name in ("sigma", "epsilon") and value == 0):
            bound = "> 0" if info.field_name in ("sigma", "epsilon") else ">= 0"
            raise ValueError(f"{info.field_name} must be a finite number {bound}, got {value}")
        return value

    @field_validator("delta")
    @classmethod
    def _delta(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError(f"delta must be in (0, 1), got {value}")
        return value

    @model_validator(mode="after")
    def _check(self) -> FlPateIn:
        if self.sigma1 > 0 and self.threshold is None:
            raise ValueError("give threshold (the votes a confident query needs) with sigma1 > 0")
        if self.sigma1 == 0 and self.threshold is not None:
            raise ValueError("threshold needs sigma1 > 0 (the check's noise)")
        return self


class FlJobIn(BaseModel):
    """``POST /v1/fl/jobs``."""

    model_config = ConfigDict(extra="forbid")

    engine: Literal["flower", "nvflare"] = "flower"
    model: FlModelIn
    participants: FlParticipantsIn
    min_clients: int | None = Field(
        default=None, ge=1, description="devices every round needs (default: all eligible, at most 2)"
    )
    min_fraction: float | None = Field(
        default=None, gt=0, le=1, description="fraction of the eligible devices every round needs"
    )
    rounds: int = Field(default=3, ge=1, le=10_000)
    local_epochs: int = Field(default=1, ge=1, le=1000)
    batch_size: int = Field(default=32, ge=1, le=65_536)
    lr: float = Field(default=0.1, gt=0, le=100)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    strategy: FlStrategyIn = Field(default_factory=FlStrategyIn)
    privacy: FlPrivacyIn = Field(default_factory=FlPrivacyIn)
    data: FlDataIn = Field(default_factory=FlDataIn)
    round_timeout: float = Field(
        default=600.0, ge=1, le=86_400, description="seconds a phase waits for the devices' replies"
    )
    algorithm: Literal["fedavg", "fedpate"] = Field(
        default="fedavg", description="fedavg: the strategy's rounds; fedpate: teachers' votes and a student"
    )
    pate: FlPateIn | None = Field(default=None, description="FedPATE settings (with algorithm fedpate)")

    @model_validator(mode="after")
    def _pate(self) -> FlJobIn:
        if (self.algorithm == "fedpate") != (self.pate is not None):
            raise ValueError("algorithm fedpate and the pate settings go together")
        return self

    @model_validator(mode="after")
    def _he_fedavg(self) -> FlJobIn:
        he = self.privacy.he
        if he is not None and he.enabled:
            if self.strategy.name.lower() != "fedavg" or self.algorithm != "fedavg":
                raise ValueError(
                    "privacy.he aggregates by summing ciphertexts: strategy fedavg only, "
                    f"not {self.strategy.name!r}"
                    if self.algorithm == "fedavg"
                    else "privacy.he runs with algorithm fedavg only"
                )
            if self.engine != "flower":
                raise ValueError("privacy.he runs on the flower engine only")
        return self


class FlJobCreated(BaseModel):
    job_id: str
    status: str
    participants: list[str] = Field(description="the eligible devices chosen")
    min_clients: int


class FlParticipantOut(BaseModel):
    device_id: str
    state: str = Field(description="selected | invited | trained | excluded | revoked | skipped")
    node_id: str | None
    command_id: str | None = Field(description="the device's fl-join command")
    rounds_trained: int
    budget_refusals: int
    rejections: int
    epsilon: float | None = Field(description="the device's epsilon on the dataset after its last round")
    epsilon_before: float | None = Field(description="the controller's mirror when the job started")
    budget_remaining: float | None
    delta: float | None


class FlRejection(BaseModel):
    device_id: str | None
    node_id: str
    reason: str


class FlRoundOut(BaseModel):
    """One round (train then evaluate) as the ServerApp reported it."""

    round: int
    train_loss: float | None
    train_accuracy: float | None
    eval_loss: float | None
    eval_accuracy: float | None
    participants: list[str] = Field(description="devices whose train update was aggregated")
    evaluated: list[str] = Field(description="devices that evaluated the new global model")
    stragglers: list[str] = Field(description="invited devices without a usable train reply in time")
    budget_refused: list[str] = Field(description="devices whose privacy budget refused the round")
    rejected: list[FlRejection]
    failures: int = Field(description="replies that were errors (train + evaluate)")
    bytes_out: int = Field(description="parameters sent to devices (train + evaluate)")
    bytes_in: int = Field(description="parameters received from devices")
    seconds: float
    epsilon: dict[str, float] = Field(description="device id -> its epsilon after this round (local DP)")
    metrics: dict[str, dict[str, float]] = Field(description="aggregated metrics by phase")


class FlChainOut(BaseModel):
    """The run's on-chain record (``ChainBackend.record_fl_run``)."""

    run_id: str
    tx_hash: str
    block_number: int
    contract_address: str
    rounds: int
    strategy: str
    participant_hashes: list[str] = Field(description="SHA-256 of each participant's device id, sorted")
    participants_digest: str
    dp_epsilon: float | None
    dp_delta: float | None
    he_enabled: bool
    final_model_hash: str
    model_id: str | None
    recorded_at: int


class FlResultOut(BaseModel):
    model_id: str
    version: int
    sha256: str
    kind: str = "trained"
    format: str = "pytorch"


class FlJobOut(BaseModel):
    job_id: str
    status: str = Field(description="queued | running | succeeded | failed | cancelled")
    engine: str
    model_id: str
    start_version: int | None
    network: str
    rounds: int = Field(description="planned rounds")
    rounds_completed: int
    min_clients: int
    strategy: dict[str, Any]
    privacy: dict[str, Any]
    spec: dict[str, Any]
    run_id: str | None
    participants: list[FlParticipantOut]
    metrics: list[FlRoundOut] = Field(description="per-round metrics, oldest first")
    epsilon_spent: float | None = Field(
        description="max over contributing devices of their reported epsilon after the job (an upper bound)"
    )
    delta: float | None
    result: FlResultOut | None
    chain: FlChainOut | None
    summary: dict[str, Any]
    error: str | None
    created_by: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


class FlJobPage(BaseModel):
    items: list[FlJobOut]
    total: int
    limit: int
    offset: int


class FlReportIn(BaseModel):
    """A report of the job's ServerApp (``RoundReport``/``RunSummary`` JSON, or a failure)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["round", "finished", "failed"]
    job_id: str | None = None


class PrivacyLedgerOut(BaseModel):
    dataset: str
    epsilon_spent: float = Field(description="the device's epsilon on this dataset as it last reported it")
    budget_remaining: float | None
    delta: float | None
    rounds: int
    refusals: int
    last_job_id: str | None
    updated_at: dt.datetime


class PrivacyJobOut(BaseModel):
    job_id: str
    status: str
    dataset: str
    rounds_trained: int
    budget_refusals: int
    epsilon: float | None
    epsilon_before: float | None


class DevicePrivacyOut(BaseModel):
    """The controller's mirror of a device's privacy spends (the device's own ledger is the authority)."""

    device_id: str
    datasets: list[PrivacyLedgerOut]
    jobs: list[PrivacyJobOut]
