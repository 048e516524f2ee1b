"""Federated learning on digits in Flower's simulation runtime: FedAvg and local DP-SGD side by side.

Ten simulated devices hold scikit-learn's digits, split by ``simulator.fl.make_federated_digits``: a
20 % stratified test set (dealt out to the devices for federated evaluation, so the example-weighted
accuracy is the accuracy on the whole test set), the rest label-skewed by Dirichlet(alpha = 0.5), about
140 examples per device. Every run is the fedge ServerApp (``controller.federation.serverapp``) and
ClientApp (``edge_agent.learning.clientapp``) in ``flwr.simulation.run_simulation`` (Ray on loopback),
at most 20 rounds:

- ``fedavg``: FedAvg, ``digits-mlp`` (64-128-10), 5 local epochs, batch 16, SGD lr 0.1 momentum 0.9;
- ``dp eps 3`` / ``dp eps 8``: example-level local DP-SGD (Opacus, ghost clipping, PRV accountant,
  delta 1e-5): ``digits-linear`` (650 parameters: DP noise grows with the parameter count), one local
  epoch, batch 32, clipping norm 1, FedAvgM with server momentum. Each device draws its noise multiplier
  for its own target epsilon over the whole planned run and pays every round from its own privacy ledger;
  the epsilon reported is the maximum over the devices' ledgers after the run (every step counted).

``dp_epoch_ratio`` is the time of one DP-SGD epoch (ghost clipping, Poisson batches, noise) over one plain
SGD epoch of the same network (``digits-mlp``, batch 32, the 1,437 training digits, one thread), the two
interleaved round by round; the median of each is used. Per-round wall time is what the ServerApp measured
per phase (train + evaluate, ClientApp start-up included), so round 1 carries the actors' start.

    python bench/fl.py [--quick] [--seeds 0,1,2] [--rounds R]

``--quick``: 10 rounds, no eps-8 run. The last line of stdout is a JSON summary (per seed and mean).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from edge_agent.learning.data import LocalData
from edge_agent.learning.ledger import PrivacyLedger
from edge_agent.learning.models import resolve_factory
from edge_agent.learning.trainer import DPSettings, FitConfig, TorchTrainer
from simulator.fl.flower import simulate
from simulator.fl.partition import make_federated_digits

DEVICES, ALPHA, DELTA = 10, 0.5, 1e-5

FEDAVG = {
    "strategy": "fedavg",
    "model": "digits-mlp",
    "local-epochs": 5,
    "batch-size": 16,
    "lr": 0.1,
    "momentum": 0.9,
}
DP = {
    "strategy": '{"name": "fedavgm", "server_momentum": 0.9, "server_learning_rate": 1.0}',
    "model": "digits-linear",
    "local-epochs": 1,
    "batch-size": 32,
    "lr": 0.15,
    "momentum": 0.0,
    "dp-delta": DELTA,
    "dp-max-grad-norm": 1.0,
}


def run(name: str, config: dict[str, Any], rounds: int, seed: int, workdir: Path) -> dict[str, Any]:
    """One federated job; its per-round accuracy and wall time, and the devices' epsilon."""
    data = make_federated_digits(DEVICES, alpha=ALPHA, seed=seed)
    state = workdir / f"{name}-{seed}"
    target = float(config.get("dp-target-epsilon", 0.0))
    run_config = {**config, "num-server-rounds": rounds, "min-nodes": DEVICES, "seed": seed, "job-id": name}
    outcome = simulate(data, run_config, state, budget_epsilon=target, delta=DELTA)
    evaluate = {r.round: r for r in outcome.reports if r.kind == "evaluate"}
    train = {r.round: r for r in outcome.reports if r.kind == "train"}
    accuracy = [round(evaluate[k].metrics["eval_accuracy"], 4) for k in sorted(evaluate)]
    seconds = [round(train[k].seconds + evaluate[k].seconds, 2) for k in sorted(evaluate)]
    result: dict[str, Any] = {
        "accuracy": accuracy[-1],
        "per_round_accuracy": accuracy,
        "round_seconds": seconds,
        "rounds": len(accuracy),
        "wall_s": round(outcome.seconds, 1),
        "participants": min(r.participants for r in train.values()),
        "test_examples": len(data.y_test),
    }
    if target > 0:
        spent = [
            PrivacyLedger(path, budget_epsilon=target, delta=DELTA).spent
            for path in sorted(state.glob("device-*/privacy/digits.json"))
        ]
        result.update(
            epsilon=round(max(spent), 4),
            epsilon_min=round(min(spent), 4),
            devices_accounted=len(spent),
            delta=DELTA,
            target_epsilon=target,
        )
    return result


def epoch_ratio(rounds: int) -> dict[str, float]:
    """Median seconds of a plain and a DP-SGD epoch of digits-mlp on the training digits, interleaved."""
    data = make_federated_digits(1, alpha=None, seed=0)
    (x, y), _ = data.train[0], data.test[0]
    trainer = TorchTrainer(resolve_factory("digits-mlp"), LocalData(x, y, data.x_test, data.y_test))
    params = trainer.initial_params()
    plain = FitConfig(epochs=1, batch_size=32, lr=0.1)
    private = FitConfig(epochs=1, batch_size=32, lr=0.1, dp=DPSettings(1.0, 1.0, DELTA))
    times: dict[str, list[float]] = {"plain": [], "dp": []}
    for config in (plain, private):  # warm-up
        trainer.fit(params, config)
    for i in range(rounds):
        for name, config in (
            (("plain", plain), ("dp", private)) if i % 2 == 0 else (("dp", private), ("plain", plain))
        ):
            started = time.perf_counter()
            trainer.fit(params, config)
            times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"plain_s": medians["plain"], "dp_s": medians["dp"], "ratio": medians["dp"] / medians["plain"]}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="10 rounds, no eps-8 run")
    parser.add_argument("--seeds", default="0", help="comma-separated partition/initialisation seeds")
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds per run (default 20; 10 with --quick)"
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (10 if args.quick else 20)
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(1)
    runs = {"fedavg": FEDAVG, "dp_eps3": {**DP, "dp-target-epsilon": 3.0}}
    if not args.quick:
        runs["dp_eps8"] = {**DP, "dp-target-epsilon": 8.0}
    print(
        f"digits over {DEVICES} devices, Dirichlet alpha {ALPHA}, 20 % stratified test set; {rounds} rounds; "
        f"Flower simulation runtime (Ray, loopback); seeds {seeds}; torch {torch.__version__}",
        flush=True,
    )
    results: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in runs}
    with tempfile.TemporaryDirectory(prefix="fedge-bench-fl-") as tmp:
        for seed in seeds:
            for name, config in runs.items():
                results[name][seed] = res = run(name, config, rounds, seed, Path(tmp))
                eps = f", max epsilon {res['epsilon']:.3f} (delta {DELTA:g})" if "epsilon" in res else ""
                print(
                    f"seed {seed} {name:8s}: accuracy {res['accuracy']:.4f}{eps}, {res['wall_s']:.0f} s",
                    flush=True,
                )
    ratio = epoch_ratio(rounds=5 if args.quick else 15)

    print()
    names = list(runs)
    header = f"{'round':>5}  " + "  ".join(f"{n + ' acc':>12} {n + ' s':>10}" for n in names)
    print(header)
    print("-" * len(header))
    last = seeds[-1]
    for k in range(rounds):
        cells = []
        for n in names:
            res = results[n][last]
            acc = res["per_round_accuracy"][k] if k < res["rounds"] else float("nan")
            sec = res["round_seconds"][k] if k < res["rounds"] else float("nan")
            cells.append(f"{acc:>12.4f} {sec:>10.2f}")
        print(f"{k + 1:>5}  " + "  ".join(cells))
    print(f"(seed {last}; seconds per round: train + evaluate phase as the ServerApp timed them)")
    print()
    summary_rows = []
    for n in names:
        accs = [results[n][s]["accuracy"] for s in seeds]
        mean, sd = _mean_sd(accs)
        eps = [results[n][s]["epsilon"] for s in seeds if "epsilon" in results[n][s]]
        med = statistics.median(x for s in seeds for x in results[n][s]["round_seconds"][1:])
        summary_rows.append((n, mean, sd, min(accs), max(accs), max(eps) if eps else None, med))
        print(
            f"{n:8s}: accuracy mean {mean:.4f} sd {sd:.4f} (min {min(accs):.4f}, max {max(accs):.4f}) over "
            f"{len(seeds)} seed(s)"
            + (f"; max epsilon {max(eps):.3f}" if eps else "")
            + f"; median round {med:.2f} s"
        )
    print(
        f"DP-SGD epoch / plain epoch (digits-mlp, batch 32, 1,437 examples): {ratio['dp_s'] * 1000:.1f} ms / "
        f"{ratio['plain_s'] * 1000:.1f} ms = {ratio['ratio']:.2f}x"
    )

    def summary(name: str) -> dict[str, Any]:
        per_seed = results[name]
        accs = [per_seed[s]["accuracy"] for s in seeds]
        mean, sd = _mean_sd(accs)
        out: dict[str, Any] = {"accuracy": round(mean, 4), "accuracy_sd": round(sd, 4), "per_seed": accs}
        if "epsilon" in per_seed[seeds[0]]:
            out.update(
                epsilon=round(max(per_seed[s]["epsilon"] for s in seeds), 4),
                delta=DELTA,
                target_epsilon=per_seed[seeds[0]]["target_epsilon"],
            )
        reached = [
            next((k + 1 for k, a in enumerate(per_seed[s]["per_round_accuracy"]) if a >= 0.95), None)
            for s in seeds
        ]
        out["rounds_to_95"] = reached  # first round at >= 95 % test accuracy, per seed (None: never)
        out["median_round_s"] = round(
            statistics.median(x for s in seeds for x in per_seed[s]["round_seconds"][1:]), 2
        )
        out["first_round_s"] = round(statistics.median(per_seed[s]["round_seconds"][0] for s in seeds), 2)
        return out

    result: dict[str, Any] = {
        "bench": "fl",
        "quick": args.quick,
        "runtime": "flwr.simulation",
        "devices": DEVICES,
        "alpha": ALPHA,
        "seeds": seeds,
        "rounds": rounds,
        "fedavg_accuracy": summary("fedavg")["accuracy"],
        "fedavg": summary("fedavg"),
        "dp": summary("dp_eps3"),
        "dp_epoch_ratio": round(ratio["ratio"], 3),
        "dp_epoch_ms": {"plain": round(ratio["plain_s"] * 1000, 2), "dp": round(ratio["dp_s"] * 1000, 2)},
    }
    if "dp_eps8" in runs:
        result["dp_eps8"] = summary("dp_eps8")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
