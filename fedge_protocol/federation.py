"""The federated-learning contract between the controller's ServerApp and the agent's ClientApp.

Flower carries the messages; this module names what is inside them, once, for both ends:

* :class:`TrainKey`: the ``ConfigRecord`` (key ``"config"``) the server sends with every train message
  (``server-round`` and FedProx's ``proximal-mu`` are added by Flower's own strategies);
* :class:`ReplyKey`: the ``MetricRecord`` (key ``"metrics"``) a device replies with, next to the
  ``ArrayRecord`` (key ``"arrays"``) of its updated parameters (train) or alone (evaluate);
* a **budget refusal**: a device whose privacy budget cannot pay for the round replies with a Flower
  ``Error`` whose ``code`` is :data:`BUDGET_EXCEEDED_CODE` and whose ``reason`` starts with
  :data:`BUDGET_EXCEEDED_REASON` (then ``": "`` and a human-readable explanation). No training step ran.
  :func:`is_budget_refusal` recognises it from the code and reason alone.

Stdlib only (like the rest of ``fedge_protocol``): Flower's ``Error`` is duck-typed here.
"""

from __future__ import annotations

from typing import Final, Protocol

__all__ = [
    "ARRAYS",
    "BUDGET_EXCEEDED_CODE",
    "BUDGET_EXCEEDED_REASON",
    "CONFIG",
    "METRICS",
    "PUBLIC",
    "VOTES",
    "NodeKey",
    "PateKey",
    "ReplyKey",
    "TrainKey",
    "budget_refusal_reason",
    "is_budget_refusal",
]

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
#: FedPATE query: the ArrayRecord of public examples (array ``x``); reply: the ArrayRecord of noisy vote
#: histograms (arrays ``votes`` and, with a confidence check, ``check``)
PUBLIC = "public"
VOTES = "votes"

#: ``Error.code`` of a train reply refused for the device's privacy budget (outside Flower's own codes 0-8).
BUDGET_EXCEEDED_CODE = 4030
#: first word of that error's ``reason``
BUDGET_EXCEEDED_REASON = "fedge:privacy-budget-exceeded"


class TrainKey:
    """Keys of the train (and evaluate) ``ConfigRecord`` the ServerApp sends (plain strings)."""

    JOB_ID: Final = "job-id"
    SERVER_ROUND: Final = "server-round"  # set by Flower's strategies
    PLANNED_ROUNDS: Final = "planned-rounds"
    MODEL: Final = "model"
    SEED: Final = "seed"
    LOCAL_EPOCHS: Final = "local-epochs"
    BATCH_SIZE: Final = "batch-size"
    LR: Final = "lr"
    MOMENTUM: Final = "momentum"
    PROXIMAL_MU: Final = "proximal-mu"  # set by Flower's FedProx
    DP_TARGET_EPSILON: Final = "dp-target-epsilon"  # 0 or absent: no local DP
    DP_DELTA: Final = "dp-delta"
    DP_MAX_GRAD_NORM: Final = "dp-max-grad-norm"
    ARRAY_NAMES: Final = "array-names"  # SecAgg+ only: JSON list naming the unnamed legacy arrays, in order


class ReplyKey:
    """Keys of the ``MetricRecord`` a device replies with (plain strings)."""

    NUM_EXAMPLES: Final = "num-examples"  # the weight Flower's strategies average by
    TRAIN_LOSS: Final = "train_loss"
    TRAIN_ACCURACY: Final = "train_accuracy"
    EVAL_LOSS: Final = "eval_loss"
    EVAL_ACCURACY: Final = "eval_accuracy"
    DP_EPSILON: Final = "dp-epsilon"  # the device's epsilon on this dataset after the round (0: no DP)
    DP_DELTA: Final = "dp-delta"
    DP_NOISE_MULTIPLIER: Final = "dp-noise-multiplier"
    DP_BUDGET_REMAINING: Final = "dp-budget-remaining"
    STEPS: Final = "steps"


class PateKey:
    """Keys of the FedPATE query ``ConfigRecord`` (key ``"config"``) and of its reply's ``MetricRecord``
    (``edge_agent.learning.pate``; plain strings)."""

    JOB_ID: Final = "job-id"
    BATCH: Final = "pate-batch"  # the ledger's round key of this vote batch
    MODEL: Final = "model"
    SEED: Final = "seed"  # the teachers' shards and initial parameters (never the noise)
    NUM_TEACHERS: Final = "pate-num-teachers"  # teachers on this device
    NOISE: Final = "pate-noise"  # gaussian | laplace
    SIGMA: Final = "pate-sigma"  # the aggregate's noise (Gaussian std or Laplace scale)
    SIGMA1: Final = "pate-sigma1"  # the confidence check's aggregate noise; 0: no check histogram
    PARTIES: Final = "pate-parties"  # devices whose Gaussian shares make up the aggregate's noise
    NUM_CLASSES: Final = "pate-num-classes"
    TEACHER_EPOCHS: Final = "pate-teacher-epochs"
    LR: Final = "lr"
    # reply metrics (besides ReplyKey.NUM_EXAMPLES and the ReplyKey.DP_* keys)
    TEACHERS: Final = "pate-teachers"
    TEACHER_ACCURACY: Final = "pate-teacher-accuracy"


class NodeKey:
    """Keys of a SuperNode's ``--node-config`` that the device's ClientApp reads (written by the agent's
    SuperNode service; plain strings)."""

    DATA_PATH: Final = "fedge-data-path"  # the device's local .npz (never sent anywhere)
    STATE_DIR: Final = "fedge-state-dir"  # the agent's state dir: privacy ledgers, the round-lock socket
    DATASET_ID: Final = "fedge-dataset-id"  # the ledger's key (default: the data file's stem)
    PRIVACY_BUDGET: Final = "fedge-privacy-budget"  # epsilon the device grants on that dataset, all jobs
    PRIVACY_DELTA: Final = "fedge-privacy-delta"
    PRIVACY_ACCOUNTANT: Final = "fedge-privacy-accountant"  # prv | rdp
    REQUIRE_DP: Final = "fedge-require-dp"  # refuse rounds without local DP


class _ErrorLike(Protocol):
    @property
    def code(self) -> int: ...

    @property
    def reason(self) -> str | None: ...


def budget_refusal_reason(explanation: str) -> str:
    """The ``reason`` of a budget refusal error."""
    return f"{BUDGET_EXCEEDED_REASON}: {explanation}"


def is_budget_refusal(error: _ErrorLike) -> bool:
    """True when a Flower reply ``Error`` is a device's privacy-budget refusal."""
    return error.code == BUDGET_EXCEEDED_CODE and (error.reason or "").startswith(BUDGET_EXCEEDED_REASON)
