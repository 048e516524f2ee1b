"""``fedge fl simulate``'s logic without the runtime (simulator/fl/experiment.py): option checks, the
strategy spec and run config it hands the ServerApp, and the per-round rows built from round reports."""

from __future__ import annotations

import json
from typing import Any

import pytest

from simulator.fl.experiment import Experiment, ExperimentError, rows_from_reports


def test_good_options_have_no_problems_and_bad_ones_one_line_each() -> None:
    assert Experiment().problems() == []
    assert Experiment(devices=143, alpha=0.5).problems() == []
    assert Experiment(devices=359, alpha=None).problems() == []
    bad = Experiment(devices=0, alpha=-1.0, rounds=0, lr=0.0, dp_epsilon=0.0, dp_delta=1.0, batch_size=0)
    problems = bad.problems()
    assert problems[0] == "--devices must be at least 1, got 0"
    assert "--alpha must be a number > 0, got -1.0" in problems
    assert "--dp-epsilon must be a number > 0, got 0.0" in problems
    assert all("\n" not in p and p.startswith("--") for p in problems) and len(problems) == 7
    assert Experiment(devices=144).problems() == [
        "--devices: a Dirichlet split gives at most 143 devices 10 training digits each (--min-examples), got 144"
    ]
    assert Experiment(devices=144, min_examples=2).problems() == []


def test_the_run_config_waits_for_every_device_unless_the_spec_says_otherwise() -> None:
    config = Experiment(devices=50, min_devices=5, rounds=4, dp_epsilon=3.0, strategy="fedprox").run_config()
    assert json.loads(config["strategy"]) == {"name": "fedprox", "min_available_nodes": 50}
    assert config["min-nodes"] == 5 and config["num-server-rounds"] == 4
    assert config["dp-target-epsilon"] == 3.0 and config["job-id"] == "simulation"
    spec = '{"name": "fedavg", "fraction_train": 0.2, "min-available-nodes": 7}'
    assert json.loads(Experiment(devices=50, strategy=spec).run_config()["strategy"]) == {
        "name": "fedavg", "fraction_train": 0.2, "min-available-nodes": 7,
    }  # fmt: skip
    assert Experiment(dp_epsilon=None).run_config()["dp-target-epsilon"] == 0.0


def test_a_split_that_cannot_be_drawn_names_the_options() -> None:
    with pytest.raises(ExperimentError, match=r"^--devices/--alpha: no Dir\(0.3\) split"):
        Experiment(devices=100, alpha=0.3).data()
    data = Experiment(devices=100, alpha=0.3, min_examples=2).data()
    assert data.num_clients == 100 and min(len(y) for _, y in data.train) >= 2


class _Report:
    def __init__(self, kind: str, rnd: int, **fields: Any) -> None:
        self.kind, self.round = kind, rnd
        self.metrics: dict[str, float] = fields.pop("metrics", {})
        self.participants = fields.pop("participants", 3)
        self.failures, self.rejected, self.budget_refused = 0, fields.pop("rejected", []), []
        self.bytes_sent, self.bytes_received, self.seconds = 100, 50, 1.5


def test_rows_join_each_rounds_train_and_evaluate_phase() -> None:
    reports = [
        _Report("train", 1, metrics={"train_loss": 1.2, "train_accuracy": 0.5, "dp-epsilon-max": 1.1}),
        _Report("evaluate", 1, metrics={"eval_loss": 1.0, "eval_accuracy": 0.7}, participants=4),
        _Report("train", 2, metrics={"train_loss": 0.9, "dp-epsilon-max": float("nan")}, rejected=[{}]),
    ]
    first, second = rows_from_reports(reports, dp=True)
    assert (first.round, first.train_loss, first.eval_accuracy, first.epsilon_max) == (1, 1.2, 0.7, 1.1)
    assert (first.participants, first.evaluated, first.bytes_sent, first.seconds) == (3, 4, 200, 3.0)
    assert (second.eval_accuracy, second.epsilon_max, second.rejected, second.evaluated) == (None, None, 1, 0)
    assert rows_from_reports(reports[:1], dp=False)[0].epsilon_max is None
