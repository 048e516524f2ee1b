"""The ``fl-join`` device command: what a device needs to take part in one federated-learning job.

The controller sends it as a signed :class:`~fedge_protocol.documents.Command` (kind
:attr:`~fedge_protocol.status.CommandKind.FL_JOIN`, no ``model``) whose ``params`` are a :class:`FlJoin`.
The agent starts a Flower SuperNode (a supervised child service) that

* connects to ``superlink`` (``host:port`` of the controller's Fleet-only front: only the Fleet API,
  never the SuperLink's Control API) over TLS, verifying the server against ``tls.root_certificate``;
* signs every Fleet request with the device's own enrolled EC P-256 key (``node_auth``: the SuperNode's
  ``--auth-supernode-private-key`` is that key in OpenSSH format; the controller has registered the
  public key of the device certificate, and ``node_id`` is the id the SuperLink gave it);
* trains ``network`` (a name or ``module:function`` of :mod:`edge_agent.learning.models`) on the local
  dataset named ``data.dataset`` (the privacy ledger's key, SuperNode ``fedge-dataset-id``), whose
  examples have shape ``data.input_shape``;
* checks ``privacy`` against its own budget before joining, and again before every round (the device is
  the authority on what it spends; a refused round is a Flower ``Error`` with
  :data:`fedge_protocol.federation.BUDGET_EXCEEDED_CODE`);
* stops the SuperNode once the job has ended (its command is then acknowledged ``succeeded``) or after
  ``leave_after`` (ISO 8601, UTC), whichever comes first.

The agent acknowledges the command like any other (telemetry ``{"type": "command", "state": ...}``):
``running`` once the SuperNode is up, ``failed`` with an error when it cannot join (no such dataset, a
budget the plan does not fit, no SuperNode extra installed), ``succeeded`` when it left the job.

pydantic + stdlib only (this is ``fedge_protocol``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["FlData", "FlJoin", "FlLeave", "FlPrivacyPlan", "FlTls"]


class FlTls(BaseModel):
    """How the SuperNode verifies the server it connects to (TLS is always on)."""

    model_config = ConfigDict(extra="forbid")

    root_certificate: str = Field(description="PEM CA certificate that signed the Fleet front's certificate")
    server_name: str | None = Field(default=None, description="name to verify instead of superlink's host")


class FlData(BaseModel):
    """What the job expects of the device's local data."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(min_length=1, max_length=200, description="local dataset name (ledger key)")
    input_shape: list[int | None] = Field(description="shape of the examples, batch first: [null, 1, 8, 8]")
    num_classes: int | None = Field(default=None, ge=2)
    min_examples: int = Field(default=1, ge=1)


class FlPrivacyPlan(BaseModel):
    """The privacy the job plans to spend on each device (the device checks it against its ledger)."""

    model_config = ConfigDict(extra="forbid")

    local_dp: bool = Field(description="DP-SGD on the device (example-level)")
    target_epsilon: float | None = Field(default=None, gt=0, description="per device over the whole job")
    delta: float | None = Field(default=None, gt=0, lt=1)
    max_grad_norm: float | None = Field(default=None, gt=0)
    accountant: Literal["prv", "rdp"] | None = None
    central_dp: bool = Field(default=False, description="the server also adds noise to the aggregate")


class FlJoin(BaseModel):
    """``params`` of an ``fl-join`` command."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(description="the controller's FL job id (also the devices' ledger job key)")
    engine: Literal["flower"] = "flower"
    superlink: str = Field(description="host:port of the Fleet-only front the SuperNode connects to")
    tls: FlTls
    node_auth: bool = Field(default=True, description="sign Fleet requests with the device key")
    node_id: int | None = Field(default=None, description="the node id registered for the device's key")
    network: str = Field(description="network name or module:function the device trains")
    rounds: int = Field(ge=1)
    local_epochs: int = Field(ge=1)
    round_timeout_s: float = Field(gt=0)
    data: FlData
    privacy: FlPrivacyPlan
    leave_after: str = Field(description="ISO 8601 UTC time after which the SuperNode stops anyway")


class FlLeave(BaseModel):
    """``params`` of an ``fl-leave`` command (kind :attr:`~fedge_protocol.status.CommandKind.FL_LEAVE`, no
    ``model``): the device leaves the job. Its ``fl-join`` is acknowledged ``succeeded`` (``result.left``
    says why), the SuperNode stops once the device is in no job any more. Leaving a job the device is not
    in succeeds too (nothing to do)."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(description="the FL job to leave")
