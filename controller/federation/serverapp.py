"""The controller's Flower ``ServerApp``: the job's strategy, guarded, reported, its result saved.

``main`` reads the run config (:data:`RUN_CONFIG_DEFAULTS`; an unknown key is refused), builds the
strategy from the ``strategy`` spec (:mod:`controller.federation.strategies`), wraps it in
:class:`GuardedStrategy` and runs Flower's round loop (``Strategy.start``). The guard, every round:

* rejects malformed train replies before they reach the strategy: not exactly one ArrayRecord and one
  MetricRecord, array names, shapes or dtypes that differ from the global model sent, non-finite values,
  a missing or non-positive ``num-examples``; each is logged with its node id and left out;
* recognises a device's privacy-budget refusal (:func:`fedge_protocol.federation.is_budget_refusal`),
  counts it apart from failures and sends that device no more train messages in this run;
* hands a :class:`RoundReport` (aggregated metrics, participants, failures, refusals, rejections,
  bytes each way, wall time, per-node metrics) to a :class:`Reporter`, and a :class:`RunSummary` at the end.

Run config (``[tool.flwr.app.config]`` in deployment; ``make_server_app(run_config=...)`` in simulation):

==========================  ============================================================================
``num-server-rounds``       rounds to run (3)
``strategy``                strategy spec: a name or a JSON object (``"fedavg"``)
``min-nodes``               default ``min_available/train/evaluate_nodes`` of the strategy (2)
``model``                   network name or ``module:function`` the devices train (``digits-mlp``)
``seed``                    initial parameters' seed, also mixed into the devices' shuffling (0)
``initial-path``            ``.npz`` of initial parameters instead of the seeded network ("")
``local-epochs``, ``batch-size``, ``lr``, ``momentum``   local SGD (1, 32, 0.1, 0.0)
``dp-target-epsilon``       local DP-SGD target epsilon per device over the whole run; 0: off (0.0)
``dp-delta``, ``dp-max-grad-norm``                        (1e-5, 1.0)
``job-id``                  the controller's job id, the devices' ledger key ("": ``flwr-run-<run id>``)
``report-url``              POST each report here as JSON (loopback controller route; "": none)
``report-token``            bearer token for ``report-url`` ("")
``output-path``             where to save the final global parameters as ``.npz`` ("": not saved)
``round-timeout``           seconds to wait for replies in each phase (3600)
``algorithm``               ``fedavg`` (the strategy's rounds) or ``fedpate`` (controller/federation/pate.py)
``pate``                    FedPATE settings as JSON (``PateSpec``; "" unless ``algorithm`` is fedpate)
``secure-aggregation``      SecAgg+ settings as JSON ("": off; :mod:`controller.federation.secagg`)
``he``                      CKKS aggregation as JSON ("": off; :mod:`controller.federation.he`, FedAvg only)
==========================  ============================================================================
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result, Strategy

from controller.federation.round_audit import RoundAuditor, is_audit_refusal
from controller.federation.strategies import build_strategy, parse_spec
from fedge_protocol.federation import ReplyKey, TrainKey, is_budget_refusal

__all__ = [
    "RUN_CONFIG_DEFAULTS",
    "FederationCancelled",
    "FederationConfig",
    "GuardedStrategy",
    "HttpReporter",
    "ListReporter",
    "Reporter",
    "RoundReport",
    "RunSummary",
    "app",
    "make_server_app",
    "run_federation",
]

log = logging.getLogger("fedge.controller.federation")

RUN_CONFIG_DEFAULTS: dict[str, bool | int | float | str] = {
    "num-server-rounds": 3,
    "strategy": "fedavg",
    "min-nodes": 2,
    "model": "digits-mlp",
    "seed": 0,
    "initial-path": "",
    "local-epochs": 1,
    "batch-size": 32,
    "lr": 0.1,
    "momentum": 0.0,
    "dp-target-epsilon": 0.0,
    "dp-delta": 1e-5,
    "dp-max-grad-norm": 1.0,
    "job-id": "",
    "report-url": "",
    "report-token": "",
    "output-path": "",
    "round-timeout": 3600.0,
    "algorithm": "fedavg",
    "pate": "",
    "secure-aggregation": "",
    "he": "",
}


# --- reports ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundReport:
    """One phase (``train`` or ``evaluate``) of one round, as the controller records it."""

    run_id: int
    job_id: str
    kind: str
    round: int
    metrics: dict[str, float]
    participants: int
    failures: int
    budget_refused: list[int]
    rejected: list[dict[str, Any]]
    bytes_sent: int
    bytes_received: int
    seconds: float
    clients: list[dict[str, Any]] = field(default_factory=list)
    audit: dict[str, Any] | None = None  # train: the round's update digests and root; evaluate: refusals

    def to_json(self) -> dict[str, Any]:
        return {"type": "round", **asdict(self)}


@dataclass(frozen=True)
class RunSummary:
    run_id: int
    job_id: str
    rounds: int
    seconds: float
    output_path: str | None
    final_metrics: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"type": "finished", **asdict(self)}


class Reporter(Protocol):
    """Receives every round's report and the run's summary (must not raise into the round loop)."""

    def on_round(self, report: RoundReport) -> None: ...

    def on_finish(self, summary: RunSummary) -> None: ...


class ListReporter:
    """Keeps the reports in memory (simulation, tests)."""

    def __init__(self) -> None:
        self.rounds: list[RoundReport] = []
        self.summary: RunSummary | None = None

    def on_round(self, report: RoundReport) -> None:
        self.rounds.append(report)

    def on_finish(self, summary: RunSummary) -> None:
        self.summary = summary


class HttpReporter:
    """POSTs each report as JSON to the controller (a loopback route in deployment); a report that
    cannot be delivered after ``retries`` tries is logged and dropped, the run goes on."""

    def __init__(
        self,
        url: str,
        *,
        token: str = "",
        timeout: float = 5.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url, self.retries = url, retries
        self._client = httpx.Client(timeout=timeout, headers=headers, transport=transport)

    def _post(self, body: dict[str, Any]) -> None:
        self.last_reply: dict[str, Any] | None = None  # the controller's JSON answer (the audit's root)
        for attempt in range(1, self.retries + 1):
            try:
                response = self._client.post(self.url, json=body).raise_for_status()
                if response.status_code == 200 and response.content:
                    self.last_reply = response.json()
                return
            except httpx.HTTPError as exc:
                log.warning("report %s to %s failed (try %d): %s", body["type"], self.url, attempt, exc)
                time.sleep(0.2 * attempt)
        log.error("dropping a %s report to %s after %d tries", body["type"], self.url, self.retries)

    def on_round(self, report: RoundReport) -> None:
        self._post(report.to_json())

    def on_finish(self, summary: RunSummary) -> None:
        self._post(summary.to_json())

    def close(self) -> None:
        self._client.close()


# --- the guard ----------------------------------------------------------------------------------


class FederationCancelled(RuntimeError):
    """The job was cancelled (its ``cancel`` event was set) between or before rounds."""


def _node(msg: Message) -> int:
    return int(msg.metadata.src_node_id)


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class GuardedStrategy(Strategy):
    """Wraps a Flower strategy: malformed updates out, budget refusals recognised, every phase reported."""

    def __init__(
        self,
        inner: Strategy,
        reporter: Reporter,
        *,
        run_id: int = 0,
        job_id: str = "",
        weighted_by_key: str = ReplyKey.NUM_EXAMPLES,
        cancel: threading.Event | None = None,
    ) -> None:
        self.inner = inner
        self.cancel = cancel
        self.reporter = reporter
        self.run_id, self.job_id = run_id, job_id
        self.weighted_by_key = weighted_by_key
        self.auditor = RoundAuditor(chain_required=isinstance(reporter, HttpReporter))  # every round on chain
        self.exhausted: set[int] = set()
        self._reference: dict[str, tuple[tuple[int, ...], str]] = {}
        self._sent: dict[str, int] = {"train": 0, "evaluate": 0}
        self._started: dict[str, float] = {"train": 0.0, "evaluate": 0.0}

    def summary(self) -> None:
        self.inner.summary()

    # configure ---------------------------------------------------------------------------------

    def _min_available(self) -> int:
        strategy: Any = self.inner
        while not hasattr(strategy, "min_available_nodes") and hasattr(strategy, "strategy"):
            strategy = strategy.strategy  # through Flower's DP wrappers
        return int(getattr(strategy, "min_available_nodes", 0))

    def _await_nodes(self, grid: Grid) -> None:
        """Wait for the strategy's minimum of nodes here, where a cancelled job can stop waiting
        (Flower's own sampling waits forever)."""
        if self.cancel is None:
            return
        need = self._min_available()
        while not self.cancel.is_set() and len(list(grid.get_node_ids())) < need:
            self.cancel.wait(0.5)
        if self.cancel.is_set():
            raise FederationCancelled(f"job {self.job_id} was cancelled")

    def _configured(self, kind: str, messages: Iterable[Message]) -> list[Message]:
        out = list(messages)
        self._sent[kind] = sum(rec.count_bytes() for m in out for rec in m.content.array_records.values())
        self._started[kind] = time.perf_counter()
        return out

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._await_nodes(grid)
        self._reference = {name: (tuple(a.shape), str(a.dtype)) for name, a in arrays.items()}
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        kept = [m for m in messages if m.metadata.dst_node_id not in self.exhausted]
        if len(kept) < len(messages):
            log.info(
                "round %d: not asking %d budget-exhausted node(s) to train",
                server_round,
                len(messages) - len(kept),
            )
        return self._configured("train", kept)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._await_nodes(grid)
        messages = self.inner.configure_evaluate(server_round, arrays, config, grid)
        return self._configured("evaluate", self.auditor.evaluate_messages(server_round, messages))

    # validate ----------------------------------------------------------------------------------

    def _problem(self, msg: Message, train: bool) -> str | None:
        content = msg.content
        if len(content.metric_records) != 1:
            return f"expected one MetricRecord, got {len(content.metric_records)}"
        metrics = next(iter(content.metric_records.values()))
        weight = metrics.get(self.weighted_by_key)
        if not _finite_number(weight) or weight <= 0:  # type: ignore[operator]
            return f"{self.weighted_by_key} must be a positive number, got {weight!r}"
        for key, value in metrics.items():
            values = value if isinstance(value, list) else [value]
            if not all(_finite_number(v) for v in values):
                return f"metric {key!r} is not finite"
        if not train:
            return None
        if len(content.array_records) != 1:
            return f"expected one ArrayRecord, got {len(content.array_records)}"
        record = next(iter(content.array_records.values()))
        check = getattr(self.inner, "check_train_arrays", None)  # HE: ciphertext chunks, not the model
        if check is not None:
            problem: str | None = check(record)
            return problem
        if set(record) != set(self._reference):
            missing = sorted(set(self._reference) - set(record))
            extra = sorted(set(record) - set(self._reference))
            return f"array names differ from the global model: missing {missing}, unexpected {extra}"
        for name, array in record.items():
            shape, dtype = self._reference[name]
            if tuple(array.shape) != shape or str(array.dtype) != dtype:
                return f"{name}: shape {tuple(array.shape)} {array.dtype}, expected {shape} {dtype}"
            try:
                decoded = array.numpy()
            except Exception as exc:  # any undecodable payload is malformed
                return f"{name}: cannot be decoded ({exc})"
            if not np.all(np.isfinite(decoded)):
                return f"{name}: holds NaN or infinite values"
        return None

    def _sort(
        self, kind: str, server_round: int, replies: Iterable[Message]
    ) -> tuple[list[Message], dict[str, Any]]:
        valid: list[Message] = []
        failures, refused, rejected, received, disputes = 0, [], [], 0, []
        for msg in replies:
            if msg.has_error():
                if kind == "evaluate" and is_audit_refusal(msg):
                    disputes.append({"node_id": _node(msg), "reason": msg.error.reason})
                    log.error("round %d: node %d disputes the audit: %s", server_round, _node(msg),
                              msg.error.reason)  # fmt: skip
                elif kind == "train" and is_budget_refusal(msg.error):
                    refused.append(_node(msg))
                    self.exhausted.add(_node(msg))
                    log.warning(
                        "round %d: node %d refused to train: %s", server_round, _node(msg), msg.error.reason
                    )
                else:
                    failures += 1
                    log.warning(
                        "round %d: %s failed on node %d: %s", server_round, kind, _node(msg), msg.error.reason
                    )
                continue
            received += sum(rec.count_bytes() for rec in msg.content.array_records.values())
            problem = self._problem(msg, kind == "train")
            if problem is not None:
                rejected.append({"node_id": _node(msg), "reason": problem})
                log.warning(
                    "round %d: rejected the %s reply of node %d: %s", server_round, kind, _node(msg), problem
                )
                continue
            valid.append(msg)
        _harmonise(valid)
        info = {
            "failures": failures,
            "budget_refused": refused,
            "rejected": rejected,
            "bytes_received": received,
            "audit": {"refused": disputes} if disputes else None,
            "clients": [
                {"node_id": _node(m), "metrics": dict(next(iter(m.content.metric_records.values())))}
                for m in valid
            ],
        }
        return valid, info

    def _report(
        self,
        kind: str,
        server_round: int,
        valid: list[Message],
        info: dict[str, Any],
        metrics: MetricRecord | None,
    ) -> None:
        flat = {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, int | float)}
        epsilons = [c["metrics"].get(ReplyKey.DP_EPSILON) for c in info["clients"]]
        epsilons = [float(e) for e in epsilons if _finite_number(e)]
        if epsilons:
            flat[f"{ReplyKey.DP_EPSILON}-max"] = max(epsilons)
        report = RoundReport(
            run_id=self.run_id,
            job_id=self.job_id,
            kind=kind,
            round=server_round,
            metrics=flat,
            participants=len(valid),
            bytes_sent=self._sent[kind],
            seconds=time.perf_counter() - self._started[kind],
            **info,
        )
        try:
            self.reporter.on_round(report)
        except Exception:  # a reporter must not end the run
            log.exception("the reporter failed on round %d (%s)", server_round, kind)

    # aggregate ---------------------------------------------------------------------------------

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, info = self._sort("train", server_round, replies)
        digests = self.auditor.digests(valid)
        arrays, metrics = self.inner.aggregate_train(server_round, valid) if valid else (None, None)
        info["audit"] = self.auditor.on_train(server_round, digests, arrays)
        self._report("train", server_round, valid, info, metrics)
        self.auditor.confirm(getattr(self.reporter, "last_reply", None))
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        valid, info = self._sort("evaluate", server_round, replies)
        metrics = self.inner.aggregate_evaluate(server_round, valid) if valid else None
        self._report("evaluate", server_round, valid, info, metrics)
        return metrics


def _harmonise(replies: list[Message]) -> None:
    """Keep only the metric keys every reply has (Flower's strategies refuse differing keys)."""
    if not replies:
        return
    records = [(m, next(iter(m.content.metric_records.items()))) for m in replies]
    common = set.intersection(*(set(rec) for _, (_, rec) in records))
    for msg, (key, rec) in records:
        if set(rec) != common:
            msg.content[key] = MetricRecord({k: v for k, v in rec.items() if k in common})


# --- the run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FederationConfig:
    """The run config, checked (see the module docstring for the keys)."""

    values: dict[str, bool | int | float | str]

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FederationConfig:
        unknown = sorted(set(run_config) - set(RUN_CONFIG_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown run config key{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
        values = dict(RUN_CONFIG_DEFAULTS)
        for key, value in run_config.items():
            default = RUN_CONFIG_DEFAULTS[key]
            try:
                values[key] = type(default)(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"run config {key!r}: {value!r} is not a {type(default).__name__}") from exc
        parse_spec(str(values["strategy"]))  # refuse a bad spec before anything starts
        if values["algorithm"] not in ("fedavg", "fedpate"):
            raise ValueError(f"algorithm is fedavg or fedpate, not {values['algorithm']!r}")
        if values["he"]:
            from controller.federation.he import check_he_config

            check_he_config(str(values["he"]), str(values["strategy"]), str(values["secure-aggregation"]))
        if int(values["num-server-rounds"]) < 1:
            raise ValueError("num-server-rounds must be at least 1")
        return cls(values)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def train_config(self, job_id: str) -> ConfigRecord:
        v = self.values
        return ConfigRecord(
            {
                TrainKey.JOB_ID: job_id,
                TrainKey.PLANNED_ROUNDS: int(v["num-server-rounds"]),
                TrainKey.MODEL: str(v["model"]),
                TrainKey.SEED: int(v["seed"]),
                TrainKey.LOCAL_EPOCHS: int(v["local-epochs"]),
                TrainKey.BATCH_SIZE: int(v["batch-size"]),
                TrainKey.LR: float(v["lr"]),
                TrainKey.MOMENTUM: float(v["momentum"]),
                TrainKey.DP_TARGET_EPSILON: float(v["dp-target-epsilon"]),
                TrainKey.DP_DELTA: float(v["dp-delta"]),
                TrainKey.DP_MAX_GRAD_NORM: float(v["dp-max-grad-norm"]),
            }
        )

    def evaluate_config(self, job_id: str) -> ConfigRecord:
        return ConfigRecord({TrainKey.JOB_ID: job_id, TrainKey.MODEL: str(self.values["model"])})


def initial_arrays(config: FederationConfig) -> ArrayRecord:
    """The initial global parameters: ``initial-path`` if set, else the seeded network."""
    path = str(config["initial-path"])
    if path:
        with np.load(path, allow_pickle=False) as npz:
            return ArrayRecord({name: Array(np.asarray(npz[name])) for name in npz.files})
    from edge_agent.learning.models import build_model  # the same network zoo the devices use

    model = build_model(str(config["model"]), int(config["seed"]))
    return ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in model.state_dict().items()})


def save_arrays(arrays: ArrayRecord, path: Path) -> None:
    """Write the parameters as ``.npz`` atomically (temporary file, fsync, rename)."""
    buf = io.BytesIO()
    savez: Callable[..., None] = np.savez
    savez(buf, **{name: array.numpy() for name, array in arrays.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(buf.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def run_federation(
    grid: Grid,
    config: FederationConfig,
    reporter: Reporter,
    *,
    run_id: int = 0,
    cancel: threading.Event | None = None,
) -> Result:
    """Run the whole job on ``grid``: guarded strategy, reports, final parameters saved. Setting
    ``cancel`` ends it with :class:`FederationCancelled` before the next phase."""
    if str(config["algorithm"]) != "fedavg":  # FedPATE: controller.federation.pate.run_fedpate (flower_app)
        raise ValueError(f"run_federation runs the strategies' rounds, not algorithm {config['algorithm']!r}")
    job_id = str(config["job-id"]) or f"flwr-run-{run_id}"
    min_nodes = int(config["min-nodes"])
    strategy = build_strategy(
        str(config["strategy"]),
        min_available_nodes=min_nodes,
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
    )
    he_run = None
    if str(config["he"]):  # CKKS: the devices make and hold the key set, the strategy adds ciphertexts
        from controller.federation.he import he_strategy

        he_run, strategy = he_strategy(
            grid, config, job_id=job_id, min_nodes=min_nodes, cancel=cancel, cancelled=FederationCancelled
        )
    guarded = GuardedStrategy(strategy, reporter, run_id=run_id, job_id=job_id, cancel=cancel)
    start = guarded.start
    if str(config["secure-aggregation"]):  # SecAgg+: Flower's workflow runs the train phase
        guarded.auditor.enabled = False  # no individual update to put in the audit tree (docs/fl-audit.md)
        from controller.federation.secagg import secure_rounds

        start = secure_rounds(guarded, str(config["secure-aggregation"])).start
    started = time.perf_counter()
    result = start(
        grid=grid,
        initial_arrays=initial_arrays(config),
        num_rounds=int(config["num-server-rounds"]),
        timeout=float(config["round-timeout"]),
        train_config=config.train_config(job_id),
        evaluate_config=config.evaluate_config(job_id),
    )
    if he_run is not None:  # a key holder decrypts the final aggregate: the job's output
        result.arrays = he_run.final_model(grid, result.arrays, he_run.layout(strategy))
    output = str(config["output-path"])
    if output:
        save_arrays(result.arrays, Path(output))
    final = {}
    if result.evaluate_metrics_clientapp:
        last = max(result.evaluate_metrics_clientapp)
        final = {
            k: float(v)
            for k, v in result.evaluate_metrics_clientapp[last].items()
            if isinstance(v, int | float)
        }
    summary = RunSummary(
        run_id=run_id,
        job_id=job_id,
        rounds=int(config["num-server-rounds"]),
        seconds=time.perf_counter() - started,
        output_path=output or None,
        final_metrics=final,
    )
    try:
        reporter.on_finish(summary)
    except Exception:
        log.exception("the reporter failed on the run summary")
    return result


def _reporter_from(config: FederationConfig) -> Reporter:
    url = str(config["report-url"])
    return HttpReporter(url, token=str(config["report-token"])) if url else ListReporter()


def make_server_app(
    reporter: Reporter | None = None,
    run_config: Mapping[str, Any] | None = None,
    on_result: Callable[[Result], None] | None = None,
    cancel: threading.Event | None = None,
) -> ServerApp:
    """A ServerApp; ``run_config`` fills in below the runtime's own run config (the simulation API
    passes none), ``reporter`` replaces the one ``report-url`` would make, ``cancel`` stops the job."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config = FederationConfig.from_run_config({**(run_config or {}), **dict(context.run_config)})
        chosen = reporter if reporter is not None else _reporter_from(config)
        try:
            result = run_federation(grid, config, chosen, run_id=int(context.run_id), cancel=cancel)
        finally:
            if isinstance(chosen, HttpReporter) and reporter is None:
                chosen.close()
        if on_result is not None:
            on_result(result)

    return app


#: the deployment ServerApp (``serverapp = "controller.federation.serverapp:app"``)
app = make_server_app()
