"""The FederationEngine interface: run one federated-learning job against enrolled devices.

An engine owns the federation runtime (Flower: a SuperLink and its Fleet-only front), knows how devices
reach it (:class:`FleetEndpoint`, sent to them in the ``fl-join`` command), registers each device's
enrolled public key so that only enrolled devices take part (:meth:`FederationEngine.register_node`) and
runs a job to its end (:meth:`FederationEngine.run`). Every round report reaches the caller through
``on_round`` as the ServerApp sent it (``controller.federation.serverapp.RoundReport.to_json()``, then one
``RunSummary.to_json()``); the final global parameters are an ``.npz`` at ``spec.output_path``.

Implementations: ``flower`` (:mod:`controller.federation.flower`) and ``nvflare``
(:mod:`controller.federation.nvflare`, FLARE's simulator on the controller host: it runs the participants'
clients itself, ``deploys_to_devices = False``, so the manager registers no node and sends no ``fl-join``).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.training.base import JobState

__all__ = [
    "EngineError",
    "EngineUnavailable",
    "FederationEngine",
    "FederationOutcome",
    "FederationSpec",
    "FleetEndpoint",
    "ReportCallback",
]

ReportCallback = Callable[[Mapping[str, Any]], None]
"""Receives each report of a running job (``{"type": "round", ...}`` or ``{"type": "finished", ...}``)."""


class EngineError(Exception):
    """The engine could not do what was asked (the message says what and why)."""


class EngineUnavailable(EngineError):
    """The federation runtime is not installed, not reachable or did not start."""


@dataclass(frozen=True)
class FleetEndpoint:
    """Where a device's SuperNode connects, and how it verifies the server."""

    address: str  # host:port
    root_certificate: str  # PEM
    server_name: str | None = None


@dataclass(frozen=True)
class FederationSpec:
    """One job as the engine runs it (checked by the manager before it gets here)."""

    job_id: str
    rounds: int
    min_clients: int
    strategy: Mapping[str, Any]  # a checked controller.federation.strategies spec
    network: str
    workdir: Path
    output_path: Path
    report_url: str
    report_token: str
    participant_nodes: tuple[int, ...]  # only these nodes are sampled
    seed: int = 0
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.0
    dp_target_epsilon: float = 0.0  # 0: no local DP
    dp_delta: float = 1e-5
    dp_max_grad_norm: float = 1.0
    initial_path: Path | None = None  # .npz of initial parameters (else the seeded network)
    round_timeout_s: float = 600.0
    node_wait_s: float = 300.0  # a phase waiting this long for min_clients connected nodes fails the job
    timeout_s: float = 6 * 3600.0
    algorithm: str = "fedavg"  # fedpate: teachers' votes and a student (controller.federation.pate)
    pate: Mapping[str, Any] | None = None  # the checked PateSpec fields
    participant_devices: tuple[str, ...] = ()  # device ids, in participant_nodes' order
    dataset_path: Path | None = None  # the registered dataset, staged (engines that do not deploy)
    secure_aggregation: Mapping[str, Any] | None = None  # SecAgg+ settings (controller.federation.secagg)
    he: Mapping[str, Any] | None = None  # CKKS aggregation settings (controller.federation.he)


@dataclass(frozen=True)
class FederationOutcome:
    """How a job ended. ``reason`` is a sentence for humans when it did not succeed."""

    state: JobState
    reason: str | None = None
    run_id: str | None = None
    output_path: Path | None = None
    summary: Mapping[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


class FederationEngine(ABC):
    """A federated-learning runtime the controller drives. Thread-safe."""

    name: str
    deploys_to_devices: bool = True
    """False: the engine runs the participants' clients itself (no node registration, no fl-join)."""

    @property
    @abstractmethod
    def identity(self) -> str:
        """Which runtime holds node registrations (e.g. the SuperLink's address)."""

    @abstractmethod
    def start(self) -> None:
        """Make the runtime ready (idempotent; may take seconds). EngineUnavailable if it cannot."""

    @abstractmethod
    def fleet_endpoint(self) -> FleetEndpoint:
        """How devices reach the runtime (after :meth:`start`)."""

    @abstractmethod
    def register_node(self, device_id: str, public_key_pem: bytes) -> int:
        """Register a device's public key (PEM SubjectPublicKeyInfo, EC) for node authentication; the
        node id. Registering a key again returns the node id it already has."""

    @abstractmethod
    def unregister_node(self, node_id: int) -> None:
        """Refuse that node from now on (a revoked device). Unknown or already removed: no error."""

    @abstractmethod
    def run(
        self, spec: FederationSpec, cancel: threading.Event, on_round: ReportCallback
    ) -> FederationOutcome:
        """Run the job, blocking until it ends, times out (FAILED with a reason), stalls or ``cancel``
        is set (CANCELLED). Never raises for a failing job; EngineUnavailable when it cannot start one."""

    def deliver(self, job_id: str, report: Mapping[str, Any]) -> bool:
        """A report for a job that runs here (the report route); False when none runs here."""
        return False

    def health(self) -> None:  # noqa: B027 - optional hook
        """Raise EngineUnavailable if the runtime is down."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Stop everything the engine started. Idempotent."""
