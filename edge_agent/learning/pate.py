"""FedPATE on the device: many teachers on disjoint shards of the device's own data, noisy vote histograms
on the controller's public examples, paid from the device's privacy ledger.

One ``query`` message (Flower's Message API, ``MessageType.QUERY``) carries a batch of public unlabeled
examples (ArrayRecord :data:`~fedge_protocol.federation.PUBLIC`, array ``x``) and a ConfigRecord with the
:class:`~fedge_protocol.federation.PateKey` settings. The device

1. splits its training examples into ``pate-num-teachers`` disjoint shards (a permutation drawn from the
   job's seed) and trains one teacher per shard from the same initial parameters (full-batch gradient
   descent, ``pate-teacher-epochs`` steps: a shard holds a handful of examples);
2. counts the teachers' votes per public example (a ``[n, classes]`` histogram: one example of the device
   changes one teacher, hence one vote, hence two counts by 1);
3. adds its share of the aggregation noise: Gaussian ``N(0, sigma^2 / parties)`` (the shares of the
   ``parties`` devices sum to ``N(0, sigma^2)``, GNMax's noise); with a confidence check
   (``pate-sigma1`` > 0) a second histogram of the same votes with an independent share
   ``N(0, sigma1^2 / parties)`` (the controller checks the summed one against the threshold). A Laplace
   share (a difference of Gamma draws) would have no device-level bound of its own, so for Laplace the
   device adds a full ``Lap(sigma)`` itself. The noise comes from ``os.urandom``, never from the job's seed;
4. before any vote leaves, charges its ledger: the controller sees this device's noisy histograms, so the
   device pays, for every example of the batch, a Gaussian mechanism with L2 sensitivity sqrt(2) at its
   *own* noise share (noise multiplier ``sigma / sqrt(2 parties)``, sample rate 1, one step per example;
   the check histogram likewise at ``sigma1``), in the same accountant history as its DP-SGD rounds on
   that dataset. Laplace (pure ``2/sigma``-DP per example) is charged as the Gaussian that dominates it in
   Renyi DP (noise multiplier ``sigma/2``), which needs the ``rdp`` accountant: a ``prv`` device refuses
   Laplace batches. A batch the budget cannot pay is refused with the budget-refusal error before any
   teacher is trained. Whatever the controller claims (``parties``, ``sigma``), the device pays for the
   noise it adds itself.

The reply carries ArrayRecord :data:`~fedge_protocol.federation.VOTES` (``votes``, float64) and the usual
MetricRecord (``num-examples``, the ``dp-*`` keys, ``pate-teachers``, ``pate-teacher-accuracy`` on the
device's evaluation split).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from numpy.typing import NDArray
from torch import nn

from edge_agent.learning import dp
from edge_agent.learning.data import LocalData
from edge_agent.learning.ledger import BudgetExceeded, PrivacyLedger
from edge_agent.learning.models import ModelFactory, resolve_factory
from fedge_protocol.federation import (
    BUDGET_EXCEEDED_CODE,
    CONFIG,
    METRICS,
    PUBLIC,
    VOTES,
    PateKey,
    ReplyKey,
    budget_refusal_reason,
)

__all__ = [
    "NOISES",
    "PateError",
    "TeacherEnsemble",
    "VoteSettings",
    "answer_votes",
    "charge_votes",
    "make_query_handler",
    "noise_share",
    "settings_from",
    "shard_indices",
    "train_teachers",
    "vote_histogram",
]

log = logging.getLogger("fedge.agent.learning")

NOISES = ("gaussian", "laplace")


class PateError(ValueError):
    """A vote request the device will not answer (bad settings, too few examples for the teachers)."""


@dataclass(frozen=True)
class VoteSettings:
    """One vote request, as the ServerApp asked for it (checked)."""

    job: str
    batch: int
    network: str
    seed: int
    num_teachers: int
    noise: str
    sigma: float
    parties: int
    num_classes: int
    sigma1: float = 0.0
    teacher_epochs: int = 100
    lr: float = 0.5

    def __post_init__(self) -> None:
        if self.noise not in NOISES:
            raise PateError(f"noise is one of {', '.join(NOISES)}, not {self.noise!r}")
        if self.num_teachers < 1 or self.parties < 1 or self.num_classes < 2 or self.teacher_epochs < 1:
            raise PateError("num_teachers, parties and teacher epochs must be >= 1, num_classes >= 2")
        if not (math.isfinite(self.sigma) and self.sigma > 0) or not (math.isfinite(self.lr) and self.lr > 0):
            raise PateError(f"sigma and lr must be finite and > 0, got {self.sigma}, {self.lr}")
        if not (math.isfinite(self.sigma1) and self.sigma1 >= 0):
            raise PateError(f"sigma1 must be finite and >= 0, got {self.sigma1}")

    def charges(self) -> list[float]:
        """The Gaussian noise multipliers (sample rate 1, one step per example) the device is charged at:
        the vote histogram's and, with a check, the check histogram's (see the module docstring)."""
        out = [self.sigma / math.sqrt(2.0 * self.parties) if self.noise == "gaussian" else self.sigma / 2.0]
        if self.sigma1 > 0:
            out.append(self.sigma1 / math.sqrt(2.0 * self.parties))
        return out


def shard_indices(num_examples: int, num_teachers: int, seed: int) -> list[NDArray[np.int64]]:
    """Disjoint, near-equal shards of ``range(num_examples)`` (a permutation drawn from ``seed``)."""
    if num_teachers > num_examples:
        raise PateError(
            f"{num_teachers} teachers need at least as many examples; the device has {num_examples}"
        )
    order = np.random.default_rng(seed).permutation(num_examples)
    return [np.asarray(s, dtype=np.int64) for s in np.array_split(order, num_teachers)]


@dataclass
class TeacherEnsemble:
    """The device's trained teachers (one network per shard)."""

    teachers: list[nn.Module]
    num_classes: int

    @torch.no_grad()
    def predict(self, x: NDArray[np.float32]) -> NDArray[np.int64]:
        """Each teacher's label for each example: ``[teachers, n]``."""
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        out = []
        for teacher in self.teachers:
            logits = teacher(xt)
            if logits.ndim != 2 or logits.shape[1] != self.num_classes:
                raise PateError(f"a teacher outputs {tuple(logits.shape)}, expected [n, {self.num_classes}]")
            out.append(logits.argmax(dim=1).numpy())
        return np.stack(out).astype(np.int64)

    def accuracy(self, x: NDArray[np.float32], y: NDArray[np.int64]) -> float:
        """Mean accuracy of the teachers on ``(x, y)``."""
        return float((self.predict(x) == y[None, :]).mean())


def train_teachers(
    factory: ModelFactory,
    data: LocalData,
    num_teachers: int,
    *,
    seed: int,
    num_classes: int,
    epochs: int = 100,
    lr: float = 0.5,
) -> TeacherEnsemble:
    """Train ``num_teachers`` teachers on disjoint shards: full-batch gradient descent from the seeded
    initial parameters (the same for every teacher), cross-entropy."""
    torch.set_num_threads(1)
    x = torch.from_numpy(data.x)
    y = torch.from_numpy(data.y)
    if int(y.max()) >= num_classes:
        raise PateError(f"the device's labels reach {int(y.max())}; the job has {num_classes} classes")
    initial = factory(seed).state_dict()
    loss_fn = nn.CrossEntropyLoss()
    teachers: list[nn.Module] = []
    for shard in shard_indices(len(y), num_teachers, seed):
        model = factory(seed)
        model.load_state_dict(initial)
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        xs, ys = x[shard], y[shard]
        for _ in range(epochs):
            optimizer.zero_grad()
            loss_fn(model(xs), ys).backward()
            optimizer.step()
        model.eval()
        teachers.append(model)
    return TeacherEnsemble(teachers, num_classes)


def vote_histogram(labels: NDArray[np.int64], num_classes: int) -> NDArray[np.float64]:
    """``[teachers, n]`` labels -> ``[n, classes]`` vote counts."""
    n = labels.shape[1]
    hist = np.zeros((n, num_classes), dtype=np.float64)
    for row in labels:
        hist[np.arange(n), row] += 1.0
    return hist


def noise_share(
    shape: tuple[int, ...], noise: str, sigma: float, parties: int, rng: np.random.Generator | None = None
) -> NDArray[np.float64]:
    """One device's share of the aggregation noise (see the module docstring); the noise is drawn from
    ``os.urandom`` unless ``rng`` is given (tests)."""
    gen = rng if rng is not None else np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
    if noise == "gaussian":
        return gen.normal(0.0, sigma / math.sqrt(parties), shape)
    if noise == "laplace":  # a full Lap(sigma): a Gamma share alone has no bound of its own
        return gen.laplace(0.0, sigma, shape)
    raise PateError(f"noise is one of {', '.join(NOISES)}, not {noise!r}")


def charge_votes(ledger: PrivacyLedger, settings: VoteSettings, queries: int) -> tuple[float, float]:
    """Pay for ``queries`` noisy vote rows from the ledger (reserve then commit, under its lock): the
    device's epsilon after it and the budget left. Raises :class:`BudgetExceeded` (nothing charged)."""
    if settings.noise == "laplace" and ledger.accountant != "rdp":
        raise PateError(
            "Laplace votes are charged as the Gaussian that dominates them in Renyi DP, which needs the rdp "
            f"accountant; this device accounts {ledger.dataset!r} with {ledger.accountant}"
        )
    with ledger.lock():
        record = ledger.job(settings.job)
        if any(r.get("round") == settings.batch for r in record.get("rounds", [])):
            raise PateError(f"vote batch {settings.batch} of job {settings.job!r} was already answered")
        state: dict[str, Any] | None = ledger.accountant_state
        after = ledger.spent
        for sigma in settings.charges():
            after, state = dp.epsilon_after(state, ledger.delta, sigma, 1.0, queries, ledger.accountant)
        # the votes are computed after the commit: a crash in between costs budget, never the reverse
        ledger.reserve(settings.job, settings.batch, max(after - ledger.spent, 0.0))
        ledger.commit(
            settings.job, settings.batch, epsilon=after, accountant_state=state or {}, steps=queries
        )
        return after, ledger.remaining()


def answer_votes(
    data: LocalData,
    x_public: NDArray[np.float32],
    settings: VoteSettings,
    ledger: PrivacyLedger,
    *,
    factory: Callable[[str], ModelFactory] = resolve_factory,
    rng: np.random.Generator | None = None,
) -> tuple[dict[str, NDArray[np.float64]], dict[str, float]]:
    """The device's noisy histograms on ``x_public`` (``votes`` and, with a check, ``check``) and its
    reply metrics; the ledger is charged before any teacher is trained."""
    if x_public.ndim < 2 or x_public.shape[1:] != data.x.shape[1:]:
        raise PateError(f"public examples are {x_public.shape[1:]}, the device's are {data.x.shape[1:]}")
    if not np.all(np.isfinite(x_public)):
        raise PateError("the public examples hold NaN or infinite values")
    queries = int(x_public.shape[0])
    shard_indices(data.num_examples, settings.num_teachers, settings.seed)  # enough examples, before paying
    epsilon, remaining = charge_votes(ledger, settings, queries)
    ensemble = train_teachers(
        factory(settings.network),
        data,
        settings.num_teachers,
        seed=settings.seed,
        num_classes=settings.num_classes,
        epochs=settings.teacher_epochs,
        lr=settings.lr,
    )
    votes = vote_histogram(ensemble.predict(x_public), settings.num_classes)
    noisy = {"votes": votes + noise_share(votes.shape, settings.noise, settings.sigma, settings.parties, rng)}
    if settings.sigma1 > 0:
        noisy["check"] = votes + noise_share(votes.shape, "gaussian", settings.sigma1, settings.parties, rng)
    metrics = {
        "epsilon": epsilon,
        "remaining": remaining,
        "teacher_accuracy": ensemble.accuracy(data.x_test, data.y_test),
        "examples": float(data.num_examples),
    }
    return noisy, metrics


def settings_from(config: Mapping[str, Any], job: str) -> VoteSettings:
    """:class:`VoteSettings` from a query ConfigRecord (a bad value raises :class:`PateError`)."""

    def whole(key: str) -> int:
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise PateError(f"{key!r} must be a whole number, got {value!r}")
        return int(value)

    def number(key: str, default: float | None = None) -> float:
        value = config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PateError(f"{key!r} must be a number, got {value!r}")
        return float(value)

    def text(key: str) -> str:
        value = config.get(key)
        if not isinstance(value, str):
            raise PateError(f"{key!r} must be text, got {value!r}")
        return value

    return VoteSettings(
        job=job,
        batch=whole(PateKey.BATCH),
        network=text(PateKey.MODEL),
        seed=whole(PateKey.SEED),
        num_teachers=whole(PateKey.NUM_TEACHERS),
        noise=text(PateKey.NOISE),
        sigma=number(PateKey.SIGMA),
        parties=whole(PateKey.PARTIES),
        num_classes=whole(PateKey.NUM_CLASSES),
        sigma1=number(PateKey.SIGMA1, 0.0),
        teacher_epochs=whole(PateKey.TEACHER_EPOCHS),
        lr=number(PateKey.LR),
    )


def make_query_handler(
    load_data: Callable[[Context], LocalData],
    ledger_for: Callable[[Context], PrivacyLedger],
) -> Callable[[Message, Context], Message]:
    """The ClientApp's ``@app.query()`` handler: a vote request answered, refused for the budget (the
    budget-refusal ``Error``), or raised (Flower replies with a failure)."""

    def query(msg: Message, context: Context) -> Message:
        records = msg.content.config_records
        config = records[CONFIG] if CONFIG in records else ConfigRecord()
        job = str(config.get(PateKey.JOB_ID, "") or f"flwr-run-{context.run_id}")
        settings = settings_from(config, job)
        if PUBLIC not in msg.content.array_records or "x" not in msg.content.array_records[PUBLIC]:
            raise PateError(f"the query carries no {PUBLIC!r} ArrayRecord with the public examples 'x'")
        x_public = np.asarray(msg.content.array_records[PUBLIC]["x"].numpy(), dtype=np.float32)
        data = load_data(context)
        ledger = ledger_for(context)
        try:
            noisy, info = answer_votes(data, x_public, settings, ledger)
        except BudgetExceeded as exc:
            log.warning("refusing vote batch %s of job %s: %s", settings.batch, job, exc)
            return Message(Error(BUDGET_EXCEEDED_CODE, budget_refusal_reason(str(exc))), reply_to=msg)
        metrics = MetricRecord(
            {
                ReplyKey.NUM_EXAMPLES: int(info["examples"]),
                ReplyKey.DP_EPSILON: float(info["epsilon"]),
                ReplyKey.DP_DELTA: float(ledger.delta),
                ReplyKey.DP_BUDGET_REMAINING: float(info["remaining"]),
                PateKey.TEACHERS: settings.num_teachers,
                PateKey.TEACHER_ACCURACY: float(info["teacher_accuracy"]),
            }
        )
        arrays = ArrayRecord({name: Array(value) for name, value in noisy.items()})
        return Message(RecordDict({VOTES: arrays, METRICS: metrics}), reply_to=msg)

    return query
