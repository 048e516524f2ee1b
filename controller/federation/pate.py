"""FedPATE on the controller's ServerApp: the devices' teachers vote on a public set, the noisy aggregate
labels it, a student learns the labels and becomes the job's model (seed section 5.3.3; Papernot et al.
2018 for the aggregation and its analysis, :mod:`controller.federation.pate_analysis`).

A job with ``algorithm = "fedpate"`` in its run config runs :func:`run_fedpate` instead of FedAvg's round
loop. Per vote batch (``batch_queries`` public examples; all of them by default, one message per device):

1. every participant node gets a Flower ``query`` message: the batch's public examples (ArrayRecord
   ``public``, array ``x``) and the :class:`~fedge_protocol.federation.PateKey` settings; each device trains
   ``num_teachers`` teachers on disjoint shards of its own data and replies with its vote histogram plus
   its share of the noise (``edge_agent/learning/pate.py``), paid from its privacy ledger first (a device
   whose budget cannot pay refuses with the budget-refusal error and is asked no more);
2. the ServerApp sums the replies; for a device that did not answer it adds that device's noise share
   itself, so the aggregate always carries ``N(0, sigma^2)`` (and ``N(0, sigma1^2)`` on the check
   histogram);
3. Confident-GNMax: a query is answered only when the check histogram's largest noisy count reaches
   ``threshold`` (``sigma1`` 0: every query is answered); its label is the argmax of the vote histogram;
4. before answering, the query's privacy cost is added to the run's RDP; the run stops answering before
   its epsilon would pass the job's ``epsilon`` target.

Privacy accounting: nobody holds the exact aggregate votes (each device adds noise before the controller
sees them), so the data-dependent bound is computed from the noisy aggregate with every count taken
``noise_slack(sigma, queries x classes, delta)`` against the bound (:func:`pate_analysis.noise_slack`):
a bound that holds with probability ``1 - delta`` over the noise. The data-independent epsilon (every
query at its worst case) is reported beside it. Laplace noise: every device adds a full ``Lap(sigma)``
(a share has no device-level bound), so the aggregate carries more noise than the LNMax analysis assumes
and only the data-independent LNMax bound is used.

Then the student (the job's network, from the job's seed) trains on the answered public examples with
their noisy labels, on the controller; it is scored on the public set's held-out test split and against the
ground-truth labels the controller holds **for evaluation only** (label accuracy); its parameters are the
run's output ``.npz``, which the job manager publishes like a FedAvg result.

The public set: ``digits`` is the controller's split of scikit-learn's digits (:func:`digits_split`,
a fixed permutation): 1,200 examples for the devices' private data (simulations and tests draw their
partitions from them), 300 public unlabeled examples (the queries), 297 held-out test examples.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result
from numpy.typing import NDArray

from controller.federation.pate_analysis import PateAccountant, noise_slack
from fedge_protocol.federation import CONFIG, METRICS, PUBLIC, VOTES, PateKey, ReplyKey, is_budget_refusal

__all__ = [
    "NOISES",
    "PUBLIC_SETS",
    "DigitsSplit",
    "LocalGrid",
    "PateSpec",
    "PateSpecError",
    "aggregate_votes",
    "digits_split",
    "run_fedpate",
    "train_student",
]

log = logging.getLogger("fedge.controller.federation")

NOISES = ("gaussian", "laplace")
PUBLIC_SETS = ("digits",)
DIGITS_SPLIT_SEED = 2018
DIGITS_PRIVATE, DIGITS_PUBLIC = 1200, 300


class PateSpecError(ValueError):
    """A FedPATE spec that cannot run (the message names the field)."""


@dataclass(frozen=True)
class PateSpec:
    """What a FedPATE job does (the job API's ``pate`` object, as the run config carries it, JSON)."""

    num_teachers: int  # per device
    noise: str = "gaussian"
    sigma: float = 10.0
    sigma1: float = 0.0  # 0: no confidence check
    threshold: float = 0.0
    epsilon: float | None = None  # target: stop answering before passing it
    delta: float = 1e-5
    num_queries: int = 300
    public: str = "digits"
    num_classes: int = 10
    batch_queries: int = 0  # queries per message (0: all in one)
    teacher_epochs: int = 100
    teacher_lr: float = 0.5
    student_epochs: int = 300
    student_lr: float = 0.5
    self_training: int = 2  # rounds of pseudo-labelling the whole public set with the student (0: off)

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> PateSpecError:
            return PateSpecError(f"pate.{field}: {why}")

        if self.noise not in NOISES:
            raise bad("noise", f"one of {', '.join(NOISES)}, not {self.noise!r}")
        if self.public not in PUBLIC_SETS:
            raise bad("public", f"one of {', '.join(PUBLIC_SETS)}, not {self.public!r}")
        for name in ("sigma", "delta", "teacher_lr", "student_lr"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise bad(name, f"must be a finite number > 0, got {value!r}")
        if not self.delta < 1:
            raise bad("delta", f"must be < 1, got {self.delta}")
        if not (math.isfinite(self.sigma1) and self.sigma1 >= 0 and math.isfinite(self.threshold)):
            raise bad("sigma1", "sigma1 must be >= 0 and the threshold finite")
        if self.epsilon is not None and not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise bad("epsilon", f"must be a finite number > 0, got {self.epsilon}")
        limits = {"num_teachers": 100_000, "num_queries": DIGITS_PUBLIC, "num_classes": 1000}
        for name, top in limits.items():
            value = getattr(self, name)
            if not 1 <= value <= top:
                raise bad(name, f"must be in [1, {top}], got {value}")
        if self.num_classes < 2:
            raise bad("num_classes", "a classifier needs at least 2 classes")
        if (
            self.batch_queries < 0
            or self.teacher_epochs < 1
            or self.student_epochs < 1
            or self.self_training < 0
        ):
            raise bad("batch_queries", "batch_queries must be >= 0, teacher/student epochs >= 1")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PateSpec:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PateSpecError(f"the pate run config is not JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise PateSpecError("the pate run config is a JSON object")
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise PateSpecError(f"unknown pate keys: {', '.join(unknown)}")
        try:
            return cls(**raw)
        except TypeError as exc:
            raise PateSpecError(str(exc)) from exc


# --- the public set -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DigitsSplit:
    """scikit-learn's digits (``[N, 1, 8, 8]`` float32 in [0, 1]) split for FedPATE."""

    private_x: NDArray[np.float32]
    private_y: NDArray[np.int64]
    public_x: NDArray[np.float32]
    public_y: NDArray[np.int64]  # the controller's ground truth, for evaluation only
    test_x: NDArray[np.float32]
    test_y: NDArray[np.int64]


def digits_split() -> DigitsSplit:
    """The fixed split (see the module docstring): private pool | public queries | test."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(x))
    xs = (x[order] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    ys = y[order].astype(np.int64)
    a, b = DIGITS_PRIVATE, DIGITS_PRIVATE + DIGITS_PUBLIC
    return DigitsSplit(xs[:a], ys[:a], xs[a:b], ys[a:b], xs[b:], ys[b:])


# --- aggregation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Aggregate:
    """One batch's labels: per query, answered or not and its label (-1: not answered)."""

    labels: NDArray[np.int64]
    stopped: bool  # the epsilon target stopped the run inside this batch


def aggregate_votes(
    votes: NDArray[np.float64],
    check: NDArray[np.float64] | None,
    spec: PateSpec,
    accountant: PateAccountant,
    slack: float,
) -> Aggregate:
    """Confident-GNMax over a batch's noisy aggregate, charging ``accountant`` query by query and stopping
    before its epsilon passes ``spec.epsilon``."""
    labels = np.full(len(votes), -1, dtype=np.int64)
    for i, row in enumerate(votes):
        answered = check is None or float(np.max(check[i])) >= spec.threshold
        cost = accountant.cost(row, answered, slack)
        if spec.epsilon is not None and accountant.epsilon_with(cost)[0] > spec.epsilon:
            return Aggregate(labels, stopped=True)
        accountant.add(cost)
        if answered:
            labels[i] = int(np.argmax(row))
    return Aggregate(labels, stopped=False)


def accountant_for(spec: PateSpec, parties: int) -> tuple[PateAccountant, float]:
    """The run's accountant and the noisy aggregate's slack (see the module docstring)."""
    accountant = PateAccountant(
        spec.noise,
        spec.sigma,
        spec.delta,
        sigma1=spec.sigma1,
        threshold=spec.threshold,
        check="noisy-max",
        noise_exact=spec.noise == "gaussian",
    )
    slack = (
        noise_slack(spec.sigma, spec.num_queries * spec.num_classes, spec.delta)
        if spec.noise == "gaussian"
        else 0.0
    )
    return accountant, slack


# --- the student ----------------------------------------------------------------------------------


def train_student(
    network: str, seed: int, x: NDArray[np.float32], y: NDArray[np.int64], *, epochs: int, lr: float
) -> dict[str, NDArray[Any]]:
    """The job's network from its seed, trained full-batch on the labelled public examples; its state."""
    import torch
    from torch import nn

    from edge_agent.learning.models import build_model

    torch.set_num_threads(1)
    model = build_model(network, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(epochs):
            optimizer.zero_grad()
            loss_fn(model(xt), yt).backward()
            optimizer.step()
    model.eval()
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def student_predict(
    network: str, params: Mapping[str, NDArray[Any]], x: NDArray[np.float32]
) -> NDArray[np.int64]:
    import torch

    from edge_agent.learning.models import build_model

    model = build_model(network, 0)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in params.items()})
    model.eval()
    with torch.no_grad():
        return np.asarray(
            model(torch.from_numpy(np.ascontiguousarray(x))).argmax(dim=1).numpy(), dtype=np.int64
        )


def student_accuracy(
    network: str, params: Mapping[str, NDArray[Any]], x: NDArray[np.float32], y: NDArray[np.int64]
) -> float:
    return float((student_predict(network, params, x) == y).mean())


# --- the run --------------------------------------------------------------------------------------


def _node(msg: Message) -> int:
    return int(msg.metadata.src_node_id)


def _await_nodes(grid: Grid, need: int, cancel: threading.Event | None, timeout: float) -> list[int]:
    from controller.federation.serverapp import FederationCancelled

    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        if len(nodes) >= need:
            return nodes
        if cancel is not None and cancel.is_set():
            raise FederationCancelled("the FedPATE job was cancelled")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {len(nodes)} node(s) connected in {timeout:.0f} s; the job needs {need}"
            )
        time.sleep(0.5)


def _problem(msg: Message, rows: int, spec: PateSpec) -> str | None:
    records = msg.content.array_records
    if VOTES not in records:
        return f"no {VOTES!r} ArrayRecord"
    wanted = {"votes", "check"} if spec.sigma1 > 0 else {"votes"}
    if set(records[VOTES]) != wanted:
        return f"arrays {sorted(records[VOTES])}, expected {sorted(wanted)}"
    for name in wanted:
        array = records[VOTES][name].numpy()
        if array.shape != (rows, spec.num_classes):
            return f"{name}: shape {array.shape}, expected {(rows, spec.num_classes)}"
        if not np.all(np.isfinite(array)):
            return f"{name}: holds NaN or infinite values"
    if METRICS not in msg.content.metric_records:
        return f"no {METRICS!r} MetricRecord"
    return None


def run_fedpate(
    grid: Grid,
    config: Any,
    reporter: Any,
    *,
    run_id: int = 0,
    cancel: threading.Event | None = None,
) -> Result:
    """Run a FedPATE job on ``grid`` (``config``: a checked ``FederationConfig`` with ``algorithm`` =
    ``fedpate``; ``reporter``: its ``Reporter``). Raises when no query could be answered."""
    from controller.federation.serverapp import FederationCancelled, RoundReport, RunSummary, save_arrays

    spec = PateSpec.from_json(str(config["pate"]))
    job_id = str(config["job-id"]) or f"flwr-run-{run_id}"
    network, seed = str(config["model"]), int(config["seed"])
    timeout = float(config["round-timeout"])
    started = time.perf_counter()
    split = digits_split()
    x_public, y_public = split.public_x[: spec.num_queries], split.public_y[: spec.num_queries]
    nodes = _await_nodes(grid, int(config["min-nodes"]), cancel, timeout)
    parties = len(nodes)
    accountant, slack = accountant_for(spec, parties)
    size = spec.batch_queries or spec.num_queries
    batches = [np.arange(i, min(i + size, spec.num_queries)) for i in range(0, spec.num_queries, size)]
    labels = np.full(spec.num_queries, -1, dtype=np.int64)
    exhausted: set[int] = set()
    noise = np.random.default_rng()
    teachers = 0
    for number, idx in enumerate(batches, start=1):
        if cancel is not None and cancel.is_set():
            raise FederationCancelled(f"job {job_id} was cancelled")
        active = [n for n in nodes if n not in exhausted]
        if not active:
            log.warning("FedPATE job %s: every device refused for its budget; stopping", job_id)
            break
        began = time.perf_counter()
        messages = []
        for node in active:
            cfg = ConfigRecord(
                {
                    PateKey.JOB_ID: job_id,
                    PateKey.BATCH: number,
                    PateKey.MODEL: network,
                    PateKey.SEED: seed,
                    PateKey.NUM_TEACHERS: spec.num_teachers,
                    PateKey.NOISE: spec.noise,
                    PateKey.SIGMA: float(spec.sigma),
                    PateKey.SIGMA1: float(spec.sigma1),
                    PateKey.PARTIES: parties,
                    PateKey.NUM_CLASSES: spec.num_classes,
                    PateKey.TEACHER_EPOCHS: spec.teacher_epochs,
                    PateKey.LR: float(spec.teacher_lr),
                }
            )
            content = RecordDict({PUBLIC: ArrayRecord({"x": Array(x_public[idx])}), CONFIG: cfg})
            messages.append(Message(content, dst_node_id=node, message_type=MessageType.QUERY))
        sent = sum(rec.count_bytes() for m in messages for rec in m.content.array_records.values())
        replies: Iterable[Message] = grid.send_and_receive(messages, timeout=timeout)
        valid: list[Message] = []
        failures, refused, rejected, received = 0, [], [], 0
        for msg in replies:
            if msg.has_error():
                if is_budget_refusal(msg.error):
                    refused.append(_node(msg))
                    exhausted.add(_node(msg))
                else:
                    failures += 1
                log.warning("FedPATE batch %d: node %d: %s", number, _node(msg), msg.error.reason)
                continue
            received += sum(rec.count_bytes() for rec in msg.content.array_records.values())
            problem = _problem(msg, len(idx), spec)
            if problem is not None:
                rejected.append({"node_id": _node(msg), "reason": problem})
                continue
            valid.append(msg)
        clients: list[dict[str, Any]] = [
            {"node_id": _node(m), "metrics": dict(m.content.metric_records[METRICS])} for m in valid
        ]
        metrics: dict[str, float] = {}
        if valid:
            teachers = max(teachers, sum(int(c["metrics"].get(PateKey.TEACHERS, 0)) for c in clients))
            missing = parties - len(valid)
            votes = _summed(valid, "votes")
            check = _summed(valid, "check") if spec.sigma1 > 0 else None
            if missing and spec.noise == "gaussian":  # the missing devices' noise shares
                votes = votes + noise.normal(0.0, spec.sigma * math.sqrt(missing / parties), votes.shape)
            if missing and check is not None:
                check = check + noise.normal(0.0, spec.sigma1 * math.sqrt(missing / parties), check.shape)
            result = aggregate_votes(
                np.asarray(votes), None if check is None else np.asarray(check), spec, accountant, slack
            )
            labels[idx] = result.labels
            done = labels >= 0
            eps, eps_ind = accountant.epsilon_with()
            metrics = {
                "pate-queries": float(accountant.queries),
                "pate-answered": float(int(done.sum())),
                "pate-epsilon": eps,
                "pate-epsilon-data-independent": eps_ind,
                "pate-label-accuracy": float((labels[done] == y_public[done]).mean()) if done.any() else 0.0,
                "pate-teachers": float(teachers),
            }
        else:
            result = Aggregate(labels[idx], stopped=False)
        report = RoundReport(
            run_id=run_id,
            job_id=job_id,
            kind="train",
            round=number,
            metrics=metrics,
            participants=len(valid),
            failures=failures,
            budget_refused=refused,
            rejected=rejected,
            bytes_sent=sent,
            bytes_received=received,
            seconds=time.perf_counter() - began,
            clients=clients,
        )
        _deliver(reporter, report)
        if result.stopped:
            log.info("FedPATE job %s: the epsilon target %s stops the run", job_id, spec.epsilon)
            break
    answered = labels >= 0
    if not answered.any():
        raise RuntimeError(
            "FedPATE answered no query (no device replied, or the threshold/epsilon left none)"
        )
    began = time.perf_counter()
    params = train_student(
        network, seed, x_public[answered], labels[answered], epochs=spec.student_epochs, lr=spec.student_lr
    )
    for _ in range(spec.self_training):  # the whole public set, pseudo-labelled: post-processing, no cost
        pseudo = student_predict(network, params, split.public_x)
        pseudo[: spec.num_queries][answered] = labels[answered]
        params = train_student(
            network, seed, split.public_x, pseudo, epochs=spec.student_epochs, lr=spec.student_lr
        )
    accuracy = student_accuracy(network, params, split.test_x, split.test_y)
    eps, eps_ind = accountant.epsilon_with()
    final = {
        ReplyKey.EVAL_ACCURACY: accuracy,
        "pate-student-accuracy": accuracy,
        "pate-queries": float(accountant.queries),
        "pate-answered": float(int(answered.sum())),
        "pate-label-accuracy": float((labels[answered] == y_public[answered]).mean()),
        "pate-epsilon": eps,
        "pate-epsilon-data-independent": eps_ind,
        "pate-delta": spec.delta,
        "pate-teachers": float(teachers),
    }
    last = max(1, min(len(batches), number))
    _deliver(
        reporter,
        RoundReport(
            run_id=run_id,
            job_id=job_id,
            kind="evaluate",
            round=last,
            metrics=final,
            participants=0,
            failures=0,
            budget_refused=[],
            rejected=[],
            bytes_sent=0,
            bytes_received=0,
            seconds=time.perf_counter() - began,
        ),
    )
    arrays = ArrayRecord({k: Array(np.asarray(v)) for k, v in params.items()})
    output = str(config["output-path"])
    if output:
        save_arrays(arrays, Path(output))
    summary = RunSummary(
        run_id=run_id,
        job_id=job_id,
        rounds=last,
        seconds=time.perf_counter() - started,
        output_path=output or None,
        final_metrics=final,
    )
    try:
        reporter.on_finish(summary)
    except Exception:
        log.exception("the reporter failed on the run summary")
    return Result(arrays=arrays)


def _summed(replies: list[Message], name: str) -> NDArray[np.float64]:
    total = np.zeros_like(replies[0].content.array_records[VOTES][name].numpy(), dtype=np.float64)
    for msg in replies:
        total += msg.content.array_records[VOTES][name].numpy()
    return total


def _deliver(reporter: Any, report: Any) -> None:
    try:
        reporter.on_round(report)
    except Exception:  # a reporter must not end the run
        log.exception("the reporter failed on FedPATE batch %d", report.round)


# --- in process -----------------------------------------------------------------------------------


class LocalGrid(Grid):
    """A grid whose nodes are ClientApps called in this process, one after the other (the bench's curve and
    the tests; deployment uses the SuperLink's grid). ``apps``: node id -> (ClientApp, Context)."""

    def __init__(self, apps: Mapping[int, tuple[Any, Any]], run_id: int = 1) -> None:
        self.apps = dict(apps)
        self.run_id = run_id
        self.sent: list[Message] = []

    def get_node_ids(self) -> Iterable[int]:
        return sorted(self.apps)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        from flwr.app import Metadata

        replies = []
        for n, msg in enumerate(messages):
            node = int(msg.metadata.dst_node_id)
            app, context = self.apps[node]
            metadata = Metadata(
                run_id=self.run_id,
                message_id=f"local-{len(self.sent)}-{n}",
                src_node_id=0,
                dst_node_id=node,
                reply_to_message_id="",
                group_id="",
                created_at=time.time(),
                ttl=timeout or 3600.0,
                message_type=msg.metadata.message_type,
            )
            delivered = Message(msg.content, metadata=metadata)  # type: ignore[call-overload]
            self.sent.append(delivered)
            try:
                replies.append(app(delivered, context))
            except Exception as exc:  # what Flower does with a raising ClientApp: an error reply
                from flwr.app import Error

                replies.append(Message(Error(0, f"{type(exc).__name__}: {exc}"), reply_to=delivered))
        return replies

    # not used by FedPATE
    def set_run(self, run: Any) -> None:
        return None

    @property
    def run(self) -> Any:
        raise NotImplementedError

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        raise NotImplementedError

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def get_nodes(self) -> Iterable[Any]:
        raise NotImplementedError


# --- the job manager's side -------------------------------------------------------------------------


def check_pate_job(req: Any, input_shape: list[int | None]) -> None:
    """A FedPATE job request's checks beyond its schema (422 with the field): Flower only, no other privacy
    mechanism, a public set that fits the job's data shape and classes."""
    from controller.errors import Unprocessable

    if req.engine != "flower":
        raise Unprocessable(f"FedPATE runs on the flower engine, not {req.engine!r}", field="engine")
    privacy = req.privacy
    for name in ("dp", "central_dp", "secure_aggregation", "he"):
        if getattr(privacy, name, None) is not None:
            raise Unprocessable(
                f"FedPATE's privacy is its noisy vote aggregation; privacy.{name} does not apply",
                field=f"privacy.{name}",
            )
    classes = req.data.num_classes or 10
    if req.pate.public == "digits" and (list(input_shape[1:]) not in ([1, 8, 8], [64]) or classes != 10):
        raise Unprocessable(
            f"the digits public set is 8x8 images of 10 classes; the job's data is {input_shape[1:]} with "
            f"{classes} classes",
            field="pate.public",
        )
    try:
        PateSpec(**pate_settings(req.model_dump(mode="json")))
    except PateSpecError as exc:
        raise Unprocessable(str(exc), field="pate") from exc


def pate_settings(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`PateSpec` fields of a stored job spec (``FlJobIn.model_dump``)."""
    pate = dict(spec.get("pate") or {})
    pate["threshold"] = float(pate.get("threshold") or 0.0)
    pate["num_classes"] = int((spec.get("data") or {}).get("num_classes") or 10)
    return pate


def pate_epsilon(summary: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """``(epsilon, delta)`` of a finished FedPATE run from its summary (the data-dependent bound)."""
    final = summary.get("final_metrics") or {}
    eps, delta = final.get("pate-epsilon"), final.get("pate-delta")
    return (float(eps) if eps is not None else None), (float(delta) if delta is not None else None)
