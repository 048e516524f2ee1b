"""Save on improvement, restart persistence, and the smart-meter transformer's time rules."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_agent.online.config import LearnerConfig, SavePolicy
from edge_agent.online.learner import OnlineLearner
from edge_agent.online.store import LearnerStore
from tests.edge_agent.online.streams import START, linear_stream, meter_stream


def _learner(tmp_path: Path, **config: object) -> OnlineLearner:
    cfg = LearnerConfig.model_validate({"name": "l1", **config})
    return OnlineLearner(cfg, LearnerStore(tmp_path / "l1", cfg.save.keep_versions))


# --------------------------------------------------------------- save on improvement
def test_a_version_is_saved_only_when_the_held_out_loss_improves_by_the_threshold(tmp_path: Path) -> None:
    save = SavePolicy(evaluate_every=40, min_validation=10, min_improvement=0.2, keep_versions=100)
    learner = _learner(tmp_path, backend="river", save=save.model_dump())
    decisions = []

    for message in linear_stream(1500, noise=0.5):
        before = learner.evaluation
        learner.update(message)
        if learner.evaluation is not before:
            decisions.append(learner.evaluation)

    assert decisions[0]["saved"] and decisions[0]["saved_version_loss"] is None  # the first evaluation saves
    for d in decisions[1:]:
        assert d["saved"] == (d["validation_loss"] < d["saved_version_loss"] * (1 - 0.2)), d
    saves = sum(d["saved"] for d in decisions)
    assert 1 < saves < len(decisions)  # improvements early, a plateau later: both rules fired
    versions = sorted((tmp_path / "l1" / "versions").glob("*.model"))
    assert len(versions) == saves == learner.status()["last_saved_version"]
    for path in versions:
        meta = json.loads(path.with_suffix(".json").read_text())
        assert hashlib.sha256(path.read_bytes()).hexdigest() == meta["sha256"]


def test_a_higher_threshold_saves_fewer_versions(tmp_path: Path) -> None:
    counts = []
    for threshold in (0.0, 0.5):
        save = SavePolicy(evaluate_every=40, min_validation=10, min_improvement=threshold)
        learner = _learner(tmp_path / str(threshold), backend="river", save=save.model_dump())
        for message in linear_stream(1500, noise=0.5):
            learner.update(message)
        counts.append(learner.status()["last_saved_version"])

    assert counts[0] > counts[1] >= 1


def test_old_versions_are_pruned(tmp_path: Path) -> None:
    save = SavePolicy(evaluate_every=20, min_validation=5, min_improvement=0.0, keep_versions=2)
    learner = _learner(tmp_path, backend="river", save=save.model_dump())
    for message in linear_stream(1000):
        learner.update(message)

    newest = learner.status()["last_saved_version"]
    assert newest > 2
    names = sorted(p.name for p in (tmp_path / "l1" / "versions").glob("*.model"))
    assert names == [f"{newest - 1:06d}.model", f"{newest:06d}.model"]


# ------------------------------------------------------------------ persistence
@pytest.mark.parametrize("backend", ["river", "sklearn", "torch"])
def test_a_restarted_learner_resumes_exactly_where_it_stopped(tmp_path: Path, backend: str) -> None:
    config = {"backend": backend, "transformer": "smart_meter", "save": {"evaluate_every": 100}}
    messages = list(meter_stream(500))
    first = _learner(tmp_path, **config)
    for m in messages[:400]:
        first.update(m)
    first.checkpoint()
    shutil.copytree(tmp_path / "l1", tmp_path / "restart" / "l1")  # each keeps saving into its own files

    second = _learner(tmp_path / "restart", **config)

    assert second.restored_from == "checkpoint"
    assert second.transformer.state() == first.transformer.state()
    assert len(second.validation) == len(first.validation) > 0
    keep = (
        "messages",
        "samples_seen",
        "samples_learned",
        "held_out",
        "loss",
        "last_saved_version",
        "last_evaluation",
    )
    assert {k: second.status()[k] for k in keep} == {k: first.status()[k] for k in keep}
    for m in messages[400:]:  # the same stream from here gives the same answers
        assert second.update(m) == first.update(m)


def test_a_damaged_checkpoint_falls_back_to_the_last_good_version(tmp_path: Path) -> None:
    learner = _learner(tmp_path, backend="river", save={"evaluate_every": 50})
    for m in linear_stream(400):
        learner.update(m)
    learner.checkpoint()
    good = learner.store.last_good() if learner.store else None
    assert good is not None
    (tmp_path / "l1" / "checkpoint.model").write_bytes(b"half-written")

    resumed = _learner(tmp_path, backend="river", save={"evaluate_every": 50})

    assert resumed.restored_from == f"version {good[1]['version']}"
    assert resumed.backend is not None and learner.saved is not None  # both loaded from the version's bytes
    probe = np.asarray(next(linear_stream(1, seed=5))["x"])
    assert resumed.backend.predict(probe) == learner.saved.predict(probe) != learner.backend.predict(probe)


def test_a_checkpoint_of_another_configuration_is_not_resumed(tmp_path: Path) -> None:
    learner = _learner(tmp_path, backend="river")
    for m in linear_stream(100):
        learner.update(m)
    learner.checkpoint()

    other = _learner(tmp_path, backend="sklearn")

    assert other.restored_from == "new" and other.backend is None


# --------------------------------------------------------------- smart meter rules
def _reading(step: int, value: float) -> dict[str, object]:
    return {"timestamp": START + step * 900, "consumption": value}


def test_a_short_gap_is_filled_by_interpolation() -> None:
    learner = OnlineLearner(
        LearnerConfig(name="m", transformer="smart_meter", transformer_options={"lags": 4, "horizon": 2})
    )
    for step in range(6):
        learner.update(_reading(step, 1.0))

    answer = learner.update(_reading(9, 4.0))  # steps 6, 7, 8 missing (max_gap 4)

    assert answer["repaired"] == ["gap_filled"]
    assert list(learner.transformer.state()["window"]) == pytest.approx([1.75, 2.5, 3.25, 4.0])
    assert learner.status()["repaired"] == {"gap_filled": 1}


def test_a_long_gap_restarts_the_window() -> None:
    learner = OnlineLearner(
        LearnerConfig(name="m", transformer="smart_meter", transformer_options={"lags": 4, "horizon": 2})
    )
    for step in range(6):
        learner.update(_reading(step, 1.0))

    answer = learner.update(_reading(20, 2.0))

    assert answer["repaired"] == ["gap_reset"]
    assert answer["prediction"]["warming_up"] == "1/4 readings"
    assert learner.transformer.state() == {
        "window": [2.0],
        "last_step": round((START + 20 * 900) / 900),
        "pending": [],
    }


def test_a_forecast_becomes_a_labelled_sample_when_its_target_reading_arrives() -> None:
    learner = OnlineLearner(
        LearnerConfig(
            name="m",
            transformer="smart_meter",
            transformer_options={"lags": 3, "horizon": 2, "calendar": False},
        )
    )
    answers = [learner.update(_reading(step, float(step))) for step in range(6)]

    # window full at step 2 (forecast for step 4), labelled at step 4 with the reading 4.0
    assert [a["learned"] + a["held_out"] for a in answers] == [0, 0, 0, 0, 1, 1]
    assert answers[2]["prediction"]["forecast_for"].startswith("2023-11-15T01:00:00")
    assert learner.status()["samples_seen"] == 2
    assert np.asarray(learner.predict({})["prediction"]["consumption"]).shape == ()
