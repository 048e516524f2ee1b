"""Each backend learns a generated stream (the prequential loss falls) and survives a dump/load."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from torch import nn

from edge_agent.learning.online_torch import TorchBackend
from edge_agent.online.backends import make_backend
from edge_agent.online.config import LearnerConfig
from edge_agent.online.learner import OnlineLearner
from tests.edge_agent.online.streams import class_stream, linear_stream, meter_stream

REGRESSORS = [
    ("river", "linear"),
    ("river", "hoeffding_tree"),
    ("sklearn", "sgd"),
    ("sklearn", "mlp"),
    ("torch", "mlp"),
]


def _losses(learner: OnlineLearner, messages: Any) -> list[float]:
    return [r["loss"] for r in (learner.update(m) for m in messages) if r["loss"] is not None]


@pytest.mark.parametrize(("backend", "model"), REGRESSORS)
def test_a_regressor_learns_a_linear_stream(backend: str, model: str) -> None:
    learner = OnlineLearner(LearnerConfig(name="reg", backend=backend, model=model))

    losses = _losses(learner, linear_stream(800))

    early, late = float(np.mean(losses[:50])), float(np.mean(losses[-200:]))
    assert late < 0.25 * early, (early, late)
    status = learner.status()
    assert status["state"] == "learning" and status["samples_seen"] == 800
    assert status["held_out"] == 80 and status["samples_learned"] == 720  # every 10th held out


@pytest.mark.parametrize(("backend", "model"), [("river", "logistic"), ("sklearn", "sgd"), ("torch", "mlp")])
def test_a_classifier_learns_two_classes(backend: str, model: str) -> None:
    learner = OnlineLearner(
        LearnerConfig(
            name="cls", backend=backend, model=model, task="classification", classes=["low", "high"]
        )
    )

    losses = _losses(learner, class_stream(600))

    assert float(np.mean(losses[-200:])) < 0.15
    assert float(np.mean(losses[-200:])) < float(np.mean(losses[:30]))


@pytest.mark.parametrize("backend", ["river", "sklearn", "torch"])
def test_the_smart_meter_forecast_improves(backend: str) -> None:
    learner = OnlineLearner(LearnerConfig(name="meter", backend=backend, transformer="smart_meter"))

    losses = _losses(learner, meter_stream(96 * 14))

    # one labelled sample per reading once the window (36) and the horizon (96) have passed
    assert learner.status()["samples_seen"] == 96 * 14 - 36 - 96 + 1
    assert float(np.mean(losses[-300:])) < 0.5 * float(np.mean(losses[:100]))


@pytest.mark.parametrize(("backend", "model"), REGRESSORS)
def test_a_dumped_backend_predicts_the_same_after_load(backend: str, model: str) -> None:
    config = LearnerConfig(name="dump", backend=backend, model=model)
    first = make_backend(config, 5)
    for m in linear_stream(100):
        first.learn(np.asarray(m["x"]), m["y"])
    probe = np.asarray(next(linear_stream(1, seed=9))["x"])

    second = make_backend(config, 5)
    second.load(first.dump())

    assert second.predict(probe) == first.predict(probe)


def test_the_torch_backend_takes_any_module_factory() -> None:
    made: list[nn.Module] = []

    def factory(n_features: int, n_outputs: int) -> nn.Module:
        made.append(nn.Sequential(nn.Linear(n_features, 8), nn.Tanh(), nn.Linear(8, n_outputs)))
        return made[-1]

    learner = OnlineLearner(
        LearnerConfig(name="custom", backend="torch", backend_options={"batch_size": 16}),
        backend_factory=lambda c, n: TorchBackend(c.task, n, c.classes, model=factory, **c.backend_options),
    )

    losses = _losses(learner, linear_stream(500))

    assert isinstance(learner.backend, TorchBackend) and learner.backend.module is made[0]
    assert float(np.mean(losses[-100:])) < 0.25 * float(np.mean(losses[:50]))
