"""The fedge ServerApp and ClientApp together in Flower's simulation runtime (Ray, loopback): the global
model improves, every round's metrics reach the reporter, a malformed update is rejected by node id, and
the final parameters are saved."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simulator.fl.flower import simulate
from simulator.fl.partition import make_federated_digits

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _flower_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text('[superlink]\ndefault = "local"\n')  # no outside host
    monkeypatch.setenv("FLWR_HOME", str(home))
    for key, value in {
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "DO_NOT_TRACK": "1",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }.items():
        monkeypatch.setenv(key, value)


def _simulate_in_child(*args: Any, **kwargs: Any) -> Any:
    """Flower's simulation runtime starts Ray inside the calling process: Ray installs its own SIGTERM
    handler, exports the whole sys.path as PYTHONPATH and can keep the process alive after a crash.
    Run it in a fresh child process so none of that leaks into the test session."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(simulate, *args, **kwargs).result(timeout=300)


@pytest.mark.heavy  # over 20 s on 2 cores: make test-heavy (CI runs it)
def test_a_simulated_job_learns_reports_every_round_and_rejects_a_malformed_update(tmp_path: Path) -> None:
    data = make_federated_digits(4, alpha=0.5, seed=0)
    output = tmp_path / "final.npz"
    run_config = {
        "num-server-rounds": 3,
        "min-nodes": 4,
        "model": "digits-linear",
        "local-epochs": 1,
        "batch-size": 32,
        "lr": 0.5,
        "output-path": str(output),
        "job-id": "job-sim",
    }

    outcome = _simulate_in_child(data, run_config, tmp_path / "devices", faulty={0: "wrong-shape"})

    train = [r for r in outcome.reports if r.kind == "train"]
    evaluate = [r for r in outcome.reports if r.kind == "evaluate"]
    assert [r.round for r in train] == [1, 2, 3] and [r.round for r in evaluate] == [1, 2, 3]
    for report in train:
        assert report.job_id == "job-sim"
        assert report.participants == 3 and report.failures == 0
        assert len(report.rejected) == 1
        assert "1.weight: shape" in report.rejected[0]["reason"]
        assert report.bytes_sent > 0 and report.bytes_received > 0
        assert {"train_loss", "train_accuracy", "dp-epsilon"} <= set(report.metrics)
        assert report.rejected[0]["node_id"] not in {c["node_id"] for c in report.clients}
    rejected_nodes = {r.rejected[0]["node_id"] for r in train}
    assert len(rejected_nodes) == 1  # the same device, every round
    accuracy = [r.metrics["eval_accuracy"] for r in evaluate]
    assert accuracy[-1] > accuracy[0] and accuracy[-1] > 0.8
    assert all(r.participants == 4 for r in evaluate)
    assert outcome.summary is not None and outcome.summary.final_metrics["eval_accuracy"] == accuracy[-1]
    with np.load(output) as saved:
        assert {name: saved[name].shape for name in saved.files} == {"1.weight": (10, 64), "1.bias": (10,)}
        assert all(np.all(np.isfinite(saved[name])) for name in saved.files)
