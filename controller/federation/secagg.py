"""Secure aggregation of an FL job with Flower's own SecAgg+ (``flwr.server.workflow.SecAggPlusWorkflow``).

With ``privacy.secure_aggregation`` the controller never sees a device's update: each device quantises
its weighted parameters, adds a private mask and pairwise masks agreed with its neighbours (ECDH), and
sends only that; the sum of the masked vectors is the sum of the updates, and the masks of devices that
drop out after sharing their keys are rebuilt from Shamir shares held by the others. Only the weighted
average is dequantised and handed to the job's strategy. The device side is Flower's ``secaggplus_mod``
(:mod:`edge_agent.learning.secagg`).

**Why a round loop of its own.** Flower 1.42's Message-API ``Strategy.start`` sends one train message
per node and aggregates the replies; SecAgg+ needs four exchanges per round (setup, share keys, collect
masked vectors, unmask), and ``SecAggPlusWorkflow`` is written against the legacy ``LegacyContext`` /
``FitIns`` / ``FitRes`` API. :class:`SecAggPlusRounds` wraps the job's :class:`GuardedStrategy`:
its :meth:`~SecAggPlusRounds.start` runs Flower's round loop with the train phase replaced: the job's
strategy still samples and configures the round (``configure_train``), a small legacy adapter hands
those messages to the unmodified workflow, the workflow's unmasked aggregate goes back through the job's
strategy (``aggregate_train``: FedAvgM's server momentum applies to it) and the guard reports the round as
usual (participants, failures, budget refusals, rejections, bytes, seconds). Evaluation is unchanged.

**What the server checks before it sums** (a masked vector cannot be checked): a stage-2 reply whose
weight (``num-examples``) is not a positive number at most ``max_weight``, whose metrics are not finite
numbers, or whose masked vector does not have the model's shapes is *rejected*: it is turned into a
dropout before the unmask stage, so the workflow rebuilds its pairwise masks and the round goes on without
it (within the threshold).

**Settings** (:class:`SecAggSettings`, the job's ``privacy.secure_aggregation``, checked by
:func:`resolve_settings`; the API answers 422 naming the field):

* ``num_shares`` (default ``min_clients``, minus one when that is even and fewer than the eligible devices):
  each device's secrets are split into this many Shamir shares (one per neighbour, itself included);
  3 <= ``num_shares`` <= ``min_clients``, and odd unless it equals the number of eligible devices (Flower
  1.42 widens an even neighbourhood by one in rounds with more devices, and its key sharing then fails);
* ``reconstruction_threshold`` (default ``num_shares // 2 + 1``): shares needed to rebuild a secret;
  ``num_shares / 2 < threshold < num_shares`` (more than half, so that a server cannot collect both a
  device's mask seed and its key from disjoint halves; fewer than all, or a single dropout would halt);
* ``clipping_range`` (8.0), ``quantization_range`` (2**22), ``max_weight`` (1000.0): the quantiser. Every
  weighted parameter ``num_examples / max_weight * value`` is clipped to ``[-clipping_range,
  clipping_range]`` and stochastically rounded to ``quantization_range`` levels; sums are modulo 2**32,
  so ``eligible devices * quantization_range`` must stay below 2**32.

A round finishes as long as every sampled device keeps at least ``reconstruction_threshold`` active
neighbours; otherwise the workflow halts and the round aggregates nothing (the global model is kept).
Refused combinations: robust strategies (they need each update), ``privacy.central_dp`` (server-side
clipping needs each update), fewer than 3 devices per round. Local DP composes (DP-SGD on the device,
then masking). The error of the aggregate against plaintext FedAvg is bounded by :func:`error_bound`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common import FitIns, FitRes, Parameters, Scalar, bytes_to_ndarray, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat
from flwr.proto.node_pb2 import NodeInfo
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.server_config import ServerConfig
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result
from flwr.supercore.run import Run

from fedge_protocol.federation import ARRAYS, CONFIG, METRICS, ReplyKey, TrainKey

if TYPE_CHECKING:  # serverapp imports this module when a job asks for SecAgg+
    from controller.federation.serverapp import GuardedStrategy, RoundReport, RunSummary

__all__ = [
    "MODULUS_RANGE",
    "RUN_CONFIG_KEY",
    "SECURE_STRATEGIES",
    "SecAggConfigError",
    "SecAggPlusRounds",
    "SecAggSettings",
    "error_bound",
    "job_settings",
    "payload_bytes",
    "resolve_settings",
    "secure_rounds",
]

log = logging.getLogger("fedge.controller.federation.secagg")

#: the ServerApp's run-config key holding the settings as JSON ("": no secure aggregation)
RUN_CONFIG_KEY = "secure-aggregation"
#: strategies whose aggregate is a weighted average (all SecAgg+ reveals)
SECURE_STRATEGIES = ("fedavg", "fedavgm", "fedprox")
#: Flower's default (and largest) mask modulus: every sum is taken modulo this
MODULUS_RANGE = 2**32
#: ``Error.code`` of a stage-2 reply the server rejected (turned into a dropout; outside Flower's 0-8)
REJECTED_CODE = 4220
FIELD = "privacy.secure_aggregation"


class SecAggConfigError(ValueError):
    """A SecAgg+ setting (or its combination with the job) that cannot work; ``field`` names it."""

    def __init__(self, message: str, field: str = FIELD) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class SecAggSettings:
    """SecAgg+ parameters of one job, resolved and checked (see the module docstring)."""

    num_shares: int
    reconstruction_threshold: int
    clipping_range: float = 8.0
    quantization_range: int = 2**22
    max_weight: float = 1000.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SecAggSettings | None:
        """The run config's value ("" -> None); a malformed value raises ValueError."""
        if not text.strip():
            return None
        try:
            raw = json.loads(text)
            settings = cls(
                num_shares=int(raw["num_shares"]),
                reconstruction_threshold=int(raw["reconstruction_threshold"]),
                clipping_range=float(raw["clipping_range"]),
                quantization_range=int(raw["quantization_range"]),
                max_weight=float(raw["max_weight"]),
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(
                f"run config {RUN_CONFIG_KEY!r} is not a SecAgg+ settings object: {exc}"
            ) from exc
        if set(raw) != set(asdict(settings)):
            raise ValueError(
                f"run config {RUN_CONFIG_KEY!r}: unexpected keys {sorted(set(raw) - set(asdict(settings)))}"
            )
        return settings

    def workflow(self, timeout: float | None) -> SecAggPlusWorkflow:
        """Flower's workflow with these settings (its own checks run here too)."""
        return SecAggPlusWorkflow(
            num_shares=self.num_shares,
            reconstruction_threshold=self.reconstruction_threshold,
            max_weight=self.max_weight,
            clipping_range=self.clipping_range,
            quantization_range=self.quantization_range,
            modulus_range=MODULUS_RANGE,
            timeout=timeout,
        )


def resolve_settings(
    requested: Mapping[str, Any],
    *,
    min_clients: int,
    eligible: int,
    strategy: str,
    central_dp: bool,
) -> SecAggSettings:
    """The job's settings with defaults filled in, or :class:`SecAggConfigError` naming the field."""
    if strategy not in SECURE_STRATEGIES:
        raise SecAggConfigError(
            f"strategy {strategy!r} needs each device's update, which secure aggregation hides (it reveals "
            f"only the weighted average); use one of {', '.join(SECURE_STRATEGIES)}",
            field="strategy.name",
        )
    if central_dp:
        raise SecAggConfigError(
            "privacy.central_dp clips each update on the server, which secure aggregation hides; combine "
            "secure aggregation with local DP (privacy.dp) instead",
            field="privacy.central_dp",
        )
    if min_clients < 3:
        raise SecAggConfigError(
            f"secure aggregation needs at least 3 devices per round (min_clients is {min_clients}): with 2, "
            "each device could subtract its own update from the sum",
            field="min_clients",
        )
    shares = requested.get("num_shares")
    if shares is None:  # every device of a minimal round, odd unless a round always has them all
        num_shares = min_clients if min_clients % 2 or min_clients == eligible else min_clients - 1
    else:
        num_shares = int(shares)
    if not 3 <= num_shares <= min_clients:
        raise SecAggConfigError(
            f"num_shares must be between 3 and min_clients ({min_clients}): a round may have only "
            f"{min_clients} devices to share with, got {num_shares}",
            field=f"{FIELD}.num_shares",
        )
    if num_shares % 2 == 0 and num_shares != eligible:
        raise SecAggConfigError(
            f"num_shares must be odd unless it equals the number of eligible devices ({eligible}): when a "
            f"round has more devices than an even num_shares, Flower 1.42's SecAgg+ builds neighbourhoods of "
            f"num_shares + 1 devices but shares each secret only num_shares ways, and the key exchange fails",
            field=f"{FIELD}.num_shares",
        )
    wanted = requested.get("reconstruction_threshold")
    threshold = num_shares // 2 + 1 if wanted is None else int(wanted)
    if not num_shares // 2 < threshold < num_shares:
        raise SecAggConfigError(
            f"reconstruction_threshold must be more than half of num_shares and less than num_shares "
            f"({num_shares // 2 + 1}..{num_shares - 1} for {num_shares} shares), got {threshold}",
            field=f"{FIELD}.reconstruction_threshold",
        )
    clipping = float(requested.get("clipping_range", 8.0))
    if not math.isfinite(clipping) or clipping <= 0:
        raise SecAggConfigError(f"clipping_range must be a finite number > 0, got {clipping}",
                                field=f"{FIELD}.clipping_range")  # fmt: skip
    levels = int(requested.get("quantization_range", 2**22))
    if levels < 2 or eligible * levels >= MODULUS_RANGE:
        raise SecAggConfigError(
            f"quantization_range must be at least 2 and small enough that the sum of {eligible} eligible "
            f"devices' quantised values stays below 2**32 (at most {(MODULUS_RANGE - 1) // eligible}), "
            f"got {levels}",
            field=f"{FIELD}.quantization_range",
        )
    max_weight = float(requested.get("max_weight", 1000.0))
    if not math.isfinite(max_weight) or max_weight <= 0:
        raise SecAggConfigError(f"max_weight must be a finite number > 0, got {max_weight}",
                                field=f"{FIELD}.max_weight")  # fmt: skip
    settings = SecAggSettings(num_shares, threshold, clipping, levels, max_weight)
    settings.workflow(None)  # Flower's own checks agree
    return settings


def job_settings(req: Any, min_clients: int, eligible: int) -> dict[str, Any]:
    """A submitted job's (``controller.schemas.fl.FlJobIn``) resolved SecAgg+ settings, as stored in its
    ``privacy.secure_aggregation``; :class:`SecAggConfigError` when the job cannot run with them."""
    if req.engine != "flower":
        raise SecAggConfigError(f"secure aggregation runs on the flower engine, not {req.engine!r}")
    requested = req.privacy.secure_aggregation.model_dump(exclude_none=True)
    settings = resolve_settings(
        requested,
        min_clients=min_clients,
        eligible=eligible,
        strategy=req.strategy.name.strip().lower(),
        central_dp=req.privacy.central_dp is not None,
    )
    return asdict(settings)


def error_bound(settings: SecAggSettings, weights: Sequence[float], max_abs: float) -> float:
    """Largest difference per parameter between the SecAgg+ aggregate and the plaintext weighted average
    of the same updates (weights ``num_examples``, every |value| <= ``max_abs`` and no value clipped).

    Each device's weight is rounded to ``q = round(n / max_weight * L)`` (``L``: quantization_range) and
    its weighted value ``q / L * x`` stochastically to a multiple of ``2c / L`` (``c``: clipping_range),
    an error below one step; the sum is divided by ``sum(q) / L``. Hence at most ``k * 2c / sum(q)`` from
    the values plus ``sum|q/L - n/max_weight| * 2 * max_abs / (sum(q) / L)`` from the weights."""
    levels, c = settings.quantization_range, settings.clipping_range
    exact = [w / settings.max_weight for w in weights]
    rounded = [round(r * levels) / levels for r in exact]
    total = sum(rounded)
    values = len(weights) * (2 * c / levels) / total
    weight_err = sum(abs(q - r) for q, r in zip(rounded, exact, strict=True)) * 2 * max_abs / total
    return values + weight_err


# --- the legacy adapter the workflow talks to ---------------------------------------------------


class _FitAdapter(LegacyStrategy):
    """What ``SecAggPlusWorkflow`` calls: ``configure_fit`` returns the round's train messages (from the
    job's strategy) as ``FitIns``; ``aggregate_fit`` keeps the survivors' results (their parameters are
    the unmasked weighted average) for the job's strategy. Nothing else is used."""

    def __init__(
        self, messages: Mapping[int, Message], names: Sequence[str], grid: Grid, run_id: int
    ) -> None:
        self.messages, self.names, self.grid, self.run_id = messages, list(names), grid, run_id
        self.results: list[tuple[ClientProxy, FitRes]] | None = None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        out: list[tuple[ClientProxy, FitIns]] = []
        for node, msg in self.messages.items():
            record = msg.content.array_records[ARRAYS]
            tensors = [record[name].data for name in self.names]
            config: dict[str, Scalar] = {
                k: cast(Scalar, v) for k, v in msg.content.config_records[CONFIG].items()
            }
            config[TrainKey.ARRAY_NAMES] = json.dumps(self.names)
            proxy = GridClientProxy(node, self.grid, self.run_id)
            out.append((proxy, FitIns(Parameters(tensors=tensors, tensor_type="numpy.ndarray"), config)))
        return out

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        self.results = list(results)
        return None, {}  # the job's own strategy aggregates (SecAggPlusRounds._secure_train)

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[Any]:
        return []

    def aggregate_evaluate(
        self, server_round: int, results: list[Any], failures: list[Any]
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return None


def _value_bytes(value: Any) -> int:
    if isinstance(value, bytes | str):
        return len(value)
    if isinstance(value, list):
        return sum(_value_bytes(v) for v in value)
    return 8  # numbers travel as 64-bit


def payload_bytes(content: RecordDict) -> int:
    """Payload bytes of a message: arrays, and every key and value of its config and metric records
    (Flower's own ``ConfigRecord.count_bytes`` fails on an empty list, which the unmask stage sends)."""
    total = sum(int(rec.count_bytes()) for rec in content.array_records.values())
    records: list[Any] = [*content.config_records.values(), *content.metric_records.values()]
    return total + sum(len(k) + _value_bytes(v) for rec in records for k, v in rec.items())


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class _StageGrid(Grid):
    """The job's grid as the workflow sees it: counts the bytes of every stage both ways, keeps the first
    error reply of each node, and rejects a malformed masked vector (stage 2) by turning it into a dropout
    before the workflow sums it."""

    def __init__(self, inner: Grid, settings: SecAggSettings, shapes: Sequence[tuple[int, ...]]) -> None:
        self.inner, self.settings, self.shapes = inner, settings, [(1,), *shapes]
        self.bytes_out = self.bytes_in = 0
        self.errors: dict[int, Error] = {}
        self.rejected: dict[int, str] = {}

    def _masked_problem(self, reply: Message) -> str | None:
        content = reply.content
        try:
            fitres = compat.recorddict_to_fitres(content, keep_input=True)
            masked = content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
        except (KeyError, TypeError, ValueError) as exc:
            return f"not a SecAgg+ masked reply ({exc})"
        weight = fitres.num_examples
        if not _finite(weight) or not 0 < weight <= self.settings.max_weight:
            limit = self.settings.max_weight
            return (
                f"{ReplyKey.NUM_EXAMPLES} {weight!r} is not in (0, max_weight={limit:g}] (it would overflow)"
            )
        bad = sorted(k for k, v in fitres.metrics.items() if not _finite(v))
        if bad:
            return f"metrics {bad} are not finite numbers"
        if not isinstance(masked, list) or len(masked) != len(self.shapes):
            count = len(masked) if isinstance(masked, list) else 0
            return f"the masked vector has {count} arrays, expected {len(self.shapes)}"
        for k, (blob, shape) in enumerate(zip(masked, self.shapes, strict=True)):
            try:
                array = bytes_to_ndarray(cast(bytes, blob))
            except Exception as exc:  # any undecodable payload is malformed
                return f"masked array {k} cannot be decoded ({exc})"
            if tuple(array.shape) != tuple(shape) or not np.issubdtype(array.dtype, np.integer):
                got = f"{tuple(array.shape)} {array.dtype}"
                return f"masked array {k}: shape {got}, expected {tuple(shape)} integers"
        return None

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        sent = {int(m.metadata.dst_node_id): m for m in messages}
        stages = {str(m.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE, "")) for m in sent.values()}
        self.bytes_out += sum(payload_bytes(m.content) for m in sent.values())
        out: list[Message] = []
        for reply in self.inner.send_and_receive(list(sent.values()), timeout=timeout):
            node = int(reply.metadata.src_node_id)
            if reply.has_error():
                self.errors.setdefault(node, reply.error)
                out.append(reply)
                continue
            self.bytes_in += payload_bytes(reply.content)
            problem = self._masked_problem(reply) if Stage.COLLECT_MASKED_VECTORS in stages else None
            if problem is not None and node in sent:
                log.warning("secure aggregation: rejected the masked update of node %d: %s", node, problem)
                self.rejected[node] = problem
                out.append(
                    Message(Error(REJECTED_CODE, f"fedge:secagg-rejected: {problem}"), reply_to=sent[node])
                )
                continue
            out.append(reply)
        return out

    # -- delegated ---------------------------------------------------------------------------------

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self.inner.get_nodes()

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:  # fmt: skip
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)


# --- the strategy ---------------------------------------------------------------------------------


class _AmendedReporter:
    """The job's reporter, with the train report's bytes received and rejections of a SecAgg+ round
    (the guard counts the plaintext arrays it sees, which here are the aggregate)."""

    def __init__(self, inner: Any, *, bytes_received: int, rejected: list[dict[str, Any]]) -> None:
        self._inner, self._bytes, self._rejected = inner, bytes_received, rejected

    def on_round(self, report: RoundReport) -> None:
        if report.kind == "train":
            report = replace(report, bytes_received=self._bytes, rejected=[*report.rejected, *self._rejected])
        self._inner.on_round(report)

    def on_finish(self, summary: RunSummary) -> None:
        self._inner.on_finish(summary)

    def __getattr__(self, name: str) -> Any:  # anything else the guard reads from its reporter
        return getattr(self._inner, name)


class SecAggPlusRounds:
    """The round loop of a SecAgg+ job around the job's :class:`GuardedStrategy` (module docstring): the
    guard samples, validates and reports; Flower's SecAgg+ workflow runs the train phase."""

    def __init__(self, guarded: GuardedStrategy, settings: SecAggSettings) -> None:
        self.guarded, self.settings = guarded, settings

    def _secure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid, timeout: float
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        g = self.guarded
        messages = {
            int(m.metadata.dst_node_id): m for m in g.configure_train(server_round, arrays, config, grid)
        }
        names = list(arrays.keys())
        for name in names:
            if not np.issubdtype(np.dtype(arrays[name].dtype), np.floating):
                raise TypeError(
                    f"secure aggregation sums floating-point parameters; {name} is {arrays[name].dtype}"
                )
        stage_grid = _StageGrid(grid, self.settings, [tuple(arrays[n].shape) for n in names])
        adapter = _FitAdapter(messages, names, grid, g.run_id)
        context = LegacyContext(
            Context(run_id=g.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}),
            config=ServerConfig(num_rounds=1),
            strategy=adapter,
        )
        context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
            {WorkflowKey.CURRENT_ROUND: server_round}
        )
        context.state.array_records[MAIN_PARAMS_RECORD] = arrays
        if len(messages) >= 2:
            self.settings.workflow(timeout)(stage_grid, context)
        replies: list[Message] = []
        if adapter.results:
            legacy = parameters_to_ndarrays(adapter.results[0][1].parameters)
            aggregate = ArrayRecord(
                {
                    name: Array(np.asarray(value, dtype=arrays[name].dtype).reshape(arrays[name].shape))
                    for name, value in zip(names, legacy, strict=True)
                }
            )
            for proxy, fitres in adapter.results:
                reported = MetricRecord({k: cast(float, v) for k, v in fitres.metrics.items()})
                content = RecordDict({ARRAYS: aggregate, METRICS: reported})
                replies.append(Message(content, reply_to=messages[int(proxy.node_id)]))
        else:
            log.warning("round %d: secure aggregation halted (too few devices kept up); nothing aggregated",
                        server_round)  # fmt: skip
        survivors = {int(p.node_id) for p, _ in adapter.results or []}
        for node, error in stage_grid.errors.items():
            if node in messages and node not in survivors and node not in stage_grid.rejected:
                replies.append(Message(error, reply_to=messages[node]))
        # the guard's own aggregate_train (validation, the job's strategy, audit, report), with the report
        # telling the SecAgg+ bytes and the rejections made before the sum
        g._sent["train"] = stage_grid.bytes_out
        rejected = [{"node_id": n, "reason": r} for n, r in stage_grid.rejected.items()]
        reporter = g.reporter
        g.reporter = _AmendedReporter(reporter, bytes_received=stage_grid.bytes_in, rejected=rejected)
        try:
            return g.aggregate_train(server_round, replies)
        finally:
            g.reporter = reporter

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Flower's ``Strategy.start`` round loop with the SecAgg+ train phase."""
        g = self.guarded
        log.info("secure aggregation (SecAgg+): %s", self.settings)
        train_config = ConfigRecord() if train_config is None else train_config
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        result = Result(arrays=initial_arrays)  # a round that aggregates nothing keeps the global model
        began = time.time()
        if evaluate_fn:
            res = evaluate_fn(0, initial_arrays)
            if res is not None:
                result.evaluate_metrics_serverapp[0] = res
        arrays = initial_arrays
        for current in range(1, num_rounds + 1):
            log.info("[ROUND %s/%s] (SecAgg+)", current, num_rounds)
            agg, train_metrics = self._secure_train(current, arrays, train_config, grid, timeout)
            if agg is not None:
                result.arrays = arrays = agg
            if train_metrics is not None:
                result.train_metrics_clientapp[current] = train_metrics
            replies = grid.send_and_receive(
                messages=g.configure_evaluate(current, arrays, evaluate_config, grid), timeout=timeout
            )
            evaluated = g.aggregate_evaluate(current, replies)
            if evaluated is not None:
                result.evaluate_metrics_clientapp[current] = evaluated
            if evaluate_fn:
                res = evaluate_fn(current, arrays)
                if res is not None:
                    result.evaluate_metrics_serverapp[current] = res
        log.info("SecAgg+ strategy finished in %.2fs", time.time() - began)
        return result


def secure_rounds(guarded: GuardedStrategy, settings_json: str) -> SecAggPlusRounds:
    """The SecAgg+ round loop of a job (the run config's JSON settings) around its guarded strategy."""
    settings = SecAggSettings.from_json(settings_json)
    if settings is None:
        raise ValueError(f"run config {RUN_CONFIG_KEY!r} is empty")
    return SecAggPlusRounds(guarded, settings)
