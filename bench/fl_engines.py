"""The two FL engines side by side on the same job: Flower's simulation runtime vs NVIDIA FLARE's simulator.

Both train the same network with the same hyperparameters on the same data: scikit-learn's digits split by
``controller.federation.nvflare.partition_dataset`` (the nvflare engine's own split: a common 20 % test set,
IID training shards, seed 0), FedAvg weighted by training examples, ``digits-linear``, 1 local epoch,
batch 32, SGD lr 0.5.

- ``nvflare``: :class:`controller.federation.nvflare.NvflareEngine` ``run`` (what an ``"engine": "nvflare"``
  job runs: a child process that exports the FLARE job with ``FedAvgRecipe`` and runs ``SimulatorRunner``,
  one FLARE client per participant, then FLARE's final global evaluation);
- ``flower``: ``simulator.fl.flower.simulate`` (the fedge ServerApp and ClientApp in
  ``flwr.simulation.run_simulation``, Ray on loopback) in a spawned child process.

Measured: wall time of the whole run (start-up included), the median round after the first (each engine's
own round timing: the ServerApp's phases for Flower, the spacing of FLARE's round records for nvflare),
and the final global model's test accuracy (example-weighted over the clients' evaluations).

    python bench/fl_engines.py [--quick] [--clients N] [--rounds R]

``--quick``: 2 rounds. The last line of stdout is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from controller.federation.base import FederationSpec
from controller.federation.nvflare import NvflareEngine, node_id, partition_dataset
from fedge_common.quiet import QUIET_ENV

NETWORK, LR, EPOCHS, BATCH = "digits-linear", 0.5, 1, 32


def _digits(path: Path) -> None:
    from simulator.fl.partition import load_digits_arrays

    x, y = load_digits_arrays()
    np.savez(path, x=x, y=y)


def run_nvflare(root: Path, dataset: Path, sites: list[str], rounds: int) -> dict[str, Any]:
    engine = NvflareEngine(root / "engine")
    engine.start()
    spec = FederationSpec(
        job_id="bench-nvflare",
        rounds=rounds,
        min_clients=len(sites),
        strategy={"name": "fedavg"},
        network=NETWORK,
        workdir=root / "nvflare-job",
        output_path=root / "nvflare-job" / "final.npz",
        report_url="",
        report_token="",
        participant_nodes=tuple(node_id(s) for s in sites),
        local_epochs=EPOCHS,
        batch_size=BATCH,
        lr=LR,
        participant_devices=tuple(sites),
        dataset_path=dataset,
    )
    reports: list[dict[str, Any]] = []
    began = time.monotonic()
    outcome = engine.run(spec, threading.Event(), lambda r: reports.append(dict(r)))
    wall = time.monotonic() - began
    if outcome.state.value != "succeeded":
        raise SystemExit(f"nvflare run {outcome.state.value}: {outcome.reason}")
    train = [r for r in reports if r.get("kind") == "train"]
    evaluate = [r for r in reports if r.get("kind") == "evaluate"]
    rounds_s = [float(r["seconds"]) for r in train[1:]]
    return {
        "wall_s": round(wall, 2),
        "round_s": round(statistics.median(rounds_s), 2) if rounds_s else None,
        "final_eval_accuracy": round(float(evaluate[-1]["metrics"]["eval_accuracy"]), 4),
        "rounds": len(train),
    }


def _flower_child(shards: list[str], rounds: int, state_root: str) -> dict[str, Any]:
    from simulator.fl.flower import simulate
    from simulator.fl.partition import FederatedData

    train, test = [], []
    for path in shards:
        with np.load(path) as npz:
            train.append((npz["x"], npz["y"]))
            test.append((npz["x_test"], npz["y_test"]))
    data = FederatedData(train=train, test=test, x_test=test[0][0], y_test=test[0][1])
    config = {"num-server-rounds": rounds, "min-nodes": len(shards), "model": NETWORK, "strategy": "fedavg",
              "local-epochs": EPOCHS, "batch-size": BATCH, "lr": LR, "job-id": "bench-flower",
              "output-path": str(Path(state_root) / "final.npz")}  # fmt: skip
    began = time.monotonic()
    outcome = simulate(data, config, Path(state_root))
    wall = time.monotonic() - began
    evaluate = [r for r in outcome.reports if r.kind == "evaluate"]
    train_phase = {r.round: r.seconds for r in outcome.reports if r.kind == "train"}
    eval_phase = {r.round: r.seconds for r in evaluate}
    rounds_s = [train_phase[k] + eval_phase.get(k, 0.0) for k in sorted(train_phase)[1:]]
    return {
        "wall_s": round(wall, 2),
        "round_s": round(statistics.median(rounds_s), 2) if rounds_s else None,
        "final_eval_accuracy": round(float(evaluate[-1].metrics["eval_accuracy"]), 4),
        "rounds": len(train_phase),
    }


def run_flower(root: Path, shards: list[Path], rounds: int) -> dict[str, Any]:
    (root / "flower").mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_flower_child, [str(p) for p in shards], rounds, str(root / "flower")).result(900)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--rounds", type=int, default=None)
    args = p.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    import os

    os.environ.update(QUIET_ENV)
    sites = [f"bench-device-{k}" for k in range(args.clients)]
    with tempfile.TemporaryDirectory(prefix="fedge-fl-engines-") as tmp:
        root = Path(tmp)
        dataset = root / "digits.npz"
        _digits(dataset)
        partition_dataset(dataset, sites, root / "shards", seed=0)  # the split the nvflare engine makes
        shards = [root / "shards" / f"{s}.npz" for s in sites]
        nv = run_nvflare(root, dataset, sites, rounds)
        print(f"nvflare  {rounds} rounds x {args.clients} clients: {nv}", flush=True)
        fl = run_flower(root, shards, rounds)
        print(f"flower   {rounds} rounds x {args.clients} clients: {fl}", flush=True)
    ratio = round(nv["wall_s"] / fl["wall_s"], 2) if fl["wall_s"] else None
    summary = {
        "bench": "fl_engines",
        "rounds": rounds,
        "clients": args.clients,
        "network": NETWORK,
        "nvflare": nv,
        "flower_simulation": fl,
        "wall_ratio_nvflare_over_flower": ratio,
        "accuracy_gap": round(nv["final_eval_accuracy"] - fl["final_eval_accuracy"], 4),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
