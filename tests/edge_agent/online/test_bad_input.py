"""Bad input (issue 13 item 7): every refused message is counted per reason, and the model, its buffers
and the transformer are exactly as before it (the state's SHA-256 does not move)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
import pytest

from edge_agent.online.backends import Backend, Label
from edge_agent.online.config import LearnerConfig
from edge_agent.online.errors import Reason, RejectedInput
from edge_agent.online.learner import OnlineLearner
from edge_agent.online.service import Ingest
from tests.edge_agent.online.streams import START, linear_stream, meter_stream


def _trained(backend: str = "river", **config: Any) -> OnlineLearner:
    learner = OnlineLearner(LearnerConfig.model_validate({"name": "bad", "backend": backend, **config}))
    for i, message in enumerate(linear_stream(60)):
        learner.update({**message, "timestamp": START + i})
    return learner


def _state(learner: OnlineLearner) -> tuple[str, dict[str, Any], int, int]:
    return learner.fingerprint(), learner.transformer.state(), learner.messages, len(learner.validation)


GOOD_X = [10.0, 11.0, 9.0, 10.5, 8.0]
CASES: list[tuple[str, bytes, Reason]] = [
    ("not json", b'{"x": [1, 2', Reason.MALFORMED_JSON),
    ("not utf-8", b"\xff\xfe\x00", Reason.MALFORMED_JSON),
    ("not an object", b"[1, 2, 3]", Reason.MALFORMED_JSON),
    ("no features", b'{"y": 1.0}', Reason.INVALID_MESSAGE),
    ("text feature", json.dumps({"x": ["a", 1, 2, 3, 4], "y": 1.0}).encode(), Reason.INVALID_MESSAGE),
    ("text label", json.dumps({"x": GOOD_X, "y": "high"}).encode(), Reason.INVALID_MESSAGE),
    (
        "bad time",
        json.dumps({"x": GOOD_X, "y": 1.0, "timestamp": "yesterday"}).encode(),
        Reason.INVALID_MESSAGE,
    ),
    ("too few features", json.dumps({"x": GOOD_X[:3], "y": 1.0}).encode(), Reason.WRONG_FEATURE_COUNT),
    ("too many features", json.dumps({"x": [*GOOD_X, 1.0], "y": 1.0}).encode(), Reason.WRONG_FEATURE_COUNT),
    ("NaN feature", b'{"x": [NaN, 1, 2, 3, 4], "y": 1.0}', Reason.NON_FINITE),
    ("inf feature", b'{"x": [Infinity, 1, 2, 3, 4], "y": 1.0}', Reason.NON_FINITE),
    ("NaN label", b'{"x": [10, 1, 2, 3, 4], "y": NaN}', Reason.NON_FINITE),
    ("huge feature", json.dumps({"x": [1e300, 1, 2, 3, 4], "y": 1.0}).encode(), Reason.OUT_OF_RANGE),
    ("huge label", json.dumps({"x": GOOD_X, "y": -1e200}).encode(), Reason.OUT_OF_RANGE),
    ("older time", json.dumps({"x": GOOD_X, "y": 1.0, "timestamp": START + 3}).encode(), Reason.OUT_OF_ORDER),
    (
        "same time",
        json.dumps({"x": GOOD_X, "y": 1.0, "timestamp": START + 59}).encode(),
        Reason.DUPLICATE_TIMESTAMP,
    ),
    ("too large", json.dumps({"x": GOOD_X, "y": 1.0, "pad": "x" * 70_000}).encode(), Reason.TOO_LARGE),
]


@pytest.mark.parametrize("backend", ["river", "sklearn", "torch"])
@pytest.mark.parametrize(("case", "message", "reason"), CASES, ids=[c[0] for c in CASES])
def test_a_refused_message_changes_nothing(backend: str, case: str, message: bytes, reason: Reason) -> None:
    learner = _trained(backend)
    before = _state(learner)

    with pytest.raises(RejectedInput) as refused:
        learner.update(message, "mqtt")

    assert refused.value.reason == reason, case
    assert _state(learner) == before
    assert learner.status()["rejected"] == {reason: 1}
    learner.update({"x": GOOD_X, "y": 1.0, "timestamp": START + 100})  # and it goes on learning
    assert learner.messages == before[2] + 1


def test_an_unknown_class_is_refused() -> None:
    learner = OnlineLearner(
        LearnerConfig(name="c", task="classification", classes=["low", "high"], model="logistic")
    )
    learner.update({"x": [1.0, 2.0], "y": "low"})
    before = _state(learner)

    with pytest.raises(RejectedInput) as refused:
        learner.update({"x": [1.0, 2.0], "y": "medium"})

    assert refused.value.reason == Reason.UNKNOWN_LABEL
    assert _state(learner) == before


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"timestamp": START + 10 * 900, "consumption": 1.0}, Reason.OUT_OF_ORDER),
        ({"timestamp": START + 59 * 900, "consumption": 1.0}, Reason.DUPLICATE_TIMESTAMP),
        (
            {"timestamp": START + 59 * 900 + 200, "consumption": 1.0},
            Reason.DUPLICATE_TIMESTAMP,
        ),  # same 15 min
        ({"timestamp": START + 60 * 900, "consumption": float("nan")}, Reason.NON_FINITE),
        ({"timestamp": START + 60 * 900}, Reason.INVALID_MESSAGE),
        ({"timestamp": START + 60 * 900, "consumption": "12 kW"}, Reason.INVALID_MESSAGE),
    ],
)
def test_the_smart_meter_refuses_bad_readings(message: dict[str, Any], reason: Reason) -> None:
    learner = OnlineLearner(
        LearnerConfig(name="m", transformer="smart_meter", transformer_options={"horizon": 4})
    )
    for reading in meter_stream(60):
        learner.update(reading)
    before = _state(learner)

    with pytest.raises(RejectedInput) as refused:
        learner.update(message)

    assert refused.value.reason == reason
    assert _state(learner) == before


def test_a_burst_beyond_the_queue_is_dropped_and_counted() -> None:
    learner = _trained()
    ingest = Ingest(learner, capacity=5)  # worker not started yet: the queue fills
    before = _state(learner)
    messages = [json.dumps({"x": GOOD_X, "y": 1.0, "timestamp": START + 100 + i}).encode() for i in range(8)]

    accepted = [ingest.offer(m) for m in messages]

    assert accepted == [True] * 5 + [False] * 3
    assert learner.status()["rejected"] == {Reason.BURST: 3}
    assert _state(learner) == before
    ingest.start()
    try:
        deadline = 200
        while (len(ingest) or learner.messages < before[2] + 5) and deadline:
            deadline -= 1
            time.sleep(0.05)
    finally:
        ingest.stop()
    assert learner.messages == before[2] + 5


class _Overflowing(Backend):
    """A model whose weights overflow on a large label (what an SGD step on a wild value can do)."""

    kind = "fake"

    def __init__(self, n_features: int) -> None:
        super().__init__("regression", n_features)
        self.w = np.zeros(n_features)

    def predict(self, x: np.ndarray) -> Label | None:
        with np.errstate(over="ignore", invalid="ignore"):
            return float(self.w @ x)

    def learn(self, x: np.ndarray, y: Label) -> None:
        with np.errstate(over="ignore"):
            self.w = self.w + (np.float64(1e308) * 10 if float(y) > 1e6 else 0.01) * x

    def dump(self) -> bytes:
        return self.w.tobytes()

    def load(self, data: bytes) -> None:
        self.w = np.frombuffer(data).copy()


def test_a_diverged_model_is_put_back_and_never_answers_a_non_finite_prediction() -> None:
    learner = OnlineLearner(
        LearnerConfig(name="div", save={"holdout_every": 1000}), backend_factory=lambda c, n: _Overflowing(n)
    )
    for _ in range(5):
        learner.update({"x": [1.0, 1.0], "y": 1.0})
    learner.checkpoint()  # the snapshot a divergence goes back to
    snapshot = learner.fingerprint()
    learner.update({"x": [1.0, 1.0], "y": 1e7})  # finite, within max_abs: accepted, and it overflows

    with pytest.raises(RejectedInput) as refused:
        learner.update({"x": [1.0, 1.0], "y": 1.0})

    assert refused.value.reason == Reason.DIVERGED
    assert learner.fingerprint() == snapshot
    assert np.isfinite(learner.predict({"x": [1.0, 1.0]})["prediction"]["prediction"])


def test_refusals_are_logged_at_most_once_per_reason_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    learner = _trained()
    with caplog.at_level(logging.WARNING, logger="fedge.agent.online"):
        for _ in range(50):
            with pytest.raises(RejectedInput):
                learner.update(b"not json")
        for _ in range(50):
            with pytest.raises(RejectedInput):
                learner.update(b'{"x": [1]}')

    assert learner.status()["rejected"] == {Reason.MALFORMED_JSON: 50, Reason.WRONG_FEATURE_COUNT: 50}
    assert len(caplog.records) == 2
