"""Secure aggregation (Flower's SecAgg+) vs the plaintext FedAvg round, side by side in one run.

**Protocol** (always; ``protocol`` in the JSON): ``clients`` devices (10; 5 with ``--quick``), each with a
shard of scikit-learn's digits (``simulator.fl.make_federated_digits``, Dirichlet 0.5), train
``wide_mlp`` (64-1400-10: 105,010 parameters) for one local epoch with the agent's real ClientApp
(``edge_agent.learning.clientapp``; the SecAgg+ rounds behind ``edge_agent.learning.secagg.secagg_mod``)
and the controller's real ServerApp code (``controller.federation.serverapp.run_federation``: the
guarded FedAvg, or Flower's ``SecAggPlusWorkflow`` for the train phase). Both run over
``simulator.fl.appgrid.AppGrid`` (every message deep-copied each way, devices served one after
the other, no processes or network). After one untimed warm-up round of each, one plaintext and one SecAgg+
round per repetition, alternating which goes first. Measured per round:

- ``train_s``: the train phase as the ServerApp timed it (plaintext: one message per device; SecAgg+:
  setup, share keys, masked vector, unmask); the devices' training is in both, so the ratio is what SecAgg+
  adds on top of training: key agreement, Shamir shares, quantising and masking 105k parameters per
  device and neighbour, unmasking on the server;
- ``bytes``: the payload of every train message both ways (arrays, config and metric records), per device
  (``secagg_bytes_ratio``: SecAgg+ over plaintext; the masked vector is int64 per parameter);
- ``max_abs_diff``: the SecAgg+ aggregate against the plaintext aggregate of the very same updates (same
  seeds, node ids and data), and the quantisation bound (``controller.federation.secagg.error_bound``).

**Deployment** (``deployment``; skipped with ``--no-deployment``): the controller's Flower engine and 3 real
``flower-supernode`` processes on loopback (``simulator.fl.loopback.run_loopback``: TLS SuperLink, SuperNode
authentication, Fleet-only front), ``digits-mlp``, a plaintext FedAvg job then a SecAgg+ job (3 shares,
threshold 2), 2 rounds each (1 with ``--quick``). ``round_s`` is the median round (train + evaluate as the
ServerApp timed them, after the first round when there are more), ``wire_bytes`` all HTTP body bytes through
the Fleet front per device per round. Here each SecAgg+ round costs four ClientApp processes per device
instead of one (``flwr-clientapp`` per message), which dominates on small models.

    python bench/fl_secagg.py [--quick] [--clients N] [--reps R] [--no-deployment]

The last line of stdout is one JSON object: ``secagg_time_ratio``, ``secagg_bytes_ratio`` (protocol),
``secagg_max_abs_diff``, ``secagg_error_bound``, ``deployment_secagg_time_ratio``,
``deployment_secagg_bytes_ratio`` (null when skipped) and the sections in full.
"""

from __future__ import annotations

import argparse
import json
import shutil
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

from fedge_common.quiet import QUIET_ENV

WIDE = "bench.fl_secagg:wide_mlp"
ALPHA, SEED, LR = 0.5, 0, 0.1


def wide_mlp() -> torch.nn.Module:
    """A 105,010-parameter digits MLP (64-1400-10): the ~100k-parameter model of the FL benchmarks."""
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 1400), torch.nn.ReLU(), torch.nn.Linear(1400, 10)
    )


# ---------------------------------------------------------------------------------- protocol


def _round(clients: int, secure: bool, workdir: Path) -> dict[str, Any]:
    """One round over the in-process grid; its train report, payload bytes and final parameters."""
    from controller.federation.secagg import resolve_settings
    from controller.federation.serverapp import FederationConfig, ListReporter, run_federation
    from edge_agent.learning.clientapp import DevicePolicy, make_client_app
    from edge_agent.learning.data import LocalData
    from edge_agent.learning.secagg import secagg_mod
    from simulator.fl.appgrid import AppGrid, server_identity
    from simulator.fl.partition import make_federated_digits

    server_identity()
    data = make_federated_digits(clients, alpha=ALPHA, seed=SEED)
    apps = {}
    for k in range(clients):
        (x, y), (x_test, y_test) = data.train[k], data.test[k]
        local = LocalData(x, y, x_test, y_test)
        apps[1000 + k] = make_client_app(
            load_data=lambda _ctx, local=local: local,
            state_dir_for=lambda _ctx, k=k: workdir / f"device-{k}",
            policy_for=lambda _ctx: DevicePolicy("digits"),
            mods=[secagg_mod],
        )
    grid = AppGrid(apps)
    config: dict[str, Any] = {
        "num-server-rounds": 1,
        "min-nodes": clients,
        "model": WIDE,
        "seed": SEED,
        "lr": LR,
        "output-path": str(workdir / ("secagg.npz" if secure else "plain.npz")),
    }
    settings = None
    if secure:
        settings = resolve_settings(
            {}, min_clients=clients, eligible=clients, strategy="fedavg", central_dp=False
        )
        config["secure-aggregation"] = settings.to_json()
    reporter = ListReporter()
    run_federation(grid, FederationConfig.from_run_config(config), reporter, run_id=1)  # type: ignore[arg-type]
    train = next(r for r in reporter.rounds if r.kind == "train")
    with np.load(config["output-path"]) as npz:
        params = {k: npz[k] for k in npz.files}
    return {
        "train_s": train.seconds,
        "participants": train.participants,
        "bytes_per_client": (grid.bytes_out["train"] + grid.bytes_in["train"]) / clients,
        "train_messages_per_client": statistics.median(grid.messages["train"].values()),
        "weights": [int(c["metrics"]["num-examples"]) for c in train.clients],
        "params": params,
        "settings": settings,
    }


def protocol(clients: int, reps: int, workdir: Path) -> dict[str, Any]:
    from controller.federation.secagg import error_bound

    for name in ("plain", "secagg"):  # warm-up, not timed: imports, the digits, torch's first steps
        _round(min(clients, 3), name == "secagg", workdir / f"warm-{name}")
    times: dict[str, list[float]] = {"plain": [], "secagg": []}
    last: dict[str, dict[str, Any]] = {}
    for rep in range(reps):
        order = ("plain", "secagg") if rep % 2 == 0 else ("secagg", "plain")
        for name in order:
            began = time.perf_counter()
            out = _round(clients, name == "secagg", workdir / f"{name}-{rep}")
            print(f"  protocol {name} rep {rep}: train phase {out['train_s']:.2f} s "
                  f"(round {time.perf_counter() - began:.1f} s)", flush=True)  # fmt: skip
            assert out["participants"] == clients, out["participants"]
            times[name].append(out["train_s"])
            last[name] = out
    plain, secure = last["plain"], last["secagg"]
    diff = max(float(np.abs(secure["params"][k] - plain["params"][k]).max()) for k in plain["params"])
    max_abs = max(float(np.abs(v).max()) for v in plain["params"].values())
    bound = error_bound(secure["settings"], secure["weights"], max_abs)
    plain_s, secagg_s = statistics.median(times["plain"]), statistics.median(times["secagg"])
    return {
        "clients": clients,
        "parameters": int(sum(v.size for v in plain["params"].values())),
        "reps": reps,
        "plain_train_s": round(plain_s, 3),
        "secagg_train_s": round(secagg_s, 3),
        "time_ratio": round(secagg_s / plain_s, 3),
        "plain_bytes_per_client": round(plain["bytes_per_client"]),
        "secagg_bytes_per_client": round(secure["bytes_per_client"]),
        "bytes_ratio": round(secure["bytes_per_client"] / plain["bytes_per_client"], 3),
        "secagg_train_messages_per_client": secure["train_messages_per_client"],
        "max_abs_diff": diff,
        "error_bound": bound,
        "settings": json.loads(secure["settings"].to_json()),
    }


# -------------------------------------------------------------------------------- deployment


def _median_round(outcome: Any) -> dict[str, Any]:
    train = {r["round"]: r for r in outcome.reports if r["kind"] == "train"}
    evaluate = {r["round"]: r for r in outcome.reports if r["kind"] == "evaluate"}
    rounds = sorted(train)
    later = rounds[1:] or rounds
    devices, count = outcome.devices, max(len(rounds), 1)
    return {
        "round_s": statistics.median(train[k]["seconds"] + evaluate[k]["seconds"] for k in later),
        "train_s": statistics.median(train[k]["seconds"] for k in later),
        "wire_bytes_per_client_round": (outcome.wire["bytes_in"] + outcome.wire["bytes_out"])
        / devices
        / count,
        "eval_accuracy": evaluate[rounds[-1]]["metrics"].get("eval_accuracy"),  # None: no evaluation
        "eval_participants": evaluate[rounds[-1]]["participants"],
        "train_participants": train[rounds[-1]]["participants"],
    }


def deployment(rounds: int, workdir: Path) -> dict[str, Any]:
    try:
        from simulator.fl.loopback import LoopbackJob, run_loopback
        from simulator.fl.partition import make_federated_digits
    except ImportError as exc:
        return {"skipped": f"flwr is not installed ({exc})"}
    if not (Path(sys.executable).parent / "flower-supernode").exists() and not shutil.which(
        "flower-supernode"
    ):
        return {"skipped": "flower-supernode is not installed beside this Python"}
    data = make_federated_digits(3, alpha=ALPHA, seed=SEED)
    out: dict[str, Any] = {"devices": 3, "rounds": rounds, "network": "digits-mlp"}
    secure = {"num_shares": 3, "reconstruction_threshold": 2, "clipping_range": 8.0,
              "quantization_range": 2**22, "max_weight": 1000.0}  # fmt: skip
    for name, secagg in (("plain", None), ("secagg", secure)):
        job = LoopbackJob(rounds=rounds, network="digits-mlp", seed=SEED, lr=LR, secure_aggregation=secagg)

        def progress(report: Any, name: str = name) -> None:
            print(f"  deployment {name} round {report['round']} {report['kind']}: {report['seconds']:.1f} s",
                  flush=True)  # fmt: skip

        outcome = run_loopback(data, job, workdir / f"deployment-{name}", on_round=progress)
        if outcome.state != "succeeded":
            return {"failed": f"the {name} job {outcome.state}: {outcome.reason}", "logs": outcome.logs}
        out[name] = {k: round(v, 4) if isinstance(v, float) else v for k, v in _median_round(outcome).items()}
    out["time_ratio"] = round(out["secagg"]["round_s"] / out["plain"]["round_s"], 3)
    out["train_time_ratio"] = round(out["secagg"]["train_s"] / out["plain"]["train_s"], 3)
    out["bytes_ratio"] = round(
        out["secagg"]["wire_bytes_per_client_round"] / out["plain"]["wire_bytes_per_client_round"], 3
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 devices, 1 rep, 1 deployment round")
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--no-deployment", action="store_true")
    args = parser.parse_args(argv)
    import os

    os.environ.update(QUIET_ENV)
    torch.set_num_threads(1)
    clients = args.clients or (5 if args.quick else 10)
    reps = args.reps or (1 if args.quick else 2)
    with tempfile.TemporaryDirectory(prefix="fedge-bench-secagg-") as tmp:
        work = Path(tmp)
        print(f"protocol: {clients} devices, {WIDE}, {reps} rep(s)", flush=True)
        proto = protocol(clients, reps, work)
        print(
            f"protocol: train phase {proto['plain_train_s']:.2f} s plaintext vs "
            f"{proto['secagg_train_s']:.2f} s "
            f"SecAgg+ ({proto['time_ratio']:.2f}x); bytes per device {proto['plain_bytes_per_client']:,} vs "
            f"{proto['secagg_bytes_per_client']:,} ({proto['bytes_ratio']:.2f}x); max |diff| "
            f"{proto['max_abs_diff']:.2e} (bound {proto['error_bound']:.2e})",
            flush=True,
        )
        dep: dict[str, Any] = {"skipped": "--no-deployment"}
        if not args.no_deployment:
            dep = deployment(1 if args.quick else 2, work)
            if "time_ratio" in dep:
                print(
                    f"deployment: round {dep['plain']['round_s']:.1f} s plaintext vs "
                    f"{dep['secagg']['round_s']:.1f} s SecAgg+ ({dep['time_ratio']:.2f}x); "
                    f"wire bytes per device-round {dep['bytes_ratio']:.2f}x",
                    flush=True,
                )
            else:
                print(f"deployment: {dep}", flush=True)
    summary = {
        "secagg_time_ratio": proto["time_ratio"],
        "secagg_bytes_ratio": proto["bytes_ratio"],
        "secagg_max_abs_diff": proto["max_abs_diff"],
        "secagg_error_bound": proto["error_bound"],
        "deployment_secagg_time_ratio": dep.get("time_ratio"),
        "deployment_secagg_bytes_ratio": dep.get("bytes_ratio"),
        "protocol": proto,
        "deployment": dep,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
