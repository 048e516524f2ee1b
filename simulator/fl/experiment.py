"""One federated experiment in Flower's simulation runtime, as ``fedge fl simulate`` runs it.

An :class:`Experiment` is the whole setup: digits over ``devices`` simulated devices (Dirichlet(``alpha``)
label skew, or IID with ``alpha=None``; :func:`~simulator.fl.partition.make_federated_digits`), the
strategy spec, the network and local SGD, optional local DP-SGD (each device's budget is the target
epsilon, paid from its own ledger), the seed. The apps are the deployment ones
(:func:`~simulator.fl.flower.simulate`). Checks come in two steps, so that a bad option costs nothing:

* :meth:`Experiment.problems`: option values alone (no heavy import), one line each;
* :func:`check_runtime`: flwr[simulation], torch, opacus (with DP) and scikit-learn are importable
  (:class:`MissingDependency` with the install hint otherwise), the strategy spec parses and the network
  builds and takes 8x8 digits (:class:`ExperimentError`).

:func:`run_experiment` runs it and returns an :class:`ExperimentResult`: one :class:`RoundRow` per round
(train loss, eval accuracy, the largest epsilon a device reported after that round, bytes, seconds) and a
summary; ``to_json()`` is what ``fedge fl simulate --json`` prints.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simulator.fl.partition import FederatedData

__all__ = [
    "INSTALL_HINT",
    "Experiment",
    "ExperimentError",
    "ExperimentResult",
    "MissingDependency",
    "RoundRow",
    "check_runtime",
    "quiet_flower",
    "rows_from_reports",
    "run_experiment",
    "stdout_to_stderr",
]

INSTALL_HINT = "pip install 'fedge[agent,train,controller]'"
DIGITS_TRAIN, DIGITS_TEST = 1438, 359  # scikit-learn's 1,797 digits, 20 % of each class held out
MIN_EXAMPLES = 10  # default per device (Dirichlet draws are repeated until every device has this many)


class ExperimentError(ValueError):
    """An option value that cannot run; the message is one line naming the option."""


class MissingDependency(RuntimeError):
    """The simulation runtime is not installed; the message is one line with the install hint."""


@dataclass(frozen=True)
class Experiment:
    devices: int = 10
    alpha: float | None = 0.5  # None: IID
    rounds: int = 10
    strategy: str = "fedavg"  # a name or a JSON spec (controller.federation.strategies)
    model: str = "digits-mlp"
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.0
    dp_epsilon: float | None = None  # local DP-SGD target per device over the whole run; None: off
    dp_delta: float = 1e-5
    dp_max_grad_norm: float = 1.0
    min_devices: int | None = None  # devices every round needs (None: all)
    min_examples: int = MIN_EXAMPLES  # training digits every device gets at least (Dirichlet)
    seed: int = 0
    cpus: int = 2  # Ray's CPUs: ClientApps running at once

    @property
    def dp(self) -> bool:
        return self.dp_epsilon is not None

    def problems(self) -> list[str]:
        """Every option value that cannot run, one line each (``--option: why``); [] when all can."""
        out: list[str] = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                out.append(message)

        need(self.devices >= 1, f"--devices must be at least 1, got {self.devices}")
        need(  # every device holds at least one test digit
            self.devices <= DIGITS_TEST,
            f"--devices: the digits serve at most {DIGITS_TEST} devices (one test digit each), "
            f"got {self.devices}",
        )
        if self.alpha is not None:
            need(
                math.isfinite(self.alpha) and self.alpha > 0,
                f"--alpha must be a number > 0, got {self.alpha}",
            )
            need(self.min_examples >= 1, f"--min-examples must be at least 1, got {self.min_examples}")
            limit = DIGITS_TRAIN // max(self.min_examples, 1)
            need(
                self.devices <= limit,
                f"--devices: a Dirichlet split gives at most {limit} devices {self.min_examples} training "
                f"digits each (--min-examples), got {self.devices}",
            )
        need(self.rounds >= 1, f"--rounds must be at least 1, got {self.rounds}")
        need(self.local_epochs >= 1, f"--local-epochs must be at least 1, got {self.local_epochs}")
        need(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        need(math.isfinite(self.lr) and self.lr > 0, f"--lr must be a number > 0, got {self.lr}")
        need(
            math.isfinite(self.momentum) and 0 <= self.momentum < 1,
            f"--momentum must be in [0, 1), got {self.momentum}",
        )
        if self.dp_epsilon is not None:
            need(
                math.isfinite(self.dp_epsilon) and self.dp_epsilon > 0,
                f"--dp-epsilon must be a number > 0, got {self.dp_epsilon}",
            )
        need(0 < self.dp_delta < 1, f"--dp-delta must be in (0, 1), got {self.dp_delta}")
        need(
            math.isfinite(self.dp_max_grad_norm) and self.dp_max_grad_norm > 0,
            f"--dp-max-grad-norm must be a number > 0, got {self.dp_max_grad_norm}",
        )
        if self.min_devices is not None:
            need(
                1 <= self.min_devices <= max(self.devices, 1),
                f"--min-devices must be in [1, --devices = {self.devices}], got {self.min_devices}",
            )
        need(self.cpus >= 1, f"--cpus must be at least 1, got {self.cpus}")
        need(bool(self.strategy.strip()), "--strategy must not be empty")
        need(bool(self.model.strip()), "--model must not be empty")
        return out

    def data(self) -> FederatedData:
        """The digits split over the devices (:class:`ExperimentError` when the split cannot be drawn)."""
        from simulator.fl.partition import make_federated_digits

        try:
            return make_federated_digits(
                self.devices, alpha=self.alpha, seed=self.seed, min_size=self.min_examples
            )
        except ValueError as exc:
            raise ExperimentError(
                f"--devices/--alpha: {exc} (try a larger --alpha, fewer --devices or a lower --min-examples)"
            ) from exc

    def strategy_spec(self) -> str:
        """The strategy spec as JSON, waiting for every device before the first round unless it says
        otherwise (``min_available_nodes``; all virtual SuperNodes exist, they only take a moment to start,
        and a fraction sampled before they all did would be a fraction of fewer)."""
        text = self.strategy.strip()
        spec = json.loads(text) if text.startswith("{") else {"name": text}
        if isinstance(spec, dict) and not any(
            str(key).replace("-", "_") == "min_available_nodes" for key in spec
        ):
            spec["min_available_nodes"] = self.devices
        return json.dumps(spec)

    def run_config(self, job_id: str = "simulation") -> dict[str, Any]:
        """The ServerApp's run config (``controller.federation.serverapp.RUN_CONFIG_DEFAULTS`` keys)."""
        return {
            "num-server-rounds": self.rounds,
            "strategy": self.strategy_spec(),
            "min-nodes": self.min_devices or self.devices,
            "model": self.model,
            "seed": self.seed,
            "local-epochs": self.local_epochs,
            "batch-size": self.batch_size,
            "lr": float(self.lr),
            "momentum": float(self.momentum),
            "dp-target-epsilon": float(self.dp_epsilon or 0.0),
            "dp-delta": float(self.dp_delta),
            "dp-max-grad-norm": float(self.dp_max_grad_norm),
            "job-id": job_id,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "devices": self.devices,
            "partition": "iid" if self.alpha is None else "dirichlet",
            "alpha": self.alpha,
            "rounds": self.rounds,
            "strategy": self.strategy,
            "model": self.model,
            "local_epochs": self.local_epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "momentum": self.momentum,
            "min_devices": self.min_devices or self.devices,
            "min_examples": self.min_examples if self.alpha is not None else None,
            "seed": self.seed,
            "dp": {
                "target_epsilon": self.dp_epsilon,
                "delta": self.dp_delta,
                "max_grad_norm": self.dp_max_grad_norm,
            }
            if self.dp
            else None,
        }


def _missing(modules: Sequence[tuple[str, str]]) -> list[str]:
    """The distributions (second item) whose module (first item) does not import."""
    gone = []
    for module, distribution in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            gone.append(distribution)
    return gone


def check_runtime(experiment: Experiment) -> None:
    """Raise :class:`MissingDependency` unless the simulation runtime imports, then
    :class:`ExperimentError` for a strategy spec or network that cannot run."""
    needed = [
        ("flwr.simulation", "flwr[simulation]"),
        ("ray", "ray (flwr[simulation])"),
        ("torch", "torch"),
        ("sklearn", "scikit-learn"),
    ]
    if experiment.dp:
        needed.append(("opacus", "opacus"))
    gone = _missing(needed)
    if gone:
        raise MissingDependency(
            f"fedge fl simulate needs {', '.join(d for _, d in needed)}; missing {', '.join(gone)}: "
            f"{INSTALL_HINT}"
        )
    from controller.federation.strategies import StrategySpecError, parse_spec

    try:
        parse_spec(experiment.strategy)
    except StrategySpecError as exc:
        raise ExperimentError(f"--strategy: {exc}") from exc
    import torch

    from edge_agent.learning.models import ModelError, build_model

    try:
        model = build_model(experiment.model, experiment.seed)
        with torch.no_grad():
            shape = tuple(model(torch.zeros(2, 1, 8, 8)).shape)
    except ModelError as exc:
        raise ExperimentError(f"--model: {exc}") from exc
    except Exception as exc:  # a custom network that does not take digits
        raise ExperimentError(
            f"--model: {experiment.model!r} does not take 8x8 digits ({type(exc).__name__}: {exc})"
        ) from exc
    if shape != (2, 10):
        raise ExperimentError(
            f"--model: {experiment.model!r} maps digits [2, 1, 8, 8] to {list(shape)}, "
            "not [2, 10] class scores"
        )


@dataclass(frozen=True)
class RoundRow:
    """One round: its train and evaluate phases together."""

    round: int
    train_loss: float | None
    train_accuracy: float | None
    eval_loss: float | None
    eval_accuracy: float | None
    epsilon_max: float | None  # the largest epsilon a device reported after this round (None: no DP)
    participants: int
    evaluated: int
    failures: int
    rejected: int
    budget_refused: int
    bytes_sent: int  # parameters sent to the devices (train + evaluate)
    bytes_received: int
    seconds: float  # train + evaluate phase as the ServerApp timed them


@dataclass
class ExperimentResult:
    experiment: Experiment
    rows: list[RoundRow]
    seconds: float
    train_examples: list[int]
    test_examples: int
    epsilon: float | None = None  # max over the devices' ledgers after the run (every step counted)
    epsilon_min: float | None = None
    devices_accounted: int = 0
    output_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> RoundRow | None:
        return self.rows[-1] if self.rows else None

    def summary(self) -> dict[str, Any]:
        last = self.final
        accuracies = [r.eval_accuracy for r in self.rows if r.eval_accuracy is not None]
        later = [r.seconds for r in self.rows[1:]] or [r.seconds for r in self.rows]
        return {
            "rounds_completed": len(self.rows),
            "accuracy": last.eval_accuracy if last else None,
            "loss": last.eval_loss if last else None,
            "best_accuracy": max(accuracies) if accuracies else None,
            "epsilon": self.epsilon,
            "epsilon_min": self.epsilon_min,
            "delta": self.experiment.dp_delta if self.experiment.dp else None,
            "devices_accounted": self.devices_accounted,
            "wall_s": round(self.seconds, 2),
            "median_round_s": round(sorted(later)[len(later) // 2], 3) if later else None,
            "train_examples": sum(self.train_examples),
            "examples_per_device": {"min": min(self.train_examples), "max": max(self.train_examples)},
            "test_examples": self.test_examples,
            "output_path": self.output_path,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "simulation": "flwr.simulation",
            **self.experiment.describe(),
            "per_round": [asdict(r) for r in self.rows],
            "summary": self.summary(),
        }


def _metric(metrics: dict[str, float] | None, key: str) -> float | None:
    if not metrics or key not in metrics:
        return None
    value = float(metrics[key])
    return value if math.isfinite(value) else None


def rows_from_reports(reports: Sequence[Any], dp: bool) -> list[RoundRow]:
    """One row per round from the ServerApp's RoundReports (a round without its evaluate phase too)."""
    train = {r.round: r for r in reports if r.kind == "train"}
    evaluate = {r.round: r for r in reports if r.kind == "evaluate"}
    rows = []
    for k in sorted(set(train) | set(evaluate)):
        t, e = train.get(k), evaluate.get(k)
        tm = t.metrics if t else None
        em = e.metrics if e else None
        rows.append(
            RoundRow(
                round=k,
                train_loss=_metric(tm, "train_loss"),
                train_accuracy=_metric(tm, "train_accuracy"),
                eval_loss=_metric(em, "eval_loss"),
                eval_accuracy=_metric(em, "eval_accuracy"),
                epsilon_max=_metric(tm, "dp-epsilon-max") if dp else None,
                participants=t.participants if t else 0,
                evaluated=e.participants if e else 0,
                failures=(t.failures if t else 0) + (e.failures if e else 0),
                rejected=len(t.rejected) if t else 0,
                budget_refused=len(t.budget_refused) if t else 0,
                bytes_sent=(t.bytes_sent if t else 0) + (e.bytes_sent if e else 0),
                bytes_received=(t.bytes_received if t else 0) + (e.bytes_received if e else 0),
                seconds=(t.seconds if t else 0.0) + (e.seconds if e else 0.0),
            )
        )
    return rows


@contextlib.contextmanager
def quiet_flower(level: int = logging.ERROR) -> Iterator[None]:
    """Flower's own log (the round-by-round INFO lines, the ``run_simulation`` deprecation warning) at
    ``level`` and above only, for the duration."""
    logger = logging.getLogger("flwr")
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Anything written to stdout (file descriptor 1 too: Ray's workers) goes to stderr meanwhile, so that
    stdout carries only what the caller prints after (``--json``)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    real = sys.stdout
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stdout = real
        os.dup2(saved, 1)
        os.close(saved)


def run_experiment(
    experiment: Experiment,
    state_root: Path,
    *,
    on_round: Callable[[RoundRow], None] | None = None,
    output_path: Path | None = None,
    job_id: str = "simulation",
    data: FederatedData | None = None,
) -> ExperimentResult:
    """Run it (checked with :meth:`Experiment.problems` and :func:`check_runtime` first); ``on_round``
    gets each round's row as its evaluate phase ends (from the ServerApp's thread); ``data``: the
    partition already made by :meth:`Experiment.data`."""
    problems = experiment.problems()
    if problems:
        raise ExperimentError(problems[0])
    from edge_agent.learning.ledger import PrivacyLedger
    from simulator.fl.flower import simulate

    data = data or experiment.data()
    seen: list[Any] = []

    def relay(report: Any) -> None:
        seen.append(report)
        if on_round is not None and report.kind == "evaluate":
            on_round(rows_from_reports([r for r in seen if r.round == report.round], experiment.dp)[0])

    config = experiment.run_config(job_id)
    if output_path is not None:
        config["output-path"] = str(output_path)
    outcome = simulate(
        data,
        config,
        state_root,
        budget_epsilon=float(experiment.dp_epsilon or 0.0),
        delta=experiment.dp_delta,
        num_cpus=experiment.cpus,
        on_report=relay,
    )
    result = ExperimentResult(
        experiment=experiment,
        rows=rows_from_reports(outcome.reports, experiment.dp),
        seconds=outcome.seconds,
        train_examples=[len(y) for _, y in data.train],
        test_examples=len(data.y_test),
        output_path=str(output_path) if output_path is not None and output_path.exists() else None,
    )
    if experiment.dp:
        spent = [
            PrivacyLedger(
                path, budget_epsilon=float(experiment.dp_epsilon or 0.0), delta=experiment.dp_delta
            ).spent
            for path in sorted(state_root.glob("device-*/privacy/digits.json"))
        ]
        if spent:
            result.epsilon, result.epsilon_min = max(spent), min(spent)
        result.devices_accounted = len(spent)
    return result
