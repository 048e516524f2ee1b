"""The nvflare engine: what it refuses at submit, the FLARE job it exports, the data partitions, the
round reports it parses from FLARE's metrics files, and the factory / missing-extra paths (no FLARE
run here; tests/controller/federation/test_nvflare_e2e.py runs real FLARE jobs)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.config import ControllerSettings
from controller.federation import nvflare
from controller.federation.base import EngineError, EngineUnavailable
from controller.federation.factory import make_federation_engine
from controller.federation.nvflare import (
    JobPlan,
    NvflareEngine,
    RoundParser,
    check_job,
    export_job,
    node_id,
    partition_dataset,
    unsupported,
)
from controller.federation.nvflare_client import FedgeNetwork
from controller.schemas.fl import FlJobIn
from edge_agent.learning.models import build_model
from tests.controller.federation.fl_helpers import digits

SITES = ["0b7c3e2a-1111-4d2e-9a3b-aaaaaaaaaaaa", "5f1d2c3b-2222-4e5f-8a9b-bbbbbbbbbbbb"]


def _job(**extra: Any) -> FlJobIn:
    body: dict[str, Any] = {
        "engine": "nvflare",
        "model": {"model_id": "m", "network": "digits-linear"},
        "participants": {"device_ids": SITES},
    }
    body.update(extra)
    return FlJobIn.model_validate(body)


# ---------------------------------------------------------------- what it runs, what it refuses


def test_a_plain_fedavg_job_with_every_hyperparameter_is_accepted() -> None:
    job = _job(rounds=4, local_epochs=2, batch_size=16, lr=0.05, momentum=0.9, seed=7, min_clients=2,
               min_fraction=1.0, round_timeout=30, strategy={"name": "FedAvg"})  # fmt: skip
    assert unsupported(job) is None
    assert check_job(job) is None  # the flare extra is installed here


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ({"strategy": {"name": "krum"}}, "strategy.name", "only the fedavg strategy, not 'krum'"),
        ({"strategy": {"name": "fedprox", "params": {"mu": 0.1}}}, "strategy.name", "'fedprox'"),
        ({"strategy": {"name": "fedavg", "params": {"x": 1}}}, "strategy.params", "no strategy parameters"),
        ({"privacy": {"dp": {"epsilon": 3.0}}}, "privacy.dp", "local DP-SGD"),
        ({"privacy": {"central_dp": {"noise_multiplier": 1.0, "clipping_norm": 1.0}}}, "privacy.central_dp",
         "central DP"),
    ],
)  # fmt: skip
def test_options_the_engine_does_not_run_are_named(extra: dict[str, Any], field: str, words: str) -> None:
    refused = unsupported(_job(**extra))
    assert refused is not None
    assert refused[0] == field and words in refused[1], refused


def test_privacy_options_and_algorithms_added_to_the_job_spec_are_refused_too() -> None:
    """The check refuses any field it does not run, so options other work adds are covered."""
    from controller.schemas.fl import FlPrivacyIn

    if "secure_aggregation" in FlPrivacyIn.model_fields:
        refused = unsupported(_job(privacy={"secure_aggregation": {}}))
        assert refused is not None and refused[0] == "privacy.secure_aggregation"
    if "algorithm" in FlJobIn.model_fields:
        refused = unsupported(_job(algorithm="fedpate", pate={"num_teachers": 2}))
        assert refused is not None and refused[0] in ("algorithm", "pate") and "flower" in refused[1]
    assert unsupported(_job(rounds=2)) is None  # a default-valued spec is not refused


def test_without_the_flare_extra_the_job_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "nvflare" else real(name, *a)
    )
    assert check_job(_job()) == (
        "engine",
        "the nvflare engine needs NVIDIA FLARE: pip install 'fedge[flare]'",
    )
    settings = ControllerSettings(data_dir=Path("/nonexistent-fedge"), _env_file=None)
    with pytest.raises(EngineUnavailable, match=r"fedge\[flare\]"):
        make_federation_engine(settings, name="nvflare")
    with pytest.raises(EngineUnavailable, match=r"fedge\[flare\]"):
        NvflareEngine(Path("/nonexistent-fedge")).health()


def test_the_factory_builds_the_engine_under_the_data_dir(tmp_path: Path) -> None:
    settings = ControllerSettings(data_dir=tmp_path, _env_file=None)
    engine = make_federation_engine(settings, name="nvflare")
    assert isinstance(engine, NvflareEngine) and engine.name == "nvflare"
    assert engine.root == tmp_path / "federation" / "nvflare" and not engine.deploys_to_devices
    engine.start()
    engine.health()
    assert engine.root.is_dir()
    with pytest.raises(EngineError, match="do not connect"):
        engine.fleet_endpoint()
    assert engine.register_node(SITES[0], b"") == node_id(SITES[0]) != node_id(SITES[1])
    off = ControllerSettings(data_dir=tmp_path, fl_engine="none", _env_file=None)
    with pytest.raises(EngineUnavailable, match="off"):
        make_federation_engine(off, name="nvflare")


# ---------------------------------------------------------------- the exported FLARE job


def _plan(tmp_path: Path, **extra: Any) -> JobPlan:
    values: dict[str, Any] = {
        "job_id": "job-1",
        "sites": SITES,
        "network": "digits-mlp",
        "rounds": 3,
        "min_clients": 2,
        "dataset": str(tmp_path / "dataset.npz"),
        "root": str(tmp_path / "nvflare"),
        "seed": 5,
        "local_epochs": 2,
        "batch_size": 16,
        "lr": 0.05,
        "momentum": 0.5,
    }
    values.update(extra)
    return JobPlan(**values)


def test_the_exported_flare_job_reflects_the_spec(tmp_path: Path) -> None:
    initial = tmp_path / "initial.npz"
    np.savez(initial, **{k: v.numpy() for k, v in build_model("digits-mlp", 5).state_dict().items()})
    plan = _plan(tmp_path, initial=str(initial))
    job_dir = export_job(plan)

    meta = json.loads((job_dir / "meta.json").read_text())
    server = json.loads((job_dir / "app" / "config" / "config_fed_server.json").read_text())
    client = json.loads((job_dir / "app" / "config" / "config_fed_client.json").read_text())
    assert meta["min_clients"] == 2
    workflows = {w["path"].rsplit(".", 1)[-1]: w["args"] for w in server["workflows"]}
    assert workflows["FedAvg"]["num_rounds"] == 3 and workflows["FedAvg"]["num_clients"] == 2
    assert workflows["CrossSiteModelEval"]["participating_clients"] == SITES  # the final global evaluation
    components = {c["id"]: c for c in server["components"]}
    model = components["persistor"]["args"]["model"]
    assert model["path"] == "controller.federation.nvflare_client.FedgeNetwork"
    assert model["args"] == {"network": "digits-mlp", "seed": 5, "initial": str(initial)}
    assert "model_selector" not in components  # no "best model": the result is the last global model
    (executor,) = client["executors"]
    args = executor["executor"]["args"]
    assert args["task_script_path"].endswith("controller/federation/nvflare_client.py")
    words = args["task_script_args"].split()
    given = dict(zip(words[::2], words[1::2], strict=True))
    assert given == {"--data-dir": str(plan.data_dir), "--network": "digits-mlp", "--seed": "5",
                     "--epochs": "2", "--batch-size": "16", "--lr": "0.05", "--momentum": "0.5"}  # fmt: skip

    other = export_job(_plan(tmp_path / "b", rounds=1, sites=[*SITES, "c3"], network="digits-linear"))
    server = json.loads((other / "app" / "config" / "config_fed_server.json").read_text())
    fedavg = next(w["args"] for w in server["workflows"] if w["path"].endswith(".FedAvg"))
    # FLARE's export leaves out arguments at their default (FedAvg's num_clients defaults to 3)
    assert fedavg["num_rounds"] == 1 and fedavg.get("num_clients", 3) == 3
    assert json.loads((other / "meta.json").read_text())["min_clients"] == 3


def test_the_network_class_has_the_fedge_networks_keys_and_loads_initial_parameters(tmp_path: Path) -> None:
    for name in ("digits-linear", "digits-mlp", "digits-cnn"):
        reference = build_model(name, 3).state_dict()
        wrapped = FedgeNetwork(name, 3).state_dict()
        assert list(wrapped) == list(reference)
        assert all(np.array_equal(wrapped[k].numpy(), reference[k].numpy()) for k in reference)
    start = {
        k: np.full(v.shape, 0.25, dtype=np.float32)
        for k, v in build_model("digits-linear").state_dict().items()
    }
    np.savez(tmp_path / "start.npz", **start)  # type: ignore[arg-type]
    net = FedgeNetwork("digits-linear", 0, str(tmp_path / "start.npz"))
    assert all(np.all(t.numpy() == 0.25) for t in net.state_dict().values())
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    import torch

    assert tuple(net(torch.from_numpy(x)).shape) == (4, 10)


# ---------------------------------------------------------------- data partitions


def test_each_participant_gets_a_disjoint_shard_and_the_common_test_split(tmp_path: Path) -> None:
    x, y = digits(301)
    np.savez(tmp_path / "ds.npz", x=x, y=y)
    counts = partition_dataset(tmp_path / "ds.npz", [*SITES, "c3"], tmp_path / "out", seed=1)
    shards = {s: np.load(tmp_path / "out" / f"{s}.npz") for s in counts}
    assert sum(counts.values()) == 301 - 60 and max(counts.values()) - min(counts.values()) <= 1
    rows = [tuple(np.round(r.ravel(), 4)) for s in shards.values() for r in s["x"]]
    test = [tuple(np.round(r.ravel(), 4)) for r in shards[SITES[0]]["x_test"]]
    assert len(test) == 60 and all(
        np.array_equal(s["x_test"], shards[SITES[0]]["x_test"]) for s in shards.values()
    )
    assert len(set(rows)) == len(set(tuple(np.round(r.ravel(), 4)) for r in x)) - len(set(test))

    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(EngineError, match=r"an \.npz with x and y"):
        partition_dataset(tmp_path / "bad.npz", SITES, tmp_path / "out2")
    np.savez(tmp_path / "tiny.npz", x=x[:2], y=y[:2])
    with pytest.raises(EngineError, match="too few for 2 participants"):
        partition_dataset(tmp_path / "tiny.npz", SITES, tmp_path / "out3")


# ---------------------------------------------------------------- round reports


def _site(name: str, n: int, **metrics: float) -> dict[str, Any]:
    values = [{"name": k, "value": v} for k, v in metrics.items()]
    values += [{"name": "num_examples", "value": n}, {"name": "num_test_examples", "value": 100}]
    return {"name": name, "metrics": values, "weight": float(n)}


def test_flare_round_records_become_train_and_evaluate_reports() -> None:
    parser = RoundParser("job-1", SITES, model_bytes=1000)
    first = parser.on_record({"round": 0, "sites": [
        _site(SITES[0], 100, eval_loss=2.3, eval_accuracy=0.1, train_loss=1.0, train_accuracy=0.5),
        _site(SITES[1], 300, eval_loss=2.3, eval_accuracy=0.1, train_loss=2.0, train_accuracy=0.7),
    ]})  # fmt: skip
    assert [(r["kind"], r["round"]) for r in first] == [("train", 1)]  # round 0 scored the initial model
    assert parser.initial_eval == pytest.approx({"eval_loss": 2.3, "eval_accuracy": 0.1})
    train = first[0]
    assert train["metrics"] == pytest.approx({"train_loss": 1.75, "train_accuracy": 0.65})  # by examples
    assert {c["node_id"] for c in train["clients"]} == {node_id(s) for s in SITES}
    assert train["bytes_sent"] == 2000 and train["bytes_received"] == 2000 and train["job_id"] == "job-1"
    assert train["clients"][0]["metrics"]["num-examples"] == 100

    second = parser.on_record({"round": 1, "sites": [
        _site(SITES[0], 100, eval_loss=1.0, eval_accuracy=0.8, train_loss=0.5, train_accuracy=0.9),
    ]})  # fmt: skip
    assert [(r["kind"], r["round"]) for r in second] == [("evaluate", 1), ("train", 2)]
    assert second[0]["metrics"] == pytest.approx({"eval_loss": 1.0, "eval_accuracy": 0.8})
    assert second[1]["participants"] == 1 and second[1]["bytes_received"] == 1000
    assert second[0]["seconds"] == 0.0 and second[1]["seconds"] > 0  # the score rode on the train task

    final = parser.on_final({
        SITES[0]: {nvflare.SERVER_MODEL_KEY: {"eval_loss": 0.4, "eval_accuracy": 0.9, "num_test_examples": 100}},
        SITES[1]: {nvflare.SERVER_MODEL_KEY: {"eval_loss": 0.6, "eval_accuracy": 0.7, "num_test_examples": 300}},
    })  # fmt: skip
    assert (final["kind"], final["round"]) == ("evaluate", 2)
    assert final["metrics"] == pytest.approx({"eval_loss": 0.55, "eval_accuracy": 0.75})
    assert parser.last_eval == final["metrics"] and parser.rounds_seen == [1, 2]


def test_only_complete_lines_of_the_metrics_file_are_read(tmp_path: Path) -> None:
    path = tmp_path / "round_metrics.jsonl"
    assert nvflare.read_new_records(path, 0) == ([], 0)
    path.write_text('{"round": 0, "sites": []}\n{"round": 1, "si')
    records, offset = nvflare.read_new_records(path, 0)
    assert records == [{"round": 0, "sites": []}] and offset == len('{"round": 0, "sites": []}\n')
    with open(path, "a") as fh:
        fh.write('tes": []}\n')
    records, offset = nvflare.read_new_records(path, offset)
    assert records == [{"round": 1, "sites": []}] and offset == path.stat().st_size


def test_fedge_fl_run_selects_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import controller.user_cli as cli
    from controller.schemas.fl import FlJobCreated

    sent: list[dict[str, Any]] = []

    class Client:
        def __init__(self, *_: Any, **__: Any) -> None:
            pass

        def close(self) -> None:
            pass

        def fl_run(self, body: dict[str, Any]) -> FlJobCreated:
            sent.append(dict(body))
            return FlJobCreated(job_id="j1", status="queued", participants=SITES, min_clients=2)

    monkeypatch.setattr(cli, "FedgeClient", Client)
    args = ["fl", "run", "--model", "m1", "--device", SITES[0], "--device", SITES[1], "--no-watch", "--json"]
    result = CliRunner().invoke(cli.app, [*args, "--engine", "nvflare"])
    assert result.exit_code == 0, result.output
    assert sent[-1]["engine"] == "nvflare" and FlJobIn.model_validate(sent[-1]).engine == "nvflare"
    assert CliRunner().invoke(cli.app, args).exit_code == 0
    assert "engine" not in sent[-1]  # the API's default (flower)
