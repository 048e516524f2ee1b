"""The example training programs honour TRAINING_CONTRACT (controller/training/base.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.examples.helpers import Job, run_example, write_dataset

CONTRACT_KEYS = {"framework", "input_name", "input_shape", "input_dtype"}


def test_cnn_writes_an_exported_program_and_model_json(cnn_job: Job) -> None:
    assert cnn_job.process.returncode == 0
    assert sorted(p.name for p in cnn_job.output.iterdir()) == ["model.json", "model.pt2"]
    meta = cnn_job.model_json
    assert meta.keys() >= CONTRACT_KEYS
    assert meta["framework"] == "pytorch"
    assert meta["input_shape"] == [None, 1, 8, 8]
    assert meta["input_dtype"] == "float32"


def test_cnn_appends_one_metrics_line_per_epoch(cnn_job: Job) -> None:
    metrics = cnn_job.metrics
    assert [m["epoch"] for m in metrics] == list(range(1, 9))
    assert metrics[-1]["progress"] == 1.0
    assert {"step", "loss", "train_accuracy", "holdout_accuracy"} <= metrics[-1].keys()
    assert metrics[-1]["loss"] < metrics[0]["loss"]


def test_cnn_reaches_90_percent_holdout_accuracy(cnn_job: Job) -> None:
    assert cnn_job.metrics[-1]["holdout_accuracy"] > 0.90


def test_cnn_artifact_loads_without_the_training_code(cnn_job: Job) -> None:
    import torch

    program = torch.export.load(str(cnn_job.output / "model.pt2"))
    probabilities = program.module()(torch.zeros(3, 1, 8, 8))

    assert probabilities.shape == (3, 10)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(3))


def test_cnn_training_is_deterministic_with_the_seed(tmp_path: Path) -> None:
    import torch

    from examples.digits_cnn import train as cnn
    from tests.examples.helpers import digits

    x, y = digits()
    hp = {**cnn.DEFAULTS, "epochs": 1, "threads": 1, "seed": 7}
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:  # train() sets both process-wide, as a training job may; put them back for the other tests
        first = cnn.train(hp, x[:300], y[:300], tmp_path / "a.jsonl")
        second = cnn.train(hp, x[:300], y[:300], tmp_path / "b.jsonl")
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)

    def without_timing(path: Path) -> list[dict[str, object]]:
        return [{k: v for k, v in json.loads(line).items() if k != "epoch_seconds"} for line in path.open()]

    assert without_timing(tmp_path / "a.jsonl") == without_timing(tmp_path / "b.jsonl")
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert np.array_equal(a.numpy(), b.numpy())


def test_sklearn_writes_a_skops_model_and_model_json(sklearn_job: Job) -> None:
    assert sklearn_job.process.returncode == 0
    assert sorted(p.name for p in sklearn_job.output.iterdir()) == ["model.json", "model.skops"]
    meta = sklearn_job.model_json
    assert meta.keys() >= CONTRACT_KEYS
    assert meta["framework"] == "sklearn"
    assert meta["input_shape"] == [None, 64]


def test_sklearn_artifact_loads_with_only_trusted_types(sklearn_job: Job) -> None:
    import skops.io

    path = sklearn_job.output / "model.skops"
    assert skops.io.get_untrusted_types(file=path) == []
    assert skops.io.load(path).predict(np.zeros((1, 64), dtype=np.float32)).shape == (1,)


def test_sklearn_appends_metrics(sklearn_job: Job) -> None:
    (final,) = sklearn_job.metrics
    assert final["progress"] == 1.0
    assert final["holdout_accuracy"] > 0.90


@pytest.mark.parametrize("name", ["digits_cnn", "digits_sklearn"])
def test_missing_dataset_fails_with_a_clear_message(name: str, tmp_path: Path) -> None:
    job = run_example(name, tmp_path / "job", tmp_path / "nowhere.npz", {})

    assert job.process.returncode == 2
    assert "dataset not found" in job.process.stderr
    assert not any((tmp_path / "job" / "output").iterdir())


def test_dataset_without_labels_fails_with_a_clear_message(tmp_path: Path) -> None:
    dataset = tmp_path / "bad.npz"
    np.savez(dataset, x=np.zeros((4, 1, 8, 8), dtype=np.float32))

    job = run_example("digits_sklearn", tmp_path / "job", dataset, {})

    assert job.process.returncode == 2
    assert "lacks array 'y'" in job.process.stderr


def test_bad_hyperparameter_fails_with_a_clear_message(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "digits.npz")

    job = run_example("digits_sklearn", tmp_path / "job", dataset, {"C": -1})

    assert job.process.returncode == 2
    assert "out of range" in job.process.stderr
